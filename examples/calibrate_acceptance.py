"""Measure a gated SPACE adapter's acceptance rate per mask and store it in the adapter's config.

`num_mask_tokens="auto"` picks the layout from these rates and this machine's pass costs. The prompts are
held-out standard-library functions and ShareGPT questions (a seed the training data did not use), never
the benchmark's suites; code and chat passes are pooled, so one layout serves both.

    python examples/calibrate_acceptance.py --adapter hub_configs/smollm2-135m-space-gated --code 8 --chat 8
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
from make_distill_data import sharegpt_prompts, stdlib_function_prompts
from tqdm import tqdm

from transformers_space.decoding.autotune import calibrate_acceptance
from transformers_space.hub import ADAPTER_CONFIG, load_space_adapter
from transformers_space.prompts import encode_prompts

logger = logging.getLogger("calibrate_acceptance")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", required=True, help="Folder written by `save_space_adapter`.")
    parser.add_argument("--code", type=int, default=8)
    parser.add_argument("--chat", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--seed", type=int, default=1234, help="Not a seed used for the training data.")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(args.threads)
    model, tokenizer = load_space_adapter(args.adapter, dtype=torch.float32)
    prompts = stdlib_function_prompts(args.code, args.seed) + sharegpt_prompts(args.chat, args.seed)
    inputs = [encode_prompts(tokenizer, [p])["input_ids"] for p in tqdm(prompts, desc="tokenising")]
    rates = calibrate_acceptance(model, inputs, max_new_tokens=args.max_new_tokens)
    path = Path(args.adapter) / ADAPTER_CONFIG
    settings = json.loads(path.read_text())
    settings["space_config"]["acceptance_rates"] = rates
    path.write_text(json.dumps(settings, indent=2) + "\n")
    logger.info("acceptance rates per mask %s written to %s", [round(r, 3) for r in rates], path)


if __name__ == "__main__":
    main()

"""Measure a gated SPACE adapter's acceptance rate per mask and store it in the adapter's config.

`num_mask_tokens="auto"` picks the layout from these rates and this machine's pass costs. The prompts come from
the HELD-OUT split of `transformers_space.training.distill` (library functions phrased as requests, ShareGPT
first turns; no training row can be drawn from it), never the benchmark's suites. The rates are stored pooled
and per kind (code, chat): `auto` picks the one layout that does best over both kinds (`planning.typical_speedup`).
`--seed` orders the split differently from examples/heldout_acceptance.py.

    python examples/calibrate_acceptance.py --adapter hub_configs/smollm2-135m-space-gated --code 8 --chat 8 \
        --packages transformers torch accelerate huggingface_hub tqdm peft safetensors matplotlib numpy
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
from tqdm import tqdm

from transformers_space.arguments import add_dtype_argument
from transformers_space.decoding.autotune import calibrate_acceptance
from transformers_space.decoding.configuration import SpaceConfig
from transformers_space.hub import ADAPTER_CONFIG, load_space_adapter
from transformers_space.prompts import encode_prompts
from transformers_space.training.distill import select_prompts

logger = logging.getLogger("calibrate_acceptance")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", required=True, help="Folder written by `save_space_adapter`.")
    parser.add_argument("--code", type=int, default=8, help="Held-out code prompts.")
    parser.add_argument("--chat", type=int, default=8, help="Held-out chat prompts.")
    parser.add_argument("--packages", nargs="*", default=[], help="As given to make_distill_data.py.")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--seed", type=int, default=1234, help="Order of the held-out prompts.")
    parser.add_argument("--threads", type=int, default=2)
    add_dtype_argument(parser)
    args = parser.parse_args()
    if args.code < 0 or args.chat < 0 or args.code + args.chat == 0:
        parser.error("--code and --chat must be at least 0, and not both 0")
    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(args.threads)
    model, tokenizer = load_space_adapter(args.adapter, dtype=getattr(torch, args.dtype))
    code = select_prompts("code", args.code, "heldout", args.seed, args.packages)
    chat = select_prompts("chat", args.chat, "heldout", args.seed)
    prompts = code + chat
    inputs = [encode_prompts(tokenizer, [p])["input_ids"] for p in tqdm(prompts, desc="tokenising")]
    kinds = ["code"] * len(code) + ["chat"] * len(chat)
    rates = calibrate_acceptance(model, inputs, max_new_tokens=args.max_new_tokens, kinds=kinds)
    rates_by_kind = SpaceConfig.of(model).acceptance_rates_by_kind
    path = Path(args.adapter) / ADAPTER_CONFIG
    settings = json.loads(path.read_text())
    settings["space_config"]["acceptance_rates"] = rates
    settings["space_config"]["acceptance_rates_by_kind"] = rates_by_kind
    path.write_text(json.dumps(settings, indent=2) + "\n")
    logger.info("acceptance rates per mask %s (%s) written to %s", [round(r, 3) for r in rates],
                {kind: [round(r, 3) for r in kind_rates] for kind, kind_rates in rates_by_kind.items()}, path)


if __name__ == "__main__":
    main()

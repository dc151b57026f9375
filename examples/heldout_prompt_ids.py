"""Held-out prompts as token ids: the JSON list that scripts/vllm_parallel_drafting.py reads (its vLLM
environment has no transformers-space to pick and template prompts with).

The prompts are those of examples/heldout_acceptance.py (the held-out split of
`transformers_space.training.distill`, same order), chat-templated as SPACE's own benchmarks feed them.

    python examples/heldout_prompt_ids.py --code 4 --chat 4 --packages transformers torch accelerate \
        huggingface_hub tqdm peft safetensors matplotlib numpy --output data/vllm-smol/prompts.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from heldout_acceptance import HELDOUT_SEED  # run as `python examples/...`: its folder is on sys.path
from transformers import AutoTokenizer

from transformers_space.assets import default_model_dir
from transformers_space.prompts import encode_prompts
from transformers_space.training.distill import select_prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", default=None, help="Tokenizer folder (default: the default model's).")
    parser.add_argument("--code", type=int, default=4, help="Held-out code prompts.")
    parser.add_argument("--chat", type=int, default=4, help="Held-out chat prompts.")
    parser.add_argument("--packages", nargs="*", default=[], help="As given to make_distill_data.py.")
    parser.add_argument("--output", required=True, help="JSON file: a list of token-id lists.")
    args = parser.parse_args()
    if args.code < 0 or args.chat < 0 or args.code + args.chat == 0:
        parser.error("--code and --chat must be at least 0, and not both 0")
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or default_model_dir())
    prompts = (select_prompts("code", args.code, "heldout", HELDOUT_SEED, args.packages)
               + select_prompts("chat", args.chat, "heldout", HELDOUT_SEED))
    ids = [encode_prompts(tokenizer, [prompt])["input_ids"][0].tolist() for prompt in prompts]
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(ids))
    print(f"wrote {len(ids)} prompts ({sum(map(len, ids))} tokens) to {args.output}")


if __name__ == "__main__":
    main()

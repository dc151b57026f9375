"""How often greedy SPACE differs from plain greedy on a real model, and why (near-tied logits).

A multi-token pass adds up its products in another order than a one-token pass, so where the top two logits
are within float rounding of each other the argmax can differ (README, "What identical means precisely").
This runs held-out prompts (`transformers_space.training.distill`, never a benchmark suite) through plain
greedy and SPACE (the layout `--num-mask-tokens` asks for) and reports, per prompt, whether the outputs are
identical and, where they are not, the first differing position and plain decoding's logit gap there.

    python benchmarks/exactness.py --code 50 --chat 50 --max-new-tokens 256 --num-mask-tokens auto
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from transformers_space.arguments import int_or_auto, positive_int
from transformers_space.loading import load_model
from transformers_space.training.distill import chat_inputs, select_prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="What `transformers-space bench --model` takes (default: the shipped adapter).")
    parser.add_argument("--code", type=int, default=50)
    parser.add_argument("--chat", type=int, default=50)
    parser.add_argument("--max-new-tokens", type=positive_int, default=256)
    parser.add_argument("--num-mask-tokens", type=int_or_auto, default="auto")
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--output", default="bench_out/exactness.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model)
    prompts = select_prompts("code", args.code, "heldout") + select_prompts("chat", args.chat, "heldout")
    rows = []
    for prompt, text in tqdm(list(zip(prompts, chat_inputs(tokenizer, prompts), strict=True)), desc="prompts"):
        inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        common = dict(max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        plain = model.generate(**inputs, use_space=False, output_scores=True, return_dict_in_generate=True, **common)
        space = model.generate(**inputs, use_space=True, num_mask_tokens=args.num_mask_tokens, **common)
        start = inputs["input_ids"].shape[1]
        a, b = plain.sequences[0, start:].tolist(), space[0, start:].tolist()
        first = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
        if first is None and len(a) != len(b):
            first = min(len(a), len(b))
        row = {"prompt": prompt[:80], "new_tokens": len(a), "identical": first is None, "first_difference": first}
        if first is not None and first < len(plain.scores):
            top = plain.scores[first][0].float().topk(2).values
            row["plain_top2_gap"] = float(top[0] - top[1])
        rows.append(row)
    differing = [row for row in rows if not row["identical"]]
    summary = {"prompts": len(rows), "tokens": sum(row["new_tokens"] for row in rows), "differing": len(differing),
               "gaps_at_first_difference": [row.get("plain_top2_gap") for row in differing]}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"summary": summary, "rows": rows}, indent=1) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

"""`transformers-space demo`: SPACE on a real model, beside plain decoding, in a few minutes on a CPU.

Loads the offline SmolLM2-135M-Instruct (`assets.py`) with the gated SPACE adapter shipped in
`hub_configs/smollm2-135m-space-gated/`, lets `num_mask_tokens="auto"` pick the layout for this machine,
then answers a few prompts twice (plain greedy, then SPACE) and shows that the text is identical, how
many tokens each pass emitted, and the speed of each. `--adapter hub_configs/qwen2.5-coder-0.5b-space-gated
--dtype bfloat16` shows the optional coder model instead, the case where drafts pay on CPUs with AMX (in bf16 a
text may differ from plain decoding's where two logits tie within bf16 rounding; the demo says so per prompt).
"""

from __future__ import annotations

import argparse
import time

from .arguments import add_dtype_argument, int_or_auto, model_location, non_empty_text, positive_int

DEMO_PROMPTS = (
    "Write a Python function that returns the n-th Fibonacci number, with a docstring.",
    "Explain in three sentences why the sky is blue.",
    "A train travels 120 km in 1.5 hours. What is its average speed? Show the steps.",
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo", help="SPACE vs plain decoding on SmolLM2-135M (or --adapter's base), side by side.")
    parser.add_argument("--adapter", default=None, type=model_location,
                        help="Adapter folder (default: the one shipped in hub_configs).")
    parser.add_argument("--prompt", action="append", type=non_empty_text,
                        help="Your own prompt(s) instead of the built-in ones.")
    parser.add_argument("--max-new-tokens", type=positive_int, default=96)
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--num-mask-tokens", default="auto", type=int_or_auto,
                        help='"auto" (choose for this machine) or an int.')
    add_dtype_argument(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    import torch

    from .decoding.autotune import auto_plan
    from .decoding.planning import SpaceLayoutPlan
    from .hub import shipped_adapter_dir
    from .loading import load_model
    from .prompts import encode_prompts

    torch.set_num_threads(args.threads)
    folder = args.adapter or str(shipped_adapter_dir())
    print(f"Loading the SPACE adapter from {folder} onto its base model ...")
    model, tokenizer = load_model(folder, dtype=getattr(torch, args.dtype))
    print(f"Base model: {model.config._name_or_path} ({model.config.model_type}, {model.dtype})")

    # choose the layout (this measures the machine) before any timing
    plan = auto_plan(model) if args.num_mask_tokens == "auto" else SpaceLayoutPlan.full(int(args.num_mask_tokens))
    print(f"Layout for this machine: {plan.to_dict()}")
    totals = {"plain": 0.0, "space": 0.0, "tokens": 0}
    for prompt in args.prompt or DEMO_PROMPTS:
        inputs = encode_prompts(tokenizer, [prompt])
        common = dict(max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        start = time.perf_counter()
        plain = model.generate(**inputs, use_space=False, **common)
        plain_seconds = time.perf_counter() - start
        start = time.perf_counter()
        space = model.generate(**inputs, use_space=True, space_layout=plan, return_dict_in_generate=True, **common)
        space_seconds = time.perf_counter() - start
        new = space.sequences[0, inputs["input_ids"].shape[1] :]
        counts = space.tokens_per_pass[0]
        totals["plain"] += plain_seconds
        totals["space"] += space_seconds
        totals["tokens"] += len(new)
        print(f"\n>>> {prompt}\n{tokenizer.decode(new, skip_special_tokens=True)}")
        print(f"    identical to plain decoding: {torch.equal(plain, space.sequences)} | layout {space.space_layout}")
        print(f"    tokens per pass: {''.join(str(c) for c in counts)} (mean {sum(counts) / len(counts):.2f})")
        print(f"    plain {len(new) / plain_seconds:.1f} tok/s, SPACE {len(new) / space_seconds:.1f} tok/s: "
              f"{plain_seconds / space_seconds:.2f}x")
    print(f"\nOverall: plain {totals['tokens'] / totals['plain']:.1f} tok/s, SPACE "
          f"{totals['tokens'] / totals['space']:.1f} tok/s, speedup {totals['plain'] / totals['space']:.2f}x")
    if plan.groups and plan.kernels != "linear":
        print(f"Part of that is the CPU kernel SPACE's passes run ({plan.kernels!r} products), not drafting: "
              "`transformers-space bench --methods plain plain_matched space` shows the two apart.")
    return 0

"""Adapters at the SAME fixed layouts on one suite: separates what better drafts give from what `auto`'s layout
choice gives.

`bench`'s `space` method runs the layout `auto` picks for each adapter, so two adapters with different calibrated
rates run different layouts and their speeds mix two effects. This runs each adapter at each given layout (plus
plain greedy decoding), in one process, on the first `--limit` prompts of a benchmark suite, or with `--heldout` on
held-out prompts of the same kind (`training.distill`'s held-out split, ordered by `--seed`), which is where layout
rules are chosen: the benchmark suites only report.

    python benchmarks/layout_compare.py --adapters hub_configs/qwen2.5-coder-0.5b-space-gated data/qwen/head-adapter2 \
        --dtype bfloat16 --suite chat --limit 6 --layouts "3:0,2" "4:0,1,3"
    python benchmarks/layout_compare.py --adapters data/qwen/head-adapter2 --dtype bfloat16 --heldout --suite chat \
        --layouts "3:0,2" "4:0,2" "4:0,1,3"

Run it alone on the machine: these are CPU timings.
"""

from __future__ import annotations

import argparse
import time

import torch

from transformers_space.bench.runner import machine_info
from transformers_space.decoding.planning import SpaceLayoutPlan
from transformers_space.hub import load_space_adapter
from transformers_space.prompts import encode_prompts, load_suites
from transformers_space.training.distill import select_prompts

DEFAULT_PACKAGES = ["transformers", "torch", "accelerate", "huggingface_hub", "tqdm", "peft", "safetensors",
                    "matplotlib", "numpy"]  # the recipes' code-prompt packages


def parse_layout(text: str, kernels: str) -> SpaceLayoutPlan:
    """'MASKS:G,G,...' -> the plan with that many masks per group and those groups."""
    masks, groups = text.split(":")
    return SpaceLayoutPlan(int(masks), tuple(int(group) for group in groups.split(",")), kernels=kernels)


def run(model, encoded: list[dict], max_new_tokens: int, layout: SpaceLayoutPlan | None) -> tuple[float, int, int]:
    """(seconds, new tokens, forward passes) over the prompts, greedy; `layout` None is plain decoding."""
    seconds = tokens = passes = 0
    for inputs in encoded:
        kwargs = {"max_new_tokens": max_new_tokens, "do_sample": False}
        if layout is not None:
            kwargs |= {"use_space": True, "space_layout": layout, "return_dict_in_generate": True}
        start = time.perf_counter()
        out = model.generate(**inputs, **kwargs)
        seconds += time.perf_counter() - start
        sequences = out.sequences if layout is not None else out
        new = sequences.shape[1] - inputs["input_ids"].shape[1]
        tokens += new
        passes += len(out.tokens_per_pass[0]) if layout is not None else new
    return seconds, tokens, passes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", nargs="+", required=True, help="SPACE adapter folders (`export --adapter-only`).")
    parser.add_argument("--layouts", nargs="+", required=True, help='Layouts as "MASKS:G,G,...", e.g. "3:0,2".')
    parser.add_argument("--kernels", default="weights_first", help="Pass kernels of every layout.")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--suite", choices=["code", "chat", "math"], default="chat")
    parser.add_argument("--heldout", action="store_true", help="Held-out prompts of --suite's kind (code or chat) "
                        "instead of the benchmark suite.")
    parser.add_argument("--seed", type=int, default=7, help="Order of the held-out prompts (--heldout).")
    parser.add_argument("--packages", nargs="*", default=DEFAULT_PACKAGES, help="Code prompts' packages (--heldout).")
    parser.add_argument("--limit", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    layouts = [parse_layout(text, args.kernels) for text in args.layouts]
    if args.heldout and args.suite == "math":
        parser.error("--heldout has code and chat prompts only")
    if args.heldout:
        packages = args.packages if args.suite == "code" else []
        texts = select_prompts(args.suite, args.limit, "heldout", args.seed, packages)
    else:
        texts = [prompt.text for prompt in load_suites([args.suite], limit=args.limit)[args.suite]]
    print(f"machine: {machine_info(args.threads)}")
    print("| adapter | layout | tokens/s | tokens/pass | speedup over plain |")
    print("|---|---|---:|---:|---:|")
    for folder in args.adapters:
        model, tokenizer = load_space_adapter(folder, dtype=getattr(torch, args.dtype))
        encoded = [encode_prompts(tokenizer, [text]) for text in texts]
        run(model, encoded[:1], 8, None)  # warm-up
        plain_seconds, plain_tokens, _ = run(model, encoded, args.max_new_tokens, None)
        plain_rate = plain_tokens / plain_seconds
        print(f"| {folder} | plain | {plain_rate:.2f} | 1.00 | 1.00x |", flush=True)
        for layout in layouts:
            run(model, encoded[:1], 8, layout)  # warm-up
            seconds, tokens, passes = run(model, encoded, args.max_new_tokens, layout)
            print(f"| {folder} | {layout.num_masks} masks, groups {list(layout.groups)} | {tokens / seconds:.2f} | "
                  f"{tokens / passes:.2f} | {tokens / seconds / plain_rate:.2f}x |", flush=True)
        del model


if __name__ == "__main__":
    main()

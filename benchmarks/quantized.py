"""What int8 (or int4) weights do to plain and SPACE decoding on the real model, in one process.

The offline SmolLM2-135M-Instruct with the shipped gated adapter, twice: fp32 weights, and the same weights
quantized with optimum-quanto (`quantize` + `freeze` on the base, the adapter loaded on top, so the adapter
itself stays fp32). Per prompt, the four runs alternate (plain fp32, SPACE fp32, plain quantized, SPACE
quantized, the order rotating). SPACE uses `num_mask_tokens="auto"` on each model (its pass costs are measured
on that model). Every SPACE output is checked against plain greedy decoding of the SAME weights.

    python benchmarks/quantized.py --prompts 4 --max-new-tokens 96 --weights int8
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from optimum import quanto

from transformers_space.assets import load_default_model
from transformers_space.hub import load_space_adapter, shipped_adapter_dir
from transformers_space.prompts import encode_prompts, load_suites


def build(weights: str | None):
    base, tokenizer = load_default_model()
    if weights:
        quanto.quantize(base, weights={"int8": quanto.qint8, "int4": quanto.qint4}[weights])
        quanto.freeze(base)
    model, tokenizer = load_space_adapter(shipped_adapter_dir(), model=base, tokenizer=tokenizer)
    return model.eval(), tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4, help="Prompts per suite (code, chat).")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--weights", choices=["int8", "int4"], default="int8")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = {"fp32": build(None), args.weights: build(args.weights)}
    tokenizer = models["fp32"][1]
    suites = load_suites(["code", "chat"], limit=args.prompts)
    prompts = [p.text for ps in suites.values() for p in ps]
    common = dict(max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    runs = [(name, space) for name in models for space in (False, True)]
    totals = {run: {"seconds": 0.0, "tokens": 0, "passes": 0} for run in runs}
    identical = {name: True for name in models}
    for model, _ in models.values():  # warm up, and let "auto" measure this model once
        model.generate(**encode_prompts(tokenizer, [prompts[0]]), **{**common, "max_new_tokens": 8}, use_space=True,
                       num_mask_tokens="auto")
        model.generate(**encode_prompts(tokenizer, [prompts[0]]), **{**common, "max_new_tokens": 8})
    for index, prompt in enumerate(prompts):
        inputs = encode_prompts(tokenizer, [prompt])
        outputs = {}
        for name, space in runs[index % len(runs):] + runs[: index % len(runs)]:
            model = models[name][0]
            kwargs = dict(use_space=True, num_mask_tokens="auto", return_dict_in_generate=True) if space else {}
            start = time.perf_counter()
            out = model.generate(**inputs, **common, **kwargs)
            seconds = time.perf_counter() - start
            sequences = out.sequences if space else out
            new = sequences.shape[1] - inputs["input_ids"].shape[1]
            totals[(name, space)]["seconds"] += seconds
            totals[(name, space)]["tokens"] += new
            totals[(name, space)]["passes"] += len(out.tokens_per_pass[0]) if space else new
            outputs[(name, space)] = sequences
        for name in models:
            identical[name] &= torch.equal(outputs[(name, False)], outputs[(name, True)])
    rate = {run: t["tokens"] / t["seconds"] for run, t in totals.items()}
    print(f"machine: {platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}")
    print("| weights | plain tok/s | SPACE tok/s | SPACE / plain | SPACE tokens/pass | SPACE = plain |")
    print("|---|---:|---:|---:|---:|---|")
    for name in models:
        plain, space = rate[(name, False)], rate[(name, True)]
        per_pass = totals[(name, True)]["tokens"] / totals[(name, True)]["passes"]
        print(f"| {name} | {plain:.2f} | {space:.2f} | {space / plain:.2f}x | {per_pass:.2f} | {identical[name]} |")
    quantized = args.weights
    print(f"{quantized} plain / fp32 plain: {rate[(quantized, False)] / rate[('fp32', False)]:.2f}x; "
          f"{quantized} SPACE / fp32 plain: {rate[(quantized, True)] / rate[('fp32', False)]:.2f}x")
    print(json.dumps({f"{name}-{'space' if space else 'plain'}": t for (name, space), t in totals.items()}))


if __name__ == "__main__":
    main()

"""SPACE under sampling, and SPACE as an assistant, on a real model, in one process.

1. Tokens per pass and tokens/s of SPACE sampling (T = 0.7 and 1.0) against greedy SPACE, each beside plain
   decoding of the same kind (same prompts, methods alternated per prompt).
2. `target.generate(assistant_model=...)` with the assistant drafting through SPACE against the same
   assistant without SPACE (plain one-token-per-pass drafting); greedy, outputs checked against plain greedy.

    python benchmarks/sampling_and_assistant.py --prompts 3 --max-new-tokens 48 --num-mask-tokens auto

`--model` takes what `transformers-space bench` takes (default: the shipped gated adapter on its base).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import AutoModelForCausalLM

from transformers_space import SpaceConfig
from transformers_space.arguments import int_or_auto
from transformers_space.loading import load_model
from transformers_space.prompts import encode_prompts, load_suites


def timed(fn, **kwargs):
    start = time.perf_counter()
    out = fn(**kwargs)
    return out, time.perf_counter() - start


def sampling_rows(model, tokenizer, prompts, max_new_tokens: int) -> list[dict]:
    rows = []
    for label, kwargs in (("greedy", dict(do_sample=False)), ("T=0.7", dict(do_sample=True, temperature=0.7)),
                          ("T=1.0", dict(do_sample=True, temperature=1.0))):
        plain_time = space_time = tokens = passes = 0
        ratios = []
        for index, prompt in enumerate(prompts):
            inputs = encode_prompts(tokenizer, [prompt])
            common = dict(max_new_tokens=max_new_tokens, top_k=0 if kwargs["do_sample"] else None, **kwargs)
            torch.manual_seed(index)
            plain, plain_seconds = timed(model.generate, **inputs, use_space=False, **common)
            torch.manual_seed(index)
            space, space_seconds = timed(model.generate, **inputs, use_space=True, return_dict_in_generate=True,
                                         **common)
            new_plain = plain.shape[1] - inputs["input_ids"].shape[1]
            new_space = space.sequences.shape[1] - inputs["input_ids"].shape[1]
            plain_time += plain_seconds
            space_time += space_seconds
            tokens += new_space
            passes += len(space.tokens_per_pass[0])
            ratios.append((new_space / space_seconds) / (new_plain / plain_seconds))
        rows.append({"decoding": label, "space_tokens_per_pass": tokens / passes,
                     "space_tok_s": tokens / space_time, "median_speedup_vs_plain": statistics.median(ratios)})
    return rows


def assistant_rows(space_model, tokenizer, prompts, max_new_tokens: int) -> list[dict]:
    target = AutoModelForCausalLM.from_config(space_model.config)
    target.load_state_dict(space_model.state_dict(), strict=False)  # base weights; adapters are not in the class
    target.eval()
    plain_assistant = AutoModelForCausalLM.from_config(space_model.config)
    plain_assistant.load_state_dict(space_model.state_dict(), strict=False)
    plain_assistant.eval()
    space_model.generation_config.use_space = True
    mask_id = SpaceConfig.of(space_model).mask_token_id
    results = {"target alone": [0.0, 0], "assistant without SPACE": [0.0, 0], "assistant with SPACE": [0.0, 0]}
    identical = True
    for prompt in prompts:
        inputs = encode_prompts(tokenizer, [prompt])
        common = dict(max_new_tokens=max_new_tokens, do_sample=False, suppress_tokens=[mask_id], use_cache=True)
        reference, seconds = timed(target.generate, **inputs, **common)
        results["target alone"][0] += seconds
        results["target alone"][1] += reference.shape[1] - inputs["input_ids"].shape[1]
        for name, assistant in (("assistant without SPACE", plain_assistant), ("assistant with SPACE", space_model)):
            out, seconds = timed(target.generate, **inputs, assistant_model=assistant, **common)
            identical &= torch.equal(out, reference)
            results[name][0] += seconds
            results[name][1] += out.shape[1] - inputs["input_ids"].shape[1]
    base = results["target alone"][1] / results["target alone"][0]
    return [{"method": name, "tok_s": tokens / seconds, "speedup_vs_target_alone": tokens / seconds / base,
             "identical_to_greedy": identical} for name, (seconds, tokens) in results.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="Adapter or SPACE model folder (default: shipped adapter).")
    parser.add_argument("--num-mask-tokens", type=int_or_auto, default=None,
                        help='SPACE layout of every SPACE call, the assistant too: an int or "auto" (default: as '
                             'trained).')
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model)
    if args.num_mask_tokens is not None:
        model.generation_config.num_mask_tokens = args.num_mask_tokens
    suites = load_suites(("chat", "code"), limit=args.prompts)
    prompts = [p.text for suite in suites.values() for p in suite]
    model.generate(**encode_prompts(tokenizer, [prompts[0]]), max_new_tokens=4, use_space=True)  # warm-up
    sampling = sampling_rows(model, tokenizer, prompts, args.max_new_tokens)
    assisted = assistant_rows(model, tokenizer, prompts, args.max_new_tokens)
    print("| decoding | SPACE tokens/pass | SPACE tok/s | median speedup vs plain (same decoding) |")
    print("|---|---:|---:|---:|")
    for row in sampling:
        print(f"| {row['decoding']} | {row['space_tokens_per_pass']:.2f} | {row['space_tok_s']:.1f} | "
              f"{row['median_speedup_vs_plain']:.2f}x |")
    print("\n| assisted generation (greedy) | tok/s | speedup vs target alone | identical to greedy |")
    print("|---|---:|---:|---|")
    for row in assisted:
        print(f"| {row['method']} | {row['tok_s']:.1f} | {row['speedup_vs_target_alone']:.2f}x | "
              f"{row['identical_to_greedy']} |")
    if args.out_json:
        with open(args.out_json, "w") as out:
            json.dump({"sampling": sampling, "assisted": assisted, "prompts": len(prompts)}, out, indent=2)


if __name__ == "__main__":
    main()

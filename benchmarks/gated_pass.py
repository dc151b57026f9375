"""What one SPACE pass of the shipped gated adapter costs, and how much of it is the adapters.

One pass of the layout `auto` picks for the shipped adapter (fresh token, one candidate, a mask group after
0 and after 1 candidates: 4 tokens), after a chat prompt; decoder body plus LM head, as `space_decoding`
runs them (weights-first products, grouped-query attention, prepared adapter weights). Variants, timed
interleaved in one process, the cache cut back after every pass:

- `adapters`: the gated deltas as decoding runs them;
- `hooks idle`: the same hooks returning at once (the cost of hook dispatch alone);
- `no hooks`: the base model with the same layout (what the adapters cost in all);

each under `torch.no_grad()` (what `generate` uses) and `torch.inference_mode()` (what the SPACE loop uses).

    python benchmarks/gated_pass.py --repeats 40
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from transformers_space import SpaceConfig
from transformers_space.decoding import gated
from transformers_space.decoding.compat import cache_argument_name, crop_cache, new_cache
from transformers_space.decoding.forward import PassLogits, forward_block, lm_head_of
from transformers_space.decoding.kernels import WeightsFirstKernels
from transformers_space.decoding.layout import build_pass_layout
from transformers_space.hub import load_space_adapter, shipped_adapter_dir
from transformers_space.prompts import encode_prompts

PROMPT = "Write a Python function that checks whether a string is a palindrome."


def idle_hook(module, args, output):
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_space_adapter(shipped_adapter_dir(), dtype=torch.float32)
    model.eval()
    mask_token_id = SpaceConfig.of(model).mask_token_id
    ids = encode_prompts(tokenizer, [PROMPT])["input_ids"]
    cache = new_cache()
    with torch.no_grad():
        body = model.base_model
        body(input_ids=ids[:, :-1], use_cache=True, **{cache_argument_name(type(body).forward): cache})
    cached = cache.get_seq_length()
    cache_positions = torch.arange(cached)[None]
    candidate = torch.tensor([[tokenizer.encode(" def")[0]]])
    layout = build_pass_layout(ids[:, -1:], torch.tensor([[cached]]), candidate, cache_positions, mask_token_id,
                               1, [0, 1])
    layers = model.get_input_embeddings().space_mask.positions.layers

    def use_hook(hook) -> None:
        for layer in layers:
            layer._forward_hooks.clear()
            if hook is not None:
                layer.register_forward_hook(hook)

    def run_pass(context) -> float:
        start = time.perf_counter()
        with context(), WeightsFirstKernels().around_pass(model):
            hidden = forward_block(model, layout, cache, cache_positions)
            PassLogits(lm_head_of(model), hidden, layout)
        seconds = time.perf_counter() - start
        crop_cache(cache, cached)
        return seconds

    variants = {"adapters": gated._add_gated_delta, "hooks idle": idle_hook, "no hooks": None}
    modes = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}
    timings: dict[str, list[float]] = {}
    with gated.decoding_products(model):
        run_pass(torch.no_grad)  # warm-up; the embedding's hook attaches the adapter hooks, which we then swap
        for _ in range(args.repeats):
            for variant, hook in variants.items():
                use_hook(hook)
                for mode, context in modes.items():
                    timings.setdefault(f"{variant}, {mode}", []).append(run_pass(context))
    result = {}
    for name, values in timings.items():
        values = sorted(values)
        result[name] = {"min_ms": round(1000 * values[0], 1), "p25_ms": round(1000 * values[len(values) // 4], 1),
                        "median_ms": round(1000 * statistics.median(values), 1)}
    print(json.dumps({"threads": args.threads, "torch": torch.__version__, "prompt_tokens": ids.shape[1],
                      "repeats": args.repeats, "pass_ms": result}, indent=2))


if __name__ == "__main__":
    main()

"""One row against two: what a weights-first product of each of a model's linear weights costs on this machine.

Plain decoding multiplies one row per layer per token; a SPACE pass never does (its LM head reads the verify rows
and the mask rows at once). On some CPUs MKL's matrix-vector path streams a large matrix much slower than its
two-column matrix-matrix path, so the kernel-matched baseline (`plain_matched`, `generate(weights_first=True)`)
runs a one-row product as two rows where `kernels.two_rows_faster` measures that faster. This prints, for each
distinct weight shape of the model, the fastest of `--repeats` timings of: `F.linear` on one row, the weights-first
product on one row and on two rows, and what `two_rows_faster` decides (three independent decisions, to show
whether it is stable).

    python benchmarks/single_row_products.py --repeats 30
    python benchmarks/single_row_products.py --model hub_configs/qwen2.5-coder-0.5b-space-gated --repeats 10

Run it alone on the machine: the figures are CPU timings.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from transformers_space.bench.runner import machine_info
from transformers_space.decoding.kernels import two_rows_faster
from transformers_space.loading import load_model


def fastest_ms(function, repeats: int) -> float:
    function()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return 1000 * best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="A SPACE adapter or model folder (default: the shipped SmolLM2 adapter).")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, _ = load_model(args.model, dtype=getattr(torch, args.dtype))
    weights = {}
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and min(module.weight.shape) >= 64:
            weights.setdefault((tuple(module.weight.shape), module.weight.dtype), module.weight.detach())
    with torch.inference_mode():
        rows = [timings(weight, args.repeats) for weight in weights.values()]
    print(json.dumps({"machine": machine_info(args.threads), "model": args.model or "shipped SmolLM2 adapter",
                      "dtype": args.dtype, "threads": args.threads, "weights": rows}, indent=2))


def timings(weight: torch.Tensor, repeats: int) -> dict:
    one = torch.randn(1, weight.shape[1]).to(weight.dtype)
    two = torch.cat([one, one])
    return {
        "shape": list(weight.shape),
        "f_linear_1_row_ms": round(fastest_ms(lambda: F.linear(one, weight), repeats), 4),
        "weights_first_1_row_ms": round(fastest_ms(lambda: torch.mm(weight, one.t()), repeats), 4),
        "weights_first_2_rows_ms": round(fastest_ms(lambda: torch.mm(weight, two.t()), repeats), 4),
        "two_rows_faster": [two_rows_faster(weight) for _ in range(3)],
    }


if __name__ == "__main__":
    main()

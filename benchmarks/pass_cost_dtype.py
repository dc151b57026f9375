"""What a SPACE pass costs against its number of tokens, per model and weight dtype, as `auto` measures it.

On CPUs with AMX (Intel Sapphire Rapids and later) bf16 products of a few rows run on the tile units, so a pass
of 2-16 tokens can cost about what a 1-token pass costs: the regime a GPU is in, where drafts pay. This prints,
for each model and dtype, the 1-token pass time and every other pass relative to it, under each set of pass
kernels (`transformers_space.decoding.kernels.PASS_KERNELS`), measured with `measure_pass_costs`, the function
`num_mask_tokens="auto"` plans with. Run it alone on the machine.

    python benchmarks/pass_cost_dtype.py --models smollm2 coder --dtypes float32 bfloat16
"""

from __future__ import annotations

import argparse
import platform

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from transformers_space import add_space_support
from transformers_space.assets import coder_model_dir, default_model_dir
from transformers_space.decoding.autotune import measure_pass_costs
from transformers_space.decoding.kernels import PASS_KERNELS

MODELS = {"smollm2": default_model_dir, "coder": coder_model_dir}
TOKEN_COUNTS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            lines = info.read().splitlines()
    except OSError:
        return platform.processor()
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    return f"{name} ({', '.join(f for f in ('avx512f', 'avx512_bf16', 'amx_bf16') if f in flags) or 'no AVX-512'})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=["smollm2"])
    parser.add_argument("--dtypes", nargs="+", choices=["float32", "bfloat16"], default=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="rounds per token count; each keeps its fastest")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {cpu_name()}, {args.threads} threads; torch {torch.__version__}")
    print(f"| model | dtype | kernels | 1-token pass (ms) | {' | '.join(f'{n} tok' for n in TOKEN_COUNTS[1:])} |")
    print(f"|---|---|---|---:|{'---:|' * (len(TOKEN_COUNTS) - 1)}")
    for name in args.models:
        folder = MODELS[name]()
        for dtype in args.dtypes:
            tokenizer = AutoTokenizer.from_pretrained(folder)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype)).eval()
            add_space_support(model, tokenizer, num_mask_tokens=4, mode="gated")
            for kernels_name, kernels in PASS_KERNELS.items():
                costs = measure_pass_costs(model, TOKEN_COUNTS, repeats=args.repeats, kernels=kernels)
                one = costs[1]
                relative = " | ".join(f"{costs[n] / one:.2f}" for n in TOKEN_COUNTS[1:])
                print(f"| {folder.name} | {dtype} | {kernels_name} | {one * 1000:.1f} | {relative} |", flush=True)
            del model


if __name__ == "__main__":
    main()

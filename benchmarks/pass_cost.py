"""What one forward pass costs against the number of tokens in it, and what SPACE costs when nothing is accepted.

Two measurements, both in ONE process with a fixed number of threads, so that only ratios matter:

a. Pass cost: the time of one decoder pass of n tokens (n = 1, 2, 4, 8, 16, 25, 36) on top of a 200-token
   DynamicCache, relative to the 1-token pass plain decoding runs (causal mask, F.linear). The cache is
   prefilled once and cut back after every timed pass. Each pass runs the decoder body and the LM head on its
   last row only (as plain greedy does; SPACE runs the head on the few rows it reads). Three variants: the
   model's own causal mask; an explicit 4D float mask (what SPACE feeds); and the float mask with the linear
   layers multiplying weights-first (`transformers_space.decoding.kernels`, which `num_mask_tokens="auto"` may
   choose). A SPACE pass with k mask tokens feeds 1 + k + k(k+1) tokens: 25 for k=4, 36 for k=5.
b. SPACE with no accepted drafts: SmolLM2-135M-Instruct with `add_space_support` but no SAR training, so its
   mask tokens draft (almost) nothing useful. Greedy `use_space=True` against plain greedy on the same chat
   prompts, alternating the two per prompt after a warm-up. The output must still be identical.

Speed is measured here and never asserted in tests. The SmolLM2 weights are the Q4_1-dequantised GGUF (fp32),
see `transformers_space.assets`.

    python benchmarks/pass_cost.py --threads 2 --model both --repeats 20 --prompts 4 --max-new-tokens 48 \
        --gen-repeats 2 --wait-idle 300 --retries 2 --out-json bench_out/pass_cost.json

Other processes on the machine spoil CPU timings badly (two 2-thread jobs on 2 cores run each ~10x slower),
so every measurement records the cores other processes (and hypervisor steal) used meanwhile; `--wait-idle`
and `--retries` wait for, and repeat on, a busy CPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers
from tqdm.auto import tqdm
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from transformers_space import add_space_support
from transformers_space.decoding.compat import cache_argument_name, crop_cache
from transformers_space.decoding.kernels import enable_weights_first, weights_first_products

logger = logging.getLogger("pass_cost")

PASS_SIZES = (1, 2, 4, 8, 16, 25, 36)
CACHE_LENGTH = 200
WEIGHTS_FIRST = "float4d, weights-first"
PROMPTS = (
    "What is the capital of France, and what is it famous for?",
    "Write a short poem about the sea.",
    "Explain in simple words how a rainbow forms.",
    "Give me three tips for staying focused while studying.",
    "Write a Python function that returns the factorial of a number.",
    "What are the main differences between a cat and a dog as pets?",
    "Summarise the plot of Romeo and Juliet in a few sentences.",
    "How do I make a cup of green tea?",
)


def machine_info() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def _system_cpu_seconds() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine so far, from /proc/stat ((0, 0) where unavailable)."""
    try:
        with open("/proc/stat") as handle:
            values = [int(v) for v in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    return (user + nice + system + irq + softirq) / ticks, steal / ticks


class OtherLoad:
    """Mean number of cores that OTHER processes (and the hypervisor, as steal) used during a block.

    Machine-wide busy time from /proc/stat minus this process's own CPU time, so short-lived processes count
    too. Timings are only valid when it is ~0.
    """

    def __init__(self, warn: bool = True):
        self.warn = warn
        self.cores = 0.0
        self.steal_cores = 0.0

    def __enter__(self) -> OtherLoad:
        self._start, self._own, self._t0 = _system_cpu_seconds(), time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        (busy, steal), own = _system_cpu_seconds(), time.process_time()
        wall = time.perf_counter() - self._t0
        if wall <= 0:
            return
        others = (busy - self._start[0]) - (own - self._own)
        self.cores = max(0.0, others) / wall
        self.steal_cores = max(0.0, steal - self._start[1]) / wall
        if self.warn and self.cores + self.steal_cores > 0.1:
            logger.warning(
                "Other processes used %.2f cores (steal %.2f) during this measurement: timings are unreliable",
                self.cores,
                self.steal_cores,
            )


def wait_for_idle(max_wait_s: float, threshold: float = 0.1) -> float:
    """Wait (up to max_wait_s) until other processes use less than `threshold` cores; returns their last load."""
    deadline = time.perf_counter() + max_wait_s
    while True:
        with OtherLoad(warn=False) as load:
            time.sleep(2.0)
        if load.cores + load.steal_cores < threshold or time.perf_counter() >= deadline:
            return load.cores
        logger.info("Other processes use %.2f cores; waiting for an idle CPU", load.cores)
        time.sleep(5.0)


def tiny_llama() -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=1000,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def causal_float_mask(past: int, n: int, dtype: torch.dtype) -> torch.Tensor:
    """[1, 1, n, past + n] additive mask: every new token sees the cache and the new tokens up to itself."""
    visible = torch.ones(n, past + n, dtype=torch.bool)
    visible[:, past:] = torch.tril(torch.ones(n, n, dtype=torch.bool))
    mask = torch.zeros(n, past + n, dtype=dtype)
    mask.masked_fill_(~visible, torch.finfo(dtype).min)
    return mask[None, None]


@torch.inference_mode()
def measure_pass_cost(model, name: str, repeats: int, warmup: int, sizes=PASS_SIZES) -> dict:
    """Median seconds of one pass of n tokens on a CACHE_LENGTH-token cache, for both mask variants."""
    body = model.base_model
    enable_weights_first(model)
    head = model.get_output_embeddings()
    cache_kw = cache_argument_name(type(body).forward)
    dtype = head.weight.dtype
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    cache = DynamicCache()
    prefix = torch.randint(3, vocab, (1, CACHE_LENGTH), generator=generator)
    body(input_ids=prefix, use_cache=True, **{cache_kw: cache})
    if cache.get_seq_length() != CACHE_LENGTH:
        raise RuntimeError(f"prefill left {cache.get_seq_length()} cache entries, expected {CACHE_LENGTH}")
    inputs = {n: torch.randint(3, vocab, (1, n), generator=generator) for n in sizes}
    positions = {n: torch.arange(CACHE_LENGTH, CACHE_LENGTH + n)[None] for n in sizes}
    float_masks = {n: causal_float_mask(CACHE_LENGTH, n, dtype) for n in sizes}
    masks = {"causal": dict.fromkeys(sizes), "float4d": float_masks, WEIGHTS_FIRST: float_masks}

    def one_pass(n: int, variant: str) -> float:
        start = time.perf_counter()
        with weights_first_products(variant == WEIGHTS_FIRST):
            hidden = body(
                input_ids=inputs[n],
                position_ids=positions[n],
                attention_mask=masks[variant][n],
                use_cache=True,
                **{cache_kw: cache},
            ).last_hidden_state
            head(hidden[:, -1:]).argmax(-1)
        elapsed = time.perf_counter() - start
        crop_cache(cache, CACHE_LENGTH)
        return elapsed

    variants = tuple(masks)
    for _ in range(warmup):
        for variant in variants:
            for n in sizes:
                one_pass(n, variant)
    times: dict[str, dict[int, list[float]]] = {v: {n: [] for n in sizes} for v in variants}
    # Round-robin over sizes and variants so that slow drift (frequency, other load) hits all of them alike.
    for _ in tqdm(range(repeats), desc=f"pass cost {name}", leave=False):
        for variant in variants:
            for n in sizes:
                times[variant][n].append(one_pass(n, variant))
    result = {"model": name, "cache_length": CACHE_LENGTH, "repeats": repeats, "variants": {}}
    plain_pass = statistics.median(times["causal"][1])  # what plain decoding runs for every token
    for variant in variants:
        medians = {n: statistics.median(times[variant][n]) for n in sizes}
        result["variants"][variant] = {
            "median_ms": {n: 1000 * t for n, t in medians.items()},
            "relative": {n: t / plain_pass for n, t in medians.items()},
        }
    return result


def chat_inputs(tokenizer, prompt: str) -> dict:
    messages = [{"role": "user", "content": prompt}]
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


@torch.inference_mode()
def run_generation(model, inputs: dict, use_space: bool, max_new_tokens: int):
    start = time.perf_counter()
    output = model.generate(
        **inputs, max_new_tokens=max_new_tokens, do_sample=False, use_space=use_space, return_dict_in_generate=True
    )
    elapsed = time.perf_counter() - start
    new_tokens = output.sequences[0, inputs["input_ids"].shape[1] :]
    per_pass = output.tokens_per_pass[0] if use_space else None
    return new_tokens, elapsed, per_pass


def measure_space_untrained(
    num_masks: int, prompts: list[str], max_new_tokens: int, repeats: int, cache_dir: str | None
) -> dict:
    """Plain greedy vs SPACE greedy with an untrained mask token, alternating per prompt."""
    from transformers_space.assets import load_default_model

    model, tokenizer = load_default_model(cache_dir)
    model = add_space_support(model, tokenizer, num_mask_tokens=num_masks)
    encoded = [chat_inputs(tokenizer, prompt) for prompt in prompts]
    # Warm-up: both paths once, short.
    run_generation(model, encoded[0], False, 8)
    run_generation(model, encoded[0], True, 8)

    totals = {"greedy": [0.0, 0], "space": [0.0, 0]}  # seconds, tokens
    passes = 0
    identical = True
    details = []
    order_flip = False
    steps = [(i, r) for r in range(repeats) for i in range(len(prompts))]
    for index, repeat in tqdm(steps, desc=f"SPACE k={num_masks}", leave=False):
        results = {}
        order = (True, False) if order_flip else (False, True)
        order_flip = not order_flip
        for use_space in order:
            results[use_space] = run_generation(model, encoded[index], use_space, max_new_tokens)
        (greedy_tokens, greedy_s, _), (space_tokens, space_s, per_pass) = results[False], results[True]
        same = torch.equal(greedy_tokens, space_tokens)
        identical &= same
        totals["greedy"][0] += greedy_s
        totals["greedy"][1] += len(greedy_tokens)
        totals["space"][0] += space_s
        totals["space"][1] += len(space_tokens)
        passes += len(per_pass)
        if not same:
            logger.warning(
                "k=%d prompt %d: SPACE output differs from greedy\n greedy: %r\n space:  %r",
                num_masks,
                index,
                tokenizer.decode(greedy_tokens),
                tokenizer.decode(space_tokens),
            )
        details.append(
            {
                "prompt": prompts[index],
                "repeat": repeat,
                "greedy_s": greedy_s,
                "space_s": space_s,
                "new_tokens": len(greedy_tokens),
                "space_new_tokens": len(space_tokens),
                "tokens_per_pass": per_pass,
                "identical": same,
                "text": tokenizer.decode(greedy_tokens, skip_special_tokens=True),
            }
        )
    greedy_tps = totals["greedy"][1] / totals["greedy"][0]
    space_tps = totals["space"][1] / totals["space"][0]
    return {
        "num_mask_tokens": num_masks,
        "tokens_per_space_pass": 1 + num_masks + num_masks * (num_masks + 1),
        "greedy_tokens_per_s": greedy_tps,
        "space_tokens_per_s": space_tps,
        "speed_ratio": space_tps / greedy_tps,
        "mean_tokens_per_pass": totals["space"][1] / passes,
        "all_identical": identical,
        "generated_tokens": totals["greedy"][1],
        "details": details,
    }


def fmt(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}"


def markdown(machine: dict, pass_costs: list[dict], space_runs: list[dict], args) -> str:
    lines = [
        f"Machine: {machine['cpu']}, {machine['usable_cores']} usable cores, torch.set_num_threads({args.threads}); "
        f"Python {machine['python']}, torch {machine['torch']}, transformers {machine['transformers']}.",
        "",
    ]
    if pass_costs:
        lines += [
            f"Pass cost relative to plain decoding's 1-token pass (causal mask, F.linear; {CACHE_LENGTH} cached "
            f"tokens, median of {args.repeats}):",
            "",
            "| model | mask | 1-token pass (ms) | "
            + " | ".join(f"{n} tok" for n in PASS_SIZES)
            + " | other load (cores) |",
            "|---|---|---:|" + "---:|" * (len(PASS_SIZES) + 1),
        ]
        for result in pass_costs:
            for variant, values in result["variants"].items():
                rel = values["relative"]
                lines.append(
                    f"| {result['model']} | {variant} | {fmt(values['median_ms'][1], 1)} | "
                    + " | ".join(fmt(rel[n]) for n in PASS_SIZES)
                    + f" | {fmt(other_load(result))} |"
                )
        lines.append("")
    smollm2_cost = next((r["variants"]["float4d"]["relative"] for r in pass_costs if r["model"] == "SmolLM2-135M"), {})
    if space_runs:
        lines += [
            f"SPACE (untrained mask token) vs plain greedy, SmolLM2-135M-Instruct fp32 (Q4_1-dequantised), "
            f"{args.prompts} chat prompts x {args.max_new_tokens} new tokens x {args.gen_repeats} repeat(s):",
            "",
            "| k | tokens per SPACE pass | greedy tok/s | SPACE tok/s | SPACE / greedy | slowdown | "
            "predicted slowdown | mean tokens per pass | identical to greedy | other load (cores) |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
        ]
        for run in space_runs:
            predicted = predicted_slowdown(run, smollm2_cost)
            lines.append(
                f"| {run['num_mask_tokens']} | {run['tokens_per_space_pass']} | {fmt(run['greedy_tokens_per_s'])} | "
                f"{fmt(run['space_tokens_per_s'])} | {fmt(run['speed_ratio'])} | {fmt(1 / run['speed_ratio'])}x | "
                f"{fmt(predicted) + 'x' if predicted else '-'} | {fmt(run['mean_tokens_per_pass'], 3)} | "
                f"{'yes' if run['all_identical'] else 'NO'} | {fmt(other_load(run))} |"
            )
        lines += [
            "",
            "predicted slowdown = relative cost of a pass of that many tokens (float4d, SmolLM2 above) / mean tokens "
            "per pass: what the pass cost alone explains; the rest is SPACE's per-pass overhead (layout, masks, "
            "LM head on 2k+1 rows, verification).",
            "",
        ]
    return "\n".join(lines)


def other_load(result: dict) -> float:
    """Cores used by other processes plus hypervisor steal during a measurement (should be ~0)."""
    return result["other_processes_cores"] + result.get("steal_cores", 0.0)


def predicted_slowdown(run: dict, relative_cost: dict) -> float | None:
    cost = relative_cost.get(run["tokens_per_space_pass"])
    return cost / run["mean_tokens_per_pass"] if cost else None


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--repeats", type=int, default=20, help="timed repeats per pass size (median is reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed passes per size before timing")
    parser.add_argument("--model", choices=("tiny", "smollm2", "both"), default="both")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--prompts", type=int, default=4, help=f"number of chat prompts (at most {len(PROMPTS)})")
    parser.add_argument("--gen-repeats", type=int, default=1, help="times each prompt is generated per method")
    parser.add_argument(
        "--num-mask-tokens", type=int, nargs="+", default=[4, 5], help="k values for the SPACE run (default 4 5)"
    )
    parser.add_argument("--skip-space", action="store_true", help="only measure the pass cost")
    parser.add_argument("--cache-dir", default=None, help="cache folder of the default model (see assets.py)")
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        help="before each measurement, wait up to this many seconds for other processes to leave the CPU idle",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=0,
        help="repeat a measurement up to this many times when other processes used the CPU during it",
    )
    parser.add_argument("--out-json", type=Path, default=None)
    args = parser.parse_args(argv)
    if not 1 <= args.prompts <= len(PROMPTS):
        parser.error(f"--prompts must be between 1 and {len(PROMPTS)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    machine = machine_info()
    logger.info("Machine: %s", machine)
    started = time.perf_counter()

    def measured(function, *arguments) -> dict:
        """Run one measurement; run it again (up to --retries times) if other processes used the CPU meanwhile."""
        for attempt in range(args.retries + 1):
            wait_for_idle(args.wait_idle)
            with OtherLoad() as load:
                result = function(*arguments)
            result["other_processes_cores"] = load.cores
            result["steal_cores"] = load.steal_cores
            result["attempts"] = attempt + 1
            if load.cores + load.steal_cores <= 0.1:
                break
            if attempt < args.retries:
                logger.info("Repeating the measurement (attempt %d of %d)", attempt + 2, args.retries + 1)
        return result

    pass_costs = []
    if args.model in ("tiny", "both"):
        pass_costs.append(measured(measure_pass_cost, tiny_llama(), "tiny-llama", args.repeats, args.warmup))
    if args.model in ("smollm2", "both"):
        from transformers_space.assets import load_default_model

        model, _ = load_default_model(args.cache_dir)
        pass_costs.append(measured(measure_pass_cost, model, "SmolLM2-135M", args.repeats, args.warmup))
        del model

    space_runs = []
    if args.model in ("smollm2", "both") and not args.skip_space:
        prompts = list(PROMPTS[: args.prompts])
        for k in args.num_mask_tokens:
            run = measured(measure_space_untrained, k, prompts, args.max_new_tokens, args.gen_repeats, args.cache_dir)
            space_runs.append(run)
            logger.info(
                "k=%d: greedy %.2f tok/s, SPACE %.2f tok/s (x%.2f), %.3f tokens/pass, identical=%s",
                k,
                run["greedy_tokens_per_s"],
                run["space_tokens_per_s"],
                run["speed_ratio"],
                run["mean_tokens_per_pass"],
                run["all_identical"],
            )

    elapsed = time.perf_counter() - started
    report = markdown(machine, pass_costs, space_runs, args)
    print(report)
    print(f"Total time: {elapsed:.0f} s")
    if args.out_json is not None:
        args.out_json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "machine": machine,
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
            "pass_cost": pass_costs,
            "space_untrained": space_runs,
            "elapsed_s": elapsed,
        }
        args.out_json.write_text(json.dumps(payload, indent=2))
        logger.info("Wrote %s", args.out_json)
    if space_runs and not all(run["all_identical"] for run in space_runs):
        logger.error("SPACE output differed from plain greedy: see the warnings above")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

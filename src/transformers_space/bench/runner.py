"""Runs the benchmark: every prompt through every method, in one process, on one model and one machine.

Greedy, batch size 1, a warm-up call per method before timing, and the methods alternate per prompt (their
order rotates from one prompt to the next), so slow drifts of a shared machine hit all of them alike.

Per method and suite: tokens/s (generated tokens / wall time), mean tokens per forward pass of the TARGET
model, speedup over plain greedy (median of per-prompt tokens/s ratios, and the ratio of total tokens/s,
which is the total-time ratio whenever the outputs match), and whether every output matched plain greedy
token for token.

Forward passes are counted by a forward pre-hook on `model.base_model`, the decoder body: plain and
assisted `generate` reach it through `model.forward`, SPACE calls it directly. Early-exit drafts run the
same body with `config.num_hidden_layers` lowered for the draft, so a pass shallower than the model counts
as an assistant pass, not a target pass; a separate draft model has a body (and a counter) of its own.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import logging
import os
import platform
import statistics
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import torch
import transformers

from ..prompts import Prompt, encode_prompts
from .methods import MATCHED, METHODS, REFERENCE, BenchSettings, default_early_exit_layers, method_kwargs, prepare_draft

logger = logging.getLogger(__name__)


class PassCounter:
    """Counts forward passes of a model's decoder body (`model.base_model`) while entered.

    `full` counts passes through all layers; `shallow` counts passes with `config.num_hidden_layers`
    lowered, which is how transformers runs an early-exit draft on the same module.
    """

    def __init__(self, model):
        self.body = model.base_model
        self.depth = model.config.num_hidden_layers
        self.full = 0
        self.shallow = 0
        self._handle = None

    def _count(self, module, args):
        if getattr(module.config, "num_hidden_layers", self.depth) >= self.depth:
            self.full += 1
        else:
            self.shallow += 1

    def reset(self) -> None:
        self.full = self.shallow = 0

    def __enter__(self) -> PassCounter:
        self._handle = self.body.register_forward_pre_hook(self._count)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()
        self._handle = None


def run_once(model, inputs: dict, kwargs: dict, common: dict, counter: PassCounter, draft_counter) -> tuple:
    """One timed `generate` call; returns (numbers, new token ids)."""
    counter.reset()
    if draft_counter is not None:
        draft_counter.reset()
    start = time.perf_counter()
    output = model.generate(**inputs, **common, **kwargs)
    seconds = time.perf_counter() - start
    sequences = output if isinstance(output, torch.Tensor) else output.sequences
    new_ids = sequences[0, inputs["input_ids"].shape[1] :].tolist()
    record = {
        "new_tokens": len(new_ids),
        "seconds": seconds,
        "tokens_per_s": len(new_ids) / seconds,
        "target_passes": counter.full,
        "assistant_passes": counter.shallow + (draft_counter.full if draft_counter is not None else 0),
        "tokens_per_pass": len(new_ids) / max(counter.full, 1),
    }
    if getattr(output, "tokens_per_pass", None) is not None:
        record["space_tokens_per_pass"] = [int(n) for n in output.tokens_per_pass[0]]
    if getattr(output, "space_layout", None) is not None:
        record["space_layout"] = output.space_layout
    return record, new_ids


def _first_mismatch(ids: list[int], reference: list[int]) -> int | None:
    for index, (a, b) in enumerate(zip(ids, reference, strict=False)):
        if a != b:
            return index
    return None if len(ids) == len(reference) else min(len(ids), len(reference))


def _common_kwargs(model, tokenizer, max_new_tokens: int) -> dict:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else model.generation_config.pad_token_id
    return {"max_new_tokens": max_new_tokens, "do_sample": False, "num_beams": 1, "pad_token_id": pad}


def _warm_up(targets, tokenizer, inputs, settings, draft_model, draft_counter, status) -> None:
    """One untimed call per method; a method transformers refuses is marked unsupported with the exact error."""
    common = _common_kwargs(targets[REFERENCE][0], tokenizer, min(settings.warmup_tokens, settings.max_new_tokens))
    for method in [m for m in settings.methods if status[m]["supported"]]:
        model, counter = targets[method]
        try:
            run_once(model, inputs, method_kwargs(method, settings, model, draft_model), common, counter, draft_counter)
        except Exception as error:  # any refusal is a result to report, not a crash
            if method == REFERENCE:
                raise
            status[method] = {"supported": False, "error": f"{type(error).__name__}: {error}"}
            logger.warning("%s is unsupported here: %s", method, status[method]["error"])


def _time_prompts(targets, tokenizer, jobs, settings, draft_model, draft_counter, status) -> list[dict]:
    """Every prompt through every supported method, the method order rotating per prompt."""
    from tqdm.auto import tqdm

    common = _common_kwargs(targets[REFERENCE][0], tokenizer, settings.max_new_tokens)
    records = []
    for index, (prompt, inputs) in enumerate(tqdm(jobs, desc="bench", unit="prompt", disable=not settings.progress)):
        active = [m for m in settings.methods if status[m]["supported"]]
        shift = index % len(active)
        outputs = {}
        for method in active[shift:] + active[:shift]:
            if not status[method]["supported"]:  # failed earlier on this prompt
                continue
            base = {"suite": prompt.suite, "prompt_id": prompt.id, "method": method,
                    "prompt_tokens": int(inputs["input_ids"].shape[1])}
            model, counter = targets[method]
            try:
                record, outputs[method] = run_once(
                    model, inputs, method_kwargs(method, settings, model, draft_model), common, counter, draft_counter
                )
            except Exception as error:  # a failure is reported, the other methods go on
                if method == REFERENCE:
                    raise
                message = f"{type(error).__name__}: {error} (on {prompt.id})"
                status[method] = {"supported": False, "error": message}
                logger.warning("%s failed and is dropped from the run: %s", method, message)
                continue
            records.append({**base, **record})
        _compare_to_reference(records[-len(outputs) :], outputs)
    return records


def _compare_to_reference(records: list[dict], outputs: dict[str, list[int]]) -> None:
    reference = outputs[REFERENCE]
    plain = next(r for r in records if r["method"] == REFERENCE)
    for record in records:
        mismatch = _first_mismatch(outputs[record["method"]], reference)
        record["matches_plain"] = mismatch is None
        record["first_mismatch"] = mismatch
        record["speedup"] = record["tokens_per_s"] / plain["tokens_per_s"]


def run_benchmark(model, tokenizer, suites: dict[str, list[Prompt]], settings: BenchSettings | None = None,
                  draft_model=None, unsupported: dict[str, str] | None = None) -> dict:
    """Benchmark `settings.methods` on every prompt of `suites`; returns the results (see `save_results`).

    `model` must have SPACE support (`add_space_support`). `unsupported` pre-marks methods as unsupported
    with a reason (e.g. a draft model that failed to load). Prompts are encoded with `encode_prompt`.
    """
    settings = settings or BenchSettings()
    torch.set_num_threads(settings.threads)
    status = {m: {"supported": True, "error": None} for m in settings.methods}
    for method, reason in (unsupported or {}).items():
        if method in status:
            status[method] = {"supported": False, "error": reason}
    draft_model = _draft_for_run(model, draft_model, status)
    jobs = [(prompt, encode_prompts(tokenizer, [prompt.text])) for prompts in suites.values() for prompt in prompts]
    if not jobs:
        raise ValueError("No prompts to benchmark: every suite is empty or was skipped.")
    previous_use_space = getattr(model.generation_config, "use_space", None)
    # an early-exit assistant is the model itself; its inner `generate` must not switch to SPACE on its own
    model.generation_config.use_space = False
    models = _models_for_methods(model, settings.methods, status)
    counters = {id(target): PassCounter(target) for target in models.values()}
    targets = {method: (target, counters[id(target)]) for method, target in models.items()}
    draft_counter = PassCounter(draft_model) if draft_model is not None else None
    load_before = _load_average()
    if load_before and load_before[0] >= 1.0:
        logger.warning("The machine is busy (load average %.2f before the run): timings will be unreliable.",
                       load_before[0])
    started = time.perf_counter()
    try:
        with contextlib.ExitStack() as stack:
            for counter in (*counters.values(), draft_counter):
                if counter is not None:
                    stack.enter_context(counter)
            _warm_up(targets, tokenizer, jobs[0][1], settings, draft_model, draft_counter, status)
            records = _time_prompts(targets, tokenizer, jobs, settings, draft_model, draft_counter, status)
    finally:
        model.generation_config.use_space = previous_use_space
    results = {
        "settings": _settings_record(settings, model, draft_model),
        "machine": {**machine_info(settings.threads), "load_average_before": load_before,
                    "load_average_after": _load_average()},
        "model": model_info(model),
        "methods": status,
        "suites": {name: [p.id for p in prompts] for name, prompts in suites.items()},
        "wall_seconds": time.perf_counter() - started,
        "space_layouts": _distinct(r["space_layout"] for r in records if "space_layout" in r),
        "prompts": records,
    }
    results["summary"] = summarize(records, [m for m in settings.methods if status[m]["supported"]])
    return results


def _models_for_methods(model, methods, status: dict) -> dict:
    """The model each method runs on: `model`, or for a method with its own `dtype` a copy in that dtype (one per
    dtype). A method whose dtype is the model's own, or whose copy cannot be made (no memory for it, weights that
    do not convert), is marked unsupported, with why."""
    copies, models = {}, {}
    for method in methods:
        dtype_name = METHODS[method].dtype
        if dtype_name is None:
            models[method] = model
            continue
        dtype = getattr(torch, dtype_name)
        if model.dtype == dtype:
            status[method] = {"supported": False, "error": f"the model already runs in {dtype_name}: that is `plain`"}
            continue
        if dtype not in copies:
            try:
                copies[dtype] = copy.deepcopy(model).to(dtype)
            except Exception as error:  # a method that cannot run is a result to report, not a crash
                status[method] = {"supported": False, "error": f"no {dtype_name} copy: {type(error).__name__}: {error}"}
                logger.warning("%s is unsupported here: %s", method, status[method]["error"])
                continue
            logger.info("%s runs on a %s copy of the model.", method, dtype_name)
        models[method] = copies[dtype]
    return models


def _distinct(values) -> list:
    seen = {}
    for value in values:
        seen.setdefault(json.dumps(value, sort_keys=True, default=str), value)
    return list(seen.values())


def _draft_for_run(model, draft_model, status: dict):
    """The draft model prepared for the run, or None (with `draft` marked unsupported and why, if it was asked)."""
    if not status.get("draft", {}).get("supported"):
        return None
    if draft_model is None:
        status["draft"] = {"supported": False, "error": "no draft model given (--draft-model PATH)"}
        return None
    try:
        prepare_draft(model, draft_model)
    except ValueError as error:
        status["draft"] = {"supported": False, "error": f"{type(error).__name__}: {error}"}
        return None
    return draft_model


def _settings_record(settings: BenchSettings, model, draft_model) -> dict:
    record = asdict(settings)
    record["methods"] = list(settings.methods)
    record["decoding"] = "greedy, batch size 1"
    record["method_dtypes"] = {m: METHODS[m].dtype for m in settings.methods if METHODS[m].dtype}  # else the model's
    record["early_exit_layers"] = settings.early_exit_layers or default_early_exit_layers(model)
    record["max_matching_ngram_size_effective"] = settings.max_matching_ngram_size or 2
    record["assistant"] = _assistant_settings(draft_model if draft_model is not None else model)
    if draft_model is not None:
        record["draft_model"] = getattr(draft_model, "name_or_path", None) or type(draft_model).__name__
    return record


def _assistant_settings(assistant) -> dict:
    """The drafting settings transformers uses for `assistant` (its generation config, else the global defaults)."""
    config = assistant.generation_config
    defaults = config._get_default_generation_params() if hasattr(config, "_get_default_generation_params") else {}
    names = ("num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold")
    return {name: getattr(config, name, None) if getattr(config, name, None) is not None else defaults.get(name)
            for name in names}


def machine_info(threads: int) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "threads": threads,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (other processes competing for the cores show up here)."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def model_info(model) -> dict:
    path = getattr(model, "name_or_path", None) or ""
    source = Path(path) / "SOURCE.txt" if path else None
    return {
        "path": path,
        "class": type(model).__name__,
        "model_type": model.config.model_type,
        "num_hidden_layers": model.config.num_hidden_layers,
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(next(model.parameters()).dtype),
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "space_config": getattr(model.config, "space_config", None),
        "source_note": source.read_text(encoding="utf-8").strip() if source and source.is_file() else None,
    }


def summarize(records: list[dict], methods: list[str]) -> dict:
    """Per suite (and over all suites, as `all`) and method: totals, rates, speedups, match flags."""
    suites = list(dict.fromkeys(r["suite"] for r in records))
    summary = {}
    for suite in [*suites, "all"] if len(suites) > 1 else suites:
        rows = [r for r in records if suite in ("all", r["suite"])]
        plain = _aggregate([r for r in rows if r["method"] == REFERENCE])
        matched = _aggregate([r for r in rows if r["method"] == MATCHED])
        summary[suite] = {}
        for method in methods:
            stats = _aggregate([r for r in rows if r["method"] == method])
            if stats is None:
                continue
            stats["speedup_total"] = stats["tokens_per_s"] / plain["tokens_per_s"]
            if matched is not None:  # over the kernel-matched baseline: total tokens/s ratio
                stats["speedup_over_matched"] = stats["tokens_per_s"] / matched["tokens_per_s"]
            summary[suite][method] = stats
    return summary


def _aggregate(rows: list[dict]) -> dict | None:
    if not rows:
        return None
    tokens = sum(r["new_tokens"] for r in rows)
    seconds = sum(r["seconds"] for r in rows)
    passes = sum(r["target_passes"] for r in rows)
    stats = {
        "prompts": len(rows),
        "new_tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "target_passes": passes,
        "assistant_passes": sum(r["assistant_passes"] for r in rows),
        "tokens_per_pass": tokens / max(passes, 1),
        "speedup_median": statistics.median(r["speedup"] for r in rows),
        "matched": sum(r["matches_plain"] for r in rows),
        "all_match": all(r["matches_plain"] for r in rows),
    }
    per_pass = [n for r in rows for n in r.get("space_tokens_per_pass", [])]
    if per_pass:
        stats["space_tokens_per_pass_histogram"] = {str(k): v for k, v in sorted(Counter(per_pass).items())}
    return stats

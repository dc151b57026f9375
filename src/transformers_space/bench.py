"""`transformers-space bench`: SPACE against plain greedy decoding and transformers' own speed-ups.

One process, one model, one set of prompts, one machine: plain greedy `generate`, SPACE
(`use_space=True`), prompt lookup decoding (`prompt_lookup_num_tokens`), early-exit self-speculation
(`assistant_early_exit`) and, when given, a draft model (`assistant_model`, same tokenizer required).
Greedy, batch size 1, a warm-up call per method before timing, and the methods alternate per prompt
(their order rotates from one prompt to the next), so slow drifts of a shared machine hit all of them alike.

Two baselines and two SPACE layouts keep kernel effects and drafting apart:
- `plain_matched`: plain greedy `generate` with the CPU kernel SPACE's passes may use (`weights_first=True`:
  each linear layer multiplied weights-first, `kernels.py`), the kernel-matched baseline; SPACE's gain over it
  is drafting, not kernel choice. Its outputs are checked against plain greedy like every method's.
- `space_full`: SPACE at the full layout (every trained mask, every group, the paper's layout), whatever
  `--space-num-mask-tokens` says: its tokens/pass shows the drafts' acceptance independent of this machine.
- `space_default_kernel` (opt-in) runs `space`'s layout with the linear layers in F.linear's orientation.

Per method and suite: tokens/s (generated tokens / wall time), mean tokens per forward pass of the
TARGET model, speedup over plain greedy (median of per-prompt tokens/s ratios, and the ratio of total
tokens/s, which is the total-time ratio whenever the outputs match), and whether every output matched
plain greedy token for token.

Forward passes are counted by a forward pre-hook on `model.base_model`, the decoder body: plain and
assisted `generate` reach it through `model.forward`, SPACE calls it directly. Early-exit drafts run the
same body with `config.num_hidden_layers` lowered for the draft, so a pass shallower than the model counts
as an assistant pass, not a target pass; a separate draft model has a body (and a counter) of its own.

Results: `results.json` (every per-prompt number, machine, versions, settings), `results.md` (the table,
also printed) and `results.png` (speedup per suite and method; histogram of SPACE tokens per pass).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import platform
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import transformers

from .arguments import int_or_auto, model_location, positive_int
from .prompts import SUITES, Prompt

logger = logging.getLogger(__name__)

METHODS = ("plain", "plain_matched", "space", "space_full", "space_default_kernel", "prompt_lookup", "early_exit",
           "draft")
DEFAULT_METHODS = ("plain", "plain_matched", "space", "space_full", "prompt_lookup", "early_exit")
REFERENCE = "plain"
MATCHED = "plain_matched"


@dataclass
class BenchSettings:
    """What to run and how; recorded in the results."""

    methods: tuple[str, ...] = field(default=DEFAULT_METHODS, metadata={"help": f"Any of {', '.join(METHODS)}."})
    max_new_tokens: int = field(default=128, metadata={"help": "New tokens per prompt (fewer on EOS)."})
    threads: int = field(default=2, metadata={"help": "torch.set_num_threads for the whole run."})
    prompt_lookup_num_tokens: int = field(default=10, metadata={"help": "Prompt lookup: tokens drafted per pass."})
    max_matching_ngram_size: int | None = field(
        default=None, metadata={"help": "Prompt lookup n-gram size; None: transformers' default (2)."}
    )
    early_exit_layers: int | None = field(
        default=None, metadata={"help": "Layers the early-exit draft runs; None: a third of the model's layers."}
    )
    space_num_mask_tokens: int | str | None = field(
        default=None,
        metadata={"help": 'SPACE layout at generate time: masks per group (int) or "auto"; None: as trained.'},
    )
    warmup_tokens: int = field(default=16, metadata={"help": "New tokens of each method's untimed warm-up call."})
    progress: bool = field(default=True, metadata={"help": "Show a tqdm progress bar."})

    def __post_init__(self):
        self.methods = tuple(self.methods)
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"`methods` should be among {', '.join(METHODS)}, got {unknown}.")
        if REFERENCE not in self.methods:  # every speedup and match flag is relative to plain greedy
            self.methods = (REFERENCE, *self.methods)
        self.methods = tuple(dict.fromkeys(self.methods))
        for name in ("max_new_tokens", "threads", "prompt_lookup_num_tokens", "warmup_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` should be positive, got {getattr(self, name)}.")
        k = self.space_num_mask_tokens
        if k is not None and k != "auto" and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f'`space_num_mask_tokens` should be a positive int, "auto" or None, got {k!r}.')
        if self.early_exit_layers is not None and self.early_exit_layers < 1:
            raise ValueError(f"`early_exit_layers` should be positive, got {self.early_exit_layers}.")


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


def default_early_exit_layers(model) -> int:
    """About a third of the decoder layers (at least one)."""
    return max(1, round(model.config.num_hidden_layers / 3))


def method_kwargs(method: str, settings: BenchSettings, model, draft_model=None) -> dict:
    """The `generate` keyword arguments that select `method` (on top of the common greedy ones)."""
    if method == "plain":
        return {"use_space": False}
    if method == MATCHED:
        return {"use_space": False, "weights_first": True}
    if method == "space_full":
        from .decoding import space_settings
        from .planning import SpaceLayoutPlan

        return {"use_space": True, "return_dict_in_generate": True,
                "space_layout": SpaceLayoutPlan.full(space_settings(model)[1])}
    if method == "space":
        kwargs = {"use_space": True, "return_dict_in_generate": True}
        if settings.space_num_mask_tokens is not None:
            kwargs["num_mask_tokens"] = settings.space_num_mask_tokens
        return kwargs
    if method == "space_default_kernel":  # `space`'s layout with F.linear's orientation: what the kernel adds
        from dataclasses import replace

        from .decoding import space_settings
        from .generation import space_layout_request
        from .planning import SpaceLayoutPlan

        plan = space_layout_request(model, settings.space_num_mask_tokens, None)
        plan = replace(plan or SpaceLayoutPlan.full(space_settings(model)[1]), weights_first=False)
        return {"use_space": True, "return_dict_in_generate": True, "space_layout": plan}
    if method == "prompt_lookup":
        kwargs = {"use_space": False, "prompt_lookup_num_tokens": settings.prompt_lookup_num_tokens}
        if settings.max_matching_ngram_size is not None:
            kwargs["max_matching_ngram_size"] = settings.max_matching_ngram_size
        return kwargs
    if method == "early_exit":
        layers = settings.early_exit_layers or default_early_exit_layers(model)
        return {"use_space": False, "assistant_early_exit": layers}
    if method == "draft":
        if draft_model is None:
            raise ValueError("The `draft` method needs a draft model (`--draft-model PATH`).")
        return {"use_space": False, "assistant_model": draft_model}
    raise ValueError(f"Unknown method {method!r}; choose from {', '.join(METHODS)}.")


def encode_prompt(tokenizer, prompt: Prompt) -> dict[str, torch.Tensor]:
    """Token ids of one prompt: the tokenizer's chat template around it when it has one, else the raw text."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt.text}], tokenize=False, add_generation_prompt=True
        )
        return dict(tokenizer(text, return_tensors="pt", add_special_tokens=False))
    return dict(tokenizer(prompt.text, return_tensors="pt"))


def prepare_draft(model, draft_model) -> None:
    """Give the draft the target's vocabulary size, which transformers requires of a same-tokenizer assistant.

    The target's extra rows (the SPACE mask token) are never drafted: the target's logits processors,
    which suppress the mask token, also run on the assistant.
    """
    target_vocab = model.config.get_text_config().vocab_size
    draft_vocab = draft_model.config.get_text_config().vocab_size
    if draft_vocab > target_vocab:
        raise ValueError(
            f"The draft model's vocabulary ({draft_vocab}) is larger than the target's ({target_vocab}): the draft "
            "model must use the target's tokenizer."
        )
    if draft_vocab < target_vocab:
        logger.info("Resizing the draft model's embeddings from %d to %d rows", draft_vocab, target_vocab)
        draft_model.resize_token_embeddings(target_vocab, mean_resizing=False)
    if hasattr(draft_model.generation_config, "use_space"):
        draft_model.generation_config.use_space = False


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


def _warm_up(model, tokenizer, inputs, settings, draft_model, counters, status) -> None:
    """One untimed call per method; a method transformers refuses is marked unsupported with the exact error."""
    common = _common_kwargs(model, tokenizer, min(settings.warmup_tokens, settings.max_new_tokens))
    for method in [m for m in settings.methods if status[m]["supported"]]:
        try:
            run_once(model, inputs, method_kwargs(method, settings, model, draft_model), common, *counters)
        except Exception as error:  # any refusal is a result to report, not a crash
            if method == REFERENCE:
                raise
            status[method] = {"supported": False, "error": f"{type(error).__name__}: {error}"}
            logger.warning("%s is unsupported here: %s", method, status[method]["error"])


def _time_prompts(model, tokenizer, jobs, settings, draft_model, counters, status) -> list[dict]:
    """Every prompt through every supported method, the method order rotating per prompt."""
    from tqdm.auto import tqdm

    common = _common_kwargs(model, tokenizer, settings.max_new_tokens)
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
            try:
                record, outputs[method] = run_once(
                    model, inputs, method_kwargs(method, settings, model, draft_model), common, *counters
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
    jobs = [(prompt, encode_prompt(tokenizer, prompt)) for prompts in suites.values() for prompt in prompts]
    if not jobs:
        raise ValueError("No prompts to benchmark: every suite is empty or was skipped.")
    previous_use_space = getattr(model.generation_config, "use_space", None)
    # an early-exit assistant is the model itself; its inner `generate` must not switch to SPACE on its own
    model.generation_config.use_space = False
    counter = PassCounter(model)
    draft_counter = PassCounter(draft_model) if draft_model is not None else None
    load_before = _load_average()
    if load_before and load_before[0] >= 1.0:
        logger.warning("The machine is busy (load average %.2f before the run): timings will be unreliable.",
                       load_before[0])
    started = time.perf_counter()
    try:
        with counter, (draft_counter or contextlib.nullcontext()):
            counters = (counter, draft_counter)
            _warm_up(model, tokenizer, jobs[0][1], settings, draft_model, counters, status)
            records = _time_prompts(model, tokenizer, jobs, settings, draft_model, counters, status)
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


def markdown_table(results: dict) -> str:
    """The results as Markdown: a header with the setting, one table row per suite and method."""
    settings, machine, model = results["settings"], results["machine"], results["model"]
    lines = [
        "# transformers-space bench",
        "",
        f"- model: `{model['path'] or 'in-process model'}` ({model['model_type']}, "
        f"{model['num_hidden_layers']} layers, {model['parameters'] / 1e6:.1f}M parameters, {model['dtype']}, "
        f"{model['attn_implementation']})",
        f"- SPACE settings: `{json.dumps(model['space_config'])}`",
        f"- machine: {machine['cpu']}, {machine['usable_cores']} usable cores, {settings['threads']} threads; "
        f"torch {machine['torch']}, transformers {machine['transformers']}; {machine['date']}; load average "
        f"before/after {_first(machine.get('load_average_before'))}/{_first(machine.get('load_average_after'))}",
        f"- {settings['decoding']}, max_new_tokens={settings['max_new_tokens']}; prompt lookup "
        f"{settings['prompt_lookup_num_tokens']} tokens, n-gram {settings['max_matching_ngram_size_effective']}"
        + (f"; early exit after {settings['early_exit_layers']} of {model['num_hidden_layers']} layers"
           if "early_exit" in settings["methods"] else ""),
    ]
    if results.get("space_layouts"):
        layouts = "; ".join(f"`{json.dumps(layout, default=str)}`" for layout in results["space_layouts"])
        lines.append(f"- SPACE layout run (num_mask_tokens={settings['space_num_mask_tokens']}): {layouts}")
    if model.get("source_note"):
        lines.append(f"- note: {' '.join(model['source_note'].split())}")
    matched = MATCHED in settings["methods"]
    lines += [
        "",
        "| suite | method | prompts | new tokens | tokens/s | tokens/pass | speedup (median) | speedup (total) "
        + ("| over plain_matched " if matched else "") + "| = plain |",
        "|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if matched else "") + "---|",
    ]
    for suite, methods in results["summary"].items():
        for method, s in methods.items():
            match = "yes" if s["all_match"] else f"no ({s['matched']}/{s['prompts']})"
            over = f" {s['speedup_over_matched']:.2f}x |" if "speedup_over_matched" in s else (" |" if matched else "")
            lines.append(
                f"| {suite} | {method} | {s['prompts']} | {s['new_tokens']} | {s['tokens_per_s']:.2f} | "
                f"{s['tokens_per_pass']:.2f} | {s['speedup_median']:.2f}x | {s['speedup_total']:.2f}x |{over} {match} |"
            )
    failed = {m: s["error"] for m, s in results["methods"].items() if not s["supported"]}
    if failed:
        lines += ["", "Unsupported or failed methods:", ""]
        lines += [f"- {method}: `{error}`" for method, error in failed.items()]
    lines += [
        "",
        "tokens/pass: generated tokens per forward pass of the target model. speedup (median): median over prompts "
        "of tokens/s relative to plain greedy on the same prompt; speedup (total): ratio of total tokens/s (the "
        "total-time ratio when outputs match). over plain_matched: total tokens/s over the kernel-matched plain "
        "baseline. = plain: every output identical to plain greedy, token for token.",
    ]
    return "\n".join(lines) + "\n"


def _first(values) -> str:
    return f"{values[0]:.2f}" if values else "n/a"


def plot_results(results: dict, path: str | Path) -> Path:
    """PNG: median speedup per suite and method (bars); histogram of SPACE tokens per pass per suite."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = {suite: m for suite, m in results["summary"].items() if suite != "all"}
    figure, (bars, histogram) = plt.subplots(1, 2, figsize=(12, 4.5))
    _grouped_bars(bars, {s: {m: v["speedup_median"] for m, v in methods.items()} for s, methods in summary.items()})
    bars.axhline(1.0, color="black", linewidth=0.8)
    bars.set_ylabel("speedup over plain greedy (median)")
    bars.set_title("Speedup per suite")
    passes = {}
    for suite, methods in summary.items():
        counts = methods.get("space", {}).get("space_tokens_per_pass_histogram", {})
        total = sum(counts.values()) or 1
        passes.update({(int(n), suite): count / total for n, count in counts.items()})
    by_tokens = {}
    for (tokens, suite), fraction in sorted(passes.items(), key=lambda item: item[0][0]):
        by_tokens.setdefault(str(tokens), {})[suite] = fraction
    _grouped_bars(histogram, by_tokens)
    histogram.set_xlabel("tokens emitted per forward pass")
    histogram.set_ylabel("fraction of SPACE passes")
    histogram.set_title("SPACE tokens per pass")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return Path(path)


def _grouped_bars(axes, values: dict[str, dict[str, float]]) -> None:
    """One group of bars per outer key (x axis), one bar per inner key (legend)."""
    groups = list(values)
    series = list(dict.fromkeys(name for inner in values.values() for name in inner))
    width = 0.8 / max(len(series), 1)
    for i, name in enumerate(series):
        heights = [values[group].get(name, 0.0) for group in groups]
        axes.bar([x + i * width for x in range(len(groups))], heights, width, label=name)
    axes.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(groups))], groups)
    if series:
        axes.legend(fontsize="small")


PLOT_HINT = "the plot needs matplotlib: pip install 'transformers-space[bench]' (or pass --no-plot)"


def check_plotting() -> None:
    """Raise ImportError with the install command when matplotlib is missing (before any work is done)."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise ImportError(PLOT_HINT)


def save_results(results: dict, output_dir: str | Path, plot: bool = True) -> dict[str, Path]:
    """Write results.json, results.md and (with `plot`) results.png to `output_dir`; returns their paths."""
    if plot:
        check_plotting()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": output_dir / "results.json", "markdown": output_dir / "results.md"}
    paths["json"].write_text(json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8")
    paths["markdown"].write_text(markdown_table(results), encoding="utf-8")
    if plot:
        paths["plot"] = plot_results(results, output_dir / "results.png")
    return paths


def load_model(path: str | Path | None = None, num_mask_tokens: int = 4):
    """(model, tokenizer) in fp32 with sdpa attention and SPACE support; default: the offline default model
    with the shipped gated adapter (as the demo).

    A gated adapter folder (`save_space_adapter`) loads onto its base; a SPACE model folder (its config has
    `space_config`) loads with `AutoSpaceModelForCausalLM`; a plain model gets `add_space_support(model,
    tokenizer, num_mask_tokens)` (untrained masks: a baseline, not a speed-up).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .hub import ADAPTER_CONFIG, AutoSpaceModelForCausalLM, load_space_adapter, shipped_adapter_dir
    from .modeling import add_space_support

    folder = Path(path) if path is not None else shipped_adapter_dir()
    options = {"dtype": torch.float32, "attn_implementation": "sdpa"}
    if (folder / ADAPTER_CONFIG).is_file():
        model, tokenizer = load_space_adapter(folder, **options)
        tokenizer.padding_side = "left"
        return model.eval(), tokenizer
    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
    if _is_space_folder(folder):
        model = AutoSpaceModelForCausalLM.from_pretrained(folder, **options)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, **options)
        model = add_space_support(model, tokenizer, num_mask_tokens=num_mask_tokens)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer


def _is_space_folder(folder: Path) -> bool:
    config = folder / "config.json"
    return config.is_file() and bool(json.loads(config.read_text(encoding="utf-8")).get("space_config"))


def load_draft_model(path: str | Path, tokenizer):
    """A draft model for assisted generation; its folder's tokenizer must have the target's vocabulary."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .hub import AutoSpaceModelForCausalLM

    folder = Path(path)
    try:
        draft_tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as error:
        raise ValueError(f"{folder} has no tokenizer to check; the draft model must share the target's.") from error
    ours, theirs = _plain_vocab(tokenizer), _plain_vocab(draft_tokenizer)
    if ours != theirs:
        raise ValueError(
            f"The draft model's tokenizer differs from the target's ({len(theirs)} vs {len(ours)} tokens, "
            f"{len(set(ours.items()) ^ set(theirs.items()))} entries differ); assisted generation here needs the "
            "same tokenizer (universal assisted decoding across tokenizers is not benchmarked)."
        )
    options = {"dtype": torch.float32, "attn_implementation": "sdpa"}
    loader = AutoSpaceModelForCausalLM if _is_space_folder(folder) else AutoModelForCausalLM
    return loader.from_pretrained(folder, **options).eval()


def _plain_vocab(tokenizer) -> dict[str, int]:
    """The vocabulary without a SPACE mask token (added tokens after the base vocabulary are kept otherwise)."""
    from .configuration import SpaceConfig

    mask = SpaceConfig().mask_token
    return {token: index for token, index in tokenizer.get_vocab().items() if token != mask}


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "bench", help="Benchmark SPACE against plain greedy, prompt lookup, early exit and a draft model."
    )
    parser.add_argument("--model", type=model_location,
                        help="Gated adapter folder, SPACE model folder, or plain model folder (default: "
                        "the offline SmolLM2-135M-Instruct with the shipped adapter).")
    parser.add_argument("--num-mask-tokens", type=positive_int, default=4,
                        help="For a plain model: add_space_support's k.")
    parser.add_argument("--space-num-mask-tokens", type=int_or_auto,
                        help='SPACE layout at generate time: masks per group, or "auto" (default: as trained).')
    parser.add_argument("--draft-model", type=model_location,
                        help="Folder of a draft model with the SAME tokenizer (enables `draft`).")
    parser.add_argument("--suites", nargs="+", default=list(SUITES), choices=SUITES)
    parser.add_argument("--methods", nargs="+", choices=METHODS, help="Default: plain space prompt_lookup "
                        "early_exit, plus draft with --draft-model. plain is always run (the reference).")
    parser.add_argument("--limit", type=positive_int, help="Only the first N prompts of each suite.")
    parser.add_argument("--max-new-tokens", type=positive_int, default=128)
    parser.add_argument("--threads", type=positive_int, default=2, help="torch.set_num_threads.")
    parser.add_argument("--prompt-lookup-num-tokens", type=positive_int, default=10)
    parser.add_argument("--max-matching-ngram-size", type=positive_int, help="Default: transformers' (2).")
    parser.add_argument("--early-exit-layers", type=positive_int, help="Default: a third of the model's layers.")
    parser.add_argument("--output-dir", default="bench_out", help="Where results.{json,md,png} go.")
    parser.add_argument("--no-progress", action="store_true", help="No progress bar.")
    parser.add_argument("--no-plot", action="store_true", help="Write no results.png (needs no matplotlib).")
    return parser


def run(args: argparse.Namespace) -> int:
    from .prompts import load_suites

    if not args.no_plot:
        check_plotting()  # before loading anything
    if not getattr(args, "verbose", False):
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    methods = args.methods or [*DEFAULT_METHODS, *(["draft"] if args.draft_model else [])]
    settings = BenchSettings(
        methods=tuple(methods), max_new_tokens=args.max_new_tokens, threads=args.threads,
        prompt_lookup_num_tokens=args.prompt_lookup_num_tokens, max_matching_ngram_size=args.max_matching_ngram_size,
        early_exit_layers=args.early_exit_layers, space_num_mask_tokens=args.space_num_mask_tokens,
        progress=not args.no_progress,
    )
    torch.set_num_threads(settings.threads)
    suites = load_suites(args.suites, limit=args.limit)
    if not suites:
        logger.error("No prompt suite is installed; run `bash scripts/install_assets.sh`.")
        return 1
    model, tokenizer = load_model(args.model, args.num_mask_tokens)
    draft_model, unsupported = None, {}
    if args.draft_model and "draft" in settings.methods:
        try:
            draft_model = load_draft_model(args.draft_model, tokenizer)
        except (OSError, ValueError) as error:
            unsupported["draft"] = f"{type(error).__name__}: {error}"
    results = run_benchmark(model, tokenizer, suites, settings, draft_model, unsupported)
    paths = save_results(results, args.output_dir, plot=not args.no_plot)
    print(markdown_table(results))
    print("saved:", ", ".join(str(p) for p in paths.values()))
    return 0

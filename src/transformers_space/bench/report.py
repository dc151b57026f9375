"""The benchmark's report: results.json (every number), results.md (the table, also printed), results.png."""

from __future__ import annotations

import json
from pathlib import Path

from .methods import MATCHED


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

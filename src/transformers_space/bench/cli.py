"""`transformers-space bench`: SPACE against plain greedy decoding and transformers' own speed-ups.

One process, one model, one set of prompts, one machine: the methods of `bench/methods.py` (plain greedy, the
kernel-matched plain baseline, plain greedy on a bf16 copy, SPACE at the chosen and at the full layout, prompt
lookup, early-exit self-speculation and, when given, a draft model). Results: `results.json`, `results.md`,
`results.png` (`bench/report.py`).
"""

from __future__ import annotations

import argparse
import logging

import torch
import transformers

from ..arguments import add_dtype_argument, int_or_auto, model_location, positive_int
from ..loading import load_draft_model, load_model
from ..prompts import SUITES
from .methods import DEFAULT_METHODS, METHODS, BenchSettings
from .report import check_plotting, markdown_table, save_results
from .runner import run_benchmark

logger = logging.getLogger(__name__)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "bench", help="Benchmark SPACE against plain greedy (fp32 and bf16), prompt lookup, early exit and a draft "
        "model."
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
    parser.add_argument("--methods", nargs="+", choices=list(METHODS),
                        help=f"Default: {' '.join(DEFAULT_METHODS)}, plus draft with --draft-model. plain is always "
                        "run (the reference). " + "; ".join(f"{m.name}: {m.help}" for m in METHODS.values()))
    parser.add_argument("--limit", type=positive_int, help="Only the first N prompts of each suite.")
    parser.add_argument("--max-new-tokens", type=positive_int, default=128)
    parser.add_argument("--threads", type=positive_int, default=2, help="torch.set_num_threads.")
    parser.add_argument("--prompt-lookup-num-tokens", type=positive_int, default=10)
    parser.add_argument("--max-matching-ngram-size", type=positive_int, help="Default: transformers' (2).")
    parser.add_argument("--early-exit-layers", type=positive_int, help="Default: a third of the model's layers.")
    parser.add_argument("--output-dir", default="bench_out", help="Where results.{json,md,png} go.")
    parser.add_argument("--no-progress", action="store_true", help="No progress bar.")
    parser.add_argument("--no-plot", action="store_true", help="Write no results.png (needs no matplotlib).")
    add_dtype_argument(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..prompts import load_suites

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
    model, tokenizer = load_model(args.model, args.num_mask_tokens, getattr(torch, args.dtype))
    draft_model, unsupported = None, {}
    if args.draft_model and "draft" in settings.methods:
        try:
            draft_model = load_draft_model(args.draft_model, tokenizer, getattr(torch, args.dtype))
        except (OSError, ValueError) as error:
            unsupported["draft"] = f"{type(error).__name__}: {error}"
    results = run_benchmark(model, tokenizer, suites, settings, draft_model, unsupported)
    paths = save_results(results, args.output_dir, plot=not args.no_plot)
    print(markdown_table(results))
    print("saved:", ", ".join(str(p) for p in paths.values()))
    return 0

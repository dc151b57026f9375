"""`transformers-space bench`: SPACE beside plain decoding and transformers' own speed-ups, in one run.

- `methods.py`: the registry of methods (a new method is one `BenchMethod` entry) and `BenchSettings`;
- `runner.py`: times every prompt through every method and checks each output against plain greedy;
- `report.py`: results.json, results.md and results.png;
- `cli.py`: the `bench` subcommand.
"""

from ..loading import load_draft_model, load_model
from ..prompts import encode_prompts
from .cli import add_parser, run
from .methods import DEFAULT_METHODS, MATCHED, METHODS, REFERENCE, BenchMethod, BenchSettings, method_kwargs
from .report import PLOT_HINT, check_plotting, markdown_table, plot_results, save_results
from .runner import PassCounter, machine_info, model_info, run_benchmark, run_once, summarize

__all__ = [
    "DEFAULT_METHODS", "MATCHED", "METHODS", "PLOT_HINT", "REFERENCE", "BenchMethod", "BenchSettings", "PassCounter",
    "add_parser", "check_plotting", "encode_prompts", "load_draft_model", "load_model", "machine_info",
    "markdown_table", "method_kwargs", "model_info", "plot_results", "run", "run_benchmark", "run_once",
    "save_results", "summarize",
]

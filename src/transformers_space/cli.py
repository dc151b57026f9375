"""`transformers-space` command line: a thin registry of subcommands over the library.

Each subcommand module exposes `add_parser(subparsers)` and a `run(args)` function; this file only wires
them up, so adding a command never touches the others.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from . import demo
from .arguments import add_dtype_argument, model_location, non_empty_text, positive_int
from .bench import cli as bench_cli
from .hub import publish
from .prompts import AssetMissing
from .training import cli as train_cli

logger = logging.getLogger("transformers_space")

Command = tuple[Callable[[argparse._SubParsersAction], argparse.ArgumentParser], Callable[[argparse.Namespace], int]]


def _generate_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("generate", help="Generate with SPACE and plain decoding, side by side.")
    parser.add_argument("--model", type=model_location,
                        help="Folder of a SPACE model, a gated adapter, or any supported plain model (default: the "
                        "offline SmolLM2-135M-Instruct with the shipped adapter, as for bench and demo).")
    parser.add_argument("--prompt", action="append", required=True, type=non_empty_text,
                        help="Prompt text; repeat for a batch.")
    parser.add_argument("--max-new-tokens", type=positive_int, default=64)
    parser.add_argument("--num-mask-tokens", type=positive_int, default=4,
                        help="Used only if the model has no SPACE config.")
    parser.add_argument("--chat", action="store_true", help="Wrap each prompt with the tokenizer's chat template.")
    parser.add_argument("--no-compare", action="store_true", help="Skip the plain-decoding run.")
    add_dtype_argument(parser)
    return parser


def _generate_run(args: argparse.Namespace) -> int:
    import torch

    from .loading import load_model
    from .prompts import encode_prompts

    model, tokenizer = load_model(args.model, args.num_mask_tokens, getattr(torch, args.dtype))
    inputs = encode_prompts(tokenizer, args.prompt, chat=args.chat)
    common = dict(max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    space = model.generate(**inputs, use_space=True, return_dict_in_generate=True, **common)
    start = inputs["input_ids"].shape[1]
    for row, counts in enumerate(space.tokens_per_pass):
        text = tokenizer.decode(space.sequences[row, start:], skip_special_tokens=True)
        mean = sum(counts) / max(len(counts), 1)
        print(f"[{row}] {text}\n    {sum(counts)} tokens in {len(counts)} passes: {mean:.2f} tokens per pass")
    if not args.no_compare:
        plain = model.generate(**inputs, use_space=False, **common)
        print("identical to plain greedy decoding:", bool(torch.equal(plain, space.sequences)))
    return 0


COMMANDS: dict[str, Command] = {
    "generate": (_generate_parser, _generate_run),
    "bench": (bench_cli.add_parser, bench_cli.run),
    "train": (train_cli.add_parser, train_cli.run),
    "export": (publish.add_parser, publish.run),
    "demo": (demo.add_parser, demo.run),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="transformers-space", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="Log at INFO level.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for make_parser, run in COMMANDS.values():
        make_parser(subparsers).set_defaults(run=run)
    return parser


# What a user can get wrong (a bad option value, a missing file or asset, data the library refuses): one line on
# stderr and exit status 2. Anything else is a bug and keeps its traceback; --verbose keeps it for these too.
USER_ERRORS = (ValueError, TypeError, OSError, AssetMissing, ImportError)  # ImportError: a missing optional package


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.run(args)
    except USER_ERRORS as error:
        if args.verbose:
            raise
        message = " ".join(str(error).split())  # one line, whatever the library's message looked like
        print(f"transformers-space {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

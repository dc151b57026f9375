"""argparse types shared by the subcommands and scripts: bad values fail at parse time, before any model loads.

Not part of the remote code that ships next to saved models.
"""

from __future__ import annotations

import argparse
import os
import re

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def positive_int(value: str) -> int:
    """An int >= 1."""
    try:
        number = int(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {value!r}") from error
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {number}")
    return number


def int_or_auto(value: str) -> int | str:
    """A `num_mask_tokens` option: "auto" or an int >= 1."""
    if value == "auto":
        return value
    try:
        return positive_int(value)
    except argparse.ArgumentTypeError as error:
        raise argparse.ArgumentTypeError(f'expected a positive int or "auto", got {value!r}') from error


MODEL_FILES = ("config.json", "space_adapter_config.json")  # a saved model, or a gated adapter


def model_location(value: str) -> str:
    """A folder holding a saved model (or adapter), or something shaped like a Hub repo id (`user/name`) that is
    not a local path."""
    if os.path.isdir(value):
        if not any(os.path.isfile(os.path.join(value, name)) for name in MODEL_FILES):
            raise argparse.ArgumentTypeError(f"folder {value!r} holds no config.json: it is not a saved model")
        return value
    if os.path.exists(value):
        raise argparse.ArgumentTypeError(f"{value!r} is a file; give the folder that holds the model")
    if HUB_ID.match(value) and not value.startswith((".", "/", "~")):
        return value
    raise argparse.ArgumentTypeError(f"folder {value!r} does not exist")


DTYPES = ("float32", "bfloat16")


def add_dtype_argument(parser: argparse.ArgumentParser) -> None:
    """`--dtype`: the weights' dtype, shared by the commands that load a model."""
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="dtype of the loaded weights. bfloat16 pays on CPUs with AMX (a bf16 pass of 2-16 tokens "
                        "costs about a 1-token pass there, so drafts pay) and on GPUs; float32 elsewhere.")


def non_empty_text(value: str) -> str:
    """A prompt: at least one non-blank character."""
    if not value.strip():
        raise argparse.ArgumentTypeError("the prompt is empty; give some text")
    return value

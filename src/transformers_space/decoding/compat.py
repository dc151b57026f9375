"""Every difference between the transformers 5.x releases we support (5.17 up to the newest 5.x).

Nothing else in the package branches on the transformers version. This module imports only torch and
transformers, because it also ships as remote code next to saved models.
"""

from __future__ import annotations

import inspect
from dataclasses import fields
from functools import cache

import transformers
from transformers import DynamicCache

MIN_TRANSFORMERS = (5, 17)


def transformers_version() -> tuple[int, int]:
    major, minor = transformers.__version__.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def check_transformers_version() -> None:
    """SPACE relies on 5.x generation internals (custom_generate, 4D masks used as given)."""
    version = transformers_version()
    if version < MIN_TRANSFORMERS or version[0] != 5:
        raise ImportError(
            f"transformers-space needs transformers >=5.17,<6; found {transformers.__version__}. "
            "Install a supported release, e.g. `pip install 'transformers>=5.17,<6'`."
        )


@cache
def cache_argument_name(forward) -> str:
    """5.24 renamed the cache argument of model forwards from `past_key_values` to `cache`."""
    parameters = inspect.signature(forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def new_cache() -> DynamicCache:
    """A plain, growing cache: one full-attention layer per decoder layer.

    Built without the model config on purpose: sliding-window cache layers drop old entries, while SPACE
    needs every entry addressable so that its own 4D mask can apply the window exactly.
    """
    return DynamicCache()


def crop_cache(cache: DynamicCache, new_length: int) -> None:
    """Cut the cache back to `new_length` entries.

    5.24 refuses a positive `crop` argument (5.17 read it as the absolute length), and both read a negative
    one as the number of entries to remove, so only the negative form is ever used.
    """
    to_remove = cache.get_seq_length() - new_length
    if to_remove < 0:
        raise ValueError(f"cannot crop a cache of {cache.get_seq_length()} entries to {new_length}")
    if to_remove:
        cache.crop(-to_remove)


def user_cache_from_kwargs(model_kwargs: dict):
    """The cache object generate() prepared or the user passed, under either name."""
    for name in ("cache", "past_key_values"):
        value = model_kwargs.get(name)
        if value is not None:
            return value
    return None


@cache
def output_cache_field() -> str:
    """5.24 renamed generate outputs' `past_key_values` field to `cache`."""
    from transformers.generation.utils import GenerateDecoderOnlyOutput

    return "cache" if "cache" in {f.name for f in fields(GenerateDecoderOnlyOutput)} else "past_key_values"

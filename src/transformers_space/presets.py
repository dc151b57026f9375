"""Deprecated: the per-family presets are now the table of architectures, `transformers_space.decoding.architectures`.

`preset_for` and `all_presets` still answer, built from that table, with a DeprecationWarning.
"""

from __future__ import annotations

import warnings
from dataclasses import fields

from .decoding.architectures import ARCHITECTURES, ArchSpec, arch_spec
from .decoding.configuration import SpaceConfig

_DEFAULTS = {f.name: f.default for f in fields(SpaceConfig)}


def _as_preset(spec: ArchSpec) -> dict:
    return {
        "family": spec.family, "model_types": list(spec.model_types), "mask_token": _DEFAULTS["mask_token"],
        "num_mask_tokens": _DEFAULTS["num_mask_tokens"], "adapter_target_modules": list(spec.adapter_targets),
        "adapter_rank": _DEFAULTS["adapter_rank"], "adapter_alpha": _DEFAULTS["adapter_alpha"],
        "chat_template_notes": spec.chat_notes,
    }


def _warn() -> None:
    warnings.warn("`transformers_space.presets` is deprecated; use `transformers_space.decoding.architectures`.",
                  DeprecationWarning, stacklevel=3)


def all_presets() -> dict[str, dict]:
    _warn()
    return {spec.family: _as_preset(spec) for spec in ARCHITECTURES}


def preset_for(model_type: str) -> dict:
    _warn()
    try:
        return _as_preset(arch_spec(model_type))
    except ValueError as error:
        raise ValueError(f"No SPACE preset for model type {model_type!r}: {error}") from None

"""Per-architecture SPACE presets from `hub_configs/presets/*.json` (shipped as package data).

A preset gives, for one family of architectures, the mask token, a default `num_mask_tokens`, the gated
adapter's target modules, rank and alpha, and chat-template notes; the trainer and `export` fill unset
`SpaceConfig` fields from it.
"""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files


@cache
def all_presets() -> dict[str, dict]:
    """Family name -> preset."""
    folder = files("transformers_space.hub_configs") / "presets"
    presets = {}
    for entry in folder.iterdir():
        if entry.name.endswith(".json"):
            preset = json.loads(entry.read_text())
            presets[preset["family"]] = preset
    return presets


def preset_for(model_type: str) -> dict:
    """The preset of the family `model_type` belongs to (a copy: callers may change it)."""
    for preset in all_presets().values():
        if model_type in preset["model_types"]:
            return json.loads(json.dumps(preset))
    supported = sorted(t for preset in all_presets().values() for t in preset["model_types"])
    raise ValueError(f"No SPACE preset for model type {model_type!r}; presets exist for {', '.join(supported)}.")

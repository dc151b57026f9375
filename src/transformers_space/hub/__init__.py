"""The Hub side of the package: load SPACE models with this package's classes, export and push them, and keep
gated adapters as small separate folders.

- `AutoSpaceModelForCausalLM` (here): load with the installed package, no remote code.
- `publish.py`: any SPACE model folder to a clean Hub folder (`transformers-space export`), `push_to_hub`.
- `adapter.py`: `save_space_adapter` / `load_space_adapter`, the adapter shipped for the default model.
"""

from __future__ import annotations

from ..modeling import load_space_model
from .adapter import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    CODER_BASE,
    DEFAULT_BASE,
    SHIPPED_ADAPTER,
    load_space_adapter,
    save_space_adapter,
    shipped_adapter_dir,
)
from .publish import add_parser, export, push_to_hub, run

__all__ = [
    "ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "CODER_BASE", "DEFAULT_BASE", "SHIPPED_ADAPTER", "AutoSpaceModelForCausalLM",
    "add_parser", "export", "load_space_adapter", "push_to_hub", "run", "save_space_adapter", "shipped_adapter_dir",
]


class AutoSpaceModelForCausalLM:
    """`AutoSpaceModelForCausalLM.from_pretrained(path)`: the SPACE model with this package's own classes.

    Like peft's `AutoPeftModelForCausalLM`: no `trust_remote_code` needed, and gated adapters are rebuilt
    before the weights load. `AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)` gives
    the same model through the code shipped in the folder, for environments without this package.
    """

    @staticmethod
    def from_pretrained(path, *args, **kwargs):
        return load_space_model(path, *args, **kwargs)



"""SPACE model classes: `Space<Name>` for each supported transformers causal LM, made on first use.

`SpaceLlamaForCausalLM` is `(SpaceGenerationMixin, LlamaForCausalLM)` and so on. They live in this module
(module-level `__getattr__` builds them on demand) so that:
- `save_pretrained` copies this file and its relative imports next to the weights and writes `auto_map`
  (the classes are registered for `AutoModelForCausalLM`), and
- `AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)` finds the class by name in the
  copied file, with no transformers_space installed.

Imports only torch, transformers and sibling modules (it ships as remote code).
"""

from __future__ import annotations

import transformers

from .generation import SpaceGenerationMixin

_SPACE_CLASSES: dict[type, type] = {}


def space_class_for(model_class: type) -> type:
    """The `Space<Name>` subclass of a transformers model class (made once, then reused)."""
    if issubclass(model_class, SpaceGenerationMixin):
        return model_class
    if model_class not in _SPACE_CLASSES:
        space_class = type(
            f"Space{model_class.__name__}",
            (SpaceGenerationMixin, model_class),
            {"__module__": __name__, "__doc__": f"{model_class.__name__} with SPACE decoding (`use_space`)."},
        )
        space_class.register_for_auto_class("AutoModelForCausalLM")
        _SPACE_CLASSES[model_class] = space_class
    return _SPACE_CLASSES[model_class]


def __getattr__(name: str) -> type:
    base = getattr(transformers, name[len("Space") :], None) if name.startswith("Space") else None
    if isinstance(base, type) and issubclass(base, transformers.PreTrainedModel):
        return space_class_for(base)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

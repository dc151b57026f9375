"""`add_space_support`: turn a plain causal LM into one whose `generate` accepts `use_space`.

The model keeps its class's behaviour: its class is swapped for a dynamic subclass with
`SpaceGenerationMixin` first, so `save_pretrained`, `from_pretrained` and the Trainer work unchanged.
"""

from __future__ import annotations

import logging

import torch
from transformers import PreTrainedModel

from .compat import check_transformers_version
from .configuration import SpaceConfig
from .generation import SpaceGenerationMixin

logger = logging.getLogger(__name__)

# Architectures whose causal-LM forward is exactly `lm_head(base_model(...))` (so SPACE may run the body
# and the head separately) and that the test suite proves lossless.
SUPPORTED_MODEL_TYPES = ("gemma", "gpt2", "gpt_neox", "llama", "mistral", "olmo2", "phi3", "qwen2", "qwen3")

_SPACE_CLASSES: dict[type, type] = {}


def space_class_for(model_class: type) -> type:
    """The `Space<Name>` subclass of a model class (made once, then reused)."""
    if issubclass(model_class, SpaceGenerationMixin):
        return model_class
    if model_class not in _SPACE_CLASSES:
        _SPACE_CLASSES[model_class] = type(
            f"Space{model_class.__name__}",
            (SpaceGenerationMixin, model_class),
            {"__module__": model_class.__module__, "__doc__": f"{model_class.__name__} with SPACE decoding."},
        )
    return _SPACE_CLASSES[model_class]


def check_architecture(model: PreTrainedModel) -> None:
    config = model.config
    if getattr(config, "is_encoder_decoder", False) or config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"SPACE does not support the architecture {config.model_type!r} ({type(model).__name__}). "
            f"Supported decoder-only architectures: {', '.join(SUPPORTED_MODEL_TYPES)}."
        )
    if model.get_output_embeddings() is None:
        raise ValueError(f"{type(model).__name__} has no language-model head; load it with AutoModelForCausalLM.")


def add_space_support(model: PreTrainedModel, tokenizer=None, num_mask_tokens: int = 4, **options):
    """Add the mask token, record the settings in `model.config.space_config`, enable `use_space`.

    With a tokenizer the mask token is added to it (as a special token); without one it becomes a new id
    right after the current vocabulary. The new embedding row is the mean of the existing ones, so the
    mask reads like an ordinary token before any training. Calling it again with the same settings is a
    no-op apart from the class swap.
    """
    check_transformers_version()
    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"`model` should be a transformers PreTrainedModel, got {type(model).__name__}.")
    check_architecture(model)
    space_config = SpaceConfig(num_mask_tokens=num_mask_tokens, **options)
    existing = getattr(model.config, "space_config", None)
    if existing:
        space_config.mask_token_id = _reuse_mask_token(existing, space_config, tokenizer)
    else:
        space_config.mask_token_id = _add_mask_token(model, tokenizer, space_config.mask_token)
    model.config.space_config = space_config.to_dict()
    model.__class__ = space_class_for(type(model))
    if not hasattr(model.generation_config, "use_space"):
        model.generation_config.use_space = False
    return model


def _add_mask_token(model: PreTrainedModel, tokenizer, mask_token: str) -> int:
    embeddings = model.get_input_embeddings()
    rows = embeddings.weight.shape[0]
    if tokenizer is None:
        mask_token_id = rows
    else:
        if mask_token in tokenizer.get_vocab():
            raise ValueError(
                f"The mask token {mask_token!r} already exists in the tokenizer (id "
                f"{tokenizer.convert_tokens_to_ids(mask_token)}); SPACE needs a token of its own. "
                "Pass another `mask_token=`."
            )
        tokenizer.add_special_tokens({"additional_special_tokens": [mask_token]}, replace_extra_special_tokens=False)
        mask_token_id = tokenizer.convert_tokens_to_ids(mask_token)
    with torch.no_grad():
        mean = embeddings.weight[:rows].mean(0)
        if mask_token_id >= rows:
            model.resize_token_embeddings(mask_token_id + 1, mean_resizing=False)
            embeddings = model.get_input_embeddings()
        embeddings.weight[mask_token_id] = mean
    logger.info("Added SPACE mask token %r as id %d", mask_token, mask_token_id)
    return mask_token_id


def _reuse_mask_token(existing: dict, requested: SpaceConfig, tokenizer) -> int:
    saved = SpaceConfig.from_dict(existing)
    if saved.num_mask_tokens != requested.num_mask_tokens or saved.mask_token != requested.mask_token:
        raise ValueError(
            f"This model already has SPACE settings {existing}, which differ from the requested "
            f"num_mask_tokens={requested.num_mask_tokens}, mask_token={requested.mask_token!r}. "
            "Use the saved settings, or start from the original model."
        )
    if tokenizer is not None and tokenizer.convert_tokens_to_ids(saved.mask_token) != saved.mask_token_id:
        raise ValueError(
            f"The tokenizer does not map {saved.mask_token!r} to the model's mask token id {saved.mask_token_id}; "
            "load the tokenizer saved with this SPACE model."
        )
    return saved.mask_token_id

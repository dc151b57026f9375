"""`add_space_support`: turn a plain causal LM into one whose `generate` accepts `use_space`.

The model keeps its class's behaviour: its class is swapped for a dynamic subclass with
`SpaceGenerationMixin` first, so `save_pretrained`, `from_pretrained` and the Trainer work unchanged.
"""

from __future__ import annotations

import logging

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from .decoding.architectures import SUPPORTED_MODEL_TYPES, arch_spec
from .decoding.compat import check_transformers_version
from .decoding.configuration import SpaceConfig
from .decoding.gated import has_gated_adapters, install_gated_adapters
from .decoding.modeling_space import space_class_for

logger = logging.getLogger(__name__)

__all__ = ["SUPPORTED_MODEL_TYPES", "add_space_support", "check_architecture", "load_space_model"]


def check_architecture(model: PreTrainedModel) -> None:
    """Refuse models outside the table of architectures (`decoding/architectures.py`), naming the supported ones."""
    config = model.config
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(
            f"SPACE does not support the encoder-decoder {type(model).__name__}. Supported decoder-only "
            f"architectures: {', '.join(SUPPORTED_MODEL_TYPES)}."
        )
    try:
        arch_spec(config.model_type)
    except ValueError as error:
        raise ValueError(f"{error} (model class {type(model).__name__})") from None
    if model.get_output_embeddings() is None:
        raise ValueError(f"{type(model).__name__} has no language-model head; load it with AutoModelForCausalLM.")


def add_space_support(model: PreTrainedModel, tokenizer=None, num_mask_tokens: int = 4, **options):
    """Add the mask token, record the settings in `model.config.space_config`, enable `use_space`.

    With a tokenizer the mask token is added to it (as a special token); without one it becomes a new id
    right after the current vocabulary. The new embedding row is the mean of the existing ones, so the
    mask reads like an ordinary token before any training. `options` are further `SpaceConfig` fields;
    `mode="gated"` installs the gated adapters (see `gated.py`). Calling it again with the same settings
    is a no-op apart from the class swap; fields not passed again keep their saved values.
    """
    check_transformers_version()
    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"`model` should be a transformers PreTrainedModel, got {type(model).__name__}.")
    check_architecture(model)
    if SpaceConfig.is_set(model):
        existing = SpaceConfig.of(model)
        space_config = SpaceConfig.from_dict({**existing.to_dict(), **options, "num_mask_tokens": num_mask_tokens})
        space_config.mask_token_id = _reuse_mask_token(existing, space_config, tokenizer)
        _check_mode_change(model, existing, space_config)
    else:
        space_config = SpaceConfig(num_mask_tokens=num_mask_tokens, **options)
        space_config.mask_token_id = _add_mask_token(model, tokenizer, space_config.mask_token)
    space_config.save_to(model)
    model.__class__ = space_class_for(type(model))
    if space_config.mode == "gated":
        install_gated_adapters(model, space_config)
    if not hasattr(model.generation_config, "use_space"):
        model.generation_config.use_space = False
    return model


def load_space_model(path, *args, **kwargs):
    """`from_pretrained` through the SPACE class of the saved architecture, so gated adapters load too.

    `AutoModelForCausalLM.from_pretrained` without remote code builds the plain class, which drops the
    adapter weights of a gated model (it reports them unused); this builds `Space<Class>` instead.
    Arguments are `from_pretrained`'s.
    """
    config = kwargs.pop("config", None) or AutoConfig.from_pretrained(path, **_config_kwargs(kwargs))
    model_class = AutoModelForCausalLM._model_mapping[type(config)]
    return space_class_for(model_class).from_pretrained(path, *args, config=config, **kwargs)


def _config_kwargs(kwargs: dict) -> dict:
    names = ("revision", "trust_remote_code", "cache_dir", "local_files_only", "token", "subfolder")
    return {name: kwargs[name] for name in names if name in kwargs}


def _check_mode_change(model: PreTrainedModel, existing: SpaceConfig, requested: SpaceConfig) -> None:
    """Refuse mode changes that would silently lose or mix trained weights."""
    installed = has_gated_adapters(model)
    if existing.mode == "gated" and not installed:
        raise ValueError(
            "This model's SPACE settings say it was trained in 'gated' mode, but it carries no gated adapters: "
            "the plain model class dropped them when loading. Load it with "
            "`transformers_space.load_space_model(path)` (or the SPACE class's `from_pretrained`)."
        )
    if installed and requested.mode != "gated":
        raise ValueError(
            f"This model carries gated SPACE adapters; mode={requested.mode!r} would train or save it without "
            "them. Keep mode='gated', or take them off first with `transformers_space.remove_gated_adapters(model)`."
        )


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
    head = model.get_output_embeddings()
    with torch.no_grad():
        mean = embeddings.weight[:rows].mean(0)
        head_mean = head.weight[:rows].mean(0)
        if mask_token_id >= rows:
            model.resize_token_embeddings(mask_token_id + 1, mean_resizing=False)
            embeddings, head = model.get_input_embeddings(), model.get_output_embeddings()
        embeddings.weight[mask_token_id] = mean
        if head.weight.data_ptr() != embeddings.weight.data_ptr():
            # never predicted (its logit is suppressed), but deterministic, so adapters reload exactly
            head.weight[mask_token_id] = head_mean
    logger.info("Added SPACE mask token %r as id %d", mask_token, mask_token_id)
    return mask_token_id


def _reuse_mask_token(saved: SpaceConfig, requested: SpaceConfig, tokenizer) -> int:
    if saved.num_mask_tokens != requested.num_mask_tokens or saved.mask_token != requested.mask_token:
        raise ValueError(
            f"This model already has SPACE settings {saved.to_dict()}, which differ from the requested "
            f"num_mask_tokens={requested.num_mask_tokens}, mask_token={requested.mask_token!r}. "
            "Use the saved settings, or start from the original model."
        )
    if tokenizer is not None and tokenizer.convert_tokens_to_ids(saved.mask_token) != saved.mask_token_id:
        raise ValueError(
            f"The tokenizer does not map {saved.mask_token!r} to the model's mask token id {saved.mask_token_id}; "
            "load the tokenizer saved with this SPACE model."
        )
    return saved.mask_token_id

"""Model set-up per training mode, and the checks that keep SPACE settings consistent across runs.

- "full": SPACE support added, every weight trainable.
- "lora": SPACE support added, then peft LoRA on the attention and MLP projections plus the mask token's
  embedding row (`trainable_token_indices`); `merge_and_unload()` gives a plain SPACE model back.
- "gated": SPACE support added with `mode="gated"`: gated adapters installed, the base frozen (also when the
  model already carries them: `from_pretrained` of a saved gated model leaves every weight trainable). A larger
  `adapter_rank` than the carried adapters' (same alpha / rank) grows them (`grow_gated_adapters`). On a bf16 or
  fp16 base the adapters train in fp32 (as peft's `autocast_adapter_dtype` does): AdamW steps on half-precision
  weights round away, and the base stays in half precision, where its products are fast (bf16 on AMX). With
  `draft_head_width` only the draft head trains: it is trained on top of a trained adapter, which stays as it is
  (`draft_head.py`), unless `draft_head_trains_adapter` asks for both.
"""

from __future__ import annotations

import json
import logging
import os

import torch
from transformers import PreTrainedModel

from ..decoding.configuration import MEASURED_FIELDS, SpaceConfig
from ..decoding.draft_head import draft_head_of
from ..decoding.gated import GatedLoraAdapter, default_target_modules, gated_parameters, has_gated_adapters
from ..modeling import add_space_support

logger = logging.getLogger(__name__)

SETTINGS_FILE = "space_config.json"


def prepare_model(model, tokenizer, space_config: SpaceConfig):
    """Returns (model ready to train, the SpaceConfig it now carries, mask token id filled in)."""
    if _is_peft_model(model):
        raise TypeError(
            "SpaceTrainer applies LoRA itself (mode='lora'); pass the base transformers model, not a PeftModel."
        )
    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"`model` should be a transformers PreTrainedModel, got {type(model).__name__}.")
    grows = _grows_adapters(model, space_config)
    check_existing_settings(model, space_config, grows)
    if grows:
        grow_gated_adapters(model, space_config.adapter_rank)
    model = add_space_support(model, tokenizer, **space_config.settings())
    resolved = SpaceConfig.of(model)
    if resolved.mode == "full":
        model.requires_grad_(True)
    elif resolved.mode == "lora":
        model = apply_lora(model, resolved)
    else:
        model.requires_grad_(False)
        head = draft_head_of(model)
        trainable = [] if head is None else list(head.parameters())
        if head is None or resolved.draft_head_trains_adapter:
            trainable += list(gated_parameters(model))
        for parameter in trainable:
            parameter.requires_grad_(True)
            if parameter.dtype in (torch.bfloat16, torch.float16):
                parameter.data = parameter.data.float()
    return model, resolved


def check_existing_settings(model: PreTrainedModel, requested: SpaceConfig, grows_adapters: bool) -> None:
    """A model that already has SPACE settings may be trained further only with the same mask layout (and the
    same adapters, unless `grows_adapters`: `_grows_adapters` said the request grows them)."""
    if not SpaceConfig.is_set(model):
        return
    saved = SpaceConfig.of(model)
    names = ("num_mask_tokens", "mask_token")
    if saved.mode == "gated" and has_gated_adapters(model) and requested.mode == "gated":
        names += ("adapter_target_modules", "per_position_mask_embeddings")
        if not grows_adapters:
            names += ("adapter_rank", "adapter_alpha")
    differences = saved.differences(requested, names)
    if differences:
        changes = ", ".join(f"{name}={new!r} (model: {old!r})" for name, (old, new) in differences.items())
        grow = ""
        if "adapter_rank" in differences:
            scale = saved.adapter_alpha / saved.adapter_rank
            grow = (f" To grow its adapters instead, ask for a larger adapter_rank with adapter_alpha = {scale:g} x "
                    "adapter_rank.")
        raise ValueError(
            f"This model already has SPACE settings from earlier preparation or training (mode {saved.mode!r}); "
            f"mode {requested.mode!r} training asks for {changes}. Its mask token was set up for the saved "
            "settings: train with them (`SpaceConfig(...)` with the model's values), or start from the original "
            f"model.{grow}"
        )


def _grows_adapters(model: PreTrainedModel, requested: SpaceConfig) -> bool:
    """A gated model asked for more rank at the same scale (alpha / rank): its adapters are grown, not refused."""
    if requested.mode != "gated" or not has_gated_adapters(model) or not SpaceConfig.is_set(model):
        return False
    saved = SpaceConfig.of(model)
    return (requested.adapter_rank > saved.adapter_rank
            and requested.adapter_alpha * saved.adapter_rank == saved.adapter_alpha * requested.adapter_rank)


def grow_gated_adapters(model: PreTrainedModel, rank: int) -> PreTrainedModel:
    """Raise the rank of the model's gated adapters without changing what they compute.

    Why: a trained adapter that has reached what its rank can learn keeps its training when it gets more
    capacity, instead of starting over at the larger rank. Each adapter keeps its directions; the new ones start
    as a fresh adapter's do (random A rows, zero B columns), and alpha grows with the rank, so alpha / rank and
    every mask position's output stay exactly as they were. The model's `SpaceConfig` records the new rank.
    """
    space_config = SpaceConfig.of(model)
    if not has_gated_adapters(model) or space_config.mode != "gated":
        raise ValueError("`grow_gated_adapters` needs a model with gated SPACE adapters (mode 'gated').")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= space_config.adapter_rank:
        raise ValueError(f"`rank` should be an int above the adapters' rank {space_config.adapter_rank}, got {rank!r}.")
    for adapter in (module for module in model.modules() if isinstance(module, GatedLoraAdapter)):
        old_a, old_b = adapter.lora_A.weight, adapter.lora_B.weight
        grown = GatedLoraAdapter(old_a.shape[1], old_b.shape[0], rank, adapter.scaling * rank, 0.0,
                                 adapter.positions, dtype=old_a.dtype, device=old_a.device)
        with torch.no_grad():
            grown.lora_A.weight[: old_a.shape[0]] = old_a
            grown.lora_B.weight[:, : old_b.shape[1]] = old_b
        adapter.lora_A, adapter.lora_B = grown.lora_A, grown.lora_B  # new tensors: decoding copies are remade
    scale = space_config.adapter_alpha / space_config.adapter_rank
    space_config.adapter_rank, space_config.adapter_alpha = rank, scale * rank
    space_config.save_to(model)
    model.get_input_embeddings().space_mask.settings.update(rank=rank, alpha=space_config.adapter_alpha)
    for parameter in gated_parameters(model):
        parameter.requires_grad_(True)
    logger.info("Gated adapters grown to rank %d (alpha %g); what they compute is unchanged.", rank,
                space_config.adapter_alpha)
    return model


def apply_lora(model: PreTrainedModel, space_config: SpaceConfig):
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as error:  # pragma: no cover - peft is in the train and test extras
        raise ImportError("mode='lora' needs peft: `pip install 'transformers-space[train]'`.") from error
    lora_config = LoraConfig(
        r=space_config.adapter_rank,
        lora_alpha=space_config.adapter_alpha,
        lora_dropout=space_config.adapter_dropout,
        target_modules=space_config.adapter_target_modules or default_target_modules(model),
        trainable_token_indices=[space_config.mask_token_id],
        fan_in_fan_out=model.config.model_type == "gpt2",  # GPT-2's Conv1D stores weights transposed
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora_config)


def save_settings(output_dir: str, space_config: SpaceConfig) -> None:
    with open(os.path.join(output_dir, SETTINGS_FILE), "w") as handle:
        json.dump(space_config.to_dict(), handle, indent=2, sort_keys=True)


def check_checkpoint_settings(checkpoint: str, space_config: SpaceConfig) -> None:
    """Resuming needs the settings the checkpoint was trained with."""
    path = os.path.join(checkpoint, SETTINGS_FILE)
    if not os.path.isfile(path):
        config_path = os.path.join(checkpoint, "config.json")
        saved = None
        if os.path.isfile(config_path):
            with open(config_path) as handle:
                saved = json.load(handle).get("space_config")
        if not saved:
            raise ValueError(f"{checkpoint} holds no SPACE settings ({SETTINGS_FILE}); it is not a SpaceTrainer "
                             "checkpoint.")
    else:
        with open(path) as handle:
            saved = json.load(handle)
    saved_config = SpaceConfig.from_dict(saved)
    measured = [name for name in MEASURED_FIELDS if name != "mask_token_id"]  # may differ; the mask id must not
    names = tuple(name for name in space_config.to_dict() if name not in measured)
    differences = saved_config.differences(space_config, names)
    if differences:
        changes = ", ".join(f"{name}: checkpoint {old!r}, now {new!r}" for name, (old, new) in differences.items())
        raise ValueError(
            f"Cannot resume from {checkpoint}: its SPACE settings differ ({changes}). Resume with the checkpoint's "
            "settings, or start a new run in another output_dir."
        )


def _is_peft_model(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)

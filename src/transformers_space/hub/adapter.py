"""Gated SPACE adapters as small separate folders: what a gated model adds to its base, a few MB.

`save_space_adapter` writes the adapter and mask-embedding weights and the `SpaceConfig`; `load_space_adapter`
puts them back onto the base model. The default model's trained adapter ships in `hub_configs/`.

Weights may be split into shards the way transformers splits a checkpoint (`max_shard_size`: files
`space_adapter-00001-of-0000N.safetensors` and an index `space_adapter.safetensors.index.json` mapping each
tensor to its file), so an adapter with a draft head can live in a git repository that limits file sizes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..decoding.configuration import SpaceConfig
from ..modeling import add_space_support

ADAPTER_WEIGHTS = "space_adapter.safetensors"
ADAPTER_WEIGHTS_INDEX = ADAPTER_WEIGHTS + ".index.json"  # present when the weights are sharded
ADAPTER_SHARD_PATTERN = ADAPTER_WEIGHTS.replace(".safetensors", "{suffix}.safetensors")  # suffix "": one file
ADAPTER_CONFIG = "space_adapter_config.json"
SHIPPED_ADAPTER = "smollm2-135m-space-gated"  # in hub_configs/: the default model's trained adapter
DEFAULT_BASE = "transformers-space:default"  # the offline SmolLM2-135M-Instruct of `assets.py`
CODER_BASE = "transformers-space:coder"  # the optional offline Qwen2.5-Coder-0.5B-Instruct of `assets.py`


def offline_base_dir(name: str) -> Path | None:
    """The folder of an offline base model named as DEFAULT_BASE or CODER_BASE (converted on first use); None for
    any other name."""
    from .. import assets

    folders = {DEFAULT_BASE: assets.default_model_dir, CODER_BASE: assets.coder_model_dir}
    return folders[name]() if name in folders else None


def shipped_adapter_dir() -> Path:
    """The gated adapter for the offline default model that ships with the package (package data)."""
    from importlib.resources import files

    return Path(str(files("transformers_space.hub_configs") / SHIPPED_ADAPTER))


def save_space_adapter(
    model, folder: str | Path, base_model: str | None = None, dtype: torch.dtype | None = None,
    max_shard_size: int | str | None = None,
) -> Path:
    """Save only what a gated SPACE model adds to its base (adapters, mask embedding, draft head): a few MB.

    `base_model` names what to load the adapter onto (a folder, a Hub id, DEFAULT_BASE or CODER_BASE); by default
    the model's own `name_or_path`. `dtype` (e.g. `torch.bfloat16`) stores the weights smaller; loading casts them
    to the model's dtype. The adapter only acts at mask positions, so its rounding can change drafts, never
    the verified output. `max_shard_size` (bytes, or a string such as "20MB", as `save_pretrained` takes it)
    splits the weights into shards no larger than that, except a single tensor that is larger on its own;
    by default they go into one file. Weight files of an earlier save into `folder` are removed first.
    """
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    if not SpaceConfig.is_set(model) or SpaceConfig.of(model).mode != "gated":
        raise ValueError("Only gated SPACE models have a separable adapter; use `save_pretrained` for the others.")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"`dtype` should be a floating torch.dtype such as torch.bfloat16, got {dtype!r}.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = {
        name: tensor.detach().to(dtype or tensor.dtype).contiguous()
        for name, tensor in model.state_dict().items() if ".space_" in name
    }
    split = split_torch_state_dict_into_shards(  # one file unless `max_shard_size` asks for shards
        weights, filename_pattern=ADAPTER_SHARD_PATTERN,
        max_shard_size=max_shard_size if max_shard_size is not None else sum(
            tensor.nbytes for tensor in weights.values()),
    )
    for stale in [*folder.glob(ADAPTER_SHARD_PATTERN.format(suffix="*")), folder / ADAPTER_WEIGHTS_INDEX]:
        stale.unlink(missing_ok=True)
    for filename, names in split.filename_to_tensors.items():
        save_file({name: weights[name] for name in names}, folder / filename, metadata={"format": "pt"})
    if split.is_sharded:
        (folder / ADAPTER_WEIGHTS_INDEX).write_text(json.dumps(
            {"metadata": split.metadata, "weight_map": split.tensor_to_filename}, indent=2, sort_keys=True
        ) + "\n")
    base = base_model or getattr(model.config, "_name_or_path", None) or DEFAULT_BASE
    (folder / ADAPTER_CONFIG).write_text(json.dumps(
        {"base_model": str(base), "model_type": model.config.model_type,
         "space_config": SpaceConfig.of(model).to_dict()}, indent=2
    ) + "\n")
    return folder


def load_space_adapter(folder: str | Path, model=None, tokenizer=None, **from_pretrained_kwargs):
    """The base model (given, or named in the adapter's config) with the saved gated adapter: (model, tokenizer).

    The adapter's weights must match the installed adapter exactly (no missing or unexpected key).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    settings = json.loads((folder / ADAPTER_CONFIG).read_text())
    if model is None:
        base = offline_base_dir(settings["base_model"]) or settings["base_model"]
        model = AutoModelForCausalLM.from_pretrained(base, **from_pretrained_kwargs)
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(base)
    saved = SpaceConfig.from_dict(settings["space_config"])
    model = add_space_support(model, tokenizer, **saved.settings())
    space_config = SpaceConfig.of(model)
    if space_config.mask_token_id != saved.mask_token_id:
        raise ValueError(
            f"The base gives the mask token id {space_config.mask_token_id}, the adapter was "
            f"trained with {saved.mask_token_id}: load the adapter onto its own base model."
        )
    space_config.acceptance_rates = saved.acceptance_rates  # measured with these adapter weights
    space_config.acceptance_rates_by_kind = saved.acceptance_rates_by_kind
    space_config.save_to(model)
    weights = read_adapter_weights(folder)
    expected = {name for name in model.state_dict() if ".space_" in name}
    if set(weights) != expected:
        raise ValueError(
            f"{folder} does not fit this model: missing {sorted(expected - set(weights))[:3]}, unexpected "
            f"{sorted(set(weights) - expected)[:3]}."
        )
    model.load_state_dict(weights, strict=False)
    return model.eval(), tokenizer


def read_adapter_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The weights of an adapter folder, from its one file or from every shard its index names."""
    from safetensors.torch import load_file

    index = folder / ADAPTER_WEIGHTS_INDEX
    if not index.is_file():
        if not (folder / ADAPTER_WEIGHTS).is_file():
            raise ValueError(f"{folder} has no {ADAPTER_WEIGHTS} (or {ADAPTER_WEIGHTS_INDEX}): save the adapter "
                             "with `save_space_adapter`.")
        return load_file(folder / ADAPTER_WEIGHTS)
    weight_map = json.loads(index.read_text())["weight_map"]
    missing = sorted({name for name in weight_map.values() if not (folder / name).is_file()})
    if missing:
        raise ValueError(f"{folder} lacks the shards {missing} that {ADAPTER_WEIGHTS_INDEX} names; copy the whole "
                         "adapter folder.")
    weights: dict[str, torch.Tensor] = {}
    for name in sorted(set(weight_map.values())):
        weights.update(load_file(folder / name))
    return weights

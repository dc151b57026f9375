"""The adapter folders shipped in hub_configs/: each one's weights match its own settings, and every file fits the
repository's 25 MB limit for a tracked file. The base models are not in CI (`scripts/install_assets.sh`), so
decoding with them is measured in BENCHMARKS.md; this checks what can go wrong without them: a folder whose
config and weights disagree (a head saved without `draft_head_width`, a missing shard, another rank)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from transformers_space import SpaceConfig
from transformers_space.hub import ADAPTER_CONFIG
from transformers_space.hub.adapter import read_adapter_weights

HUB_CONFIGS = Path(__file__).resolve().parents[1] / "hub_configs"
ADAPTER_FOLDERS = sorted(folder for folder in HUB_CONFIGS.iterdir() if (folder / ADAPTER_CONFIG).is_file())
FILE_LIMIT = 25 * 1024 * 1024


def test_the_shipped_adapters_are_found():
    assert {folder.name for folder in ADAPTER_FOLDERS} >= {
        "smollm2-135m-space-gated", "qwen2.5-coder-0.5b-space-gated"}


@pytest.mark.parametrize("folder", ADAPTER_FOLDERS, ids=lambda folder: folder.name)
def test_shipped_adapter_fits_its_settings(folder):
    settings = json.loads((folder / ADAPTER_CONFIG).read_text())
    space_config = SpaceConfig.from_dict(settings["space_config"])
    assert space_config.mode == "gated" and settings["base_model"].startswith("transformers-space:")
    assert len(space_config.acceptance_rates) == space_config.num_mask_tokens  # calibrated for `auto`
    for rates in (space_config.acceptance_rates_by_kind or {}).values():
        assert len(rates) == space_config.num_mask_tokens

    weights = read_adapter_weights(folder)
    lora_a = [tensor for name, tensor in weights.items() if name.endswith("space_adapter.lora_A.weight")]
    assert lora_a and all(tensor.shape[0] == space_config.adapter_rank for tensor in lora_a)
    head = {name: tensor for name, tensor in weights.items() if ".space_draft_head." in name}
    if space_config.draft_head_width:
        assert head["lm_head.space_draft_head.up.weight"].shape[0] == space_config.draft_head_width
    else:
        assert not head
    mask = weights["model.embed_tokens.space_mask.weight"]
    if space_config.per_position_mask_embeddings:
        assert mask.shape[0] == space_config.num_mask_tokens and mask.dim() == 2
    else:
        assert mask.dim() == 1


@pytest.mark.parametrize("folder", ADAPTER_FOLDERS, ids=lambda folder: folder.name)
def test_shipped_files_fit_the_repository_limit(folder):
    for path in folder.iterdir():
        assert path.stat().st_size < FILE_LIMIT, f"{path} is over 25 MB: save with max_shard_size='20MB'"

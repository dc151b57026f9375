"""hub_configs presets: one per supported family, covering every supported architecture and its layers."""

import pytest
from tiny_models import ARCHITECTURES, tiny_model

from transformers_space import SUPPORTED_MODEL_TYPES
from transformers_space.presets import all_presets, preset_for


def test_every_supported_architecture_has_exactly_one_preset():
    covered = [t for preset in all_presets().values() for t in preset["model_types"]]
    assert sorted(covered) == sorted(SUPPORTED_MODEL_TYPES)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_preset_target_modules_exist_in_the_model(arch):
    preset = preset_for(arch)
    layer_names = {name.split(".")[-1] for name, _ in tiny_model(arch).named_modules()}
    assert set(preset["adapter_target_modules"]) <= layer_names
    assert preset["num_mask_tokens"] >= 1 and preset["chat_template_notes"]


def test_unknown_model_type():
    with pytest.raises(ValueError, match="No SPACE preset for model type 'opt'"):
        preset_for("opt")

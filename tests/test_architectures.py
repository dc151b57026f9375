"""The one table of architectures: every entry has a tiny test config, real adapter targets, and is refused
nowhere; everything else is refused with the list of supported ones."""

import pytest
from tiny_models import ARCHITECTURES, CONFIGS, tiny_model
from transformers import AutoModelForCausalLM, BartConfig, OPTConfig

from transformers_space import SUPPORTED_MODEL_TYPES, add_space_support
from transformers_space.decoding.architectures import ARCHITECTURES as TABLE
from transformers_space.decoding.architectures import arch_spec
from transformers_space.decoding.gated import default_target_modules


def test_the_test_matrix_is_the_table():
    """A new entry in the table without a tiny config fails here (add it to tests/tiny_models.py)."""
    assert sorted(CONFIGS) == sorted(SUPPORTED_MODEL_TYPES) == sorted(ARCHITECTURES)
    model_types = [t for spec in TABLE for t in spec.model_types]
    assert len(model_types) == len(set(model_types)), "a model type belongs to two families"


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_adapter_targets_are_real_layers_of_the_family(arch):
    model = tiny_model(arch)
    layer_names = {name.split(".")[-1] for name, _ in model.named_modules()}
    spec = arch_spec(arch)
    assert set(spec.adapter_targets) <= layer_names
    assert default_target_modules(model) == list(spec.adapter_targets)
    assert spec.chat_notes


def test_unknown_architecture_is_refused_naming_the_supported_ones():
    opt = AutoModelForCausalLM.from_config(OPTConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1,
                                                     num_attention_heads=2, ffn_dim=32, word_embed_proj_dim=16))
    with pytest.raises(ValueError, match="'opt'") as info:
        add_space_support(opt)
    assert all(t in str(info.value) for t in SUPPORTED_MODEL_TYPES)
    bart = AutoModelForCausalLM.from_config(BartConfig(vocab_size=32, d_model=16, encoder_layers=1, decoder_layers=1,
                                                       encoder_attention_heads=2, decoder_attention_heads=2,
                                                       encoder_ffn_dim=32, decoder_ffn_dim=32))
    with pytest.raises(ValueError, match="Supported decoder-only"):
        add_space_support(bart)


def test_deprecated_presets_still_answer_from_the_table():
    from transformers_space import presets

    with pytest.warns(DeprecationWarning, match="architectures"):
        llama = presets.preset_for("mistral")
    assert llama["family"] == "llama" and llama["adapter_target_modules"] == list(arch_spec("llama").adapter_targets)
    with pytest.warns(DeprecationWarning):
        assert sorted(presets.all_presets()) == sorted(spec.family for spec in TABLE)
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="No SPACE preset for model type 'opt'"):
        presets.preset_for("opt")


@pytest.mark.parametrize("old", ["autotune", "candidates", "compat", "configuration", "gated", "generation",
                                 "kernels", "layout", "modeling_space", "planning", "remote_code", "verify"])
def test_moved_modules_keep_their_old_import_path(old):
    import importlib
    import sys
    import warnings

    sys.modules.pop(f"transformers_space.{old}", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(f"transformers_space.{old}")
    assert module is importlib.import_module(f"transformers_space.decoding.{old}")
    assert any(issubclass(w.category, DeprecationWarning) and f"decoding.{old}" in str(w.message) for w in caught)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_pass_logits_are_the_models_own_logits(arch):
    """SPACE runs the body and the head separately: `lm_head_of` must give exactly what the family's forward
    gives (soft-capped, scaled and divided logits included), or sampling and returned scores would differ."""
    import torch

    from transformers_space.decoding.forward import lm_head_of

    model = tiny_model(arch, seed=3)
    ids = torch.randint(1, 40, (2, 7), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(ids).logits
        hidden = model.base_model(ids).last_hidden_state
        assert torch.equal(lm_head_of(model)(hidden), expected)

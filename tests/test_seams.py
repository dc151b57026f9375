"""The code's seams: one schema (`SpaceConfig.of` / `save_to`), generate's options resolved once into a plan,
and pass kernels the loop opens without knowing them."""

import contextlib

import pytest
import torch
from tiny_models import random_prompts, tiny_model
from transformers import AutoModelForCausalLM

from transformers_space import SpaceConfig, SpaceLayoutPlan, add_space_support, space_decoding
from transformers_space.decoding import kernels
from transformers_space.decoding.autotune import calibrate_acceptance
from transformers_space.decoding.kernels import PassKernels, kernels_named


def test_measured_rates_survive_add_space_support_and_save_load(tmp_path):
    model = tiny_model("llama", seed=0, num_mask_tokens=3, drafty=True)
    rates = calibrate_acceptance(model, [random_prompts(1, 5, s) for s in range(2)], max_new_tokens=12)
    assert SpaceConfig.of(model).acceptance_rates == rates
    add_space_support(model, num_mask_tokens=3)  # again, as a trainer or a loader does
    assert SpaceConfig.of(model).acceptance_rates == rates
    model.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path)
    assert SpaceConfig.of(reloaded).acceptance_rates == rates
    assert SpaceConfig.of(reloaded).to_dict() == SpaceConfig.of(model).to_dict()


def test_the_schema_reads_and_refuses():
    plain = AutoModelForCausalLM.from_config(tiny_model("llama").config.__class__(
        vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2))
    assert not SpaceConfig.is_set(plain)
    with pytest.raises(ValueError, match="no SPACE settings"):
        SpaceConfig.of(plain)
    with pytest.raises(ValueError, match="acceptance_rates"):
        SpaceConfig.from_dict({"num_mask_tokens": 2, "mask_token_id": 5, "acceptance_rates": [0.5, 1.5]})
    with pytest.raises(TypeError):  # measured, not a setting
        SpaceConfig(acceptance_rates=[0.5])
    for bad in ({}, {"code": [1.5]}, [[0.5]], {3: [0.5]}):
        with pytest.raises(ValueError, match="acceptance_rates"):
            SpaceConfig.from_dict({"num_mask_tokens": 2, "mask_token_id": 5, "acceptance_rates_by_kind": bad})


@pytest.mark.parametrize("layout", [None, SpaceLayoutPlan(2, (0, 1)), SpaceLayoutPlan(1, (0,))])
def test_a_registered_pass_kernel_is_opened_by_the_loop_without_touching_it(layout, monkeypatch):
    """A new kernel is one PassKernels subclass and one registry entry; the loop opens its contexts."""
    opened = {"generate": 0, "pass": 0}

    class CountingKernels(PassKernels):
        name = "counting"

        def around_generate(self, model):
            opened["generate"] += 1
            return super().around_generate(model)

        def around_pass(self, model):
            opened["pass"] += 1
            return contextlib.nullcontext()

    monkeypatch.setitem(kernels.PASS_KERNELS, "counting", CountingKernels())
    model = tiny_model("qwen2", seed=1, num_mask_tokens=2, drafty=True)
    prompt = random_prompts(2, 5, 3)
    plain = model.generate(prompt, max_new_tokens=10, do_sample=False)
    plan = SpaceLayoutPlan(2, (0, 1, 2), kernels="counting") if layout is None else \
        SpaceLayoutPlan(layout.num_masks, layout.groups, kernels="counting")
    out = model.generate(prompt, max_new_tokens=10, do_sample=False, use_space=True, space_layout=plan,
                         return_dict_in_generate=True)
    assert torch.equal(out.sequences, plain)
    passes = max(len(counts) for counts in out.tokens_per_pass)
    assert opened["generate"] == 1 and opened["pass"] >= passes  # forward + drafts of each pass
    assert out.space_layout["kernels"] == "counting"


def test_unknown_kernels_and_layouts_are_refused_before_any_pass():
    model = tiny_model("llama", seed=0, num_mask_tokens=2)
    prompt = random_prompts(1, 4, 0)
    with pytest.raises(ValueError, match="Unknown pass kernels 'gpu_magic'; registered: linear, weights_first"):
        model.generate(prompt, max_new_tokens=3, use_space=True, space_layout=SpaceLayoutPlan(1, (0,), "gpu_magic"))
    with pytest.raises(ValueError, match="trained with 2"):
        model.generate(prompt, max_new_tokens=3, use_space=True, space_layout=SpaceLayoutPlan(3, (0,)))
    with pytest.raises(ValueError, match="either `num_mask_tokens` or `space_layout`"):
        model.generate(prompt, max_new_tokens=3, use_space=True, num_mask_tokens=1,
                       space_layout=SpaceLayoutPlan.full(1))
    with pytest.raises(ValueError, match="kernels"):
        SpaceLayoutPlan(1, (0,), kernels="")
    assert kernels_named("linear").name == "linear"


def test_direct_custom_generate_gets_the_same_checks():
    """`generate(custom_generate=space_decoding)` skips the mixin; the loop's one check still refuses."""
    model = tiny_model("llama", seed=0, num_mask_tokens=2)
    prompt = random_prompts(1, 4, 0)
    base_generate = super(type(model), model).generate
    with pytest.raises(ValueError, match="beam search"):
        base_generate(prompt, max_new_tokens=3, num_beams=2, custom_generate=space_decoding)
    with pytest.raises(ValueError, match="prompt_lookup_num_tokens"):
        base_generate(prompt, max_new_tokens=3, prompt_lookup_num_tokens=3, custom_generate=space_decoding)
    mask_id = SpaceConfig.of(model).mask_token_id
    with pytest.raises(ValueError, match="mask token"):
        base_generate(torch.tensor([[1, mask_id]]), max_new_tokens=3, custom_generate=space_decoding)
    plain = model.generate(prompt, max_new_tokens=6, do_sample=False)
    assert torch.equal(base_generate(prompt, max_new_tokens=6, do_sample=False, custom_generate=space_decoding), plain)

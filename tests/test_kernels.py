"""The weights-first pass kernel (kernels.py): F.linear's values to rounding, taken only where it should be,
switched per thread and per model, never by replacing anything of torch or transformers."""

import threading

import pytest
import torch
import torch.nn.functional as F
from tiny_models import random_prompts, tiny_config

import transformers_space.decoding.kernels as kernels
from transformers_space import add_space_support
from transformers_space.decoding.kernels import (
    MAX_ROWS,
    MIN_WEIGHT_SIDE,
    WeightsFirstKernels,
    enable_weights_first,
    uses_weights_first,
    weights_first_linear,
    weights_first_products,
)
from transformers_space.decoding.planning import SpaceLayoutPlan

WIDE = MIN_WEIGHT_SIDE  # layers at least this wide take the weights-first product


@pytest.mark.parametrize("shape", [(1, WIDE), (5, WIDE), (2, 7, WIDE), (3, 1, WIDE)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_weights_first_product_is_taken_and_matches_f_linear(shape, with_bias):
    generator = torch.Generator().manual_seed(len(shape) * 10 + shape[-2])
    x = torch.randn(*shape, generator=generator, dtype=torch.float64)
    weight = torch.randn(2 * WIDE, WIDE, generator=generator, dtype=torch.float64)
    bias = torch.randn(2 * WIDE, generator=generator, dtype=torch.float64) if with_bias else None
    assert uses_weights_first(x, weight)
    out = weights_first_linear(x, weight, bias)
    assert out.shape == (*shape[:-1], 2 * WIDE) and out.is_contiguous()
    by_hand = torch.mm(weight, x.reshape(-1, WIDE).t()).t().reshape(*shape[:-1], 2 * WIDE)
    assert torch.equal(out, by_hand if bias is None else by_hand + bias)  # really the weights-first product
    torch.testing.assert_close(out, F.linear(x, weight, bias), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("x_shape", "w_shape"), [((2, MAX_ROWS, WIDE), (WIDE, WIDE)), ((3, WIDE), (16, WIDE)),
                                                  ((3, 16), (WIDE, 16))], ids=["long-input", "thin-out", "thin-in"])
def test_long_inputs_and_thin_weights_keep_f_linear_exactly(x_shape, w_shape):
    x, weight = torch.randn(*x_shape), torch.randn(*w_shape)
    assert not uses_weights_first(x, weight)
    assert torch.equal(weights_first_linear(x, weight), F.linear(x, weight))


def wide_model(seed: int = 0, arch: str = "llama", **overrides):
    torch.manual_seed(seed)
    from transformers import AutoModelForCausalLM

    config = tiny_config(arch, hidden_size=WIDE, intermediate_size=2 * WIDE, **overrides)
    return add_space_support(AutoModelForCausalLM.from_config(config).eval(), None, num_mask_tokens=3)


def count_weights_first(monkeypatch) -> list[int]:
    calls = []
    original = kernels.weights_first_linear

    def counting(x, weight, bias=None):
        calls.append(int(uses_weights_first(x, weight)))
        return original(x, weight, bias)

    monkeypatch.setattr(kernels, "weights_first_linear", counting)
    return calls


def test_switch_is_per_model_and_per_context_and_replaces_nothing_global(monkeypatch):
    linear_before, functional_linear = torch.nn.Linear.forward, F.linear
    model, other = wide_model(), wide_model(seed=1)
    calls = count_weights_first(monkeypatch)
    ids = random_prompts(1, 3, 0)
    with torch.no_grad():
        plain = model(ids).logits
        with weights_first_products():
            assert torch.equal(model(ids).logits, plain)  # not enabled for this model: F.linear as always
        assert calls == []
        enable_weights_first(model)
        assert torch.equal(model(ids).logits, plain)  # enabled, but the switch is off
        assert calls == []
        with weights_first_products():
            switched = model(ids).logits
            other(ids)  # another model is untouched
        assert sum(calls) > 0 and len(calls) == sum(1 for m in model.modules() if type(m) is torch.nn.Linear)
        torch.testing.assert_close(switched, plain, rtol=1e-4, atol=1e-4)
        with pytest.raises(RuntimeError, match="boom"), weights_first_products():
            raise RuntimeError("boom")
        calls.clear()
        model(ids)
        assert calls == []  # the switch closed with the exception
    assert torch.nn.Linear.forward is linear_before and F.linear is functional_linear


def test_threads_do_not_see_each_others_switch():
    """One thread decodes weights-first while another runs plain forwards: the plain ones stay bit-identical."""
    model = enable_weights_first(wide_model())
    ids = random_prompts(2, 5, 1)
    with torch.no_grad():
        reference = model(ids).logits
    results, errors, started = [], [], threading.Barrier(2)

    def weights_first_thread():
        try:
            started.wait()
            with torch.no_grad(), WeightsFirstKernels().around_pass(model):
                for _ in range(30):
                    model(ids)
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    def plain_thread():
        try:
            started.wait()
            with torch.no_grad():
                results.extend(model(ids).logits for _ in range(30))
        except Exception as error:  # pragma: no cover
            errors.append(error)

    threads = [threading.Thread(target=weights_first_thread), threading.Thread(target=plain_thread)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert all(torch.equal(logits, reference) for logits in results)
    assert not kernels.weights_first_active()


@pytest.mark.parametrize("arch", ["llama", "qwen2", "phi3"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_space_with_weights_first_plans_is_lossless(arch, seed, monkeypatch):
    model = wide_model(seed, arch)
    calls = count_weights_first(monkeypatch)
    prompts = random_prompts(3, 6, seed)
    plain = model.generate(prompts, max_new_tokens=12, do_sample=False)
    for plan in (SpaceLayoutPlan(1, (0, 1), kernels="weights_first"),
                 SpaceLayoutPlan(3, (0, 1, 2, 3), kernels="weights_first")):
        calls.clear()
        space = model.generate(prompts, max_new_tokens=12, do_sample=False, use_space=True, space_layout=plan)
        assert torch.equal(space, plain)
        assert sum(calls) > 0  # the weights-first product really ran

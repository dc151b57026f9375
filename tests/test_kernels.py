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
    pads_single_row,
    two_rows_faster,
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
    rows = x.reshape(-1, WIDE)
    if rows.shape[0] == 1 and pads_single_row(weight):  # as measured on this machine: see the tests below
        rows = torch.cat([rows, rows])
    by_hand = torch.mm(weight, rows.t())[:, : x.reshape(-1, WIDE).shape[0]].t().reshape(*shape[:-1], 2 * WIDE)
    assert torch.equal(out, by_hand if bias is None else by_hand + bias)  # really the weights-first product
    torch.testing.assert_close(out, F.linear(x, weight, bias), rtol=1e-12, atol=1e-12)


def choose_padding(monkeypatch, weight: torch.Tensor, pad: bool) -> None:
    """Fix the measured one-row choice for `weight`'s shape, as a timing on some machine would."""
    monkeypatch.setitem(kernels._pads_single_row, (tuple(weight.shape), weight.dtype, weight.device.type), pad)


@pytest.mark.parametrize("pad", [True, False])
def test_one_row_runs_as_two_rows_where_measured_faster(monkeypatch, pad):
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(3 * WIDE, WIDE, generator=generator)
    bias = torch.randn(3 * WIDE, generator=generator)
    choose_padding(monkeypatch, weight, pad)
    x = torch.randn(1, 1, WIDE, generator=generator)
    out = weights_first_linear(x, weight, bias)
    assert out.shape == (1, 1, 3 * WIDE) and out.is_contiguous()
    row = x.reshape(1, WIDE)
    by_hand = torch.mm(weight, (torch.cat([row, row]) if pad else row).t())[:, 0]
    assert torch.equal(out.reshape(-1), by_hand + bias)  # row 0 of the two-row product, or the one-row product
    torch.testing.assert_close(out, F.linear(x, weight, bias), rtol=1e-5, atol=1e-5)
    several = torch.randn(3, WIDE, generator=generator)  # more rows than one: never padded
    assert torch.equal(weights_first_linear(several, weight), torch.mm(weight, several.t()).t())


def test_padding_choice_is_measured_once_per_shape_and_dtype(monkeypatch):
    measured = []

    def measuring(weight):
        measured.append((tuple(weight.shape), weight.dtype))
        return True

    monkeypatch.setattr(kernels, "two_rows_faster", measuring)
    monkeypatch.setattr(kernels, "_pads_single_row", {})
    first, same_shape, other = torch.randn(WIDE + 1, WIDE), torch.randn(WIDE + 1, WIDE), torch.randn(WIDE + 2, WIDE)
    threads = [threading.Thread(target=pads_single_row, args=(first,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert pads_single_row(same_shape) and pads_single_row(other) and pads_single_row(first.double())
    assert measured == [((WIDE + 1, WIDE), torch.float32), ((WIDE + 2, WIDE), torch.float32),
                        ((WIDE + 1, WIDE), torch.float64)]


def test_two_rows_are_chosen_only_within_the_margin(monkeypatch):
    weight = torch.randn(4 * WIDE, WIDE)
    monkeypatch.setattr(kernels, "PAD_MARGIN", 0.0)  # two rows never take no time at all
    assert two_rows_faster(weight, repeats=2) is False
    monkeypatch.setattr(kernels, "PAD_MARGIN", 1e6)  # nor a million times one row's
    assert two_rows_faster(weight, repeats=2) is True


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

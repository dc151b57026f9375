"""The weights-first product (kernels.py): same values as F.linear, confined to its context."""

import pytest
import torch
import torch.nn.functional as F

from transformers_space.kernels import MAX_ROWS, weights_first_linear, weights_first_products


@pytest.mark.parametrize("shape", [(1, 24), (5, 24), (2, 7, 24), (3, 1, 24)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_weights_first_linear_matches_f_linear(shape, with_bias):
    generator = torch.Generator().manual_seed(len(shape) * 10 + shape[-2])
    x = torch.randn(*shape, generator=generator, dtype=torch.float64)
    weight = torch.randn(40, 24, generator=generator, dtype=torch.float64)
    bias = torch.randn(40, generator=generator, dtype=torch.float64) if with_bias else None
    out = weights_first_linear(x, weight, bias)
    assert out.shape == (*shape[:-1], 40) and out.is_contiguous()
    torch.testing.assert_close(out, F.linear(x, weight, bias), rtol=1e-12, atol=1e-12)


def test_long_inputs_keep_f_linear_exactly():
    x, weight = torch.randn(2, MAX_ROWS, 24), torch.randn(40, 24)
    assert torch.equal(weights_first_linear(x, weight), F.linear(x, weight))


def test_context_switches_nn_linear_and_always_restores():
    layer = torch.nn.Linear(16, 8)
    x = torch.randn(3, 16)
    original = F.linear
    with weights_first_products():
        assert F.linear is weights_first_linear
        assert torch.equal(layer(x), weights_first_linear(x, layer.weight, layer.bias))
    assert F.linear is original
    with pytest.raises(RuntimeError, match="boom"), weights_first_products():
        raise RuntimeError("boom")
    assert F.linear is original
    with weights_first_products(enabled=False):
        assert F.linear is original

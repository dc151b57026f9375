"""The CPU pass kernels (kernels.py): weights-first products with F.linear's values, grouped-query attention
with repeat_kv's values bit for bit; both confined to their contexts."""

import pytest
import torch
import torch.nn.functional as F
from tiny_models import random_prompts, tiny_model
from transformers.integrations import sdpa_attention

from transformers_space.kernels import MAX_ROWS, grouped_query_attention, weights_first_linear, weights_first_products


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


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma"])
def test_grouped_query_attention_is_bit_identical(arch, monkeypatch):
    """4 query heads on 2 key/value heads, a float 4D mask (as every SPACE pass has): with and without the copy."""
    key_heads = []
    sdpa = F.scaled_dot_product_attention

    def spy(query, key, value, **kwargs):
        key_heads.append((key.shape[1], kwargs.get("enable_gqa", False)))
        return sdpa(query, key, value, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    model = tiny_model(arch, seed=3)
    ids = random_prompts(2, 11, seed=3)
    visible = torch.ones(11, 11, dtype=torch.bool).tril()
    visible[7:, 3:7] = False  # a SPACE-like hole: later rows do not see some earlier ones
    mask = torch.zeros(2, 1, 11, 11).masked_fill(~visible, torch.finfo(torch.float32).min)
    default = sdpa_attention.use_gqa_in_sdpa
    with torch.no_grad():
        copied = model(ids, attention_mask=mask).logits
        with grouped_query_attention():
            assert sdpa_attention.use_gqa_in_sdpa is not default
            grouped = model(ids, attention_mask=mask).logits
    assert sdpa_attention.use_gqa_in_sdpa is default
    assert torch.equal(grouped, copied)
    layers = len(key_heads) // 2
    assert key_heads == [(4, False)] * layers + [(2, True)] * layers  # the copy really was skipped

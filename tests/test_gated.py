"""Gated adapters: the decoding fast path (prepared weights, shared products, mask columns in place) agrees
with the training path (index_put), ordinary rows stay the base model's bit for bit, and SPACE decoding with
gated adapters stays lossless."""

import contextlib
import copy
import random

import pytest
import torch
from test_lossless import assert_lossless
from tiny_models import left_padded, random_prompts, tiny_config, tiny_model

from transformers_space import SpaceLayoutPlan, add_space_support
from transformers_space.decoding import gated
from transformers_space.decoding.gated import (
    decoding_products,
    mask_column_span,
    mask_indices_in_groups,
    masks_per_group,
    remove_gated_adapters,
)


def gated_model(arch: str, seed: int, num_mask_tokens: int = 2, noise: float = 0.3, per_position: bool = False):
    """A tiny drafty model with gated adapters made random (untrained ones add nothing: B = 0); small `noise`
    keeps the drafts often right."""
    model = tiny_model(arch, seed=seed, num_mask_tokens=num_mask_tokens, drafty=True)
    add_space_support(model, num_mask_tokens=num_mask_tokens, mode="gated", per_position_mask_embeddings=per_position)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "space_" in name:
                param.add_(noise * torch.randn(param.shape, generator=generator))
    return model.eval()


@pytest.mark.parametrize(
    "rows, span",
    [
        ([[0, 0, 1, 1]], (2, 4)),
        ([[0, 1, 0, 0], [0, 1, 0, 0]], (1, 2)),
        ([[1, 1, 1]], (0, 3)),
        ([[0, 1, 0, 1]], None),  # not contiguous
        ([[0, 1, 1, 0], [0, 0, 1, 1]], None),  # rows differ
        ([[0, 0, 0]], None),
    ],
)
def test_mask_column_span(rows, span):
    assert mask_column_span(torch.tensor(rows, dtype=torch.bool)) == span


class ProductSpy:
    """Counts the decoding path's low-rank lookups, and how many of them computed a new product."""

    def __init__(self, monkeypatch):
        self.lookups = self.products = 0
        original = gated.SharedLowRank.parts_for

        def parts_for(shared, hidden, start, stop, state):
            self.lookups += 1
            last = state.shared_inputs.get(id(shared))
            self.products += last is None or last[0] is not hidden
            return original(shared, hidden, start, stop, state)

        monkeypatch.setattr(gated.SharedLowRank, "parts_for", parts_for)


@pytest.mark.parametrize("arch, adapters_per_layer, products_per_layer",
                         [("llama", 7, 4), ("gpt2", 4, 4), ("gpt_neox", 4, 4), ("phi3", 4, 4)])
@pytest.mark.parametrize("batch", [1, 3])
def test_decoding_path_matches_training_path(arch, adapters_per_layer, products_per_layer, batch, monkeypatch):
    """Masks in one column span, inside `decoding_products`: the fast path gives the index_put path's logits at
    mask rows (to float rounding) and the plain base model's logits, bit for bit, everywhere else; layers that
    read one input (llama's q/k/v and gate/up) share one low-rank product."""
    model = gated_model(arch, seed=batch)
    mask_id = model.config.space_config["mask_token_id"]
    ids = random_prompts(batch, 9, seed=batch)
    ids[:, 6:9] = mask_id
    positions = model.get_input_embeddings().space_mask.positions
    spy = ProductSpy(monkeypatch)
    with torch.no_grad(), decoding_products(model):
        fast = model(ids).logits
    layers = model.config.num_hidden_layers
    assert positions.span == (6, 9)
    assert (spy.lookups, spy.products) == (adapters_per_layer * layers, products_per_layer * layers)
    with torch.enable_grad():
        reference = model(ids).logits.detach()
    base = remove_gated_adapters(copy.deepcopy(model))
    with torch.no_grad():
        base_logits = base(ids).logits
    assert torch.allclose(fast, reference, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(fast[:, 6:], base_logits[:, 6:], atol=1e-3), "the adapters changed nothing"
    assert torch.equal(fast[:, :6], base_logits[:, :6])


def test_half_precision_adapters_take_fp32_products_on_a_cpu():
    """On a CPU a bf16 product of a few rows costs several times an fp32 one, so the decoding path computes the
    low-rank products in fp32 there: the mask rows get the same deltas to bf16 rounding, every other row is the bf16
    base model's, bit for bit."""
    model = gated_model("llama", seed=3).to(torch.bfloat16)
    mask_id = model.config.space_config["mask_token_id"]
    ids = random_prompts(2, 9, seed=3)
    ids[:, 6:9] = mask_id
    with torch.no_grad(), decoding_products(model):
        fast = model(ids).logits.float()
    adapters = [layer.space_adapter for layer in model.get_input_embeddings().space_mask.positions.layers]
    assert all(adapter.prepared.scaled_b_t.dtype == torch.float32 for adapter in adapters)
    with torch.enable_grad():
        bf16_path = model(ids).logits.detach().float()  # the training path, products in bf16
    base = remove_gated_adapters(copy.deepcopy(model))
    with torch.no_grad():
        assert torch.equal(fast[:, :6], base(ids).logits.float()[:, :6])
    assert not torch.allclose(fast[:, 6:], base(ids).logits.float()[:, 6:], atol=1e-2), "the adapters did nothing"
    assert torch.allclose(fast, bf16_path, atol=0.1, rtol=0.05)  # the same deltas, to bf16 rounding


def test_layers_fed_other_inputs_compute_their_own_product():
    """The shared product is reused only for the very tensor it was computed from."""
    model = gated_model("llama", seed=0)
    mask_id = model.config.space_config["mask_token_id"]
    attention = model.model.layers[0].self_attn
    ids = torch.tensor([[5, 6, mask_id]])
    first, second = torch.randn(2, 1, 3, model.config.hidden_size).unbind(0)
    with torch.no_grad():
        model.get_input_embeddings()(ids)  # records the mask positions, as a forward does
        expected = attention.k_proj(second)  # index_put path
        with decoding_products(model):
            attention.q_proj(first)
            assert torch.allclose(attention.k_proj(second), expected, atol=1e-6)
            assert torch.equal(attention.k_proj(second)[:, :2], expected[:, :2])


def test_decoding_products_are_kept_between_calls_and_remade_when_weights_change():
    model = gated_model("llama", seed=0)
    mask_id = model.config.space_config["mask_token_id"]
    ids = random_prompts(1, 6, seed=0)
    ids[:, 4:] = mask_id
    positions = model.get_input_embeddings().space_mask.positions
    adapters = [layer.space_adapter for layer in positions.layers]
    with torch.no_grad():
        with decoding_products(model):
            first = [adapter.prepared for adapter in adapters]
            with decoding_products(model):  # nested: the outer preparation stays
                assert positions.decoding
            assert positions.decoding and all(prepared is not None for prepared in first)
            model(ids)
        assert not positions.decoding
        assert positions._state().shared_inputs == {}, "a forward's tensor was kept"
        with decoding_products(model):  # nothing changed: the same copies
            assert [adapter.prepared for adapter in adapters] == first
        adapters[0].lora_B.weight.add_(1.0)  # weights changed between two generate calls
        with decoding_products(model):
            assert adapters[0].prepared is not first[0]
            fast = model(ids).logits
        outside = model(ids).logits  # context closed: the index_put path, even with copies in memory
    with torch.enable_grad():
        reference = model(ids).logits.detach()
    assert torch.allclose(fast, reference, atol=1e-5, rtol=1e-5)
    assert torch.equal(outside, reference)


def test_short_generate_calls_reuse_the_copies(monkeypatch):
    """SPACE as an assistant calls generate for a few tokens at a time; the copies are made once."""
    model = gated_model("llama", seed=1, num_mask_tokens=2)
    made = []
    original = gated._prepare_decoding_products
    monkeypatch.setattr(gated, "_prepare_decoding_products", lambda positions: made.append(original(positions)))
    prompt = random_prompts(1, 5, seed=1)
    outputs = [model.generate(prompt, max_new_tokens=4, do_sample=False, use_space=True) for _ in range(3)]
    assert len(made) == 1 and all(torch.equal(output, outputs[0]) for output in outputs)
    assert torch.equal(outputs[0], model.generate(prompt, max_new_tokens=4, do_sample=False))


def test_layer_hooks_are_attached_only_while_forwards_hold_masks():
    """Plain forwards of a gated model run no adapter hook at all (plain decoding at the original speed)."""
    model = gated_model("llama", seed=0)
    layers = model.get_input_embeddings().space_mask.positions.layers
    plain = random_prompts(2, 6, seed=0)
    masked = plain.clone()
    masked[:, 4:] = model.config.space_config["mask_token_id"]

    def hooked() -> list[int]:
        return sorted({len(layer._forward_hooks) for layer in layers})

    assert len(layers) == 7 * model.config.num_hidden_layers
    with torch.no_grad():
        assert hooked() == [0]
        model(masked)
        assert hooked() == [1]
        copied = copy.deepcopy(model)
        model(plain)
        assert hooked() == [0]
        model(masked)
        model(masked)
        assert hooked() == [1]
    remove_gated_adapters(copied)
    assert hooked() == [1], "removing the adapters of a copy touched the original"
    assert all(not layer._forward_hooks for layer in copied.modules())
    remove_gated_adapters(model)
    assert all(not layer._forward_hooks for layer in model.modules())


def test_scattered_masks_take_the_index_path():
    model = gated_model("llama", seed=0)
    mask_id = model.config.space_config["mask_token_id"]
    ids = random_prompts(2, 8, seed=0)
    ids[0, [2, 5]] = mask_id
    ids[1, 3] = mask_id
    with torch.no_grad(), decoding_products(model):  # the fast path is open, but these masks cannot take it
        logits = model(ids).logits
        assert model.get_input_embeddings().space_mask.positions.span is None
    with torch.enable_grad():  # the training path: index_put
        assert torch.equal(logits, model(ids).logits.detach())
    base = remove_gated_adapters(copy.deepcopy(model))
    with torch.no_grad():
        assert not torch.allclose(logits[0, 2:], base(ids).logits[0, 2:], atol=1e-3), "the adapters changed nothing"


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2", "gpt_neox", "phi3", "mistral"])
def test_gated_space_decoding_is_lossless(arch, verification_log):
    """Random gated adapters (so drafts differ from the base model's), every layout family, batches with padding."""
    rng = random.Random(arch)
    for seed in range(3):
        model = gated_model(arch, seed=seed, num_mask_tokens=3, noise=0.02)
        prompt = random_prompts(1, rng.randint(1, 16), seed=rng.randrange(10**6))
        for layout in (None, SpaceLayoutPlan(1, (0,), kernels="weights_first"), SpaceLayoutPlan(3, (0, 2))):
            assert_lossless(model, prompt, max_new_tokens=rng.randint(1, 30), space_layout=layout)
        ids, mask = left_padded([rng.randint(1, 10) for _ in range(3)], seed)
        assert_lossless(model, ids, attention_mask=mask, max_new_tokens=20, eos_token_id=3 + seed, pad_token_id=0)
    assert max(verification_log.counts()) >= 1, "no draft was ever accepted"


def test_updates_through_data_remake_the_decoding_copies():
    """Version counters miss in-place updates through `.data`; the fingerprint does not."""
    model = gated_model("llama", seed=0)
    adapters = [layer.space_adapter for layer in model.get_input_embeddings().space_mask.positions.layers]
    with torch.no_grad(), decoding_products(model):
        first = adapters[3].prepared
    adapters[3].lora_A.weight.data.mul_(0.5)
    with torch.no_grad(), decoding_products(model):
        assert adapters[3].prepared is not first
        assert torch.equal(adapters[3].prepared.shared.stacked_a_t, adapters[3].lora_A.weight.t())  # o_proj: alone


def test_growing_the_rank_keeps_what_the_adapters_compute():
    """More rank for a trained adapter: the old directions stay, the new ones start at zero, so mask positions
    compute what they did (up to the summation order of the larger product) and decoding stays lossless."""
    from transformers_space.decoding.gated import GatedLoraAdapter
    from transformers_space.training import grow_gated_adapters

    model = gated_model("llama", seed=0, num_mask_tokens=3)
    mask_id = model.config.space_config["mask_token_id"]
    ids = torch.cat([random_prompts(2, 6, 0), torch.full((2, 3), mask_id)], dim=1)
    with torch.no_grad():
        before = model(ids).logits
    adapters = [m for m in model.modules() if isinstance(m, GatedLoraAdapter)]
    old = [(adapter.lora_A.weight.clone(), adapter.lora_B.weight.clone()) for adapter in adapters]
    grow_gated_adapters(model, 24)
    for (a, b), adapter in zip(old, adapters, strict=True):
        assert adapter.lora_A.weight.shape == (24, a.shape[1]) and torch.equal(adapter.lora_A.weight[:16], a)
        assert torch.equal(adapter.lora_B.weight[:, :16], b) and not adapter.lora_B.weight[:, 16:].any()
        assert adapter.lora_A.weight[16:].abs().sum() > 0  # new directions can learn: A is random, not zero
    with torch.no_grad():
        after = model(ids).logits
    assert torch.equal(before[:, :6], after[:, :6]) and torch.allclose(before, after, atol=1e-5)
    assert (model.config.space_config["adapter_rank"], model.config.space_config["adapter_alpha"]) == (24, 48.0)
    assert all(parameter.requires_grad for name, parameter in model.named_parameters() if ".space_" in name)
    assert_lossless(model, random_prompts(1, 7, 3), max_new_tokens=20)
    for bad in (24, 8, True):
        with pytest.raises(ValueError, match="above the adapters' rank 24"):
            grow_gated_adapters(model, bad)
    with pytest.raises(ValueError, match="needs a model with gated SPACE adapters"):
        grow_gated_adapters(tiny_model("llama", seed=0), 32)


def test_adapters_follow_the_models_mode_when_installed():
    from transformers import AutoModelForCausalLM

    from transformers_space.decoding.gated import GatedLoraAdapter, GatedMaskEmbedding

    for training in (False, True):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(tiny_config("llama")).train(training)
        model = add_space_support(model, None, num_mask_tokens=2, mode="gated")
        gated_modules = [m for m in model.modules() if isinstance(m, (GatedLoraAdapter, GatedMaskEmbedding))]
        assert gated_modules and all(m.training == training for m in gated_modules)


def test_a_plain_forward_in_another_thread_is_untouched_by_a_masked_one():
    """Thread A runs masked forwards (adapters active) while thread B runs plain forwards of the same model."""
    import threading

    model = gated_model("llama", seed=1)
    mask_id = model.config.space_config["mask_token_id"]
    plain_ids = random_prompts(2, 9, seed=1)
    masked_ids = random_prompts(2, 9, seed=2)
    masked_ids[:, 6:] = mask_id
    with torch.no_grad():
        plain_reference = model(plain_ids).logits
        with decoding_products(model):
            masked_reference = model(masked_ids).logits
    seen = {"plain": [], "masked": []}
    start = threading.Barrier(2)

    def run(name, ids, fast_path):
        start.wait()
        with torch.no_grad(), (decoding_products(model) if fast_path else contextlib.nullcontext()):
            seen[name].extend(model(ids).logits for _ in range(25))

    threads = [threading.Thread(target=run, args=("plain", plain_ids, False)),
               threading.Thread(target=run, args=("masked", masked_ids, True))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen["plain"]) == len(seen["masked"]) == 25
    assert all(torch.equal(logits, plain_reference) for logits in seen["plain"])
    assert all(torch.equal(logits, masked_reference) for logits in seen["masked"])


@pytest.mark.parametrize(
    "rows, group, indices",
    [
        ([[0, 1, 1, 1, 1]], 4, [[-1, 0, 1, 2, 3]]),
        ([[0, 1, 1, 1, 1, 1, 1, 1, 1]], 4, [[-1, 0, 1, 2, 3, 0, 1, 2, 3]]),  # two groups back to back
        ([[0, 0, 1, 1, 1]], 1, [[-1, -1, 0, 0, 0]]),  # one-mask groups
        ([[1, 1, 0, 1, 1, 0]], 2, [[0, 1, -1, 0, 1, -1]]),  # a run starting at column 0; runs restart
        ([[0, 1, 1, 0], [1, 1, 1, 1]], 2, [[-1, 0, 1, -1], [0, 1, 0, 1]]),
    ],
)
def test_mask_indices_in_groups(rows, group, indices):
    assert mask_indices_in_groups(torch.tensor(rows, dtype=torch.bool), group).tolist() == indices


def test_per_position_mask_embeddings_follow_each_masks_place_in_its_group():
    model = gated_model("llama", seed=0, num_mask_tokens=3, per_position=True)
    embedding = model.get_input_embeddings()
    rows = embedding.space_mask.weight
    assert rows.shape == (3, embedding.weight.shape[1]) and not torch.equal(rows[0], rows[1])
    ids = torch.cat([random_prompts(1, 3, seed=0), torch.full((1, 6), model.config.space_config["mask_token_id"])], 1)
    with torch.no_grad():
        assert torch.equal(embedding(ids)[0, 3:], rows[[0, 1, 2, 0, 1, 2]])
        with masks_per_group(model, 2):
            embedded = embedding(ids)
        assert torch.equal(embedded[0, 3:], rows[[0, 1, 0, 1, 0, 1]])
        assert torch.equal(embedded[0, :3], embedding.weight[ids[0, :3]])  # ordinary tokens: the matrix's rows
    with pytest.raises(ValueError, match="1..3"), masks_per_group(model, 4):
        pass


def test_decoding_with_fewer_masks_than_trained_reads_the_first_embeddings():
    """A per-position model whose first row is a shared model's embedding drafts exactly as the shared model at a
    one-mask layout (every group's mask is mask 0), and otherwise at the full layout (its other rows differ)."""
    shared = gated_model("llama", seed=3, num_mask_tokens=3, noise=0.02)
    per_position = gated_model("llama", seed=3, num_mask_tokens=3, noise=0.02, per_position=True)
    state = shared.state_dict()
    key = next(name for name in state if name.endswith("space_mask.weight"))
    generator = torch.Generator().manual_seed(0)
    state[key] = torch.stack([state[key], *torch.randn((2, state[key].shape[0]), generator=generator)])
    per_position.load_state_dict(state)
    prompt = random_prompts(1, 6, seed=5)

    def passes(model, layout):
        return assert_lossless(model, prompt, max_new_tokens=40, space_layout=layout).tokens_per_pass

    one_mask = SpaceLayoutPlan(1, (0, 1))
    assert passes(per_position, one_mask) == passes(shared, one_mask)
    assert passes(per_position, None) != passes(shared, None)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_per_position_gated_decoding_is_lossless(arch, verification_log):
    rng = random.Random(arch)
    for seed in range(3):
        model = gated_model(arch, seed=seed, num_mask_tokens=3, noise=0.02, per_position=True)
        prompt = random_prompts(1, rng.randint(1, 16), seed=rng.randrange(10**6))
        for layout in (None, SpaceLayoutPlan(1, (0, 1)), SpaceLayoutPlan(2, (0, 2))):
            assert_lossless(model, prompt, max_new_tokens=rng.randint(1, 30), space_layout=layout)
        ids, mask = left_padded([rng.randint(1, 10) for _ in range(3)], seed)
        assert_lossless(model, ids, attention_mask=mask, max_new_tokens=20, pad_token_id=0)
    assert max(verification_log.counts()) >= 1, "no draft was ever accepted"

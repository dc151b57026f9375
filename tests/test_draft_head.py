"""The draft head: drafts conditioned on the token before each mask. Verification never reads it, so SPACE stays
lossless (greedy) and distribution-preserving (sampling) with any head weights; an untrained head drafts what the
masks draft; its restricted decoding logits are the training logits on the candidates; training moves only the
head; it saves, reloads and refuses what it cannot do."""

import copy
import random

import pytest
import torch
import torch.nn.functional as F
from test_gated import gated_model
from test_lossless import assert_lossless
from test_sampling import draw, position_pvalues, sharp_model
from tiny_models import left_padded, random_prompts
from toy_language import toy_rows, train_ar_base, training_args

from transformers_space import (
    SpaceCandidateGenerator,
    SpaceConfig,
    SpaceLayoutPlan,
    add_space_support,
    load_space_model,
)
from transformers_space.decoding.autotune import measure_pass_costs
from transformers_space.decoding.draft_head import (
    DRAFT_CANDIDATES,
    RestrictedDrafting,
    conditioned_logits,
    draft_head_of,
)
from transformers_space.decoding.gated import gated_parameters, remove_gated_adapters
from transformers_space.decoding.planning import pass_shapes
from transformers_space.hub import load_space_adapter, save_space_adapter
from transformers_space.training import SpaceTrainer
from transformers_space.training.losses import mask_index_in_block

K = 3


def with_head(model, seed: int, width: int = 24, noise: float = 0.5):
    """`model` (gated) with a draft head made random: an untrained head adds nothing (its output layer is 0)."""
    add_space_support(model, num_mask_tokens=K, mode="gated", draft_head_width=width)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in draft_head_of(model).parameters():
            parameter.add_(noise * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def tokens_per_pass(model, prompt, **kwargs) -> list[list[int]]:
    out = model.generate(prompt, max_new_tokens=24, do_sample=False, use_space=True, return_dict_in_generate=True,
                         **kwargs)
    return out.tokens_per_pass


@pytest.fixture
def drafts_log(monkeypatch):
    """Every draft the candidate generator makes (the real one still makes them)."""
    log = []
    real = SpaceCandidateGenerator.get_candidates

    def spy(self, input_ids, **kwargs):
        sequence, scores = real(self, input_ids, **kwargs)
        log.append(sequence[:, input_ids.shape[1]:].tolist())
        return sequence, scores

    monkeypatch.setattr(SpaceCandidateGenerator, "get_candidates", spy)
    return log


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2", "gemma2", "cohere"])
def test_decoding_with_a_draft_head_is_lossless(arch, verification_log, drafts_log):
    """Random heads (drafts differ from the masks' own), every layout family, batches with padding; gemma2 and
    cohere transform the head's logits (soft-cap, scale)."""
    rng = random.Random(arch)
    changed = False
    for seed in range(3):
        model = gated_model(arch, seed=seed, num_mask_tokens=K, noise=0.02)
        prompt = random_prompts(1, rng.randint(1, 16), seed=rng.randrange(10**6))
        drafts_log.clear()
        tokens_per_pass(model, prompt)
        without = list(drafts_log)
        drafts_log.clear()
        with_head(model, seed, noise=0.2)
        tokens_per_pass(model, prompt)
        changed |= drafts_log != without
        for layout in (None, SpaceLayoutPlan(1, (0,), kernels="weights_first"), SpaceLayoutPlan(2, (0, 2))):
            assert_lossless(model, prompt, max_new_tokens=rng.randint(1, 30), space_layout=layout)
        ids, mask = left_padded([rng.randint(1, 10) for _ in range(3)], seed)
        assert_lossless(model, ids, attention_mask=mask, max_new_tokens=20, eos_token_id=3 + seed, pad_token_id=0)
    assert changed, "the head never changed a draft"
    counts = verification_log.counts()
    assert max(counts) >= 1 and min(counts) == 0, "drafts were not both accepted and rejected"


def test_an_untrained_head_drafts_what_the_masks_draft(drafts_log):
    model = gated_model("llama", seed=1, num_mask_tokens=K, noise=0.02)
    prompts = [random_prompts(1, length, seed=length) for length in (3, 7, 12)]
    for prompt in prompts:
        tokens_per_pass(model, prompt)
    without = list(drafts_log)
    drafts_log.clear()
    add_space_support(model, num_mask_tokens=K, mode="gated", draft_head_width=16)
    for prompt in prompts:
        tokens_per_pass(model, prompt)
    assert drafts_log == without and len(without) > 10


def test_pass_costs_include_the_draft_heads_drafting():
    """`auto` plans with whole passes, drafting included: each measured pass that drafts runs the head once per mask
    of its group (2 rounds: the warm-up and one timed)."""
    model = with_head(gated_model("llama", seed=0, num_mask_tokens=K), seed=0)
    calls = []
    handle = draft_head_of(model).register_forward_hook(lambda *args: calls.append(1))
    try:
        costs = measure_pass_costs(model, context_length=8, repeats=1)
    finally:
        handle.remove()
    assert set(costs) == {1, *pass_shapes(K)}
    assert len(calls) == 2 * sum(num_masks for num_masks, _, _ in pass_shapes(K).values())


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_restricted_decoding_logits_are_the_training_logits_on_the_candidates(arch):
    model = with_head(gated_model(arch, seed=0, num_mask_tokens=K), seed=0)
    head = draft_head_of(model)
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(5, model.config.hidden_size, generator=generator)
    before = torch.randint(1, 40, (5,), generator=generator)
    mask_logits = torch.randn(5, model.config.vocab_size, generator=generator)
    with torch.no_grad():
        full = conditioned_logits(model, head, hidden, before)
        restricted = RestrictedDrafting(model, head)(hidden, before, mask_logits)
    chosen = mask_logits.topk(DRAFT_CANDIDATES, dim=-1).indices
    torch.testing.assert_close(restricted.gather(1, chosen), full.gather(1, chosen))
    outside = torch.ones_like(restricted, dtype=torch.bool).scatter(1, chosen, False)
    assert torch.isinf(restricted[outside]).all() and (restricted[outside] < 0).all()


def test_sampling_with_a_draft_head_matches_plain_sampling(verification_log):
    model = sharp_model(seed=0, drafty=True)
    add_space_support(model, num_mask_tokens=K, mode="gated")
    with_head(model, seed=0, noise=0.3)
    settings = dict(temperature=1.0, top_k=0)
    assert min(position_pvalues(draw(model, False, seed=1, **settings), draw(model, True, seed=2, **settings))) > 1e-4
    counts = verification_log.counts()
    assert max(counts) >= 1 and min(counts) == 0


def test_the_head_saves_and_reloads_with_the_model_and_the_adapter(tmp_path):
    model = with_head(gated_model("llama", seed=2, num_mask_tokens=K), seed=2)
    prompt = random_prompts(1, 6, seed=9)
    expected = tokens_per_pass(model, prompt)
    model.save_pretrained(tmp_path / "model")
    reloaded = load_space_model(tmp_path / "model").eval()
    assert tokens_per_pass(reloaded, prompt) == expected
    save_space_adapter(model, tmp_path / "adapter", base_model=str(tmp_path / "model"))
    base = remove_gated_adapters(load_space_model(tmp_path / "model"))  # the same base: no adapter, no head
    assert draft_head_of(base) is None
    adapted, _ = load_space_adapter(tmp_path / "adapter", model=base)
    assert tokens_per_pass(adapted.eval(), prompt) == expected


def test_settings_that_cannot_hold_a_head_are_refused():
    with pytest.raises(ValueError, match="needs mode='gated'"):
        SpaceConfig(mode="full", draft_head_width=8)
    with pytest.raises(ValueError, match="at least 0"):
        SpaceConfig(mode="gated", draft_head_width=-1)
    model = with_head(gated_model("llama", seed=0, num_mask_tokens=K), seed=0)
    with pytest.raises(ValueError, match="width 24"):
        add_space_support(model, num_mask_tokens=K, mode="gated", draft_head_width=8)
    with pytest.raises(ValueError, match="carries a draft head"):
        add_space_support(model, num_mask_tokens=K, mode="gated", draft_head_width=0)
    remove_gated_adapters(model)
    assert draft_head_of(model) is None and model.config.space_config["draft_head_width"] == 0


@pytest.fixture(scope="module")
def gated_base(tmp_path_factory):
    """The toy language's AR base with a briefly trained gated adapter."""
    folder = tmp_path_factory.mktemp("gated_base")
    trainer = SpaceTrainer(
        model=train_ar_base(folder / "ar"), args=training_args(folder / "gated", 40), train_dataset=toy_rows(640, 0),
        space_config=SpaceConfig(num_mask_tokens=4, mode="gated"),
    )
    trainer.train()
    return trainer.model.eval()


def test_head_training_moves_only_the_head_and_scores_with_it(gated_base, tmp_path):
    """Only the head trains (the adapter it sits on stays as trained); the mask logits the loss scores are the
    head's, given each target's previous token from the data."""
    trainer = SpaceTrainer(
        model=copy.deepcopy(gated_base), args=training_args(tmp_path, 3, logging_steps=1, warmup_steps=0),
        train_dataset=toy_rows(48, seed=3), eval_dataset=toy_rows(4, seed=4),
        space_config=SpaceConfig(num_mask_tokens=4, mode="gated", draft_head_width=32),
    )
    trainable = {name for name, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("space_draft_head" in name for name in trainable)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    for name, parameter in trainer.model.named_parameters():
        assert torch.equal(parameter, before[name]) == (name not in trainable), name

    model = trainer.model.eval()
    inputs = trainer._prepare_inputs(next(iter(trainer.get_eval_dataloader())))
    with torch.no_grad():
        logits, _, is_mask, _, outputs, _ = trainer._gated_forward(model, inputs)
    assert not torch.allclose(logits[is_mask], outputs.logits[is_mask])  # the head's, not the masks' own
    assert torch.equal(logits[~is_mask], outputs.logits[~is_mask])


def test_the_adapter_can_train_with_the_head(gated_base, tmp_path):
    """draft_head_trains_adapter: head, adapters and mask embedding all move (nothing of the base does), and the
    loss adds the masks' own logits' loss (they pick the head's candidates in decoding) to the head's."""
    config = SpaceConfig(num_mask_tokens=4, mode="gated", draft_head_width=32, draft_head_trains_adapter=True)
    trainer = SpaceTrainer(
        model=copy.deepcopy(gated_base), args=training_args(tmp_path, 2, warmup_steps=0),
        train_dataset=toy_rows(32, seed=3), space_config=config,
    )
    trainable = {name for name, p in trainer.model.named_parameters() if p.requires_grad}
    assert {name for name in trainable if "space_draft_head" in name} == {
        name for name, _ in trainer.model.named_parameters() if "space_draft_head" in name}
    assert any("lora_A" in name for name in trainable) and any("lora_B" in name for name in trainable)
    assert trainable == {name for name, p in trainer.model.named_parameters()
                         if "space_draft_head" in name or id(p) in {id(q) for q in gated_parameters(trainer.model)}}

    model = trainer.model.train()
    inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    logits, targets, is_mask, _, outputs, candidates = trainer._gated_forward(model, inputs)
    assert torch.equal(candidates, outputs.logits)
    sar = is_mask & (targets != -100)
    expected = (F.cross_entropy(logits[sar].float(), targets[sar], reduction="sum")
                + F.cross_entropy(candidates[sar].float(), targets[sar], reduction="sum")) / sar.sum()
    torch.testing.assert_close(trainer.compute_loss(model, inputs, num_items_in_batch=sar.sum()), expected)

    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    for name, parameter in trainer.model.named_parameters():
        assert torch.equal(parameter, before[name]) == (name not in trainable), name
    plain = remove_gated_adapters(trainer.model)
    assert SpaceConfig.of(plain).draft_head_width == 0 and not SpaceConfig.of(plain).draft_head_trains_adapter


def test_training_the_adapter_with_the_head_needs_a_head():
    with pytest.raises(ValueError, match="draft_head_width"):
        SpaceConfig(mode="gated", draft_head_trains_adapter=True)
    with pytest.raises(TypeError, match="bool"):
        SpaceConfig(mode="gated", draft_head_width=8, draft_head_trains_adapter=1)


def test_a_head_trains_in_float32_on_a_bfloat16_base(gated_base, tmp_path):
    trainer = SpaceTrainer(
        model=copy.deepcopy(gated_base).to(torch.bfloat16), args=training_args(tmp_path, 2, warmup_steps=0),
        train_dataset=toy_rows(32, seed=3), space_config=SpaceConfig(num_mask_tokens=4, mode="gated",
                                                                      draft_head_width=32),
    )
    head = draft_head_of(trainer.model)
    assert all(parameter.dtype == torch.float32 for parameter in head.parameters())
    before = [parameter.detach().clone() for parameter in head.parameters()]
    trainer.train()
    assert not all(torch.equal(a, b) for a, b in zip(before, head.parameters(), strict=True))


def test_the_head_trains_on_the_data_token_before_each_target(gated_base, tmp_path):
    """The token the trainer feeds the head for mask j of a block at s is the data's token at position s + j (the
    one the verifier emits right before that mask's target), never the target itself."""
    trainer = SpaceTrainer(
        model=copy.deepcopy(gated_base), args=training_args(tmp_path, 1), train_dataset=toy_rows(16, seed=3),
        eval_dataset=toy_rows(4, seed=4), space_config=SpaceConfig(num_mask_tokens=4, mode="gated",
                                                                    draft_head_width=32),
    )
    seen = []
    head = draft_head_of(trainer.model)
    handle = head.register_forward_hook(lambda module, args, output: seen.append(args[1]))
    inputs = trainer._prepare_inputs(next(iter(trainer.get_eval_dataloader())))
    with torch.no_grad():
        _, labels, is_mask, _, _, _ = trainer._gated_forward(trainer.model.eval(), inputs)
    handle.remove()
    embedding = trainer.model.get_input_embeddings().weight
    where = torch.nonzero(is_mask, as_tuple=True)
    before = inputs["input_ids"].gather(1, inputs["mask_position_ids"])[where]
    assert torch.equal(seen[0], embedding[before])
    # within a block, the token before mask j's target is mask j-1's target
    place = mask_index_in_block(is_mask, 4)[where]
    targets = labels[where]
    later = (place > 0) & (targets != -100)
    later_index = torch.nonzero(later).flatten()
    assert later_index.numel() > 0
    assert torch.equal(before[later_index], targets[later_index - 1])

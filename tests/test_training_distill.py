"""The mask losses (cross-entropy, KL to the verifying model, mix) and their teachers in every mode.

- `mask_token_losses` equals hand-computed values on a tiny case; KL is zero when mask and teacher agree;
- the teacher is the right distribution: in gated mode the frozen base's logits at the mask's target position
  (checked against a plain forward of the base over the same row), in full mode the model's own detached
  next-token logits (checked likewise); the collator's prefix covers the targets but masks still see < s;
- gradients reach only the trainable parameters, and in full mode the KL term does not pull the AR logits;
- a few real training steps with `mask_loss="kl"` lower the KL and log `sar_agreement`;
- simulated greedy acceptance (teacher-forced drafts walked like generation) equals generation's own passes.
- examples/evaluate_agreement.py measures every model on the same blocks, whatever count it was trained with.
"""

import copy
import importlib.util
import math
from pathlib import Path

import pytest
import torch
from toy_language import toy_model, toy_prompts, toy_rows, train_ar_base, training_args

from transformers_space import SpaceConfig, SpaceLayoutPlan
from transformers_space.decoding.planning import acceptance_rates
from transformers_space.training import SpaceTrainer
from transformers_space.training.collator import IGNORE, SpaceDataCollator
from transformers_space.training.losses import kl_to_teacher, mask_index_in_block, mask_token_losses

K = 3
EXAMPLES = Path(__file__).parent.parent / "examples"


def test_losses_equal_hand_computed_values():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # q = (1/4, 3/4)
    teacher = torch.tensor([[0.0, 0.0]])  # p = (1/2, 1/2)
    target = torch.tensor([1])
    ce = -math.log(0.75)
    kl = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert mask_token_losses(logits, target, None, "cross_entropy").item() == pytest.approx(ce, abs=1e-6)
    assert mask_token_losses(logits, target, teacher, "kl").item() == pytest.approx(kl, abs=1e-6)
    mixed = mask_token_losses(logits, target, teacher, "mix", kl_weight=0.25).item()
    assert mixed == pytest.approx(0.25 * kl + 0.75 * ce, abs=1e-6)


def test_kl_is_zero_for_equal_logits_and_positive_otherwise():
    logits = torch.randn(5, 11)
    torch.testing.assert_close(kl_to_teacher(logits, logits.clone()), torch.zeros(5), rtol=0, atol=1e-6)
    torch.testing.assert_close(kl_to_teacher(logits, logits + 3.0), torch.zeros(5), rtol=0, atol=1e-5)  # shift-free
    assert (kl_to_teacher(logits, torch.randn(5, 11)) > 0).all()


def test_losses_refuse_a_missing_teacher_and_unknown_kinds():
    logits, target = torch.randn(2, 4), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="teacher"):
        mask_token_losses(logits, target, None, "kl")
    with pytest.raises(ValueError, match="Unknown mask loss"):
        mask_token_losses(logits, target, logits, "l2")


def test_config_validates_the_mask_loss():
    with pytest.raises(ValueError, match="mask_loss"):
        SpaceConfig(mask_loss="l2")
    with pytest.raises(ValueError, match="mask_kl_weight"):
        SpaceConfig(mask_loss="mix", mask_kl_weight=1.5)
    with pytest.raises(ValueError, match="one_pass"):
        SpaceConfig(mask_loss="kl", sample_form="truncate")
    SpaceConfig(mask_loss="kl", sample_form="truncate", mode="gated")  # gated reads the base's logits: fine


def test_collator_prefix_covers_the_targets_but_masks_see_only_before_their_block():
    features = [{"input_ids": list(range(1, 13))}, {"input_ids": list(range(1, 9))}]
    common = dict(mask_token_id=40, num_mask_tokens=K, two_pass=True, blocks_per_sequence=2)
    plain = SpaceDataCollator(**common, generator=torch.Generator().manual_seed(3))(features)
    covered = SpaceDataCollator(**common, prefix_covers_targets=True, generator=torch.Generator().manual_seed(3))(
        features)
    prefix = plain["input_ids"].shape[1]
    assert covered["input_ids"].shape[1] == prefix + K
    assert int(covered["mask_position_ids"][covered["labels"] != IGNORE].max()) < covered["input_ids"].shape[1]
    visible = covered["mask_attention_mask"][:, 0] == 0  # [B, M, P' + M]
    assert not visible[:, :, prefix:prefix + K].any()  # the extra prefix tokens are never seen by a mask
    torch.testing.assert_close(covered["mask_attention_mask"][..., :prefix], plain["mask_attention_mask"][..., :prefix])
    for name in ("mask_input_ids", "mask_position_ids", "labels"):
        assert torch.equal(covered[name], plain[name])


class TeacherSpy(SpaceTrainer):
    """Keeps the last (inputs, logits, teacher) the loss saw."""

    def _gated_forward(self, model, inputs):
        result = super()._gated_forward(model, inputs)
        self.seen = (inputs, *result[:4])
        return result

    def _single_forward(self, model, inputs):
        result = super()._single_forward(model, inputs)
        self.seen = (inputs, *result[:4])
        return result


@pytest.fixture(scope="module")
def ar_base(tmp_path_factory):
    return train_ar_base(tmp_path_factory.mktemp("ar_base_distill"))


def test_gated_teacher_is_the_frozen_base_at_each_target_position(ar_base, tmp_path):
    rows = toy_rows(8, seed=1)
    trainer = TeacherSpy(
        model=copy.deepcopy(ar_base), args=training_args(tmp_path, 1), train_dataset=rows,
        space_config=SpaceConfig(num_mask_tokens=K, mode="gated", mask_loss="kl"),
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    model = trainer.model
    loss = trainer.compute_loss(model, batch)
    inputs, logits, targets, is_mask, teacher = trainer.seen
    with torch.no_grad():
        full_rows = torch.tensor([trainer.train_dataset[i]["input_ids"] for i in range(4)])
        base_logits = model(full_rows).logits  # no mask tokens: the frozen base, bit for bit
    for b in range(4):
        for m in torch.nonzero(targets[b] != IGNORE).flatten().tolist():
            position = int(inputs["mask_position_ids"][b, m])
            torch.testing.assert_close(teacher[b, m], base_logits[b, position], rtol=1e-5, atol=1e-5)
            assert int(targets[b, m]) == int(full_rows[b, position + 1])
    loss.backward()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("space_adapter" in n or "space_mask" in n for n in trainable)
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None}
    assert with_grad and with_grad <= trainable
    assert any(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n in with_grad)


def test_full_teacher_is_the_models_own_detached_next_token_logits(tmp_path):
    rows = toy_rows(8, seed=2)
    config = SpaceConfig(num_mask_tokens=K, mask_loss="kl", sar_probability=1.0, mask_loss_weight=1.0)
    trainer = TeacherSpy(model=toy_model(), args=training_args(tmp_path, 1), train_dataset=rows, space_config=config)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    model = trainer.model
    trainer.compute_loss(model, batch)
    inputs, logits, targets, is_mask, teacher = trainer.seen
    assert is_mask.any() and not teacher.requires_grad
    with torch.no_grad():
        plain = model(torch.tensor([rows[i]["input_ids"] for i in range(4)])).logits
    columns = torch.nonzero(inputs["labels"].ne(IGNORE).any(0)).flatten()
    positions = inputs["position_ids"][:, columns]
    for b, c in torch.nonzero(is_mask).tolist():
        torch.testing.assert_close(teacher[b, c], plain[b, positions[b, c]], rtol=1e-4, atol=1e-4)

    # the KL term alone moves only the mask logits, never the AR logits it reads as the teacher
    kl_only = SpaceConfig(num_mask_tokens=K, mask_loss="kl", sar_probability=1.0)
    probe = TeacherSpy(model=toy_model(), args=training_args(tmp_path / "p", 1), train_dataset=rows,
                       space_config=kl_only)
    logits, targets, is_mask, teacher, _, _ = probe._single_forward(probe.model, batch)
    logits.retain_grad()
    sar = (targets != IGNORE) & is_mask
    mask_token_losses(logits[sar], targets[sar], teacher[sar], "kl").sum().backward()
    assert logits.grad[sar].abs().sum() > 0
    assert logits.grad[~is_mask].abs().sum() == 0


@pytest.mark.parametrize("mode", ["gated", "full"])
def test_kl_training_lowers_the_kl_and_logs_agreement(ar_base, tmp_path, mode):
    config = SpaceConfig(num_mask_tokens=K, mode=mode, mask_loss="mix", mask_kl_weight=0.7, adapter_rank=8,
                         sar_probability=1.0)
    trainer = SpaceTrainer(model=copy.deepcopy(ar_base), args=training_args(tmp_path, 30, logging_steps=5),
                           train_dataset=toy_rows(16 * 30, seed=3), space_config=config)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "sar_loss" in entry]
    assert logged and all("sar_agreement" in entry for entry in logged)
    assert logged[-1]["sar_loss"] < logged[0]["sar_loss"]
    assert logged[-1]["sar_agreement"] > logged[0]["sar_agreement"]


def test_evaluation_measures_shared_rows_on_the_same_blocks_whatever_else_the_set_holds(ar_base, tmp_path):
    """Two held-out sets that differ by their first row (another machine's package versions phrase another code
    prompt) draw the same blocks for every row they share; the first evaluation draws what the second does."""
    rows = toy_rows(6, seed=5)
    other = [toy_rows(1, seed=9)[0], *rows[1:]]
    config = SpaceConfig(num_mask_tokens=K, mode="gated", sar_probability=1.0, blocks_per_sequence=2)

    def eval_blocks(eval_rows):
        trainer = SpaceTrainer(model=copy.deepcopy(ar_base), space_config=config, train_dataset=rows,
                               eval_dataset=eval_rows, args=training_args(tmp_path, 1, per_device_eval_batch_size=1))
        return [batch["mask_position_ids"].tolist() for batch in trainer.get_eval_dataloader()]

    first = eval_blocks(rows)
    assert first == eval_blocks(rows)
    shared = eval_blocks(other)
    assert shared[1:] == first[1:] and shared[0] != first[0]


def test_mask_index_in_block():
    is_mask = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 1, 0, 0, 0, 0]], dtype=torch.bool)
    expected = torch.tensor([[0, 0, 1, 2, 0, 1, 2, 0, 0], [0, 1, 2, 0, 0, 0, 0, 0, 0]])
    assert torch.equal(mask_index_in_block(is_mask, 3), expected)


@pytest.mark.parametrize("mode", ["gated", "full"])
def test_evaluation_reports_agreement_with_the_teacher_per_mask(ar_base, tmp_path, mode):
    rows = toy_rows(8, seed=5)
    config = SpaceConfig(num_mask_tokens=K, mode=mode, sar_probability=1.0)  # cross-entropy: teacher in eval only
    trainer = TeacherSpy(model=copy.deepcopy(ar_base), args=training_args(tmp_path, 1), train_dataset=rows,
                         eval_dataset=rows, space_config=config)
    model = trainer.model.eval()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
    with torch.no_grad():
        trainer.compute_loss(model, batch)
    _, logits, targets, is_mask, teacher = trainer.seen
    sar = (targets != IGNORE) & is_mask
    index = mask_index_in_block(is_mask, K)
    agree = logits.argmax(-1) == teacher.argmax(-1)
    metrics = trainer._evaluation_metrics()
    for j in range(K):
        chosen = sar & (index == j)
        assert chosen.sum() > 0
        assert metrics[f"eval_sar_agreement_{j + 1}"] == pytest.approx(agree[chosen].double().mean().item(), abs=1e-4)
    assert 0 <= metrics["eval_sar_agreement"] <= 1
    assert set(trainer.evaluate()) >= {"eval_loss", "eval_sar_agreement", *(f"eval_sar_agreement_{j}" for j in
                                                                             range(1, K + 1))}


def test_every_evaluation_draws_the_same_blocks(ar_base, tmp_path):
    rows = toy_rows(16, seed=6)
    config = SpaceConfig(num_mask_tokens=K, mode="gated", adapter_rank=8, sar_probability=1.0)

    def evaluation(seed: int, global_seed: int) -> dict[str, float]:
        trainer = SpaceTrainer(model=copy.deepcopy(ar_base), args=training_args(tmp_path / str(seed), 1, seed=seed),
                               train_dataset=rows, eval_dataset=rows, space_config=config)
        torch.manual_seed(global_seed)
        metrics = trainer.evaluate()
        return {name: value for name, value in metrics.items() if "agreement" in name or name == "eval_loss"}

    first = evaluation(seed=0, global_seed=1)
    assert evaluation(seed=0, global_seed=2) == first  # the global RNG does not choose the blocks
    assert evaluation(seed=7, global_seed=1)["eval_loss"] != first["eval_loss"]  # args.seed does


def test_evaluate_agreement_draws_the_same_blocks_whatever_count_a_model_was_trained_with(ar_base, tmp_path):
    """examples/evaluate_agreement.py compares runs on the same blocks: the count is its own, not the model's."""
    spec = importlib.util.spec_from_file_location("evaluate_agreement", EXAMPLES / "evaluate_agreement.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    rows = toy_rows(8, seed=1)
    config = SpaceConfig(num_mask_tokens=K, mode="gated", adapter_rank=8, sar_probability=1.0, blocks_per_sequence=4)
    model = SpaceTrainer(model=copy.deepcopy(ar_base), args=training_args(tmp_path, 1), train_dataset=rows,
                         space_config=config).model.eval()

    def measured(trained_with: int, measured_with: int) -> dict[str, float]:
        model.config.space_config["blocks_per_sequence"] = trained_with
        return script.agreement(model, None, rows, max_length=64, batch_size=4, seed=0,
                                blocks_per_sequence=measured_with)

    first = measured(trained_with=4, measured_with=6)
    assert measured(trained_with=12, measured_with=6) == first
    assert measured(trained_with=4, measured_with=2)["eval_loss"] != first["eval_loss"]


@pytest.mark.parametrize("mode", ["gated", "full"])
def test_simulated_acceptance_is_what_greedy_generation_accepts(ar_base, tmp_path, mode):
    """Teacher-forced drafts from every start, walked like greedy SPACE, give generation's own passes."""
    config = SpaceConfig(num_mask_tokens=K, mode=mode, adapter_rank=8, sar_probability=1.0)
    trainer = SpaceTrainer(model=copy.deepcopy(ar_base), args=training_args(tmp_path, 8),
                           train_dataset=toy_rows(16 * 8, seed=4), space_config=config)
    trainer.train()  # briefly: the masks are right only part of the time
    model = trainer.model.eval()
    rows, generated = [], []
    for prompt in toy_prompts():
        out = model.generate(prompt[None], max_new_tokens=24, do_sample=False, use_space=True,
                             return_dict_in_generate=True, space_layout=SpaceLayoutPlan.full(K),
                             context_lookup=False)  # the walk simulates the masks' own drafts
        answer = out.sequences[0, len(prompt):].tolist()
        rows.append({"input_ids": prompt.tolist() + answer, "labels": [IGNORE] * len(prompt) + answer})
        generated.append([count - 1 for count in out.tokens_per_pass[0][1:]])  # pass 1 (prefill) verifies nothing
    simulated = SpaceTrainer(model=model, args=training_args(tmp_path / "evaluation", 1), train_dataset=rows,
                             eval_dataset=rows, space_config=config).simulate_greedy_acceptance()
    for walked, passes in zip(simulated, generated, strict=True):
        # the walk stops where a block no longer fits in the text; generation goes on to max_new_tokens
        assert walked == passes[: len(walked)] and len(walked) >= len(passes) - K
    pooled = [count for walked in simulated for count in walked]
    # not a trivial case: some drafts are accepted and some rejected
    assert any(count > 0 for count in pooled) and any(count < K for count in pooled)
    assert 0 < acceptance_rates(pooled, K)[0] < 1

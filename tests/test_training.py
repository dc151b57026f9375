"""SpaceTrainer end to end on a learnable toy language (tests/toy_language.py), CPU only.

- full mode from scratch reaches >= 3 tokens per pass with k=4, SPACE output identical to plain greedy;
- gated mode on an AR-trained base reaches >= 2.5, keeps the base's logits bit-identical and its greedy
  output identical to the ORIGINAL model's, and saves/loads exactly;
- lora trains and merges; a run resumes from its checkpoint; gradient accumulation is normalised by the
  number of targets of the whole accumulated batch.
"""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import tiny_model
from toy_language import space_vs_plain, toy_model, toy_prompts, toy_rows, train_ar_base, training_args
from transformers import AutoModelForCausalLM, TrainerCallback

from transformers_space import SpaceConfig, add_space_support, load_space_model
from transformers_space.decoding.gated import GatedLoraAdapter, GatedMaskEmbedding
from transformers_space.training import SpaceTrainer

K = 4


@pytest.fixture(scope="module")
def ar_base(tmp_path_factory):
    """The toy language learned by plain AR training with transformers' own Trainer (no SPACE)."""
    return train_ar_base(tmp_path_factory.mktemp("ar_base"))


def probe_ids() -> torch.Tensor:
    return torch.tensor([row["input_ids"] for row in toy_rows(4, seed=7)])


@pytest.mark.slow
def test_full_mode_from_scratch(tmp_path):
    trainer = SpaceTrainer(
        model=toy_model(), args=training_args(tmp_path, 200), train_dataset=toy_rows(16 * 200, seed=0),
        space_config=SpaceConfig(num_mask_tokens=K),
    )
    trainer.train()
    identical, tokens_per_pass, _ = space_vs_plain(trainer.model)
    assert identical
    assert tokens_per_pass >= 3.0, tokens_per_pass
    logged = [entry for entry in trainer.state.log_history if "sar_loss" in entry]
    assert logged and all("ar_loss" in entry and "sar_accuracy" in entry for entry in logged)
    assert logged[-1]["sar_loss"] < logged[0]["sar_loss"]
    assert trainer.space_totals["sar_blocks"] > 0


@pytest.mark.slow
def test_gated_mode_on_an_ar_base_is_lossless_against_it(ar_base, tmp_path):
    probe = probe_ids()
    with torch.no_grad():
        original_logits = ar_base(probe).logits
    original_output = ar_base.generate(toy_prompts(), max_new_tokens=16, do_sample=False)
    model = copy.deepcopy(ar_base)
    trainer = SpaceTrainer(
        model=model, args=training_args(tmp_path, 200), train_dataset=toy_rows(16 * 200, seed=0),
        space_config=SpaceConfig(num_mask_tokens=K, mode="gated", adapter_rank=8, adapter_alpha=16),
    )
    trainable = {name for name, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("space_adapter" in name or "space_mask" in name for name in trainable)
    with torch.no_grad():
        before = trainer.model(probe).logits
    trainer.train()
    model = trainer.model.eval()
    identical, tokens_per_pass, space_output = space_vs_plain(model)
    assert identical
    assert tokens_per_pass >= 2.5, tokens_per_pass
    assert torch.equal(space_output, original_output)  # lossless against the ORIGINAL model
    with torch.no_grad():
        after = model(probe).logits
        assert torch.equal(after, before)  # ordinary positions: bit-identical before vs after training
        torch.testing.assert_close(after[..., : original_logits.shape[-1]], original_logits, rtol=0, atol=1e-6)
        base_weights = dict(ar_base.named_parameters())
        for name, parameter in model.named_parameters():
            if name in base_weights and parameter.shape == base_weights[name].shape:
                assert torch.equal(parameter, base_weights[name]), name

    trainer.save_model(tmp_path / "gated")
    reloaded = load_space_model(tmp_path / "gated", attn_implementation="eager").eval()
    assert any(isinstance(m, GatedLoraAdapter) for m in reloaded.modules())
    mask_id = model.config.space_config["mask_token_id"]
    with_masks = torch.cat([probe, torch.full((probe.shape[0], K), mask_id)], dim=1)
    with torch.no_grad():
        assert torch.equal(reloaded(with_masks).logits, model(with_masks).logits)  # adapters reload exactly
        assert torch.equal(reloaded(probe).logits, before)
        plain_class = AutoModelForCausalLM.from_pretrained(tmp_path / "gated", attn_implementation="eager").eval()
        assert torch.equal(plain_class(probe).logits, before)
    assert torch.equal(space_vs_plain(reloaded)[2], space_output)
    saved = json.loads((tmp_path / "gated" / "space_config.json").read_text())
    assert saved["mode"] == "gated" and saved["num_mask_tokens"] == K


@pytest.mark.slow
def test_lora_mode_trains_and_merges(ar_base, tmp_path):
    trainer = SpaceTrainer(
        model=copy.deepcopy(ar_base), args=training_args(tmp_path, 100), train_dataset=toy_rows(1600, seed=0),
        space_config=SpaceConfig(num_mask_tokens=K, mode="lora", adapter_rank=8, adapter_alpha=16),
    )
    mask_id = trainer.space_config.mask_token_id
    trainable = [name for name, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name or "token_adapter" in name for name in trainable)
    trainer.train()
    peft_model = trainer.model.eval()
    identical, tokens_per_pass, output = space_vs_plain(peft_model)
    assert identical and tokens_per_pass > 1.5, tokens_per_pass
    merged = peft_model.merge_and_unload().eval()
    assert type(merged).__name__ == "SpaceLlamaForCausalLM"
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert torch.equal(space_vs_plain(merged)[2], output)  # the merged model generates identically
    merged.save_pretrained(tmp_path / "merged")
    reloaded = load_space_model(tmp_path / "merged", attn_implementation="eager").eval()
    assert torch.equal(space_vs_plain(reloaded)[2], output)
    assert reloaded.config.space_config["mask_token_id"] == mask_id


class StopAt(TrainerCallback):
    """Simulates an interruption: training stops after `step`."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


class Recorder(TrainerCallback):
    """The weights when training (re)starts, and the steps it runs."""

    def __init__(self):
        self.steps, self.start_weights = [], None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.start_weights = {name: p.detach().clone() for name, p in model.named_parameters()}

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


def test_interrupted_run_resumes_from_its_checkpoint(tmp_path):
    rows = toy_rows(16 * 6, seed=0)

    def run(resume=None, callback=None, **config):
        args = training_args(tmp_path, 6, save_strategy="steps", save_steps=3, logging_steps=1)
        trainer = SpaceTrainer(model=toy_model(), args=args, train_dataset=rows, space_config=SpaceConfig(
            num_mask_tokens=K, **config), callbacks=[callback] if callback else None)
        if config:
            return trainer
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    interrupted = run(callback=StopAt(4))
    assert interrupted.state.global_step == 4 and (tmp_path / "checkpoint-3").is_dir()
    checkpoint = load_file(tmp_path / "checkpoint-3" / "model.safetensors")
    recorder = Recorder()
    resumed = run(resume=True, callback=recorder)
    assert resumed.state.global_step == 6 and recorder.steps == [4, 5, 6]  # continued after checkpoint-3
    assert [entry["step"] for entry in resumed.state.log_history if "loss" in entry] == [1, 2, 3, 4, 5, 6]
    for name, weight in recorder.start_weights.items():
        assert torch.equal(weight, checkpoint[name]), name  # restarted from the checkpoint's weights
    assert (tmp_path / "checkpoint-6" / "space_config.json").is_file()
    with pytest.raises(ValueError, match=r"Cannot resume .*sar_probability: checkpoint 0.5, now 0.9"):
        run(sar_probability=0.9).train(resume_from_checkpoint=True)


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    """The loss is normalised by the targets of the whole accumulated batch (rows of different lengths)."""
    rows = [{"input_ids": row["input_ids"][: 8 + 2 * i]} for i, row in enumerate(toy_rows(8, seed=3))]

    def one_step(batch_size, accumulation):
        torch.manual_seed(0)
        args = training_args(tmp_path / f"ga{accumulation}", 1, optim="sgd", learning_rate=0.5, warmup_steps=0,
                             lr_scheduler_type="constant", per_device_train_batch_size=batch_size,
                             gradient_accumulation_steps=accumulation)
        trainer = SpaceTrainer(model=toy_model(), args=args, train_dataset=rows,
                               space_config=SpaceConfig(num_mask_tokens=2, blocks_per_sequence=2))
        trainer.data_collator.generator = torch.Generator().manual_seed(0)  # same draws row by row
        trainer.train()
        return trainer.model

    big, accumulated = one_step(8, 1), one_step(2, 4)
    for (name, a), (_, b) in zip(big.named_parameters(), accumulated.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("start", ["plain", "saved_gated"])
def test_gated_trains_only_the_adapters(ar_base, tmp_path, start):
    """A few gated steps: base weights untouched, adapter weights moved, only masks carry loss. Also when training
    continues from a saved gated SPACE model: `from_pretrained` leaves every weight trainable, and the adapters
    are already installed (a bug once trained the base of such a model along with its adapters)."""
    model = copy.deepcopy(ar_base)
    if start == "saved_gated":
        add_space_support(model, num_mask_tokens=K, mode="gated").save_pretrained(tmp_path / "saved")
        model = load_space_model(tmp_path / "saved")
        assert all(parameter.requires_grad for parameter in model.parameters())
    trainer = SpaceTrainer(
        model=model, args=training_args(tmp_path, 3, logging_steps=1, warmup_steps=0),
        train_dataset=toy_rows(48, seed=0), space_config=SpaceConfig(num_mask_tokens=K, mode="gated"),
    )
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    for name, parameter in trainer.model.named_parameters():
        changed = not torch.equal(parameter, before[name])
        assert changed == ("lora_" in name or "space_mask" in name), name
    assert any(isinstance(m, GatedMaskEmbedding) for m in trainer.model.modules())
    assert "sar_loss" in trainer.state.log_history[0] and "ar_loss" not in trainer.state.log_history[0]


def test_gated_adapters_train_in_float32_on_a_bfloat16_base(ar_base, tmp_path):
    """A bf16 base keeps its bf16 weights (untouched); its adapters train in fp32, where small AdamW steps are not
    rounded away, and the trained model still decodes losslessly against its bf16 base."""
    base = copy.deepcopy(ar_base).to(torch.bfloat16)
    trainer = SpaceTrainer(
        model=copy.deepcopy(base), args=training_args(tmp_path, 3, logging_steps=1, warmup_steps=0),
        train_dataset=toy_rows(48, seed=0), space_config=SpaceConfig(num_mask_tokens=K, mode="gated"),
    )
    adapters = {name for name, _ in trainer.model.named_parameters() if ".space_" in name}
    assert adapters and all(
        (p.dtype == torch.float32) == (name in adapters) for name, p in trainer.model.named_parameters()
    )
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    for name, parameter in trainer.model.named_parameters():
        assert torch.equal(parameter, before[name]) == (name not in adapters), name
    model = trainer.model.eval()
    ids = probe_ids()
    with torch.no_grad():
        plain = base(ids).logits  # no mask in the input: the bf16 base, exactly (less the appended mask row)
        assert torch.equal(model(ids).logits[..., : plain.shape[-1]], plain)
    assert space_vs_plain(model)[0]


def test_what_training_adds_is_drawn_from_the_seed(ar_base, tmp_path):
    """The adapters' random initial weights come from `args.seed`, whatever the global RNG held before, as a
    `model_init` model's do: the same command gives the same run. Also when a carried adapter is grown."""

    def added_weights(seed: int, rng_before: int, model=None, rank: int = 16) -> dict:
        torch.manual_seed(rng_before)
        trainer = SpaceTrainer(
            model=copy.deepcopy(ar_base) if model is None else copy.deepcopy(model),
            args=training_args(tmp_path, 1, seed=seed), train_dataset=toy_rows(16, seed=0),
            space_config=SpaceConfig(num_mask_tokens=K, mode="gated", adapter_rank=rank, adapter_alpha=2 * rank),
        )
        return {name: p.detach().clone() for name, p in trainer.model.named_parameters() if "lora_A" in name}

    first = added_weights(seed=0, rng_before=1)
    assert first and all(torch.equal(first[name], tensor) for name, tensor in added_weights(0, 2).items())
    assert not any(torch.equal(first[name], tensor) for name, tensor in added_weights(1, 1).items())
    gated = add_space_support(copy.deepcopy(ar_base), num_mask_tokens=K, mode="gated")
    grown = added_weights(0, 1, gated, rank=32)
    assert all(tensor.shape[0] == 32 for tensor in grown.values())
    assert all(torch.equal(grown[name], tensor) for name, tensor in added_weights(0, 2, gated, rank=32).items())


def test_per_position_mask_embeddings_train_and_reload(ar_base, tmp_path):
    """Each mask of a group trains its own embedding row; the rows save and load with the model (alone: test_hub)."""
    trainer = SpaceTrainer(
        model=copy.deepcopy(ar_base), args=training_args(tmp_path, 3, warmup_steps=0),
        train_dataset=toy_rows(48, seed=0),
        space_config=SpaceConfig(num_mask_tokens=K, mode="gated", per_position_mask_embeddings=True),
    )
    rows = trainer.model.get_input_embeddings().space_mask.weight
    before = rows.detach().clone()
    assert rows.shape == (K, before.shape[1]) and all(torch.equal(row, before[0]) for row in before)
    trainer.train()
    model = trainer.model.eval()
    assert all(not torch.equal(rows[j], before[j]) for j in range(K))
    assert all(not torch.equal(rows[0], rows[j]) for j in range(1, K))  # the rows learned apart
    assert space_vs_plain(model)[0]
    model.save_pretrained(tmp_path / "saved")
    reloaded = load_space_model(tmp_path / "saved")
    assert reloaded.config.space_config["per_position_mask_embeddings"] is True
    assert torch.equal(reloaded.get_input_embeddings().space_mask.weight, rows)


def test_gated_base_runs_without_dropout(tmp_path):
    """The frozen base runs in eval mode (as at inference) even while training: GPT-2 has dropout 0.1."""
    model = tiny_model("gpt2", seed=0, num_mask_tokens=2)
    trainer = SpaceTrainer(
        model=model, args=training_args(tmp_path, 1), train_dataset=[{"input_ids": list(range(1, 13))}] * 4,
        space_config=SpaceConfig(num_mask_tokens=2, mode="gated"),
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    trainer.model.train()
    losses = [trainer.compute_loss(trainer.model, dict(batch)).item() for _ in range(3)]
    assert losses[0] == losses[1] == losses[2]
    assert trainer.model.training  # the trainer's mode is restored afterwards


@pytest.mark.parametrize("mode", ["full", "gated"])
def test_mixed_precision_training_leaves_a_plain_forward(tmp_path, mode):
    """--bf16 wraps model.forward in autocast while training; afterwards plain and SPACE decoding agree again."""
    trainer = SpaceTrainer(model=toy_model(), args=training_args(tmp_path, 3, bf16=True),
                           train_dataset=toy_rows(48, seed=0), space_config=SpaceConfig(num_mask_tokens=K, mode=mode))
    trainer.train()
    assert "_original_forward" not in vars(trainer.model)
    assert space_vs_plain(trainer.model)[0]


class StopAtStep(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 2:
            raise KeyboardInterrupt("stopped by the user")


@pytest.mark.parametrize("mode", ["full", "gated"])
def test_interrupted_mixed_precision_training_leaves_a_plain_forward(tmp_path, mode):
    trainer = SpaceTrainer(model=toy_model(), args=training_args(tmp_path, 5, bf16=True),
                           train_dataset=toy_rows(80, seed=0), space_config=SpaceConfig(num_mask_tokens=K, mode=mode),
                           callbacks=[StopAtStep()])
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert "_original_forward" not in vars(trainer.model)
    assert space_vs_plain(trainer.model)[0]

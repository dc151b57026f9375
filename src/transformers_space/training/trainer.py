"""`SpaceTrainer`: SAR-SFT (SPACE.md section 2) as a `transformers.Trainer` subclass.

It keeps `Trainer`'s signature and adds `space_config=` and `max_length=`. At construction it prepares the
model for the chosen mode (`setup.py`), tokenises and checks every row (`data.py`) and builds the collator
(`collator.py`); so bad settings or data fail before any step. The loss:

- "full" / "lora": one forward over real tokens and appended mask blocks; AR loss on real tokens plus
  `mask_loss_weight` x the mask loss.
- "gated": the prefix runs once without gradients through the frozen base (its KV lands in a
  DynamicCache), then every mask block of the batch runs in a second forward that attends to that KV,
  with gradients; only masks carry loss. The base runs in eval mode (no dropout), as at inference.

Normalisation is declared, not left to the Trainer's version-dependent defaults (5.17 and 5.24 differ): the
summed token losses are divided by `num_items_in_batch`, which this class counts itself as the number of
targets over the whole accumulated batch (and over all processes when `average_tokens_across_devices`).
AR and SAR losses, mask accuracy and the SAR blocks seen are logged as separate metrics.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from ..compat import cache_argument_name, new_cache
from ..configuration import SpaceConfig
from ..gated import GatedLoraAdapter, GatedMaskEmbedding
from .collator import IGNORE, SpaceDataCollator
from .data import prepare_rows
from .setup import check_checkpoint_settings, prepare_model, save_settings

logger = logging.getLogger(__name__)


class SpaceTrainer(Trainer):
    """`Trainer` for SAR-SFT; after training `trainer.model` supports `generate(use_space=True)`."""

    def __init__(
        self,
        model=None,
        args: TrainingArguments | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        space_config: SpaceConfig | None = None,
        max_length: int | None = None,
        **kwargs,
    ):
        if model is None:
            raise ValueError("SpaceTrainer needs `model` (a transformers causal LM); `model_init` is not supported.")
        space_config = SpaceConfig() if space_config is None else space_config
        if not isinstance(space_config, SpaceConfig):
            raise TypeError(f"`space_config` should be a SpaceConfig, got {type(space_config).__name__}.")
        args = args if args is not None else TrainingArguments(output_dir="space_trainer_output")
        if args.remove_unused_columns:
            args.remove_unused_columns = False  # the collator's columns are not the model's forward arguments
        if args.n_gpu > 1:
            raise ValueError(
                f"SpaceTrainer does not support torch DataParallel ({args.n_gpu} GPUs in one process); launch one "
                "process per GPU with `torchrun` or `accelerate launch` (DDP) instead."
            )
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        model, self.space_config = prepare_model(model, tokenizer, space_config)
        model_config = model.config
        train_dataset = prepare_rows(train_dataset, tokenizer, self.space_config, model_config, max_length)
        if eval_dataset is not None:
            eval_dataset = prepare_rows(eval_dataset, tokenizer, self.space_config, model_config, max_length)
        if data_collator is None:
            data_collator = self.make_collator(model, tokenizer)
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            **kwargs,
        )
        # compute_loss divides by num_items_in_batch itself (counted by _get_num_items_in_batch below), so the
        # Trainer must neither divide again by the accumulation steps nor count the labels its own way.
        self.model_accepts_loss_kwargs = True
        self._metric_sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), dtype=torch.float64))
        self.space_totals = {"sar_blocks": 0, "target_tokens": 0}

    def make_collator(self, model, tokenizer) -> SpaceDataCollator:
        config = self.space_config
        pad_token_id = getattr(tokenizer, "pad_token_id", None)
        if pad_token_id is None:
            pad_token_id = getattr(model.config, "pad_token_id", None)
        if pad_token_id is None or pad_token_id == config.mask_token_id:
            pad_token_id = 0 if config.mask_token_id != 0 else 1  # never attended to, never a target
        return SpaceDataCollator(
            mask_token_id=config.mask_token_id,
            num_mask_tokens=config.num_mask_tokens,
            pad_token_id=pad_token_id,
            sar_probability=config.sar_probability,
            sample_form=config.sample_form,
            blocks_per_sequence=config.blocks_per_sequence,
            two_pass=config.mode == "gated",
            mask_dtype=model.get_input_embeddings().weight.dtype,
        )

    # --- loss ----------------------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "mask_input_ids" in inputs:
            logits, targets, is_mask, outputs = self._gated_forward(model, inputs)
        else:
            logits, targets, is_mask, outputs = self._single_forward(model, inputs)
        losses = F.cross_entropy(
            logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="none"
        ).view_as(targets)
        valid = targets != IGNORE
        ar, sar = valid & ~is_mask, valid & is_mask
        total = losses[ar].sum() + self.space_config.mask_loss_weight * losses[sar].sum()
        if num_items_in_batch is None:
            loss = total / valid.sum().clamp(min=1)
        else:
            loss = total / num_items_in_batch
            if self.args.average_tokens_across_devices:
                loss = loss * self.accelerator.num_processes  # DDP averages gradients over processes
        if model.training:
            self._record(losses, logits, targets, ar, sar)
        return (loss, outputs) if return_outputs else loss

    def _single_forward(self, model, inputs):
        targets = inputs["labels"]
        columns = torch.nonzero(targets.ne(IGNORE).any(0)).flatten()  # only positions with a target need logits
        outputs = model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"].to(self._mask_dtype(model)),
            position_ids=inputs["position_ids"],
            use_cache=False,
            logits_to_keep=columns,
        )
        is_mask = inputs["input_ids"][:, columns] == self.space_config.mask_token_id
        return outputs.logits, targets[:, columns], is_mask, outputs

    def _gated_forward(self, model, inputs):
        """Prefix once without gradients (frozen base, KV into a cache); then all mask blocks, with gradients."""
        unwrapped = self.accelerator.unwrap_model(model)
        base_training = _base_to_eval(unwrapped)
        cache = new_cache()
        cache_name = cache_argument_name(type(unwrapped).forward)
        with torch.no_grad():
            model(
                input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=True,
                logits_to_keep=1, **{cache_name: cache},
            )
        outputs = model(
            input_ids=inputs["mask_input_ids"],
            attention_mask=inputs["mask_attention_mask"].to(self._mask_dtype(model)),
            position_ids=inputs["mask_position_ids"],
            use_cache=True,
            **{cache_name: cache},
        )
        _restore_training(unwrapped, base_training)
        is_mask = inputs["mask_input_ids"] == self.space_config.mask_token_id
        return outputs.logits, inputs["labels"], is_mask, outputs

    def _mask_dtype(self, model) -> torch.dtype:
        return self.accelerator.unwrap_model(model).get_input_embeddings().weight.dtype

    def _get_num_items_in_batch(self, batch_samples, device):
        """Declared count: every non--100 entry of the collator's (already shifted) `labels` is one target."""
        if not batch_samples or "labels" not in batch_samples[0]:
            return None
        count = sum((batch["labels"] != IGNORE).sum() for batch in batch_samples).to(device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            count = self.accelerator.gather(count).sum()
        return count

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    # --- metrics -------------------------------------------------------------------------------------------

    @torch.no_grad()
    def _record(self, losses, logits, targets, ar, sar) -> None:
        sums = self._metric_sums
        sums["ar_loss"] += losses[ar].sum().double().cpu()
        sums["ar_tokens"] += ar.sum().cpu()
        sums["sar_loss"] += losses[sar].sum().double().cpu()
        sums["sar_tokens"] += sar.sum().cpu()
        sums["sar_correct"] += (logits.argmax(-1)[sar] == targets[sar]).sum().cpu()
        masks = int(sar.sum())
        self.space_totals["sar_blocks"] += masks // self.space_config.num_mask_tokens
        self.space_totals["target_tokens"] += int(ar.sum()) + masks

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._metric_sums:
            names = ("ar_loss", "ar_tokens", "sar_loss", "sar_tokens", "sar_correct")
            sums = torch.stack([self._metric_sums[name] for name in names]).to(self.args.device)
            if self.accelerator.num_processes > 1:
                sums = self.accelerator.reduce(sums, reduction="sum")
            ar_loss, ar_tokens, sar_loss, sar_tokens, sar_correct = sums.tolist()
            if ar_tokens:
                logs["ar_loss"] = round(ar_loss / ar_tokens, 4)
            if sar_tokens:
                logs["sar_loss"] = round(sar_loss / sar_tokens, 4)
                logs["sar_accuracy"] = round(sar_correct / sar_tokens, 4)
            self._metric_sums.clear()
        super().log(logs, start_time)

    # --- checkpoints ---------------------------------------------------------------------------------------

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No checkpoint found in output_dir {self.args.output_dir!r} to resume from.")
        if resume_from_checkpoint:
            check_checkpoint_settings(resume_from_checkpoint, self.space_config)
        result = super().train(
            resume_from_checkpoint=resume_from_checkpoint or None, trial=trial,
            ignore_keys_for_eval=ignore_keys_for_eval, **kwargs,
        )
        # With --bf16/--fp16, accelerate wraps `model.forward` in autocast. SPACE decoding runs the decoder body
        # and the head itself, past that wrapper, so plain and SPACE generation would run at different
        # precisions. Give the trained model its own forward back (the next train() wraps it again).
        self.accelerator.unwrap_model(self.model, keep_fp32_wrapper=False)
        return result

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict)
        save_settings(output_dir or self.args.output_dir, self.space_config)


def _base_to_eval(model) -> bool:
    """Put the frozen base in eval mode (no dropout, as at inference), the adapters keep the trainer's mode."""
    training = model.training
    model.eval()
    for module in model.modules():
        if isinstance(module, (GatedLoraAdapter, GatedMaskEmbedding)):
            module.train(training)
    return training


def _restore_training(model, training: bool) -> None:
    model.train(training)

"""`SpaceTrainer`: SAR-SFT (docs/method.md, "What the model learns") as a `transformers.Trainer` subclass.

It keeps `Trainer`'s signature and adds `space_config=` and `max_length=`. At construction it seeds from
`args.seed` and prepares the model for the chosen mode (`setup.py`), tokenises and checks every row
(`data.py`) and builds the collator (`collator.py`); so bad settings or data fail before any step. The loss:

- "full" / "lora": one forward over real tokens and appended mask blocks; AR loss on real tokens plus
  `mask_loss_weight` x the mask loss.
- "gated": the prefix runs once without gradients through the frozen base (its KV lands in a
  DynamicCache), then every mask block of the batch runs in a second forward that attends to that KV,
  with gradients; only masks carry loss. The base runs in eval mode (no dropout), as at inference. With a draft
  head the masks' logits are the head's; when the adapter trains with it (`draft_head_trains_adapter`), each
  mask's loss on its own logits (which pick the head's candidates in decoding) is added.

The mask loss (`SpaceConfig.mask_loss`, `losses.py`) is cross-entropy on the data, KL to a teacher, or a mix.
The teacher is the model that will verify the drafts: in "gated" mode the frozen base, whose logits at every
mask's target position come from the prefix forward that runs anyway (the collator extends the prefix by k
tokens so that it covers them); in "full" and "lora" mode the model being trained, whose verification logits
are its own next-token logits at those positions in the same forward (detached, so the masks follow the AR
head and do not pull it). A frozen copy of the original would be the wrong teacher there: the fine-tuned
model, not the original, verifies, and the copy would double the memory.

Normalisation is declared, not left to the Trainer's version-dependent defaults (5.17 and 5.24 differ): the
summed token losses are divided by `num_items_in_batch`, which this class counts itself as the number of
targets over the whole accumulated batch (and over all processes when `average_tokens_across_devices`).
AR and SAR losses, mask accuracy and the SAR blocks seen are logged as separate metrics; with a teacher (a KL
mask loss, and always in evaluation) also `sar_agreement`, how often a mask's argmax equals the teacher's:
on self-distilled rows that is the acceptance rate greedy SPACE will see. Evaluation reports it per mask
(`eval_sar_agreement_1..k`), a cheap held-out learning curve while training runs.
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from dataclasses import replace

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainingArguments
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.trainer_utils import enable_full_determinism, get_last_checkpoint, set_seed

from ..decoding.compat import cache_argument_name, new_cache
from ..decoding.configuration import SpaceConfig
from ..decoding.draft_head import DraftHead, conditioned_logits, draft_head_of
from ..decoding.gated import GatedLoraAdapter, GatedMaskEmbedding
from ..decoding.planning import greedy_chain_accepted
from .collator import IGNORE, SpaceDataCollator, valid_block_starts
from .data import prepare_rows
from .distributed import fsdp_on_cpu
from .losses import mask_index_in_block, mask_token_losses
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
        # what training adds (adapters with random A, LoRA, grown ranks) is drawn from `args.seed`, as Trainer
        # seeds before it builds a `model_init` model: the same command gives the same run
        if args.full_determinism:
            enable_full_determinism(args.seed)
        else:
            set_seed(args.seed)
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
        if self.space_config.draft_head_width and (self.is_fsdp_enabled or is_deepspeed_zero3_enabled()):
            raise ValueError(
                "Training a draft head (draft_head_width > 0) under FSDP or DeepSpeed ZeRO-3 is not supported: the "
                "head reads the LM head's weight outside the model's forward, where these engines keep it sharded. "
                "Use DDP or ZeRO-2 (only the small head trains; the frozen model fits where inference fits)."
            )
        # compute_loss divides by num_items_in_batch itself (counted by _get_num_items_in_batch below), so the
        # Trainer must neither divide again by the accumulation steps nor count the labels its own way.
        self.model_accepts_loss_kwargs = True
        self._metric_sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), dtype=torch.float64))
        self._eval_sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), dtype=torch.float64))
        self.space_totals = {"sar_blocks": 0, "target_tokens": 0}

    def create_accelerator_and_postprocess(self) -> None:
        with fsdp_on_cpu(self.args):  # FSDP on CPU processes really shards (accelerate would fall back to DDP)
            super().create_accelerator_and_postprocess()

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
            prefix_covers_targets=config.mode == "gated",  # k more prefix tokens: the teacher's logits
            mask_dtype=model.get_input_embeddings().weight.dtype,
        )

    def get_eval_dataloader(self, eval_dataset=None):
        """Every evaluation draws the same mask blocks: each row's from `args.seed` and the row's own tokens.

        With torch's global RNG each evaluation of a run drew other blocks (~0.02 of noise in the agreement), so
        a learning curve mixed what the model learned with which blocks were drawn. Now two evaluations (of one
        run, two runs, or `examples/evaluate_agreement.py`) on the same rows differ only by the models; and as a
        row's blocks do not depend on the rows before it, held-out sets that differ by a few rows (code prompts
        come from installed packages, so machines with other versions draw partly other ones) measure the
        rows they share on the same blocks."""
        collator = self.data_collator
        if not isinstance(collator, SpaceDataCollator):
            return super().get_eval_dataloader(eval_dataset)
        self.data_collator = replace(collator, generator=None, row_seed=self.args.seed)
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = collator

    # --- loss ----------------------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        forward = self._gated_forward if "mask_input_ids" in inputs else self._single_forward
        logits, targets, is_mask, teacher, outputs, candidate_logits = forward(model, inputs)
        valid = targets != IGNORE
        ar, sar = valid & ~is_mask, valid & is_mask
        config = self.space_config
        ar_losses = F.cross_entropy(logits[ar].float(), targets[ar], reduction="none")
        teacher_at_masks = None if teacher is None else teacher[sar]

        def mask_losses(of: torch.Tensor) -> torch.Tensor:
            return mask_token_losses(of[sar], targets[sar], teacher_at_masks, config.mask_loss, config.mask_kl_weight)

        sar_losses = mask_losses(logits)
        total = ar_losses.sum() + config.mask_loss_weight * sar_losses.sum()
        if candidate_logits is not None:  # the masks' own logits pick the head's candidates: they keep their loss
            total = total + config.mask_loss_weight * mask_losses(candidate_logits).sum()
        if num_items_in_batch is None:
            loss = total / valid.sum().clamp(min=1)
        else:
            loss = total / num_items_in_batch
            if self.args.average_tokens_across_devices:
                loss = loss * self.accelerator.num_processes  # DDP averages gradients over processes
        if model.training:
            self._record(ar_losses, sar_losses, logits, targets, ar, sar, teacher)
        elif teacher is not None:
            self._record_evaluation(logits, is_mask, sar, teacher)
        return (loss, outputs) if return_outputs else loss

    def _wants_teacher(self, model) -> bool:
        return self.space_config.mask_loss != "cross_entropy" or not model.training

    def _single_forward(self, model, inputs):
        """One forward; the teacher of mask j at position p is the same row's own (detached) logits at column p.

        Returns (logits, targets, is_mask, teacher, outputs, None): no draft head, so no second mask loss."""
        targets = inputs["labels"]
        columns = torch.nonzero(targets.ne(IGNORE).any(0)).flatten()  # only positions with a target need logits
        outputs = model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"].to(self._mask_dtype(model)),
            position_ids=inputs["position_ids"],
            use_cache=False,
            logits_to_keep=columns,
        )
        logits = outputs.logits
        is_mask = inputs["input_ids"][:, columns] == self.space_config.mask_token_id
        teacher = None
        if self._wants_teacher(model):
            # real tokens sit at column == position; position p's logits are mask-at-p's teacher
            kept = torch.full((inputs["input_ids"].shape[1],), -1, dtype=torch.long, device=columns.device)
            kept[columns] = torch.arange(columns.shape[0], device=columns.device)
            teacher_columns = kept[inputs["position_ids"][:, columns]].clamp(min=0)  # [B, C]; used at masks only
            teacher = logits.detach().gather(1, teacher_columns[..., None].expand(-1, -1, logits.shape[-1]))
        return logits, targets[:, columns], is_mask, teacher, outputs, None

    def _gated_forward(self, model, inputs):
        """Prefix once without gradients (frozen base, KV into a cache); then all mask blocks, with gradients.

        Both passes call the whole (wrapped) model, never its body or head alone: FSDP and ZeRO-3 gather the
        sharded weights in the root module's forward, so a bare `model.base_model(...)` or `lm_head(...)` would
        find them sharded.

        Returns (logits, targets, is_mask, teacher, outputs, candidate_logits), as `_single_forward` does;
        candidate_logits are the masks' own logits when they carry a loss of their own beside the head's
        (training with `draft_head_trains_adapter`), else None.
        """
        unwrapped = self.accelerator.unwrap_model(model)
        base_training = _base_to_eval(unwrapped)
        cache = new_cache()
        teacher = None
        wants_teacher = self._wants_teacher(model)
        # each mask's target position, a column of the prefix (which covers every target; real tokens: column ==
        # position): where the teacher's logits are read, and the data's token before the target (a draft head's input)
        targets_at = inputs["mask_position_ids"].clamp(max=inputs["input_ids"].shape[1] - 1)
        with torch.no_grad():
            if wants_teacher:  # the base's logits at each mask's target position: the columns any row needs
                columns = targets_at.unique()
            prefix = model(
                input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=True,
                logits_to_keep=columns if wants_teacher else 1,
                **{cache_argument_name(type(unwrapped).forward): cache},
            )
            if wants_teacher:
                kept = torch.searchsorted(columns, targets_at)
                teacher = prefix.logits.gather(1, kept[..., None].expand(-1, -1, prefix.logits.shape[-1]))
        head = draft_head_of(unwrapped)
        with _last_head_input(unwrapped) as head_input:
            outputs = model(
                input_ids=inputs["mask_input_ids"],
                attention_mask=inputs["mask_attention_mask"].to(self._mask_dtype(model)),
                position_ids=inputs["mask_position_ids"],
                use_cache=True,
                **{cache_argument_name(type(unwrapped).forward): cache},
            )
        _restore_training(unwrapped, base_training)
        is_mask = inputs["mask_input_ids"] == self.space_config.mask_token_id
        logits = candidate_logits = outputs.logits
        if head is not None:  # each mask's logits from the draft head, given the data's token before its target
            where = torch.nonzero(is_mask, as_tuple=True)
            before = inputs["input_ids"].gather(1, targets_at)
            drafted = conditioned_logits(unwrapped, head, head_input[0][where], before[where])
            logits = logits.index_put(where, drafted.to(logits.dtype))
        trains_candidates = head is not None and self.space_config.draft_head_trains_adapter and model.training
        return logits, inputs["labels"], is_mask, teacher, outputs, candidate_logits if trains_candidates else None

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

    @torch.no_grad()
    def simulate_greedy_acceptance(self) -> list[list[int]]:
        """Per evaluation row, the accepted counts of the passes greedy SPACE at the full
        layout would make if it generated that row's answer: every valid block start is drafted teacher-forced
        in one forward, then `greedy_chain_accepted` walks from the first answer position. On self-distilled
        rows (the base's own greedy answers) this is what generation measures with the masks' own drafts
        (`context_lookup=False`; `acceptance_rates` of the pooled counts, tokens per pass = mean count + 1), at the
        cost of one forward per row.

        Why beside `eval_sar_agreement_j`: agreement weighs every position alike, generation drafts only from
        where the previous pass stopped, mostly right after a rejected draft; the two can move apart."""
        rows = self.eval_dataset
        if rows is None:
            raise ValueError("Simulated acceptance reads the evaluation rows: pass `eval_dataset` to SpaceTrainer.")
        k = self.space_config.num_mask_tokens
        every_start = replace(self.data_collator, blocks_per_sequence=max(len(row["labels"]) for row in rows),
                              sar_probability=1.0, generator=torch.Generator())
        forward = self._gated_forward if self.space_config.mode == "gated" else self._single_forward
        model, was_training = self.model, self.model.training
        model.eval()
        counts = []
        try:
            for row in rows:
                starts = valid_block_starts(row["labels"], k)
                if not starts:
                    counts.append([])
                    continue
                logits, targets, is_mask, teacher, _, _ = forward(model, self._prepare_inputs(every_start([row])))
                drafted = is_mask & (targets != IGNORE)
                right = (logits.argmax(-1) == teacher.argmax(-1))[drafted].view(len(starts), k).tolist()
                counts.append(greedy_chain_accepted(dict(zip(starts, right, strict=True)), starts[0]))
        finally:
            model.train(was_training)
        return counts

    # --- metrics -------------------------------------------------------------------------------------------

    @torch.no_grad()
    def _record(self, ar_losses, sar_losses, logits, targets, ar, sar, teacher) -> None:
        sums = self._metric_sums
        sums["ar_loss"] += ar_losses.sum().double().cpu()
        sums["ar_tokens"] += ar.sum().cpu()
        sums["sar_loss"] += sar_losses.sum().double().cpu()
        sums["sar_tokens"] += sar.sum().cpu()
        drafts = logits.argmax(-1)[sar]
        sums["sar_correct"] += (drafts == targets[sar]).sum().cpu()
        if teacher is not None:  # what greedy verification would accept
            sums["sar_agreement"] += (drafts == teacher.argmax(-1)[sar]).sum().cpu()
        masks = int(sar.sum())
        self.space_totals["sar_blocks"] += masks // self.space_config.num_mask_tokens
        self.space_totals["target_tokens"] += int(ar.sum()) + masks

    @torch.no_grad()
    def _record_evaluation(self, logits, is_mask, sar, teacher) -> None:
        index = mask_index_in_block(is_mask, self.space_config.num_mask_tokens)[sar]
        agree = (logits.argmax(-1)[sar] == teacher.argmax(-1)[sar]).double()
        for j in range(self.space_config.num_mask_tokens):
            self._eval_sums[f"agree_{j}"] += agree[index == j].sum().cpu()
            self._eval_sums[f"count_{j}"] += (index == j).sum().cpu()

    def _evaluation_metrics(self) -> dict[str, float]:
        k = self.space_config.num_mask_tokens
        names = [f"{kind}_{j}" for j in range(k) for kind in ("agree", "count")]
        sums = torch.stack([self._eval_sums[name] for name in names]).to(self.args.device)
        if self.accelerator.num_processes > 1:
            sums = self.accelerator.reduce(sums, reduction="sum")
        values = dict(zip(names, sums.tolist(), strict=True))
        self._eval_sums.clear()
        metrics = {f"eval_sar_agreement_{j + 1}": round(values[f"agree_{j}"] / values[f"count_{j}"], 4)
                   for j in range(k) if values[f"count_{j}"]}
        total = sum(values[f"count_{j}"] for j in range(k))
        if total:
            metrics["eval_sar_agreement"] = round(sum(values[f"agree_{j}"] for j in range(k)) / total, 4)
        return metrics

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "eval_loss" in logs and self._eval_sums:
            logs.update(self._evaluation_metrics())
        if "loss" in logs and self._metric_sums:
            names = ("ar_loss", "ar_tokens", "sar_loss", "sar_tokens", "sar_correct", "sar_agreement")
            sums = torch.stack([self._metric_sums[name] for name in names]).to(self.args.device)
            if self.accelerator.num_processes > 1:
                sums = self.accelerator.reduce(sums, reduction="sum")
            ar_loss, ar_tokens, sar_loss, sar_tokens, sar_correct, sar_agreement = sums.tolist()
            if ar_tokens:
                logs["ar_loss"] = round(ar_loss / ar_tokens, 4)
            if sar_tokens:
                logs["sar_loss"] = round(sar_loss / sar_tokens, 4)
                logs["sar_accuracy"] = round(sar_correct / sar_tokens, 4)
                if self.space_config.mask_loss != "cross_entropy":
                    logs["sar_agreement"] = round(sar_agreement / sar_tokens, 4)
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
        try:
            return super().train(
                resume_from_checkpoint=resume_from_checkpoint or None, trial=trial,
                ignore_keys_for_eval=ignore_keys_for_eval, **kwargs,
            )
        finally:
            # With --bf16/--fp16, accelerate wraps `model.forward` in autocast. SPACE decoding runs the decoder
            # body and the head itself, past that wrapper, so plain and SPACE generation would run at different
            # precisions. Give the model its own forward back, also when training stopped early (an exception,
            # Ctrl-C); the next train() wraps it again.
            self.accelerator.unwrap_model(self.model, keep_fp32_wrapper=False)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict)
        save_settings(output_dir or self.args.output_dir, self.space_config)


@contextlib.contextmanager
def _last_head_input(model):
    """Yields a list that holds, after the forward inside, the LM head's input (the last hidden states): what a
    draft head reads. Records nothing for models without a draft head."""
    seen: list[torch.Tensor] = []
    if draft_head_of(model) is None:
        yield seen
        return

    def record(module, args, output):
        seen[:] = [args[0]]

    handle = model.get_output_embeddings().register_forward_hook(record)
    try:
        yield seen
    finally:
        handle.remove()


def _base_to_eval(model) -> bool:
    """Put the frozen base in eval mode (no dropout, as at inference), the adapters keep the trainer's mode."""
    training = model.training
    model.eval()
    for module in model.modules():
        if isinstance(module, (GatedLoraAdapter, GatedMaskEmbedding, DraftHead)):
            module.train(training)
    return training


def _restore_training(model, training: bool) -> None:
    model.train(training)

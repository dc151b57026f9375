"""The SPACE auto-correct decoding loop, run by transformers' `generate` as a `custom_generate` function.

transformers prepares the inputs, the generation config, logits processors, stopping criteria and the
streamer; this loop then alternates: lay out one pass -> forward -> verify the previous candidates
(greedy, or distribution-preserving sampling) -> emit tokens -> crop the cache -> draft the next
candidates from the mask group that saw exactly the accepted text.

Rows of a batch accept different numbers of tokens. Every row keeps its own logical positions and the
cache keeps a hole (an invisible entry) where a row rejected a candidate that another row accepted, so
one crop serves the whole batch. Emitted tokens wait per row until every row that still needs a token
has one for the next column; columns are then committed one at a time through the stopping criteria,
exactly as plain decoding appends them, so finished rows are padded as transformers pads them and
criteria see exactly the sequences plain decoding would show them.

The loop knows what a pass computes (`forward.py`), not how: the plan's `PassKernels` (`kernels.py`) supply
the contexts a generate call and each pass open. What it may refuse is checked once, in `check_generation`,
against the generation config transformers merged. A plan that drafts nothing (`num_mask_tokens="auto"` where
drafting does not pay) is plain decoding, so transformers' own loop runs it (`decode_without_drafts`).

The loop runs under `torch.inference_mode()`, not only `no_grad`: a SPACE pass of a small model is thousands of
small tensor operations, and skipping autograd's version counters and view tracking pays on a CPU
(BENCHMARKS.md, `benchmarks/inference_mode.py`). The sequences, scores and logits handed back are cloned outside
the mode (`outside_inference_mode`; models with quantized tensor-subclass weights run under `no_grad` instead,
`forward.without_autograd`), so callers can edit them in place as usual; a returned cache (assisted
generation) holds inference tensors, which transformers only crops and appends to, never edits in place.

Imports only torch, transformers and sibling modules (it ships as remote code).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from transformers import GenerationConfig, GenerationMixin, LogitsProcessorList, StoppingCriteriaList
from transformers.generation.utils import GenerateDecoderOnlyOutput

from .candidates import SpaceCandidateGenerator
from .compat import crop_cache, new_cache, output_cache_field, user_cache_from_kwargs
from .configuration import SpaceConfig
from .draft_head import RestrictedDrafting, draft_head_of
from .forward import PassLogits, forward_block, lm_head_of, without_autograd
from .gated import masks_per_group
from .kernels import kernels_named
from .layout import INVALID, PassLayout, build_pass_layout, cache_positions_after_pass, draft_rows, prompt_positions
from .lookup import LOOKUP_EXTENSION
from .planning import SpaceLayoutPlan
from .verify import verify_pass, with_mask_suppressed


@dataclass
class SpaceGenerateOutput(GenerateDecoderOnlyOutput):
    """`GenerateDecoderOnlyOutput` plus, per row, the number of tokens each forward pass emitted."""

    tokens_per_pass: list[list[int]] | None = None
    space_layout: dict | None = None  # the layout that ran: masks per group and which groups


def space_decoding(
    model,
    input_ids: torch.LongTensor,
    logits_processor: LogitsProcessorList,
    stopping_criteria: StoppingCriteriaList,
    generation_config: GenerationConfig,
    synced_gpus: bool = False,
    streamer=None,
    space_streamer=None,
    space_layout=None,
    space_context_lookup: bool = True,
    space_lookup_extension: int = LOOKUP_EXTENSION,
    **model_kwargs,
):
    """SPACE decoding: greedy output equals greedy `generate`; sampled output has sampling's distribution.

    transformers hands a callable `custom_generate` none of generate's own `streamer` (5.17-5.24 pass it
    only the callable's extra parameters), so the streamer travels as `space_streamer`, and this loop
    streams the prompt itself, as plain decoding does. `space_layout` (a `SpaceLayoutPlan`) picks the masks
    per group, which groups run and the pass kernels; default: every trained mask, every group.
    `space_context_lookup`: greedy drafts may take tokens copied from earlier in the text, and
    `space_lookup_extension` more of them after the masks' drafts (`lookup.py`).
    """
    space_config = SpaceConfig.of(model)
    mask_token_id = space_config.mask_token_id
    plan = resolve_plan(space_layout, space_config.num_mask_tokens)
    kernels = kernels_named(plan.kernels)
    check_generation(model, input_ids, generation_config, synced_gpus, mask_token_id)
    logits_processor = with_mask_suppressed(logits_processor, mask_token_id)
    if space_streamer is not None:
        streamer = space_streamer
        streamer.put(input_ids.cpu())
    if not plan.groups:
        return decode_without_drafts(model, input_ids, logits_processor, stopping_criteria, generation_config,
                                     synced_gpus, streamer, plan, **model_kwargs)
    with (without_autograd(model), kernels.around_generate(model),  # see the module docstring
          masks_per_group(model, plan.num_masks)):
        state = DecodingState.start(model, input_ids, model_kwargs, generation_config, logits_processor)
        sampling = bool(generation_config.do_sample)
        draft_head = draft_head_of(model)
        head_drafting = None if draft_head is None else RestrictedDrafting(model, draft_head)
        drafter = SpaceCandidateGenerator(mask_token_id, plan.num_masks, logits_processor, sampling, head_drafting,
                                          context_lookup=space_context_lookup,
                                          lookup_extension=space_lookup_extension)
        head = lm_head_of(model)
        position_limit = getattr(model.config, "n_positions", None)
        while True:
            group_after = plan.groups_for(state.candidates.shape[1])
            layout = build_pass_layout(
                state.fresh_ids, state.fresh_positions, state.candidates, state.cache_positions, mask_token_id,
                plan.num_masks, group_after=group_after, position_limit=position_limit,
            )
            with kernels.around_pass(model):
                hidden = forward_block(model, layout, state.cache, state.cache_positions)
                logits = PassLogits(head, hidden, layout)
            verify_logits = logits.verify()
            active = layout.block_positions[:, layout.num_fresh - 1] >= 0
            scorer = VerificationScorer(logits_processor, mask_token_id, state.rows.verified(state.sequences), state)
            accepted, next_token, scores = verify_pass(
                verify_logits, state.candidates, state.candidate_probs, scorer, active, sampling
            )
            state.rows.emit(state.candidates, accepted, next_token, active, scores, verify_logits)
            new_columns = state.commit(stopping_criteria)
            if streamer is not None and new_columns is not None:
                streamer.put(new_columns.cpu())
            if not state.unfinished.any():
                break
            rows = draft_rows(layout, group_after, accepted, active)
            with kernels.around_pass(model):
                if draft_head is None:
                    drafter.set_draft_logits(logits.drafts(rows))
                else:
                    drafter.set_draft_logits(logits.drafts(rows), logits.hidden_at(rows), next_token)
            verified, lengths = state.rows.verified(state.sequences)
            drafts, draft_scores = drafter.get_candidates(verified, lengths=lengths)
            candidates = drafts[:, verified.shape[1] :]
            state.advance(layout, accepted, next_token, candidates, draft_scores, generation_config)
        if streamer is not None:
            streamer.end()
        output = state.output(generation_config, plan)
    return outside_inference_mode(output)


def decode_without_drafts(model, input_ids, logits_processor, stopping_criteria, generation_config, synced_gpus,
                          streamer, plan: SpaceLayoutPlan, **model_kwargs):
    """A plan that drafts nothing, run by transformers' own decoding loop: its output is plain decoding's by
    definition, and SPACE's loop would only add its per-pass bookkeeping (bench v13 in BENCHMARKS.md: up to 7%
    slower than plain). A dict output still says what ran, as SPACE's does: one token per pass per row."""
    criteria = _CountingStoppingCriteria(stopping_criteria, input_ids.shape[0])
    with kernels_named(plan.kernels).around_pass(model):
        output = GenerationMixin._sample(model, input_ids, logits_processor, criteria, generation_config,
                                         synced_gpus=synced_gpus, streamer=streamer, **model_kwargs)
    if not isinstance(output, GenerateDecoderOnlyOutput):
        return output
    return SpaceGenerateOutput(
        **{field.name: getattr(output, field.name) for field in fields(output)},
        tokens_per_pass=[[1] * int(count) for count in criteria.emitted], space_layout=plan.to_dict(),
    )


class _CountingStoppingCriteria(StoppingCriteriaList):
    """The stopping criteria, also counting each row's tokens: transformers' loop calls them once per token,
    and a row emits one until they first say it is done."""

    def __init__(self, criteria: StoppingCriteriaList, batch_size: int):
        super().__init__(criteria)
        self.emitted = torch.zeros(batch_size, dtype=torch.long)
        self.finished = torch.zeros(batch_size, dtype=torch.bool)

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        done = super().__call__(input_ids, scores, **kwargs)
        self.emitted += (~self.finished).long()
        self.finished |= done.cpu()
        return done


def outside_inference_mode(output):
    """`output` with its sequences, scores and logits cloned outside inference mode (ordinary tensors)."""
    if isinstance(output, torch.Tensor):
        return output.clone()
    output.sequences = output.sequences.clone()
    for name in ("scores", "logits"):
        value = getattr(output, name)
        if value is not None:
            setattr(output, name, tuple(tensor.clone() for tensor in value))
    return output


class DecodingState:
    """What survives from one pass to the next, for the whole batch."""

    def __init__(self, sequences, cache, cache_positions, fresh_ids, fresh_positions, config, collect):
        batch, device = sequences.shape[0], sequences.device
        self.sequences = sequences  # committed tokens, exactly plain decoding's input_ids so far
        self.cache, self.cache_positions = cache, cache_positions
        self.fresh_ids, self.fresh_positions = fresh_ids, fresh_positions
        self.candidates = torch.empty(batch, 0, dtype=torch.long, device=device)
        self.candidate_probs: torch.Tensor | None = None
        self.unfinished = torch.ones(batch, dtype=torch.long, device=device)
        pad = config._pad_token_tensor
        self.pad_token_id = int(pad) if pad is not None else None
        self.filler = self.pad_token_id if self.pad_token_id is not None else 0
        self.rows = RowBuffers(batch, self.filler, collect)
        self.collect = collect  # (scores?, logits?) to return
        self.scores: tuple[torch.Tensor, ...] | None = () if collect[0] else None
        self.logits: tuple[torch.Tensor, ...] | None = () if collect[1] else None

    @classmethod
    def start(cls, model, input_ids, model_kwargs, generation_config, logits_processor) -> DecodingState:
        """Fresh start from the prompt, or (batch size 1) continuation of a cache this loop returned earlier."""
        attention_mask = model_kwargs.get("attention_mask")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        positions = prompt_positions(attention_mask[:, -input_ids.shape[1] :])
        cache = user_cache_from_kwargs(model_kwargs)
        cached = 0 if cache is None else cache.get_seq_length()
        if cached and not getattr(cache, "_space_owned", False):
            raise ValueError("SPACE decoding cannot continue from a prefilled cache; pass the full prompt instead.")
        if cached and input_ids.shape[0] != 1:
            raise ValueError("SPACE decoding continues a cache only for batch size 1 (as assisted generation).")
        if cached:
            cached = min(cached, input_ids.shape[1] - 1)
            crop_cache(cache, cached)
        else:
            cache = new_cache()
            cache._space_owned = True
        collect = (bool(generation_config.output_scores), bool(generation_config.output_logits))
        if not generation_config.return_dict_in_generate:
            collect = (False, False)
        return cls(
            input_ids, cache, positions[:, :cached], input_ids[:, cached:], positions[:, cached:],
            generation_config, collect,
        )

    def commit(self, stopping_criteria) -> torch.Tensor | None:
        """Append whole columns while every row that needs a token has one; returns the new columns."""
        start = self.sequences.shape[1]
        has_eos_criteria = any(hasattr(criteria, "eos_token_id") for criteria in stopping_criteria)
        while self.unfinished.any():
            needing = [row for row in range(len(self.unfinished)) if self.unfinished[row] or not has_eos_criteria]
            column = self.rows.pop_column(needing, self.sequences, self.pad_token_id)
            if column is None:
                break
            tokens, scores, logits = column
            self.sequences = torch.cat([self.sequences, tokens[:, None]], dim=1)
            if self.scores is not None:
                self.scores += (scores,)
            if self.logits is not None:
                self.logits += (logits,)
            self.unfinished = self.unfinished & ~stopping_criteria(self.sequences, self.scores)
            if has_eos_criteria:
                self.rows.drop_pending(self.unfinished)
        self.has_eos_criteria = has_eos_criteria
        return self.sequences[:, start:] if self.sequences.shape[1] > start else None

    def advance(self, layout, accepted, next_token, candidates, candidate_scores, generation_config) -> None:
        """Set up the next pass: emitted token and drafts for advancing rows; idle rows feed filler."""
        self.cache_positions = self._crop(layout, accepted)
        advancing = self.rows.needs_more(
            self.unfinished, self.has_eos_criteria, self.sequences.shape[1], generation_config
        )
        last_position = layout.block_positions[:, layout.num_fresh - 1]
        self.fresh_ids = torch.where(advancing, next_token, self.filler)[:, None]
        self.fresh_positions = torch.where(advancing, last_position + accepted + 1, INVALID)[:, None]
        self.candidates = torch.where(advancing[:, None], candidates, self.filler)
        sampling = generation_config.do_sample and candidate_scores is not None
        self.candidate_probs = candidate_scores.softmax(-1) if sampling else None

    def _crop(self, layout: PassLayout, accepted: torch.Tensor) -> torch.Tensor:
        """Drop masks and candidates no row accepted; rows that accepted fewer keep holes."""
        active = layout.block_positions[:, layout.num_fresh - 1] >= 0
        kept = int(accepted[active].max()) if active.any() else 0
        crop_cache(self.cache, self.cache_positions.shape[1] + layout.num_fresh + kept)
        return cache_positions_after_pass(self.cache_positions, layout, accepted, kept)

    def output(self, generation_config, plan: SpaceLayoutPlan):
        if not generation_config.return_dict_in_generate:
            return self.sequences
        cache = None
        if generation_config.is_assistant:  # assisted generation reuses the assistant's cache
            crop_cache(self.cache, min(self.cache.get_seq_length(), self.sequences.shape[1] - 1))
            cache = self.cache
        return SpaceGenerateOutput(
            sequences=self.sequences,
            scores=self.scores,
            logits=self.logits,
            tokens_per_pass=self.rows.emitted_per_pass(),
            space_layout=plan.to_dict(),
            **{output_cache_field(): cache},
        )


def resolve_plan(space_layout: SpaceLayoutPlan | None, num_mask_tokens: int) -> SpaceLayoutPlan:
    """The layout to run: the one given (checked against the `num_mask_tokens` the model was trained with), or
    every trained mask in every group."""
    if space_layout is None:
        return SpaceLayoutPlan.full(num_mask_tokens)
    if not isinstance(space_layout, SpaceLayoutPlan):
        raise TypeError(f"`space_layout` should be a SpaceLayoutPlan, got {type(space_layout).__name__}.")
    if space_layout.num_masks > num_mask_tokens:
        raise ValueError(
            f"The layout uses {space_layout.num_masks} masks per group but the model was trained with "
            f"{num_mask_tokens}; use at most {num_mask_tokens}."
        )
    return space_layout


class VerificationScorer:
    """Applies logits processors at each verification depth to exactly the prefix plain decoding had.

    Rows may have verified different numbers of tokens; the processors are called once per distinct
    prefix length, on the whole batch (so processors that look at the row index still see it), and each
    row's scores are taken from the call whose length matches its own prefix.
    """

    def __init__(self, logits_processor, mask_token_id: int, verified, state: DecodingState):
        sequences, self.lengths = verified
        candidates = state.candidates
        self.logits_processor = logits_processor
        self.mask_token_id = mask_token_id
        self.contexts = torch.cat([sequences, candidates], dim=1)
        for row, length in enumerate(self.lengths.tolist()):
            self.contexts[row, length : length + candidates.shape[1]] = candidates[row]

    def __call__(self, depth: int, logits: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        scores = logits.clone()
        if len(self.logits_processor):
            prefix_lengths = self.lengths + depth
            for length in torch.unique(prefix_lengths[active]).tolist():
                chosen = active & (prefix_lengths == length)
                processed = self.logits_processor(self.contexts[:, :length], logits.clone())
                scores[chosen] = processed[chosen]
        scores[:, self.mask_token_id] = float("-inf")
        return scores


class RowBuffers:
    """Per row: tokens verified but not yet committed (with their scores), and per-pass token counts."""

    def __init__(self, batch: int, filler: int, collect: tuple[bool, bool]):
        # each pending entry: (token, pass index, processed scores or None, raw logits or None)
        self.pending: list[list[tuple]] = [[] for _ in range(batch)]
        self.tokens_per_pass: list[list[int]] = [[] for _ in range(batch)]
        self.passes = 0
        self.filler = filler
        self.collect = collect

    def verified(self, sequences: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Committed + pending tokens per row, right-padded: ([batch, width], lengths [batch])."""
        longest = max(len(p) for p in self.pending)
        extra = torch.full((sequences.shape[0], longest), self.filler, dtype=sequences.dtype, device=sequences.device)
        for row, pending in enumerate(self.pending):
            if pending:
                extra[row, : len(pending)] = torch.tensor([entry[0] for entry in pending], dtype=sequences.dtype)
        lengths = torch.tensor([sequences.shape[1] + len(p) for p in self.pending], device=sequences.device)
        return torch.cat([sequences, extra], dim=1), lengths

    def emit(self, candidates, accepted, next_token, active, scores, verify_logits) -> None:
        want_scores, want_logits = self.collect
        for row in torch.nonzero(active).flatten().tolist():
            count = int(accepted[row])
            tokens = candidates[row, :count].tolist() + [int(next_token[row])]
            for depth, token in enumerate(tokens):
                entry_scores = scores[depth][row] if want_scores else None
                entry_logits = verify_logits[row, depth] if want_logits else None
                self.pending[row].append((token, self.passes, entry_scores, entry_logits))
        for counts in self.tokens_per_pass:
            counts.append(0)
        self.passes += 1

    def pop_column(self, needing: list[int], sequences: torch.Tensor, pad_token_id: int | None):
        """The next column (tokens, scores, logits) if every needing row has a token ready, else None."""
        if any(not self.pending[row] for row in needing):
            return None
        batch = sequences.shape[0]
        tokens = torch.full((batch,), self.filler if pad_token_id is None else pad_token_id, dtype=sequences.dtype)
        entries = {}
        for row in needing:
            entries[row] = self.pending[row].pop(0)
            tokens[row] = entries[row][0]
            self.tokens_per_pass[row][entries[row][1]] += 1
        return tokens.to(sequences.device), self._stack(entries, 2, batch), self._stack(entries, 3, batch)

    @staticmethod
    def _stack(entries: dict, slot: int, batch: int) -> torch.Tensor | None:
        """[batch, vocab] rows of one column; rows without an entry (finished, padded) are 0."""
        present = [entry[slot] for entry in entries.values() if entry[slot] is not None]
        if not present:
            return None
        stacked = present[0].new_zeros(batch, present[0].shape[-1])
        for row, entry in entries.items():
            stacked[row] = entry[slot]
        return stacked

    def drop_pending(self, unfinished: torch.Tensor) -> None:
        for row in torch.nonzero(unfinished == 0).flatten().tolist():
            self.pending[row].clear()

    def emitted_per_pass(self) -> list[list[int]]:
        """Per row, the tokens each pass it took part in contributed to the output (never 0)."""
        return [[count for count in counts if count] for counts in self.tokens_per_pass]

    def needs_more(self, unfinished, has_eos_criteria, committed_length, generation_config) -> torch.Tensor:
        """Rows that should advance in the next pass (the others idle: finished, or far enough ahead)."""
        eos = generation_config._eos_token_tensor
        eos_ids = set(eos.reshape(-1).tolist()) if eos is not None and has_eos_criteria else set()
        advancing = []
        for row, pending in enumerate(self.pending):
            done = has_eos_criteria and not unfinished[row]
            long_enough = committed_length + len(pending) >= generation_config.max_length
            ends_pending = any(entry[0] in eos_ids for entry in pending)
            advancing.append(not (done or long_enough or ends_pending))
        return torch.tensor(advancing, device=unfinished.device)


def check_generation(model, input_ids, generation_config: GenerationConfig, synced_gpus: bool,
                     mask_token_id: int) -> None:
    """Refuse what SPACE cannot do, before any pass, saying what to change.

    The one place that checks the merged generation config: `generate(use_space=True)` reaches it, and so does
    a direct `generate(custom_generate=space_decoding)`. (`generation.space_generate` checks only what never
    reaches this loop: `generate`'s own keyword arguments.)
    """
    if (generation_config.num_beams or 1) > 1:
        raise ValueError(
            f"SPACE decoding cannot be combined with beam search (num_beams={generation_config.num_beams}). "
            "Use num_beams=1, or use_space=False for beam search."
        )
    for name in ("prompt_lookup_num_tokens", "assistant_early_exit"):
        if getattr(generation_config, name, None) is not None:
            raise ValueError(
                f"`use_space=True` cannot be combined with `{name}`: SPACE drafts with the model itself. "
                f"Set `{name}` to None or pass use_space=False."
            )
    if synced_gpus:
        raise ValueError("SPACE decoding does not support synced_gpus (ZeRO-3/FSDP generation); use use_space=False.")
    for flag in ("output_attentions", "output_hidden_states"):
        if getattr(generation_config, flag, False):
            raise ValueError(f"SPACE decoding cannot return `{flag}`; drop it or use use_space=False.")
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(
            f"SPACE decoding needs a non-empty prompt of token ids [batch, length], got shape {tuple(input_ids.shape)}."
        )
    if (input_ids == mask_token_id).any():
        raise ValueError(
            f"The prompt contains the SPACE mask token (id {mask_token_id}), which is reserved for drafting. "
            "Remove it from the input."
        )
    attention = getattr(model.config, "_attn_implementation", None) or "eager"
    if attention not in ("eager", "sdpa"):
        raise ValueError(
            f"SPACE decoding needs custom 4D attention masks, which attn_implementation={attention!r} cannot "
            "take. Load the model with attn_implementation='sdpa' or 'eager'."
        )

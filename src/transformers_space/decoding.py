"""The SPACE auto-correct decoding loop, run by transformers' `generate` as a `custom_generate` function.

transformers prepares the inputs, the generation config, logits processors, stopping criteria and the
streamer; this loop then alternates: lay out one pass -> forward -> verify the previous candidates ->
emit tokens -> crop the cache -> take the next candidates from the mask group that saw exactly the
accepted text.

Rows of a batch accept different numbers of tokens. Every row keeps its own logical positions and the
cache keeps a hole (an invisible entry) where a row rejected a candidate that another row accepted, so
one crop serves the whole batch. Emitted tokens wait per row until every row that still needs a token
has one for the next column; columns are then committed one at a time through the stopping criteria,
exactly as plain decoding appends them, so finished rows are padded as transformers pads them and
criteria see exactly the sequences plain decoding would show them.

Imports only torch, transformers and sibling modules (it ships as remote code).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList
from transformers.generation.utils import GenerateDecoderOnlyOutput

from .compat import cache_argument_name, crop_cache, new_cache, user_cache_from_kwargs
from .layout import (
    INVALID,
    PassLayout,
    additive_mask,
    build_pass_layout,
    cache_positions_after_pass,
    prompt_positions,
    restrict_to_window,
)
from .verify import greedy_verify


@dataclass
class SpaceGenerateOutput(GenerateDecoderOnlyOutput):
    """`GenerateDecoderOnlyOutput` plus, per row, the number of tokens each forward pass emitted."""

    tokens_per_pass: list[list[int]] | None = None


def space_settings(model) -> tuple[int, int]:
    """(mask_token_id, num_mask_tokens) from `model.config.space_config`."""
    space_config = getattr(model.config, "space_config", None)
    if not space_config or space_config.get("mask_token_id") is None:
        raise ValueError(
            "This model has no SPACE settings (`config.space_config`). Prepare it with "
            "`transformers_space.add_space_support(model, tokenizer)` or train it with `SpaceTrainer`."
        )
    num_mask_tokens = space_config.get("num_mask_tokens")
    if not isinstance(num_mask_tokens, int) or num_mask_tokens < 1:
        raise ValueError(f"`space_config['num_mask_tokens']` should be an int >= 1, got {num_mask_tokens!r}.")
    return int(space_config["mask_token_id"]), num_mask_tokens


def space_decoding(
    model,
    input_ids: torch.LongTensor,
    logits_processor: LogitsProcessorList,
    stopping_criteria: StoppingCriteriaList,
    generation_config: GenerationConfig,
    synced_gpus: bool = False,
    streamer=None,
    space_streamer=None,
    **model_kwargs,
):
    """Greedy SPACE decoding; output equals greedy `generate` token for token.

    transformers hands a callable `custom_generate` none of generate's own `streamer` (5.17-5.24 pass it
    only the callable's extra parameters), so the streamer travels as `space_streamer`, and this loop
    streams the prompt itself, as plain decoding does.
    """
    if space_streamer is not None:
        streamer = space_streamer
        streamer.put(input_ids.cpu())
    mask_token_id, num_masks = space_settings(model)
    _refuse_unsupported(model, input_ids, generation_config, synced_gpus, mask_token_id, model_kwargs)
    batch = input_ids.shape[0]
    device = input_ids.device
    attention_mask = model_kwargs.get("attention_mask")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    pad_token_id = generation_config._pad_token_tensor
    filler = int(pad_token_id) if pad_token_id is not None else 0
    has_eos_criteria = any(hasattr(criteria, "eos_token_id") for criteria in stopping_criteria)
    eos_ids = generation_config._eos_token_tensor
    eos_ids = eos_ids.reshape(-1).to(device) if eos_ids is not None and has_eos_criteria else None

    cache = new_cache()
    cache_positions = torch.empty(batch, 0, dtype=torch.long, device=device)
    fresh_ids, fresh_positions = input_ids, prompt_positions(attention_mask)
    candidates = torch.empty(batch, 0, dtype=torch.long, device=device)
    rows = RowBuffers(batch)
    unfinished = torch.ones(batch, dtype=torch.long, device=device)
    scorer = VerificationScorer(logits_processor, mask_token_id)

    while True:
        layout = build_pass_layout(
            fresh_ids, fresh_positions, candidates, cache_positions, mask_token_id, num_masks,
            group_after=range(candidates.shape[1] + 1), position_limit=getattr(model.config, "n_positions", None),
        )
        hidden = forward_block(model, layout, cache, cache_positions)
        active = layout.block_positions[:, layout.num_fresh - 1] >= 0
        scorer.start_pass(rows.verified(input_ids, filler), candidates)
        head = model.get_output_embeddings()
        verify_logits = head(hidden[:, layout.verify_rows]).float()
        accepted, next_token = greedy_verify(verify_logits, candidates, scorer, active)
        next_candidates = draft_greedy(head, hidden, layout, accepted, mask_token_id)

        kept = int(accepted[active].max()) if active.any() else 0
        crop_cache(cache, cache_positions.shape[1] + layout.num_fresh + kept)
        cache_positions = cache_positions_after_pass(cache_positions, layout, accepted, kept)
        rows.emit(candidates, accepted, next_token, active)

        input_ids, unfinished, new_columns = rows.commit(
            input_ids, unfinished, stopping_criteria, has_eos_criteria, pad_token_id
        )
        if streamer is not None and new_columns is not None:
            streamer.put(new_columns.cpu())
        if not unfinished.any():
            break
        advancing = rows.needs_more(unfinished, has_eos_criteria, input_ids.shape[1], generation_config, eos_ids)
        last_position = layout.block_positions[:, layout.num_fresh - 1]
        fresh_ids = torch.where(advancing, next_token, filler)[:, None]
        fresh_positions = torch.where(advancing, last_position + accepted + 1, INVALID)[:, None]
        candidates = torch.where(advancing[:, None], next_candidates, filler)

    if streamer is not None:
        streamer.end()
    if generation_config.return_dict_in_generate:
        return SpaceGenerateOutput(sequences=input_ids, tokens_per_pass=rows.emitted_per_pass())
    return input_ids


def forward_block(model, layout: PassLayout, cache, cache_positions: torch.Tensor) -> torch.Tensor:
    """Run the decoder body on one block; returns the last hidden states [batch, block, hidden].

    The body runs without the LM head so that the head is applied only to the rows that are read.
    """
    body = model.base_model
    dtype = body.get_input_embeddings().weight.dtype
    attention_mask = attention_masks(model.config, layout, cache_positions, dtype)
    outputs = body(
        input_ids=layout.input_ids,
        attention_mask=attention_mask,
        position_ids=layout.position_ids,
        use_cache=True,
        **{cache_argument_name(type(body).forward): cache},
    )
    return outputs.last_hidden_state


def attention_masks(config, layout: PassLayout, cache_positions: torch.Tensor, dtype: torch.dtype):
    """The 4D float mask, or one per attention type for models that mix full and sliding-window layers."""
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)

    def masked(with_window: bool) -> torch.Tensor:
        visible = layout.visible
        if with_window and window is not None:
            visible = restrict_to_window(visible, cache_positions, layout.block_positions, window)
        return additive_mask(visible, dtype)

    if layer_types:
        kinds = set(layer_types)
        if len(kinds) == 1:
            return masked(kinds == {"sliding_attention"})
        return {kind: masked(kind == "sliding_attention") for kind in kinds}
    return masked(True)


def draft_greedy(head, hidden, layout: PassLayout, accepted: torch.Tensor, mask_token_id: int) -> torch.Tensor:
    """Next candidates: argmaxes of the mask group that followed exactly the accepted candidates.

    Only that group's rows go through the LM head. The mask token itself is never drafted.
    """
    rows = layout.group_rows[accepted]  # [batch, num_masks]
    group_hidden = hidden.gather(1, rows[..., None].expand(-1, -1, hidden.shape[-1]))
    logits = head(group_hidden).float()
    logits[..., mask_token_id] = float("-inf")
    return logits.argmax(-1)


class VerificationScorer:
    """Applies logits processors at each verification depth to exactly the prefix plain decoding had.

    Rows may have verified different numbers of tokens; the processors are called once per distinct
    prefix length, on the whole batch (so processors that look at the row index still see it), and each
    row's scores are taken from the call whose length matches its own prefix.
    """

    def __init__(self, logits_processor: LogitsProcessorList, mask_token_id: int):
        self.logits_processor = logits_processor
        self.mask_token_id = mask_token_id

    def start_pass(self, verified: tuple[torch.Tensor, torch.Tensor], candidates: torch.Tensor) -> None:
        """Remember each row's verified tokens followed by its candidates: the prefixes to score."""
        sequences, self.lengths = verified
        self.contexts = torch.cat([sequences, candidates], dim=1)
        for row, length in enumerate(self.lengths.tolist()):
            self.contexts[row, length : length + candidates.shape[1]] = candidates[row]

    def __call__(self, depth: int, logits: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        scores = logits
        if len(self.logits_processor):
            scores = logits.clone()
            prefix_lengths = self.lengths + depth
            for length in torch.unique(prefix_lengths[active]).tolist():
                chosen = active & (prefix_lengths == length)
                processed = self.logits_processor(self.contexts[:, :length], logits.clone())
                scores[chosen] = processed[chosen]
        scores = scores.clone() if scores is logits else scores
        scores[:, self.mask_token_id] = float("-inf")
        return scores


class RowBuffers:
    """Per-row tokens that are verified but not yet committed, and the per-pass token counts."""

    def __init__(self, batch: int):
        self.pending: list[list[tuple[int, int]]] = [[] for _ in range(batch)]  # (token, pass index)
        self.tokens_per_pass: list[list[int]] = [[] for _ in range(batch)]
        self.passes = 0

    def verified(self, input_ids: torch.Tensor, filler: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Committed + pending tokens per row, right-padded: ([batch, width], lengths [batch])."""
        longest = max(len(p) for p in self.pending)
        extra = torch.full((input_ids.shape[0], longest), filler, dtype=input_ids.dtype, device=input_ids.device)
        for row, pending in enumerate(self.pending):
            if pending:
                extra[row, : len(pending)] = torch.tensor([t for t, _ in pending], dtype=input_ids.dtype)
        lengths = torch.tensor([input_ids.shape[1] + len(p) for p in self.pending], device=input_ids.device)
        return torch.cat([input_ids, extra], dim=1), lengths

    def emit(self, candidates, accepted, next_token, active) -> None:
        for row in torch.nonzero(active).flatten().tolist():
            tokens = candidates[row, : int(accepted[row])].tolist() + [int(next_token[row])]
            self.pending[row].extend((token, self.passes) for token in tokens)
        for counts in self.tokens_per_pass:
            counts.append(0)
        self.passes += 1

    def commit(self, input_ids, unfinished, stopping_criteria, has_eos_criteria, pad_token_id):
        """Append whole columns while every row that needs a token has one; returns the new columns."""
        start = input_ids.shape[1]
        while unfinished.any():
            needing = [row for row in range(len(self.pending)) if unfinished[row] or not has_eos_criteria]
            if any(not self.pending[row] for row in needing):
                break
            column = torch.full_like(input_ids[:, 0], 0 if pad_token_id is None else int(pad_token_id))
            for row in needing:
                token, pass_index = self.pending[row].pop(0)
                column[row] = token
                self.tokens_per_pass[row][pass_index] += 1
            input_ids = torch.cat([input_ids, column[:, None]], dim=1)
            unfinished = unfinished & ~stopping_criteria(input_ids, None)
            for row in torch.nonzero(unfinished == 0).flatten().tolist():
                if has_eos_criteria:
                    self.pending[row].clear()
        new_columns = input_ids[:, start:] if input_ids.shape[1] > start else None
        return input_ids, unfinished, new_columns

    def emitted_per_pass(self) -> list[list[int]]:
        """Per row, the tokens each pass it took part in contributed to the output (never 0)."""
        return [[count for count in counts if count] for counts in self.tokens_per_pass]

    def needs_more(self, unfinished, has_eos_criteria, committed_length, generation_config, eos_ids):
        """Rows that should advance in the next pass (the others idle: finished, or far enough ahead)."""
        advancing = []
        for row, pending in enumerate(self.pending):
            done = has_eos_criteria and not unfinished[row]
            long_enough = committed_length + len(pending) >= generation_config.max_length
            ends_pending = eos_ids is not None and any(token in eos_ids for token, _ in pending)
            advancing.append(not (done or long_enough or ends_pending))
        return torch.tensor(advancing, device=unfinished.device)


def _refuse_unsupported(model, input_ids, generation_config, synced_gpus, mask_token_id, model_kwargs) -> None:
    """Checks repeated here (not only in the mixin) for users calling this via `custom_generate`."""
    if (generation_config.num_beams or 1) > 1:
        raise ValueError(
            f"SPACE decoding cannot be combined with beam search (num_beams={generation_config.num_beams}). "
            "Use num_beams=1, or use_space=False for beam search."
        )
    if generation_config.do_sample:
        raise ValueError("SPACE decoding does not support sampling yet; pass do_sample=False or use_space=False.")
    if synced_gpus:
        raise ValueError("SPACE decoding does not support synced_gpus (ZeRO-3/FSDP generation); use use_space=False.")
    for flag in ("output_attentions", "output_hidden_states", "output_scores", "output_logits"):
        if getattr(generation_config, flag, False):
            raise ValueError(f"SPACE decoding cannot return `{flag}`; drop it or use use_space=False.")
    cache = user_cache_from_kwargs(model_kwargs)
    if cache is not None and cache.get_seq_length() > 0:
        raise ValueError("SPACE decoding cannot continue from a prefilled cache; pass the full prompt instead.")
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

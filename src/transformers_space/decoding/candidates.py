"""`SpaceCandidateGenerator`: SPACE drafts behind transformers' `CandidateGenerator` interface.

The mask group that followed exactly the accepted text leaves its logits here after every pass;
`get_candidates` turns them into the next candidates with transformers' own logits processors, by argmax
or by sampling, and also returns the processed draft scores: the distribution q each candidate was drawn
from, which distribution-preserving verification needs. The decoding loop drafts only through this class.

With a draft head (`draft_head.py`), mask j's logits come from the head, given its hidden state and the token
before it: the token the pass emitted for mask 0, then each draft as it is made.

Greedy drafting with `context_lookup` may take a token copied from earlier in the text instead of a mask's argmax
(`lookup.py` says when and why); `get_candidates` then needs each row's length in the right-padded `input_ids`.

Imports only torch, transformers and sibling modules (it ships as remote code).
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessorList
from transformers.generation.candidate_generator import CandidateGenerator

from .lookup import EXTENSION_MIN_NGRAM, LOOKUP_CANDIDATES, context_match


class SpaceCandidateGenerator(CandidateGenerator):
    def __init__(
        self,
        mask_token_id: int,
        num_mask_tokens: int,
        logits_processor: LogitsProcessorList | None = None,
        do_sample: bool = False,
        draft_head=None,
        context_lookup: bool = False,
        lookup_extension: int = 0,
    ):
        """`draft_head`: None, or `(hidden, before_ids, mask_logits) -> logits` (a `draft_head.RestrictedDrafting`).
        `context_lookup`: offer the masks tokens copied from earlier in the text (greedy drafting only).
        `lookup_extension`: most tokens the lookup may draft after the masks' drafts (with `context_lookup`)."""
        self.mask_token_id = mask_token_id
        self.num_mask_tokens = num_mask_tokens
        self.logits_processor = logits_processor if logits_processor is not None else LogitsProcessorList()
        self.do_sample = do_sample
        self.draft_head = draft_head
        self.context_lookup = context_lookup and not do_sample
        self.lookup_extension = lookup_extension if self.context_lookup else 0
        self.draft_logits: torch.Tensor | None = None
        self.draft_hidden: torch.Tensor | None = None
        self.first_before: torch.Tensor | None = None

    def set_draft_logits(self, draft_logits: torch.Tensor, hidden: torch.Tensor | None = None,
                         first_before: torch.Tensor | None = None) -> None:
        """Logits [batch, num_mask_tokens, vocab] of the mask group that saw exactly the accepted text; for a draft
        head also their last hidden states [batch, num_mask_tokens, hidden] and the token before the first
        mask's target [batch] (the token the pass emitted last)."""
        if self.draft_head is not None and (hidden is None or first_before is None):
            raise ValueError("A draft head needs the masks' hidden states and the token before the first mask.")
        self.draft_logits, self.draft_hidden, self.first_before = draft_logits, hidden, first_before

    def get_candidates(self, input_ids: torch.LongTensor, lengths: torch.Tensor | None = None,
                       **kwargs) -> tuple[torch.LongTensor, torch.Tensor | None]:
        """Append the drafts to `input_ids`; also return the processed draft scores [batch, k, vocab] of the k
        masks' drafts (a lookup extension's tokens, greedy only, come after them and have none).

        `lengths` [batch]: each row's length when `input_ids` is right-padded (default: all of it); the context
        lookup reads only those tokens."""
        if self.draft_logits is None or self.draft_logits.shape[1] == 0:
            self.draft_logits = None
            return input_ids, None
        count = self.draft_logits.shape[1]
        lookups = self._lookups(input_ids, lengths, count, self.lookup_extension) if self.context_lookup else None
        sequence, drafted_scores = input_ids, []
        before = self.first_before
        for position in range(count):
            if self.draft_head is None:
                scores = self.draft_logits[:, position].float().clone()
            else:
                scores = self.draft_head(self.draft_hidden[:, position], before, self.draft_logits[:, position])
            if len(self.logits_processor):
                scores = self.logits_processor(sequence, scores)
            scores[:, self.mask_token_id] = float("-inf")
            token = torch.multinomial(scores.softmax(-1), 1) if self.do_sample else scores.argmax(-1, keepdim=True)
            if lookups is not None:
                token = self._prefer_lookup(scores, token, lookups, position)
            sequence = torch.cat([sequence, token.to(sequence.dtype)], dim=1)
            drafted_scores.append(scores)
            before = token.squeeze(1)
        self.draft_logits = self.draft_hidden = self.first_before = None
        if lookups is not None and self.lookup_extension:
            sequence = torch.cat([sequence, self._extension(lookups[:, count:]).to(sequence.dtype)], dim=1)
        return sequence, torch.stack(drafted_scores, dim=1)

    @staticmethod
    def _extension(rest: torch.Tensor) -> torch.Tensor:
        """[batch, e] the lookup's tokens after the masks' drafts, for the rows that followed it through every mask
        (`rest`: the lookups' remaining columns, -1 where a row has none); e = the longest such run, shorter rows
        padded with token 0 (any token is safe to verify: one that happens to be accepted is the model's own)."""
        width = int((rest >= 0).sum(1).max())
        return rest[:, :width].clamp(min=0)

    @staticmethod
    def _lookups(input_ids: torch.Tensor, lengths: torch.Tensor | None, count: int,
                 extension: int = 0) -> torch.Tensor | None:
        """[batch, count + extension] the context lookup's continuation of each row (`lookup.context_match`), -1
        where it has none (the `extension` columns only where the match is at least EXTENSION_MIN_NGRAM long);
        None when no row has one."""
        rows = input_ids.tolist()
        ends = lengths.tolist() if lengths is not None else [len(row) for row in rows]
        found = torch.full((len(rows), count + extension), -1, dtype=torch.long)
        for index, (row, end) in enumerate(zip(rows, ends, strict=True)):
            size, continuation = context_match(row[:end], count + extension)
            if size < EXTENSION_MIN_NGRAM:
                continuation = continuation[:count]
            found[index, : len(continuation)] = torch.tensor(continuation, dtype=torch.long)
        return found.to(input_ids.device) if bool((found[:, 0] >= 0).any()) else None

    @staticmethod
    def _prefer_lookup(scores: torch.Tensor, token: torch.Tensor, lookups: torch.Tensor, position: int):
        """The lookup's token where the mask ranks it among its top LOOKUP_CANDIDATES, else the argmax `token`
        [batch, 1]. A row follows its lookup only while every earlier draft was the lookup's: from its first
        other draft on, the lookup's later tokens continue another text (`lookups` is updated in place)."""
        proposed = lookups[:, position]
        has = proposed >= 0
        if not bool(has.any()):  # no row follows a lookup here, nor (the lookups are cut so) at any later mask
            return token
        proposed_score = scores.gather(-1, proposed.clamp(min=0)[:, None])
        ahead = (scores > proposed_score).sum(-1)  # tokens the mask ranks above the lookup's (cheaper than topk)
        taken = has & (ahead < LOOKUP_CANDIDATES) & (proposed_score.squeeze(-1) > float("-inf"))
        chosen = torch.where(taken, proposed, token.squeeze(-1))
        lookups[chosen != proposed, position + 1 :] = -1
        return chosen[:, None]

    def update_candidate_strategy(self, input_ids: torch.LongTensor, scores: torch.Tensor, num_matches) -> None:
        """Nothing to adapt: SPACE drafts a fixed number of masks per group (the layout plan decides how many).
        The acceptance statistics come back to the caller as `SpaceGenerateOutput.tokens_per_pass`."""

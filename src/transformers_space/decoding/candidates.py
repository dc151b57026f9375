"""`SpaceCandidateGenerator`: SPACE drafts behind transformers' `CandidateGenerator` interface.

The mask group that followed exactly the accepted text leaves its logits here after every pass;
`get_candidates` turns them into the next candidates with transformers' own logits processors, by argmax
or by sampling, and also returns the processed draft scores: the distribution q each candidate was drawn
from, which distribution-preserving verification needs. The decoding loop drafts only through this class.

Imports only torch, transformers and sibling modules (it ships as remote code).
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessorList
from transformers.generation.candidate_generator import CandidateGenerator


class SpaceCandidateGenerator(CandidateGenerator):
    def __init__(
        self,
        mask_token_id: int,
        num_mask_tokens: int,
        logits_processor: LogitsProcessorList | None = None,
        do_sample: bool = False,
    ):
        self.mask_token_id = mask_token_id
        self.num_mask_tokens = num_mask_tokens
        self.logits_processor = logits_processor if logits_processor is not None else LogitsProcessorList()
        self.do_sample = do_sample
        self.draft_logits: torch.Tensor | None = None

    def set_draft_logits(self, draft_logits: torch.Tensor) -> None:
        """Logits [batch, num_mask_tokens, vocab] of the mask group that saw exactly the accepted text."""
        self.draft_logits = draft_logits

    def get_candidates(self, input_ids: torch.LongTensor, **kwargs) -> tuple[torch.LongTensor, torch.Tensor | None]:
        """Append the drafts to `input_ids`; also return the processed draft scores [batch, k, vocab]."""
        if self.draft_logits is None or self.draft_logits.shape[1] == 0:
            self.draft_logits = None
            return input_ids, None
        sequence, drafted_scores = input_ids, []
        for position in range(self.draft_logits.shape[1]):
            scores = self.draft_logits[:, position].float().clone()
            if len(self.logits_processor):
                scores = self.logits_processor(sequence, scores)
            scores[:, self.mask_token_id] = float("-inf")
            token = torch.multinomial(scores.softmax(-1), 1) if self.do_sample else scores.argmax(-1, keepdim=True)
            sequence = torch.cat([sequence, token.to(sequence.dtype)], dim=1)
            drafted_scores.append(scores)
        self.draft_logits = None
        return sequence, torch.stack(drafted_scores, dim=1)

    def update_candidate_strategy(self, input_ids: torch.LongTensor, scores: torch.Tensor, num_matches) -> None:
        """Nothing to adapt: SPACE drafts a fixed number of masks per group (the layout plan decides how many).
        The acceptance statistics come back to the caller as `SpaceGenerateOutput.tokens_per_pass`."""

"""Acceptance rules: which drafted candidates the model's own next-token choices confirm.

Small functions over logits, testable without a model. `score_fn(depth, logits, active)` turns the raw
logits at verification depth `depth` into the scores plain decoding would have used at that position
(logits processors applied to exactly the prefix plain decoding would have had). Depths are visited in
order and only for rows that accepted every earlier candidate, since only then is that prefix real.

Both rules return (accepted [batch], next_token [batch], scores): `scores[i]` holds the processed scores
at depth i for the rows that reached it (other rows: whatever the tensor held), for `output_scores`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import LogitsProcessor, LogitsProcessorList

ScoreFn = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


class SuppressMaskTokenLogitsProcessor(LogitsProcessor):
    """Keeps the SPACE mask token out of every distribution decoding uses: it exists only for drafting.

    It must run where plain decoding runs it, before the sampling warpers: top-p, min-p and typical-p
    computed with the mask token's probability still inside pick a different set of tokens.
    """

    def __init__(self, mask_token_id: int):
        self.mask_token_id = mask_token_id

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.clone()
        scores[:, self.mask_token_id] = float("-inf")
        return scores


def with_mask_suppressed(processors: LogitsProcessorList, mask_token_id: int) -> LogitsProcessorList:
    """`processors` with the mask token suppressed where plain decoding suppresses it.

    `generate(use_space=...)` appends the suppressor to the caller's processors, which transformers places
    after its own processors and before its warpers, for plain and SPACE decoding alike; a list without it
    (`custom_generate=space_decoding` called directly) gets it just before transformers' first warper.
    """
    if any(isinstance(p, SuppressMaskTokenLogitsProcessor) and p.mask_token_id == mask_token_id
           for p in processors):
        return processors
    warpers = [index for index, p in enumerate(processors) if _is_transformers_warper(p)]
    position = warpers[0] if warpers else len(processors)
    return LogitsProcessorList([*processors[:position], SuppressMaskTokenLogitsProcessor(mask_token_id),
                                *processors[position:]])


def _is_transformers_warper(processor) -> bool:
    kind = type(processor)
    return kind.__module__.startswith("transformers.generation") and (
        kind.__name__.endswith("LogitsWarper") or kind.__name__ == "LogitNormalization")


def greedy_verify(
    verify_logits: torch.Tensor, candidates: torch.Tensor, score_fn: ScoreFn, active: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Greedy acceptance: a candidate stands if it equals the model's argmax at its position.

    verify_logits: [batch, n + 1, vocab], row i predicts the token after c_i (row 0: after the last
    fresh token). candidates: [batch, n]. active: [batch] bool, rows taking part. next_token is the argmax
    at the first rejected position, or after the last candidate (the bonus token).
    """

    def rule(depth: int, scores: torch.Tensor, still: torch.Tensor):
        predicted = scores.argmax(-1)
        has_candidate = depth < candidates.shape[1]
        match = still & (candidates[:, depth] == predicted) if has_candidate else torch.zeros_like(still)
        return match, predicted

    return _verify_depths(verify_logits, score_fn, active, rule)


def sampling_verify(
    verify_logits: torch.Tensor,
    candidates: torch.Tensor,
    candidate_probs: torch.Tensor,
    score_fn: ScoreFn,
    active: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Speculative sampling, batched: the output is distributed exactly as plain sampling's.

    candidate_probs: [batch, n, vocab], the distribution q each candidate was drawn from. Candidate c is
    kept with probability min(1, p(c)/q(c)), p being the processed target distribution; the first
    rejection is replaced by a draw from normalise(max(0, p - q)); after full acceptance the bonus token
    is drawn from p. (transformers' `_speculative_sampling` is the same rule for batch size 1 with every p
    computed up front; here p is computed depth by depth, only for rows still accepting.)
    """

    def rule(depth: int, scores: torch.Tensor, still: torch.Tensor):
        p = scores.softmax(-1)
        if depth < candidates.shape[1]:
            candidate = candidates[:, depth : depth + 1]
            q = candidate_probs[:, depth]
            ratio = p.gather(1, candidate).squeeze(1) / q.gather(1, candidate).squeeze(1).clamp_min(1e-30)
            match = still & (torch.rand_like(ratio) <= ratio)
            replacement = residual_distribution(p, q)
        else:
            match = torch.zeros_like(still)
            replacement = p
        drawn = torch.zeros(p.shape[0], dtype=torch.long, device=p.device)
        drawing = still & ~match
        if drawing.any():
            drawn[drawing] = torch.multinomial(replacement[drawing], 1).squeeze(1)
        return match, drawn

    return _verify_depths(verify_logits, score_fn, active, rule)


def verify_pass(
    verify_logits: torch.Tensor,
    candidates: torch.Tensor,
    candidate_probs: torch.Tensor | None,
    score_fn: ScoreFn,
    active: torch.Tensor,
    sampling: bool,
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """The rule the decoding loop applies to one pass: sampling's when the generation samples, else greedy's.

    The one place that chooses a rule; a new rule (e.g. a lossy, thresholded acceptance) is a function here and
    a branch here, and the loop is untouched.
    """
    if sampling:
        return sampling_verify(verify_logits, candidates, candidate_probs, score_fn, active)
    return greedy_verify(verify_logits, candidates, score_fn, active)


def residual_distribution(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """normalise(max(0, p - q)): where to draw from after rejecting a candidate drawn from q.

    If p and q agree to rounding the residual vanishes; the rejection then had probability ~0 and p itself
    is the right fallback.
    """
    residual = (p - q).clamp_min(0)
    total = residual.sum(-1, keepdim=True)
    return torch.where(total > 1e-12, residual / total.clamp_min(1e-30), p)


def _verify_depths(verify_logits: torch.Tensor, score_fn: ScoreFn, active: torch.Tensor, rule):
    """The depth loop both rules share: score each depth for the rows still accepting, and let
    `rule(depth, scores, still) -> (match, emitted)` say which rows keep their candidate and what a row that
    stops there emits."""
    batch = verify_logits.shape[0]
    accepted = torch.zeros(batch, dtype=torch.long, device=verify_logits.device)
    next_token = torch.zeros(batch, dtype=torch.long, device=verify_logits.device)
    still, scores = active.clone(), []
    for depth in range(verify_logits.shape[1]):
        if not still.any():
            break
        scores.append(score_fn(depth, verify_logits[:, depth], still))
        match, emitted = rule(depth, scores[-1], still)
        next_token = torch.where(still & ~match, emitted, next_token)
        accepted += match.long()
        still = match
    return accepted, next_token, scores

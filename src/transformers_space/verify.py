"""Acceptance rules: which drafted candidates the model's own next-token choices confirm.

Small functions over logits, testable without a model. `score_fn(depth, logits, active)` turns the raw
logits at verification depth `depth` into the scores plain decoding would have used at that position
(logits processors applied to exactly the prefix plain decoding would have had).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

ScoreFn = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


def greedy_verify(
    verify_logits: torch.Tensor, candidates: torch.Tensor, score_fn: ScoreFn, active: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy acceptance, depth by depth.

    verify_logits: [batch, n + 1, vocab], row i predicts the token after c_i (row 0: after the last
    fresh token). candidates: [batch, n]. active: [batch] bool, rows taking part.
    Returns accepted [batch] (leading candidates equal to the model's argmax) and next_token [batch]
    (the argmax at the first rejected position, or after the last candidate: the bonus token).
    Scores at depth i are computed only for rows that accepted c_1..c_i, since only then is the prefix
    they depend on the real one.
    """
    batch, depths, _ = verify_logits.shape
    accepted = torch.zeros(batch, dtype=torch.long, device=verify_logits.device)
    next_token = torch.zeros(batch, dtype=torch.long, device=verify_logits.device)
    still = active.clone()
    for depth in range(depths):
        if not still.any():
            break
        predicted = score_fn(depth, verify_logits[:, depth], still).argmax(-1)
        has_candidate = depth < candidates.shape[1]
        match = still & (candidates[:, depth] == predicted) if has_candidate else torch.zeros_like(still)
        stopped = still & ~match
        next_token = torch.where(stopped, predicted, next_token)
        accepted += match.long()
        still = match
    return accepted, next_token

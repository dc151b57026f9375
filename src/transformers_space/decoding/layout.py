"""Token layout of one SPACE forward pass: input order, position ids, 4D visibility, rows to read.

Pure tensor arithmetic, no model and no cache object, so every rule can be tested alone.

One pass feeds, per row, in this order (docs/method.md, "One decoding pass"):

    fresh tokens  : verified tokens not yet in the cache (the whole prompt in the first pass,
                    afterwards the one token emitted last)
    candidates    : c_1..c_n drafted by the previous pass (n = 0 in the first pass)
    mask groups   : group g holds `num_masks` mask tokens and stands "after i_g candidates":
                    it sees the fresh tokens, c_1..c_{i_g} and its own earlier masks.

Fresh tokens and candidates form one causal chain and never see a mask. Mask j of group g sits at
position p + i_g + 1 + j, where p is the position of the last fresh token: the position it would have if
the accepted text were followed by the masks. All candidates come before all groups, so dropping the
groups and the rejected candidates from the cache is a single crop.

Logical positions are tracked per row and per cache entry (`-1` = not a real token: left padding,
a rejected candidate kept as a hole, a dropped mask). Visibility of cached entries follows from those
positions alone, which is how rows that accepted different numbers of tokens share one cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

INVALID = -1


@dataclass(frozen=True)
class PassLayout:
    """Everything one forward pass needs, and where to read its outputs."""

    input_ids: torch.Tensor  # [batch, block] token ids: fresh, candidates, then mask groups
    position_ids: torch.Tensor  # [batch, block] positions to feed the model (never negative)
    block_positions: torch.Tensor  # [batch, block] logical positions, INVALID for non-tokens
    visible: torch.Tensor  # [batch, block, cache + block] bool: query may attend key
    verify_rows: torch.Tensor  # [num_candidates + 1] block rows whose logits verify c_1..c_n + bonus
    group_rows: torch.Tensor  # [num_groups, num_masks] block rows of each mask group
    num_fresh: int
    num_candidates: int


def prompt_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions of a left-padded prompt: 0.. over real tokens, INVALID on padding (as transformers counts)."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, INVALID)


def build_pass_layout(
    fresh_ids: torch.Tensor,
    fresh_positions: torch.Tensor,
    candidate_ids: torch.Tensor,
    cache_positions: torch.Tensor,
    mask_token_id: int,
    num_masks: int,
    group_after: Sequence[int],
    position_limit: int | None = None,
) -> PassLayout:
    """Lay out one pass.

    fresh_ids, fresh_positions: [batch, F]; a row whose LAST fresh position is INVALID is idle this pass
    (finished, or waiting for the other rows): all its block tokens are INVALID and see only themselves.
    candidate_ids: [batch, n]. cache_positions: [batch, C]. group_after: for each group, how many
    candidates it follows (0..n). position_limit: models with learned absolute positions (GPT-2) get
    their positions clamped below it; such outputs lie beyond max_length and are never emitted.
    """
    batch, num_fresh = fresh_ids.shape
    num_candidates = candidate_ids.shape[1]
    if any(not 0 <= after <= num_candidates for after in group_after):
        raise ValueError(f"group_after must lie in 0..{num_candidates}, got {list(group_after)}")
    device = fresh_ids.device
    last = fresh_positions[:, -1]  # [batch]
    row_active = last >= 0

    cand_offsets = torch.arange(1, num_candidates + 1, device=device)
    mask_offsets = torch.cat(
        [after + 1 + torch.arange(num_masks, device=device) for after in group_after]
    ) if group_after else torch.empty(0, dtype=torch.long, device=device)
    derived = last[:, None] + torch.cat([cand_offsets, mask_offsets])[None, :]  # [batch, n + G*k]
    derived = derived.masked_fill(~row_active[:, None], INVALID)
    block_positions = torch.cat([fresh_positions.masked_fill(~row_active[:, None], INVALID), derived], 1)

    num_groups = len(group_after)
    masks = torch.full((batch, num_groups * num_masks), mask_token_id, dtype=fresh_ids.dtype, device=device)
    input_ids = torch.cat([fresh_ids, candidate_ids, masks], dim=1)

    position_ids = block_positions.clamp(min=0)
    if position_limit is not None:
        position_ids = position_ids.clamp(max=position_limit - 1)

    structure = block_structure(num_fresh, num_candidates, num_masks, group_after, device)
    key_valid = block_positions >= 0  # [batch, T]
    query_valid = block_positions >= 0
    within_block = structure[None] & key_valid[:, None, :] & query_valid[:, :, None]
    within_block |= torch.eye(structure.shape[0], dtype=torch.bool, device=device)[None]
    to_cache = (cache_positions >= 0)[:, None, :] & query_valid[:, :, None]
    visible = torch.cat([to_cache, within_block], dim=2)

    chain = num_fresh + num_candidates
    verify_rows = torch.arange(num_fresh - 1, chain, device=device)
    group_rows = chain + torch.arange(num_groups * num_masks, device=device).view(num_groups, num_masks)
    return PassLayout(
        input_ids=input_ids,
        position_ids=position_ids,
        block_positions=block_positions,
        visible=visible,
        verify_rows=verify_rows,
        group_rows=group_rows,
        num_fresh=num_fresh,
        num_candidates=num_candidates,
    )


def block_structure(
    num_fresh: int, num_candidates: int, num_masks: int, group_after: Sequence[int], device=None
) -> torch.Tensor:
    """[T, T] bool: which block token may see which, before padding and idle rows are applied."""
    chain = num_fresh + num_candidates
    total = chain + len(group_after) * num_masks
    structure = torch.zeros(total, total, dtype=torch.bool, device=device)
    structure[:chain, :chain] = torch.ones(chain, chain, dtype=torch.bool, device=device).tril()
    own_group = torch.ones(num_masks, num_masks, dtype=torch.bool, device=device).tril()
    for group, after in enumerate(group_after):
        start = chain + group * num_masks
        rows = slice(start, start + num_masks)
        structure[rows, : num_fresh + after] = True
        structure[rows, rows] = own_group
    return structure


def restrict_to_window(
    visible: torch.Tensor, cache_positions: torch.Tensor, block_positions: torch.Tensor, window: int
) -> torch.Tensor:
    """Sliding-window attention: a query sees keys fewer than `window` positions back (as transformers)."""
    key_positions = torch.cat([cache_positions, block_positions], dim=1)  # [batch, C + T]
    distance = block_positions[:, :, None] - key_positions[:, None, :]
    in_window = distance < window
    diagonal = torch.zeros_like(visible)
    diagonal[:, :, cache_positions.shape[1] :] = torch.eye(
        block_positions.shape[1], dtype=torch.bool, device=visible.device
    )
    return (visible & in_window) | diagonal


def additive_mask(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[batch, 1, q, k] float mask: 0 where visible, the dtype's minimum elsewhere.

    A float mask, not a bool one: transformers' eager attention adds the mask, so a bool mask is silently
    wrong there.
    """
    mask = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
    mask.masked_fill_(~visible, torch.finfo(dtype).min)
    return mask[:, None]


def draft_rows(layout: PassLayout, group_after: Sequence[int], accepted: torch.Tensor, active: torch.Tensor):
    """Block rows [batch, n] holding the next drafts.

    A row that accepted a candidates takes the group run after the largest candidate count g <= a; its
    mask j sits at position p + g + 1 + j and predicts the token after it, so masks a - g .. k - 1 draft
    the tokens after the bonus token. n is the number of drafts every active row can supply (all rows
    verify the same number of candidates next pass); 0 when a row accepted more candidates than its group has
    masks to reach past (a context lookup's extension accepted in part).
    """
    if not len(group_after):  # nothing drafts: the next pass verifies no candidates
        return layout.group_rows.new_empty(accepted.shape[0], 0)
    after = torch.as_tensor(list(group_after), device=accepted.device)
    group = (after[None, :] <= accepted[:, None]).sum(1) - 1
    offset = torch.where(active, accepted - after[group], 0)
    count = max(0, layout.group_rows.shape[1] - int(offset.max()))
    index = offset[:, None] + torch.arange(count, device=accepted.device)[None, :]
    return layout.group_rows[group[:, None], index]


def cache_positions_after_pass(
    cache_positions: torch.Tensor, layout: PassLayout, accepted: torch.Tensor, kept_candidates: int
) -> torch.Tensor:
    """Logical positions of the cache once it is cropped to fresh tokens + `kept_candidates` candidates.

    Rows that accepted fewer than `kept_candidates` keep their rejected candidates as INVALID holes.
    """
    kept = layout.block_positions[:, : layout.num_fresh + kept_candidates].clone()
    candidate_index = torch.arange(kept_candidates, device=kept.device)
    rejected = candidate_index[None, :] >= accepted[:, None]
    kept[:, layout.num_fresh :] = kept[:, layout.num_fresh :].masked_fill(rejected, INVALID)
    return torch.cat([cache_positions, kept], dim=1)

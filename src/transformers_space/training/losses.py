"""Per-token losses of the mask tokens: cross-entropy on the data, KL to a teacher distribution, or a mix.

Why a teacher: greedy SPACE accepts a mask's draft exactly when it equals the verifying model's own argmax at
that position. The data's next token is that argmax only where the data is the model's own greedy text (and
even there, a one-hot label says nothing about the runner-up tokens); the verifying model's distribution
says what it will choose, and how sure it is, everywhere. KL(teacher || mask) has the gradient of
cross-entropy with the teacher's probabilities as soft labels, and is zero when the two distributions agree.

Pure functions of tensors: no model, no trainer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kl_to_teacher(logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(teacher) || softmax(logits)) per row of [N, V] logits, in float32; [N]."""
    log_q = F.log_softmax(logits.float(), dim=-1)
    log_p = F.log_softmax(teacher_logits.float(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def mask_token_losses(
    logits: torch.Tensor,
    targets: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    kind: str,
    kl_weight: float = 0.5,
) -> torch.Tensor:
    """Loss of each mask token ([N]) from its logits [N, V], data targets [N] and teacher logits [N, V].

    kind: 'cross_entropy' (teacher unused), 'kl', or 'mix' = kl_weight * KL + (1 - kl_weight) * cross-entropy.
    """
    if kind == "cross_entropy":
        return F.cross_entropy(logits.float(), targets, reduction="none")
    if teacher_logits is None:
        raise ValueError(f"mask loss {kind!r} needs the teacher's logits at each mask's target position.")
    kl = kl_to_teacher(logits, teacher_logits.detach())
    if kind == "kl":
        return kl
    if kind == "mix":
        return kl_weight * kl + (1 - kl_weight) * F.cross_entropy(logits.float(), targets, reduction="none")
    raise ValueError(f"Unknown mask loss {kind!r}; choose 'cross_entropy', 'kl' or 'mix'.")


def mask_index_in_block(is_mask: torch.Tensor, block_size: int) -> torch.Tensor:
    """[batch, sequence]: for each mask, its place j (0..k-1) in its block; 0 elsewhere.

    SAR-SFT lays each block's k masks out back to back (blocks adjacent, after the real tokens), so a mask's
    index within its run of consecutive masks, modulo k, is its place in its block.
    """
    index = torch.arange(is_mask.shape[-1], device=is_mask.device).expand_as(is_mask)
    last_other = torch.where(is_mask, -1, index).cummax(dim=-1).values  # last non-mask column at or before
    return torch.where(is_mask, (index - last_other - 1) % block_size, 0)

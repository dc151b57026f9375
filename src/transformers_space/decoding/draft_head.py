"""The draft head: each mask's draft conditioned on the token just before it (Hydra, arXiv 2402.05109; the
"sampler head" of arXiv 2507.11851).

Why: a mask group runs in the same pass that verifies the previous drafts, so its first mask cannot see the token
that pass emits next (the correction or bonus token): it drafts two tokens ahead blind, and mask j drafts blind of
the drafts before it, so the drafts of one group need not even agree with each other. After verification that
token is known, and so is each draft once made. The head adds to mask j's last hidden state h_j a small MLP of
[h_j; embedding of the token before it] (residual, its output layer zero-initialised, so an untrained head drafts
what the masks drafted without it) and drafts through the LM head, one mask after the other:

    z_j = h_j + down(silu(up([h_j; rmsnorm(E[token before mask j])])))

Cost, and why drafts are restricted: drafting mask after mask means one LM-head product per mask, each a read of
the whole head (a quarter of a 0.5B model's weights) for one row. Instead the head scores only the
`DRAFT_CANDIDATES` tokens the mask's own logits rank highest (those logits come from the pass's one head call, as
without a head): a [candidates x hidden] product per mask. Training scores the whole vocabulary; on held-out rows
the restriction to 16 candidates costs under 0.01 of acceptance (BENCHMARKS.md, "Draft head").

Drafts only: verification never reads the head, so greedy SPACE output stays the base model's, and sampling draws
each draft from the restricted distribution it then uses as q, which keeps it distribution-preserving.

The head is trained on top of a trained gated adapter with the adapter frozen (`SpaceConfig.draft_head_width`,
`SpaceTrainer`): the masks' own logits, which pick the candidates, stay what the adapter learned. It lives on the
LM head module (`lm_head.space_draft_head`), so `save_pretrained` and `save_space_adapter` write it with the
adapter, and the SPACE class rebuilds it in `__init__` from the `SpaceConfig`.

Imports only torch, transformers and sibling modules (it ships as remote code).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .forward import lm_head_of, logit_transform

DRAFT_CANDIDATES = 16


class DraftHead(nn.Module):
    """z = h + down(silu(up([h; rmsnorm(embedding of the token before)])))."""

    def __init__(self, hidden_size: int, width: int, dtype=None, device=None):
        super().__init__()
        self.norm = nn.RMSNorm(hidden_size, dtype=dtype, device=device)
        self.up = nn.Linear(2 * hidden_size, width, dtype=dtype, device=device)
        self.down = nn.Linear(width, hidden_size, dtype=dtype, device=device)
        nn.init.zeros_(self.down.weight)
        nn.init.zeros_(self.down.bias)

    def forward(self, hidden: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
        """hidden [..., hidden_size] (a mask's last hidden state, as the LM head reads it); before [..., hidden_size]
        (the input embedding of the token before the mask's target)."""
        hidden = hidden.to(self.up.weight.dtype)
        joined = torch.cat([hidden, self.norm(before.to(self.up.weight.dtype))], dim=-1)
        return hidden + self.down(F.silu(self.up(joined)))


def draft_head_of(model) -> DraftHead | None:
    return getattr(model.get_output_embeddings(), "space_draft_head", None)


def install_draft_head(model, width: int) -> DraftHead:
    """Put a fresh draft head of `width` on the model's LM head (the same one again when it has it already)."""
    head = draft_head_of(model)
    if head is not None:
        if head.up.out_features != width:
            raise ValueError(f"This model already has a draft head of width {head.up.out_features}, not {width}.")
        return head
    lm_head = model.get_output_embeddings()
    weight = model.get_input_embeddings().weight
    lm_head.space_draft_head = DraftHead(weight.shape[1], width, dtype=weight.dtype, device=weight.device)
    lm_head.space_draft_head.train(model.training)
    return lm_head.space_draft_head


def conditioned_logits(model, head: DraftHead, hidden: torch.Tensor, before_ids: torch.Tensor) -> torch.Tensor:
    """The head's logits over the whole vocabulary (what training scores): [..., vocab] from hidden
    [..., hidden_size] and the ids of the tokens before the masks' targets [...]; the model's own logits
    (`forward.lm_head_of`) of the head's output."""
    z = head(hidden, model.get_input_embeddings().weight[before_ids])
    return lm_head_of(model)(z.to(model.get_output_embeddings().weight.dtype))  # a head training in fp32, bf16 base


class RestrictedDrafting:
    """Decoding's use of the head: `(hidden, before_ids, mask_logits) -> logits`, the head's logits on the
    `candidates` tokens that the mask's own logits rank highest and -inf elsewhere (module docstring).

    hidden [batch, hidden_size], before_ids [batch], mask_logits [batch, vocab]; returns [batch, vocab] float."""

    def __init__(self, model, head: DraftHead, candidates: int = DRAFT_CANDIDATES):
        self.head, self.candidates = head, candidates
        self.transform = logit_transform(model.config)  # what follows the LM head, as in `lm_head_of`
        self.embedding = model.get_input_embeddings().weight
        lm_head = model.get_output_embeddings()
        self.head_weight, self.head_bias = lm_head.weight, getattr(lm_head, "bias", None)

    def __call__(self, hidden: torch.Tensor, before_ids: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
        chosen = mask_logits.topk(min(self.candidates, mask_logits.shape[-1]), dim=-1).indices  # [batch, c]
        z = self.head(hidden, self.embedding[before_ids]).to(self.head_weight.dtype)  # [batch, hidden_size]
        scores = torch.einsum("bh,bch->bc", z, self.head_weight[chosen])
        if self.head_bias is not None:
            scores = scores + self.head_bias[chosen]
        if self.transform is not None:
            scores = self.transform(scores)
        out = torch.full(mask_logits.shape, float("-inf"), dtype=torch.float32, device=mask_logits.device)
        return out.scatter(-1, chosen, scores.float())

"""One SPACE forward pass: the decoder body on a laid-out block, then the LM head on the rows that are read.

Shared by the decoding loop (`loop.py`) and the pass-cost measurement (`autotune.py`), so that what is timed is
exactly what decoding runs. The body runs without the LM head because a pass reads only a few of its rows.

Imports only torch, transformers and sibling modules (it ships as remote code).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .compat import cache_argument_name
from .layout import PassLayout, additive_mask, restrict_to_window


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


def without_autograd(model):
    """The autograd mode SPACE's passes run in: `torch.inference_mode()` (see `loop.py`), or `no_grad` for a model
    whose weights are tensor subclasses (quantized weights, e.g. optimum-quanto's int4), whose operations may
    record versions that inference tensors do not have."""
    subclassed = any(type(parameter.data) is not torch.Tensor for parameter in model.parameters())
    return torch.no_grad() if subclassed else torch.inference_mode()


def lm_head_of(model) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's logits as a function of its last hidden states: the LM head, then what the family's
    causal-LM forward does after it.

    Some families do not stop at the head: Gemma 2 and 3 soft-cap the logits (`final_logit_softcapping`),
    Granite divides them (`logits_scaling`), Cohere multiplies them (`logit_scale`). transformers exposes
    these as config fields and applies them inline in each `forward`, so they are read from the config here,
    in the order and with the operations of those forwards. Greedy argmaxes do not change under these
    monotonic maps, but sampled tokens and returned scores do. `tests/test_architectures.py` checks, for every
    supported family, that this equals `model(...).logits` exactly.
    """
    head = model.get_output_embeddings()
    transform = logit_transform(model.config)
    if transform is None:
        return head
    return lambda hidden: transform(head(hidden))


def logit_transform(config) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """What the family's causal-LM forward does to the LM head's output (see `lm_head_of`); None: nothing."""
    config = config.get_text_config()
    softcap = getattr(config, "final_logit_softcapping", None)
    divisor = getattr(config, "logits_scaling", None)
    multiplier = getattr(config, "logit_scale", None)
    if not softcap and divisor is None and multiplier is None:
        return None

    def transform(out: torch.Tensor) -> torch.Tensor:
        if softcap:
            out = torch.tanh(out / softcap) * softcap
        if divisor is not None:
            out = out / divisor
        if multiplier is not None:
            out = out * multiplier
        return out

    return transform


class PassLogits:
    """The LM head on the rows of a pass that are read: the verify rows, then the chosen drafts' rows.

    Which mask rows hold the next drafts is known only after verification. When the pass has few rows
    (MERGED_HEAD_ROWS), the head runs ONCE on the verify rows and every mask row: on a CPU a second call
    for one or two rows costs about as much as the first (the head is a large share of a small model's weights).
    Otherwise the head runs twice, on exactly the rows read.
    """

    MERGED_HEAD_ROWS = 16

    def __init__(self, head: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor, layout: PassLayout):
        """`head`: hidden states to logits, as `lm_head_of(model)`."""
        self.head, self.hidden = head, hidden
        self.num_verify = layout.verify_rows.shape[0]
        mask_rows = layout.group_rows.flatten()
        self.merged = self.num_verify + mask_rows.shape[0] <= self.MERGED_HEAD_ROWS
        rows = torch.cat([layout.verify_rows, mask_rows]) if self.merged else layout.verify_rows
        self.logits = head(hidden[:, rows]).float()
        if self.merged:  # block row -> column of self.logits
            self.column = torch.full((hidden.shape[1],), -1, dtype=torch.long, device=hidden.device)
            self.column[rows] = torch.arange(rows.shape[0], device=hidden.device)

    def verify(self) -> torch.Tensor:
        """[batch, num_candidates + 1, vocab]."""
        return self.logits[:, : self.num_verify]

    def drafts(self, rows: torch.Tensor) -> torch.Tensor:
        """[batch, n, vocab] logits of the draft rows [batch, n] (see `draft_rows`)."""
        if self.merged:
            columns = self.column[rows]
            return self.logits.gather(1, columns[..., None].expand(-1, -1, self.logits.shape[-1]))
        return self.head(self.hidden_at(rows)).float()

    def hidden_at(self, rows: torch.Tensor) -> torch.Tensor:
        """[batch, n, hidden] last hidden states of the rows [batch, n] (a draft head reads them)."""
        return self.hidden.gather(1, rows[..., None].expand(-1, -1, self.hidden.shape[-1]))

"""`SpaceDataCollator`: token lists in, SAR-SFT tensors out (docs/method.md, "What the model learns").

Pure: no model, no tokenizer.

Notation: a row holds tokens x_0..x_{L-1} and labels (the token each position holds, -100 where it
carries no loss, as in transformers). A mask block starting at s holds k mask tokens at positions
s..s+k-1; they see x_0..x_{s-1} and the earlier masks of their own block, and mask j predicts the
label at s+j+1. The last real token before the block predicts the label at s with the ordinary AR loss,
so a block drafts the k tokens AFTER the one the model emits next. A valid start s has s >= 1 and
labels s..s+k all trainable.

Blocks are drawn afresh on every call (so every epoch), from `generator` or torch's global RNG (which
the Trainer seeds and restores on resume; accelerate's dataloader collates one batch ahead, so after a
resume the draws differ from an uninterrupted run's, as with any random collator). With `row_seed`
(evaluation) each row's blocks come from that seed and the row's own tokens instead: a row gets the same
blocks whatever rows come before it, so two held-out sets that differ by a row still measure the rest alike.

Output `labels` are per-position TARGETS, already shifted: `labels[b, t]` is the token position t must
predict, -100 for none.

Single-forward layout (modes "full" and "lora"): per row, with probability `sar_probability`, SAR blocks:

- "one_pass": the whole row, then `blocks_per_sequence` blocks appended at the end, each with its own
  start s (distinct, drawn uniformly from the valid starts); the real tokens keep their AR targets.
- "truncate": the row cut at s, then one block (plain causal attention would do; the 4D mask is causal).

  keys                 input_ids [B, T], position_ids [B, T], labels [B, T],
                       attention_mask [B, 1, T, T] additive float (0 visible, dtype minimum hidden).

Two-pass layout (mode "gated", `two_pass=True`): every row carries blocks, only masks carry loss.

  prefix               input_ids [B, P], attention_mask [B, P] (1 real, 0 padding); P = the largest
                       block start in the batch (masks never look further), or that start + k with
                       `prefix_covers_targets` (the trainer then reads the base model's logits at every
                       mask's target position s+j, which equals the mask's position id: the teacher of a
                       distillation loss, and what greedy verification will compare the drafts with)
  masks                mask_input_ids [B, M], mask_position_ids [B, M], labels [B, M],
                       mask_attention_mask [B, 1, M, P + M] over the prefix keys, then the mask keys.

Padding: right side, `pad_token_id` in the inputs, -100 in the labels; a padding query sees only itself,
and no real query sees padding.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from ..decoding.layout import additive_mask

IGNORE = -100
ONE_PASS, TRUNCATE = "one_pass", "truncate"


def valid_block_starts(labels: list[int], num_masks: int) -> list[int]:
    """Starts s >= 1 whose AR target (s) and mask targets (s+1..s+k) are all trainable."""
    trainable = [label != IGNORE for label in labels]
    run = 0  # length of the run of trainable labels ending at the current index
    starts = []
    for index in range(len(labels) - 1, -1, -1):  # scan backwards: run = trainable labels from index on
        run = run + 1 if trainable[index] else 0
        if index >= 1 and run >= num_masks + 1:
            starts.append(index)
    return starts[::-1]


def row_draw_seed(seed: int, input_ids: list[int], labels: list[int]) -> int:
    """The seed of one row's block draws under `row_seed`: from the seed and the row's tokens alone (a stable
    hash, not Python's salted `hash`), so the row draws the same blocks in any process, batch or order."""
    text = f"{seed}|{','.join(map(str, input_ids))}|{','.join(map(str, labels))}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


@dataclass
class RowLayout:
    """One row of a batch before padding. `group` -1: real token, b >= 0: mask of block b. `limit`: a token
    sees the real tokens before index `limit` (t + 1 for a real token t, s for a mask of a block at s)."""

    input_ids: list[int]
    position_ids: list[int]
    labels: list[int]  # targets, already shifted
    group: list[int]
    limit: list[int]


PADDING_GROUP = -2


@dataclass
class SpaceDataCollator:
    """Draws SAR blocks and builds the 4D masks, position ids and targets of SAR-SFT."""

    mask_token_id: int
    num_mask_tokens: int
    pad_token_id: int = 0
    sar_probability: float = 0.5
    sample_form: str = ONE_PASS
    blocks_per_sequence: int = 4
    two_pass: bool = False
    prefix_covers_targets: bool = False
    mask_dtype: torch.dtype = torch.float32
    generator: torch.Generator | None = None
    row_seed: int | None = None

    def __post_init__(self) -> None:
        if self.sample_form not in (ONE_PASS, TRUNCATE):
            raise ValueError(f"`sample_form` should be 'one_pass' or 'truncate', got {self.sample_form!r}.")
        if self.pad_token_id == self.mask_token_id:
            raise ValueError(f"`pad_token_id` must differ from the mask token id, both are {self.pad_token_id}.")

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        rows = [self._row(feature, index) for index, feature in enumerate(features)]
        generators = [self._generator_for(ids, labels) for ids, labels in rows]
        if self.two_pass:
            return self._two_pass_batch(rows, generators)
        layouts = [self._layout_row(ids, labels, generator)
                   for (ids, labels), generator in zip(rows, generators, strict=True)]
        return self._single_forward_batch(layouts)

    # --- drawing -----------------------------------------------------------------------------------------

    def _row(self, feature: dict, index: int) -> tuple[list[int], list[int]]:
        input_ids = [int(t) for t in feature["input_ids"]]
        labels = feature.get("labels")
        labels = input_ids if labels is None else [int(t) for t in labels]
        if len(labels) != len(input_ids):
            raise ValueError(f"Row {index}: `labels` has {len(labels)} entries, `input_ids` {len(input_ids)}.")
        if self.mask_token_id in input_ids:
            raise ValueError(
                f"Row {index} contains the SPACE mask token (id {self.mask_token_id}) at position "
                f"{input_ids.index(self.mask_token_id)}; it is reserved for mask positions. Remove it from the data."
            )
        return input_ids, labels

    def _generator_for(self, input_ids: list[int], labels: list[int]) -> torch.Generator | None:
        if self.row_seed is None:
            return self.generator
        return torch.Generator().manual_seed(row_draw_seed(self.row_seed, input_ids, labels))

    def draw_starts(self, labels: list[int], count: int, generator: torch.Generator | None) -> list[int]:
        """Up to `count` distinct valid block starts, uniformly at random (from `generator`, the row's: see
        `_generator_for`), in increasing order."""
        valid = valid_block_starts(labels, self.num_mask_tokens)
        if not valid:
            return []
        chosen = torch.randperm(len(valid), generator=generator)[:count]
        return sorted(valid[i] for i in chosen.tolist())

    # --- single forward ("full" and "lora") --------------------------------------------------------------

    def _layout_row(self, input_ids: list[int], labels: list[int], generator: torch.Generator | None) -> RowLayout:
        k = self.num_mask_tokens
        starts: list[int] = []
        if float(torch.rand((), generator=generator)) < self.sar_probability:
            count = 1 if self.sample_form == TRUNCATE else self.blocks_per_sequence
            starts = self.draw_starts(labels, count, generator)
        num_real = starts[0] if self.sample_form == TRUNCATE and starts else len(input_ids)
        # the real token at t predicts the label at t + 1 (still known when the row was cut at t + 1)
        row = RowLayout(
            input_ids=input_ids[:num_real],
            position_ids=list(range(num_real)),
            labels=[labels[t + 1] if t + 1 < len(labels) else IGNORE for t in range(num_real)],
            group=[-1] * num_real,
            limit=list(range(1, num_real + 1)),
        )
        for block, s in enumerate(starts):
            row.input_ids += [self.mask_token_id] * k
            row.position_ids += range(s, s + k)
            row.labels += labels[s + 1 : s + k + 1]
            row.group += [block] * k
            row.limit += [s] * k
        return row

    def _single_forward_batch(self, rows: list[RowLayout]) -> dict[str, torch.Tensor]:
        width = max(len(row.input_ids) for row in rows)
        input_ids = _padded([row.input_ids for row in rows], width, self.pad_token_id)  # [B, T]
        group = _padded([row.group for row in rows], width, PADDING_GROUP)
        limit = _padded([row.limit for row in rows], width, 0)
        index = torch.arange(width)
        sees_real = (group[:, None, :] == -1) & (index[None, None, :] < limit[:, :, None])  # [B, T, T]
        visible = sees_real | _same_block(group, group) | torch.eye(width, dtype=torch.bool)
        return {
            "input_ids": input_ids,
            "position_ids": _padded([row.position_ids for row in rows], width, 0),
            "attention_mask": additive_mask(visible, self.mask_dtype),
            "labels": _padded([row.labels for row in rows], width, IGNORE),
        }

    # --- two passes ("gated") ----------------------------------------------------------------------------

    def _two_pass_batch(self, rows: list[tuple[list[int], list[int]]],
                        generators: list[torch.Generator | None]) -> dict[str, torch.Tensor]:
        k = self.num_mask_tokens
        count = 1 if self.sample_form == TRUNCATE else self.blocks_per_sequence
        starts = [self.draw_starts(labels, count, generator)
                  for (_, labels), generator in zip(rows, generators, strict=True)]
        for index, row_starts in enumerate(starts):
            if not row_starts:
                raise ValueError(
                    f"Row {index} has no room for a mask block: it needs num_mask_tokens + 1 = {k + 1} trainable "
                    "tokens after at least one token of context. Drop such rows or lower num_mask_tokens."
                )
        prefix = max(max(row_starts) for row_starts in starts)  # P: masks see at most x_0..x_{P-1}
        if self.prefix_covers_targets:
            prefix += k  # the base's logits at s..s+k-1 are the masks' teachers; the masks still see < s only
        masks = max(len(row_starts) for row_starts in starts) * k  # M
        prefix_ids = [ids[:prefix] for ids, _ in rows]
        mask_rows = [
            RowLayout(
                input_ids=[self.mask_token_id] * (k * len(row_starts)),
                position_ids=[s + j for s in row_starts for j in range(k)],
                labels=[label for s in row_starts for label in labels[s + 1 : s + k + 1]],
                group=[block for block in range(len(row_starts)) for _ in range(k)],
                limit=[s for s in row_starts for _ in range(k)],
            )
            for (_, labels), row_starts in zip(rows, starts, strict=True)
        ]
        group = _padded([row.group for row in mask_rows], masks, PADDING_GROUP)  # [B, M]
        limit = _padded([row.limit for row in mask_rows], masks, 0)
        sees_prefix = torch.arange(prefix)[None, None, :] < limit[:, :, None]  # [B, M, P]
        sees_masks = _same_block(group, group) | torch.eye(masks, dtype=torch.bool)  # [B, M, M]
        return {
            "input_ids": _padded(prefix_ids, prefix, self.pad_token_id),
            "attention_mask": _padded([[1] * len(ids) for ids in prefix_ids], prefix, 0),
            "mask_input_ids": _padded([row.input_ids for row in mask_rows], masks, self.pad_token_id),
            "mask_position_ids": _padded([row.position_ids for row in mask_rows], masks, 0),
            "mask_attention_mask": additive_mask(torch.cat([sees_prefix, sees_masks], dim=2), self.mask_dtype),
            "labels": _padded([row.labels for row in mask_rows], masks, IGNORE),
        }


def _padded(rows: list[list[int]], width: int, value: int) -> torch.Tensor:
    """[len(rows), width] long tensor, each row right-padded with `value`."""
    return torch.tensor([row + [value] * (width - len(row)) for row in rows], dtype=torch.long)


def _same_block(query_group: torch.Tensor, key_group: torch.Tensor) -> torch.Tensor:
    """[B, Q, K]: key is a mask of the query's own block at or before it (groups: [B, Q] and [B, K])."""
    same = (query_group[:, :, None] == key_group[:, None, :]) & (query_group[:, :, None] >= 0)
    return same & torch.ones(same.shape[1:], dtype=torch.bool).tril()[None]

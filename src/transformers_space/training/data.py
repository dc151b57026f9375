"""Training rows: from `input_ids` / `text` / chat `messages` to checked token lists, before training starts.

Every row becomes `{"input_ids": [...], "labels": [...]}` (labels as in transformers: the token itself
where it carries loss, -100 elsewhere). All checks run here, over the whole dataset, so bad data fails
with a message naming the row before any training step:

- a row with none of the fields, with several of them, or with fields SpaceTrainer does not read;
- `text` / `messages` without a tokenizer, `messages` with a tokenizer that has no chat template;
- a row containing the mask token (it is reserved for mask positions; gated adapters rely on that);
- a row too short for one mask block (when SAR blocks are trained at all);
- a row longer than the model's sliding window or position limit once its mask blocks are appended.

`max_length` truncates rows after these checks; a row whose loss the truncation cuts off (a prompt longer than
`max_length`) can teach nothing, so it is dropped with a warning rather than failing the run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch

from ..decoding.configuration import SpaceConfig
from .collator import IGNORE, valid_block_starts

ROW_KINDS = ("input_ids", "text", "messages")
EXTRA_FIELDS = {"input_ids": ("labels", "attention_mask"), "text": (), "messages": ()}
MAX_LISTED = 5

logger = logging.getLogger(__name__)


class TokenizedRows(torch.utils.data.Dataset):
    """A list of `{"input_ids", "labels"}` rows, as the collator wants them."""

    def __init__(self, rows: list[dict[str, list[int]]]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.rows[index]

    def num_tokens(self) -> int:
        return sum(len(row["input_ids"]) for row in self.rows)


def prepare_rows(
    dataset, tokenizer, space_config: SpaceConfig, model_config=None, max_length: int | None = None
) -> TokenizedRows:
    """Tokenise and check every row; raises ValueError / TypeError naming the offending rows."""
    if dataset is None:
        raise ValueError("`train_dataset` is required.")
    if isinstance(dataset, TokenizedRows):
        rows = dataset.rows
    else:
        if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
            raise TypeError(
                f"The dataset should be a list of dicts or a map-style dataset (datasets.Dataset), got "
                f"{type(dataset).__name__}; iterable datasets cannot be checked before training."
            )
        if len(dataset) == 0:
            raise ValueError("The dataset is empty.")
        rows = [_tokenize_row(dataset[index], index, tokenizer) for index in range(len(dataset))]
    _check_rows(rows, space_config)
    if max_length is not None:
        rows = _truncated(rows, max_length, space_config)
    _check_lengths(rows, space_config, model_config)
    return TokenizedRows(rows)


def _truncated(rows: list[dict], max_length: int, space_config: SpaceConfig) -> list[dict]:
    """The rows cut to `max_length` tokens, without those the cut leaves with nothing to learn."""
    cut = [{"input_ids": row["input_ids"][:max_length], "labels": row["labels"][:max_length]} for row in rows]
    dropped = [i for i, row in enumerate(cut) if not _trainable(row, space_config)]
    if len(dropped) == len(cut):
        raise ValueError(
            f"Truncated to max_length={max_length} tokens, no row keeps a token that carries loss (every prompt is "
            "at least that long). Raise max_length."
        )
    if dropped:
        logger.warning(
            "Dropped %d of %d rows: truncated to max_length=%d tokens, they keep no answer to learn from (their "
            "prompts are about that long). Raise max_length to keep them. Rows %s.",
            len(dropped), len(cut), max_length, _listed(dropped),
        )
        skipped = set(dropped)
        cut = [row for i, row in enumerate(cut) if i not in skipped]
    return cut


def _trainable(row: dict, space_config: SpaceConfig) -> bool:
    if all(label == IGNORE for label in row["labels"]):
        return False
    needs_block = space_config.mode == "gated" or space_config.sar_probability > 0
    return not needs_block or bool(valid_block_starts(row["labels"], space_config.num_mask_tokens))


def _tokenize_row(row, index: int, tokenizer) -> dict[str, list[int]]:
    if not isinstance(row, Mapping):
        raise TypeError(f"Row {index} should be a dict, got {type(row).__name__}.")
    kinds = [kind for kind in ROW_KINDS if kind in row]
    if not kinds:
        raise ValueError(
            f"Row {index} has none of the fields SpaceTrainer reads ({', '.join(ROW_KINDS)}); it has "
            f"{sorted(row)}. Give each row `input_ids` (optionally `labels`), `text`, or chat `messages`."
        )
    if len(kinds) > 1:
        raise ValueError(f"Row {index} has several of {list(ROW_KINDS)} ({kinds}); keep exactly one.")
    kind = kinds[0]
    unknown = sorted(set(row) - {kind, *EXTRA_FIELDS[kind]})
    if unknown:
        raise ValueError(
            f"Row {index} has fields SpaceTrainer does not read: {unknown}. Rows with `{kind}` may also hold "
            f"only {list(EXTRA_FIELDS[kind]) or 'nothing else'}; remove the others "
            "(e.g. `dataset.remove_columns([...])`)."
        )
    if kind == "input_ids":
        input_ids, labels = _tokenized(row, index)
    else:
        if tokenizer is None:
            raise ValueError(
                f"Row {index} holds `{kind}`, which needs a tokenizer: pass `processing_class=tokenizer`."
            )
        input_ids, labels = _from_text(row["text"], index, tokenizer) if kind == "text" else _from_messages(
            row["messages"], index, tokenizer
        )
    return {"input_ids": input_ids, "labels": labels}


def _tokenized(row: Mapping, index: int) -> tuple[list[int], list[int]]:
    input_ids = _int_list(row["input_ids"], "input_ids", index)
    labels = _int_list(row["labels"], "labels", index) if row.get("labels") is not None else list(input_ids)
    if len(labels) != len(input_ids):
        raise ValueError(f"Row {index}: `labels` has {len(labels)} entries but `input_ids` has {len(input_ids)}.")
    if "attention_mask" in row and any(int(v) != 1 for v in row["attention_mask"]):
        raise ValueError(
            f"Row {index}: `attention_mask` has zeros; give unpadded rows (the collator pads and masks itself)."
        )
    return input_ids, labels


def _int_list(values, name: str, index: int) -> list[int]:
    if isinstance(values, torch.Tensor):
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in values
    ):
        raise TypeError(f"Row {index}: `{name}` should be a list of ints, got {str(values)[:80]!r}.")
    return list(values)


def _from_text(text, index: int, tokenizer) -> tuple[list[int], list[int]]:
    if not isinstance(text, str):
        raise TypeError(f"Row {index}: `text` should be a string, got {type(text).__name__}.")
    input_ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    eos = tokenizer.eos_token_id
    if eos is not None and (not input_ids or input_ids[-1] != eos):
        input_ids.append(eos)
    return input_ids, list(input_ids)


def _from_messages(messages, index: int, tokenizer) -> tuple[list[int], list[int]]:
    """The rendered conversation; only the assistant turns (their text and end-of-turn tokens) carry loss."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"Row {index} holds chat `messages`, but the tokenizer has no chat template. Set "
            "`tokenizer.chat_template`, or give the rows as `text`."
        )
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("Chat `messages` need a fast tokenizer (for character offsets); load it with use_fast=True.")
    if not isinstance(messages, Sequence) or not all(
        isinstance(m, Mapping) and "role" in m and "content" in m for m in messages
    ):
        raise ValueError(f"Row {index}: `messages` should be a list of {{'role', 'content'}} dicts.")
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for turn, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = ""
        if turn:
            before = tokenizer.apply_chat_template(messages[:turn], tokenize=False, add_generation_prompt=True)
        through = tokenizer.apply_chat_template(messages[: turn + 1], tokenize=False)
        if not (through.startswith(before) and text.startswith(through)):
            raise ValueError(
                f"Row {index}: the chat template does not render turn {turn} as a prefix of the conversation, so "
                "the assistant tokens cannot be located. Give the rows as `input_ids` with `labels` instead."
            )
        spans.append((len(before), len(through)))
    if not spans:
        raise ValueError(f"Row {index}: `messages` has no assistant turn, so nothing would carry loss.")
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(encoded["input_ids"])
    labels = [
        token if any(low <= start < high for low, high in spans) else IGNORE
        for token, (start, _end) in zip(input_ids, encoded["offset_mapping"], strict=True)
    ]
    return input_ids, labels


def _check_rows(rows: list[dict], space_config: SpaceConfig) -> None:
    mask_id, k = space_config.mask_token_id, space_config.num_mask_tokens
    with_mask = [i for i, row in enumerate(rows) if mask_id in row["input_ids"]]
    if with_mask:
        raise ValueError(
            f"Rows {_listed(with_mask)} contain the SPACE mask token (id {mask_id}, {space_config.mask_token!r}), "
            "which is reserved for mask positions (gated adapters recognise masks by it). Remove it from the data."
        )
    no_loss = [i for i, row in enumerate(rows) if all(label == IGNORE for label in row["labels"])]
    if no_loss:
        raise ValueError(f"Rows {_listed(no_loss)} have no token that carries loss (all labels are -100).")
    if space_config.mode == "gated" or space_config.sar_probability > 0:
        short = [i for i, row in enumerate(rows) if not valid_block_starts(row["labels"], k)]
        if short:
            raise ValueError(
                f"Rows {_listed(short)} are too short for a mask block: a block needs num_mask_tokens + 1 = {k + 1} "
                "consecutive tokens that carry loss, after at least one token of context (row "
                f"{short[0]} has {len(rows[short[0]]['input_ids'])} tokens). Drop these rows or lower num_mask_tokens."
            )


def _check_lengths(rows: list[dict], space_config: SpaceConfig, model_config) -> None:
    if model_config is None:
        return
    longest = max(len(row["input_ids"]) for row in rows)
    window = getattr(model_config, "sliding_window", None)
    layer_types = getattr(model_config, "layer_types", None) or []
    if window is not None and longest > window and (not layer_types or "sliding_attention" in layer_types):
        raise ValueError(
            f"The longest row has {longest} tokens, more than the model's sliding window ({window}); SAR-SFT's 4D "
            f"masks do not apply the window. Pass max_length <= {window}."
        )
    limit = getattr(model_config, "max_position_embeddings", None) or getattr(model_config, "n_positions", None)
    if limit is not None and longest > limit:
        raise ValueError(f"The longest row has {longest} tokens, more than the model's {limit} positions; "
                         f"pass max_length <= {limit}.")


def _listed(indices: list[int]) -> str:
    shown = ", ".join(map(str, indices[:MAX_LISTED]))
    return f"[{shown}{', ...' if len(indices) > MAX_LISTED else ''}] ({len(indices)} in all)"

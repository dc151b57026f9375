"""`SpaceConfig`: the SPACE settings of a model, stored as `model.config.space_config` (a plain dict).

Stored as a dict inside the model's own config so that `save_pretrained` / `from_pretrained` carry it
with no extra file, and remote code can read it without this package.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, fields
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_MASK_TOKEN = "<|space_mask|>"
SPACE_CONFIG_VERSION = 1


@dataclass
class SpaceConfig:
    """What a model needs to draft with mask tokens."""

    num_mask_tokens: int = field(
        default=4, metadata={"help": "Mask tokens per group: how many tokens one pass drafts (paper: k=5)."}
    )
    mask_token: str = field(default=DEFAULT_MASK_TOKEN, metadata={"help": "Text of the added mask token."})
    mask_token_id: int | None = field(
        default=None, metadata={"help": "Id of the mask token; set by `add_space_support`."}
    )
    version: int = field(default=SPACE_CONFIG_VERSION, metadata={"help": "Format version of this config."})

    def __post_init__(self) -> None:
        if isinstance(self.num_mask_tokens, bool) or not isinstance(self.num_mask_tokens, int):
            raise TypeError(f"`num_mask_tokens` should be an int, got {self.num_mask_tokens!r}.")
        if self.num_mask_tokens < 1:
            raise ValueError(f"`num_mask_tokens` should be at least 1, got {self.num_mask_tokens}.")
        if self.mask_token_id is not None and self.mask_token_id < 0:
            raise ValueError(f"`mask_token_id` should be a non-negative token id, got {self.mask_token_id}.")
        if not isinstance(self.mask_token, str) or not self.mask_token:
            raise ValueError(f"`mask_token` should be a non-empty string, got {self.mask_token!r}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SpaceConfig:
        """Build from a saved dict; keys written by a newer version are dropped with a warning."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            logger.warning("Ignoring unknown SPACE config keys %s (saved by a newer transformers-space?)", unknown)
        return cls(**{k: v for k, v in values.items() if k in known})

"""`SpaceConfig`: the SPACE settings of a model, stored as `model.config.space_config` (a plain dict).

Stored as a dict inside the model's own config so that `save_pretrained` / `from_pretrained` carry it
with no extra file, and remote code can read it without this package. This class is the only reader and
writer of that dict: `SpaceConfig.of(model)` reads and validates it, `save_to(model)` writes it.

Decoding needs `mask_token_id` and `num_mask_tokens` (the number of masks the model was TRAINED with; a
decoding layout may run fewer, see `planning.SpaceLayoutPlan.num_masks`); `num_mask_tokens="auto"` also
reads the measured `acceptance_rates` and `acceptance_rates_by_kind`. The other fields record how the model was
(or is to be) trained by `SpaceTrainer` (docs/method.md), and `mode="gated"` also tells `from_pretrained` to
rebuild the gated adapters before the weights load.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_MASK_TOKEN = "<|space_mask|>"
SPACE_CONFIG_VERSION = 2

MODES = ("full", "lora", "gated")
SAMPLE_FORMS = ("one_pass", "truncate")
MASK_LOSSES = ("cross_entropy", "kl", "mix")
# fields that describe a trained model rather than a training request: never compared between runs
MEASURED_FIELDS = ("mask_token_id", "acceptance_rates", "acceptance_rates_by_kind", "version")


@dataclass
class SpaceConfig:
    """What a model needs to draft with mask tokens, and how `SpaceTrainer` trains it."""

    num_mask_tokens: int = field(
        default=4, metadata={"help": "Mask tokens per group: how many tokens one pass drafts (paper: k=5)."}
    )
    mask_token: str = field(default=DEFAULT_MASK_TOKEN, metadata={"help": "Text of the added mask token."})
    mask_token_id: int | None = field(
        default=None, metadata={"help": "Id of the mask token; set by `add_space_support` (leave unset)."}
    )
    mode: str = field(
        default="full",
        metadata={
            "help": "How SAR-SFT trains: 'full' (every weight, as the paper), 'lora' (peft LoRA, mergeable), "
            "'gated' (frozen base plus an adapter active only at mask positions: lossless against the base).",
            "choices": list(MODES),
        },
    )
    sar_probability: float = field(
        default=0.5,
        metadata={
            "help": "Probability that a training sample carries SAR mask blocks; the others train plain AR "
            "(paper: 0.5). Ignored in 'gated' mode, where every sample carries blocks (only masks carry loss)."
        },
    )
    sample_form: str = field(
        default="one_pass",
        metadata={
            "help": "How SAR samples are built: 'one_pass' keeps the whole sequence and appends "
            "`blocks_per_sequence` mask blocks behind a 4D mask; 'truncate' cuts the sequence at the block "
            "start and appends one block.",
            "choices": list(SAMPLE_FORMS),
        },
    )
    blocks_per_sequence: int = field(
        default=4, metadata={"help": "Mask blocks per SAR sample in the 'one_pass' form ('truncate' uses one)."}
    )
    mask_loss_weight: float = field(
        default=1.0, metadata={"help": "Weight of the mask-token (SAR) loss next to the ordinary next-token loss."}
    )
    mask_loss: str = field(
        default="cross_entropy",
        metadata={
            "help": "What each mask learns: 'cross_entropy' toward the data's next tokens (the paper), 'kl' toward "
            "the distribution the model itself predicts at the mask's target position (the base model in 'gated' "
            "mode, the model's own detached next-token logits otherwise: greedy acceptance is exactly agreement "
            "with that model), or 'mix' (`mask_kl_weight` x KL + the rest x cross-entropy). Default "
            "'cross_entropy': on self-distilled data its labels ARE the verifier's argmax, and in the measured "
            "comparison (BENCHMARKS.md, 'Mask loss') pure KL lowered the held-out KL but also the held-out "
            "argmax agreement that greedy acceptance needs (KL spreads the drafts' mass over the teacher's "
            "runner-up tokens).",
            "choices": list(MASK_LOSSES),
        },
    )
    mask_kl_weight: float = field(
        default=0.5, metadata={"help": "Share of the KL term in the 'mix' mask loss (0..1); unused otherwise."}
    )
    adapter_rank: int = field(default=16, metadata={"help": "Rank of the 'lora' / 'gated' adapters."})
    adapter_alpha: float = field(
        default=32.0, metadata={"help": "Scaling numerator of the adapters (delta scaled by alpha / rank)."}
    )
    adapter_dropout: float = field(default=0.0, metadata={"help": "Dropout on the adapters' input while training."})
    adapter_target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Names (last path component) of the linear layers that get adapters; default: the "
            "architecture's attention and MLP projections."
        },
    )
    per_position_mask_embeddings: bool = field(
        default=False,
        metadata={
            "help": "'gated' mode only: mask j of each group learns its own input embedding (num_mask_tokens "
            "embeddings) instead of all masks sharing one. Default False: in the measured comparison "
            "(BENCHMARKS.md, 'Per-position mask embeddings') masks 2-4 learned faster early, but after 450 steps "
            "both ended within noise of each other."
        },
    )
    draft_head_width: int = field(
        default=0,
        metadata={
            "help": "'gated' mode only: width of a draft head that conditions each mask's draft on the token before "
            "it (the one the pass emitted, then the previous draft), trained on top of a trained adapter with the "
            "adapter frozen (draft_head.py). 0: no head, each mask drafts from its own logits alone."
        },
    )
    draft_head_trains_adapter: bool = field(
        default=False,
        metadata={
            "help": "With draft_head_width: the gated adapter (and mask embedding) trains together with the head, "
            "so the masks' hidden states can learn what the head reads; each mask then also keeps a loss on its "
            "own logits, which pick the head's candidates in decoding. Default False: the head trains on a frozen, "
            "already trained adapter (cheaper: no backward through the model)."
        },
    )
    acceptance_rates: list[float] | None = field(
        default=None,
        init=False,  # measured (set by `from_dict` or `calibrate_acceptance`), never a training option
        metadata={
            "help": "Measured, not set by hand: per mask j, how often its draft is accepted when the drafts before "
            "it were (`autotune.calibrate_acceptance`). `num_mask_tokens='auto'` plans the layout with them."
        },
    )
    acceptance_rates_by_kind: dict[str, list[float]] | None = field(
        default=None,
        init=False,
        metadata={
            "help": "Measured, not set by hand: `acceptance_rates` per kind of calibration prompt (e.g. code and "
            "chat). Where present, `num_mask_tokens='auto'` plans for all kinds at once: the layout with the best "
            "geometric mean of the kinds' expected speed-ups (`planning.choose_plan`)."
        },
    )
    version: int = field(default=SPACE_CONFIG_VERSION, init=False, metadata={"help": "Format version."})

    def __post_init__(self) -> None:
        _check_int(self, "num_mask_tokens", minimum=1)
        if self.mask_token_id is not None:
            _check_int(self, "mask_token_id", minimum=0)
        if not isinstance(self.mask_token, str) or not self.mask_token:
            raise ValueError(f"`mask_token` should be a non-empty string, got {self.mask_token!r}.")
        _check_choice(self, "mode", MODES)
        _check_choice(self, "sample_form", SAMPLE_FORMS)
        _check_float(self, "sar_probability", 0.0, 1.0)
        _check_int(self, "blocks_per_sequence", minimum=1)
        _check_float(self, "mask_loss_weight", 0.0, math.inf)
        _check_choice(self, "mask_loss", MASK_LOSSES)
        _check_float(self, "mask_kl_weight", 0.0, 1.0)
        if self.mask_loss != "cross_entropy" and self.mode != "gated" and self.sample_form == "truncate":
            raise ValueError(
                f"mask_loss={self.mask_loss!r} needs the model's own logits at each mask's target position, which "
                "sample_form='truncate' cuts off; use sample_form='one_pass' (or mode='gated')."
            )
        _check_int(self, "adapter_rank", minimum=1)
        _check_float(self, "adapter_alpha", 0.0, math.inf, include_low=False)
        _check_float(self, "adapter_dropout", 0.0, 1.0, include_high=False)
        if self.adapter_target_modules is not None:
            targets = self.adapter_target_modules
            if isinstance(targets, str) or not all(isinstance(t, str) and t for t in targets) or not targets:
                raise ValueError(
                    f"`adapter_target_modules` should be a non-empty list of module names or None, got {targets!r}."
                )
            self.adapter_target_modules = list(targets)
        if not isinstance(self.per_position_mask_embeddings, bool):
            raise TypeError(
                f"`per_position_mask_embeddings` should be a bool, got {self.per_position_mask_embeddings!r}."
            )
        if self.per_position_mask_embeddings and self.mode != "gated":
            raise ValueError(
                f"per_position_mask_embeddings=True needs mode='gated' (its embeddings live in the gated adapter); "
                f"mode={self.mode!r} learns one mask token row of the embedding matrix. Use mode='gated' or leave "
                "it False."
            )
        _check_int(self, "draft_head_width", minimum=0)
        if self.draft_head_width and self.mode != "gated":
            raise ValueError(
                f"draft_head_width={self.draft_head_width} needs mode='gated' (the head is trained on top of a trained "
                f"gated adapter); mode={self.mode!r} has none. Use mode='gated' or draft_head_width=0."
            )
        if not isinstance(self.draft_head_trains_adapter, bool):
            raise TypeError(
                f"`draft_head_trains_adapter` should be a bool, got {self.draft_head_trains_adapter!r}."
            )
        if self.draft_head_trains_adapter and not self.draft_head_width:
            raise ValueError(
                "draft_head_trains_adapter=True trains the adapter together with a draft head, but draft_head_width "
                "is 0 (no head). Set draft_head_width (e.g. 4 x hidden size) or leave it False."
            )
        if self.mode == "gated" and self.mask_loss_weight == 0:
            raise ValueError("`mask_loss_weight` should be positive in 'gated' mode (only masks carry loss), got 0.")
        if self.mode != "gated" and self.sar_probability == 0:
            logger.warning("sar_probability=0: every sample trains plain AR, the mask tokens learn nothing.")

    @classmethod
    def of(cls, model_or_config) -> SpaceConfig:
        """The validated SPACE settings of a model (or its `PretrainedConfig`); ValueError when it has none."""
        config = getattr(model_or_config, "config", model_or_config)
        values = getattr(config, "space_config", None)
        if not values or values.get("mask_token_id") is None:
            raise ValueError(
                "This model has no SPACE settings (`config.space_config`). Prepare it with "
                "`transformers_space.add_space_support(model, tokenizer)` or train it with `SpaceTrainer`."
            )
        return cls.from_dict(values)

    @staticmethod
    def is_set(model_or_config) -> bool:
        """Whether the model (or config) carries SPACE settings at all."""
        return bool(getattr(getattr(model_or_config, "config", model_or_config), "space_config", None))

    def save_to(self, model_or_config) -> None:
        """Write these settings into `config.space_config`, where `save_pretrained` carries them."""
        getattr(model_or_config, "config", model_or_config).space_config = self.to_dict()

    def settings(self) -> dict[str, Any]:
        """The fields a user chooses (all but the measured ones), as `add_space_support(model, tokenizer,
        **settings)` takes them."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in MEASURED_FIELDS}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SpaceConfig:
        """Build from a saved dict; keys written by a newer version are dropped with a warning."""
        settable = {f.name for f in fields(cls) if f.init}
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            logger.warning("Ignoring unknown SPACE config keys %s (saved by a newer transformers-space?)", unknown)
        config = cls(**{k: v for k, v in values.items() if k in settable})
        config.acceptance_rates = _checked_rates(values.get("acceptance_rates"))
        config.acceptance_rates_by_kind = _checked_rates_by_kind(values.get("acceptance_rates_by_kind"))
        return config

    def differences(self, other: SpaceConfig, names: tuple[str, ...] | None = None) -> dict[str, tuple[Any, Any]]:
        """{field: (self's value, other's value)} for the fields (default: all but id and version) that differ."""
        names = names or tuple(f.name for f in fields(self) if f.name not in MEASURED_FIELDS)
        return {n: (getattr(self, n), getattr(other, n)) for n in names if getattr(self, n) != getattr(other, n)}


def _checked_rates(rates) -> list[float] | None:
    if rates is None:
        return None
    if isinstance(rates, (str, bytes, dict)) or not all(
        isinstance(r, (int, float)) and not isinstance(r, bool) and 0 <= r <= 1 for r in rates
    ):
        raise ValueError(f"`acceptance_rates` should be a list of numbers in [0, 1] or None, got {rates!r}.")
    return [float(r) for r in rates]


def _checked_rates_by_kind(rates_by_kind) -> dict[str, list[float]] | None:
    if rates_by_kind is None:
        return None
    if not isinstance(rates_by_kind, dict) or not rates_by_kind or not all(isinstance(k, str) for k in rates_by_kind):
        raise ValueError(
            "`acceptance_rates_by_kind` should be a non-empty dict from a kind of prompt (e.g. 'code') to a list "
            f"of numbers in [0, 1], or None; got {rates_by_kind!r}."
        )
    return {kind: _checked_rates(rates) for kind, rates in rates_by_kind.items()}


def _check_int(config: SpaceConfig, name: str, minimum: int) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` should be an int, got {value!r}.")
    if value < minimum:
        raise ValueError(f"`{name}` should be at least {minimum}, got {value}.")


def _check_float(
    config: SpaceConfig, name: str, low: float, high: float, include_low: bool = True, include_high: bool = True
) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` should be a number, got {value!r}.")
    above = value >= low if include_low else value > low
    below = value <= high if include_high else value < high
    if not math.isfinite(value) or not (above and below):
        interval = f"{'[' if include_low else '('}{low}, {high}{']' if include_high and high < math.inf else ')'}"
        raise ValueError(f"`{name}` should lie in {interval}, got {value}.")
    setattr(config, name, float(value))


def _check_choice(config: SpaceConfig, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(config, name)
    if value not in choices:
        raise ValueError(f"`{name}` should be one of {', '.join(map(repr, choices))}; got {value!r}.")

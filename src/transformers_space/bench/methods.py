"""The benchmark's methods: one `BenchMethod` each, in one registry (a new method is one entry in `METHODS`).

A method is the `generate` keyword arguments that select it, on top of the common greedy ones. Two baselines
and two SPACE layouts keep kernel effects and drafting apart:
- `plain_matched`: plain greedy `generate` with the CPU kernels SPACE's passes may use (`weights_first=True`:
  each linear layer multiplied weights-first, and a one-row product as two rows where this machine runs that
  faster, as a SPACE pass's products always have several rows: `decoding/kernels.py`), the kernel-matched
  baseline; SPACE's gain over it is drafting, not kernel choice.
- `space_full`: SPACE at the full layout (every trained mask, every group, the paper's layout), whatever
  `--space-num-mask-tokens` says: its tokens/pass shows the drafts' acceptance independent of the machine.
- `space_default_kernel` (opt-in) runs `space`'s layout with transformers' own modules ("linear" kernels).

One more way a user could speed decoding up is a cheaper dtype, and on some CPUs it is a large one (an AMD EPYC with
`avx512_bf16`: plain SmolLM2 ran as fast in bf16 as lossless SPACE in fp32, BENCHMARKS.md). So `plain_bf16` runs
plain greedy on a bf16 copy of the model, made once per run (a method's `dtype`); its text is bf16's, so it
matches the reference only where bf16 changes no argmax. A model that already runs in bf16 has nothing to compare.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from ..decoding.configuration import SpaceConfig
from ..decoding.generation import resolve_layout
from ..decoding.planning import SpaceLayoutPlan

logger = logging.getLogger(__name__)

REFERENCE = "plain"  # every speedup and match flag is relative to plain greedy
MATCHED = "plain_matched"


@dataclass(frozen=True)
class BenchMethod:
    name: str
    help: str
    kwargs: Callable  # (settings, model, draft_model) -> generate keyword arguments
    default: bool = True  # run when --methods is not given
    dtype: str | None = None  # run on a copy of the model in this torch dtype (made once per run); None: the model


def _plain(settings, model, draft_model) -> dict:
    return {"use_space": False}


def _plain_matched(settings, model, draft_model) -> dict:
    return {"use_space": False, "weights_first": True}


def _space(settings, model, draft_model) -> dict:
    kwargs = {"use_space": True, "return_dict_in_generate": True}
    if settings.space_num_mask_tokens is not None:
        kwargs["num_mask_tokens"] = settings.space_num_mask_tokens
    return kwargs


def _space_full(settings, model, draft_model) -> dict:
    plan = SpaceLayoutPlan.full(SpaceConfig.of(model).num_mask_tokens)
    return {"use_space": True, "return_dict_in_generate": True, "space_layout": plan}


def _space_full_masks(settings, model, draft_model) -> dict:
    return {**_space_full(settings, model, draft_model), "context_lookup": False}


def _space_default_kernel(settings, model, draft_model) -> dict:
    plan = replace(resolve_layout(model, settings.space_num_mask_tokens, None), kernels="linear")
    return {"use_space": True, "return_dict_in_generate": True, "space_layout": plan}


def _prompt_lookup(settings, model, draft_model) -> dict:
    kwargs = {"use_space": False, "prompt_lookup_num_tokens": settings.prompt_lookup_num_tokens}
    if settings.max_matching_ngram_size is not None:
        kwargs["max_matching_ngram_size"] = settings.max_matching_ngram_size
    return kwargs


def _early_exit(settings, model, draft_model) -> dict:
    return {"use_space": False, "assistant_early_exit": settings.early_exit_layers or default_early_exit_layers(model)}


def _draft(settings, model, draft_model) -> dict:
    if draft_model is None:
        raise ValueError("The `draft` method needs a draft model (`--draft-model PATH`).")
    return {"use_space": False, "assistant_model": draft_model}


METHODS: dict[str, BenchMethod] = {method.name: method for method in (
    BenchMethod("plain", "plain greedy `generate` (the reference)", _plain),
    BenchMethod(MATCHED, "plain greedy with SPACE's CPU kernels (`weights_first=True`)", _plain_matched),
    BenchMethod("plain_bf16", "plain greedy on a bfloat16 copy of the model (another speed-up on some CPUs; "
                "bf16's text)", _plain, dtype="bfloat16"),
    BenchMethod("space", "SPACE, layout from --space-num-mask-tokens (default: as trained)", _space),
    BenchMethod("space_full", "SPACE at the full layout: every trained mask, every group", _space_full),
    BenchMethod("space_full_masks", "`space_full` with drafts from the masks alone (no context lookup)",
                _space_full_masks, default=False),
    BenchMethod("space_default_kernel", "`space`'s layout with transformers' own modules", _space_default_kernel,
                default=False),
    BenchMethod("prompt_lookup", "prompt lookup decoding (`prompt_lookup_num_tokens`)", _prompt_lookup),
    BenchMethod("early_exit", "early-exit self-speculation (`assistant_early_exit`)", _early_exit),
    BenchMethod("draft", "assisted generation with --draft-model", _draft, default=False),
)}
DEFAULT_METHODS = tuple(name for name, method in METHODS.items() if method.default)


@dataclass
class BenchSettings:
    """What to run and how; recorded in the results."""

    methods: tuple[str, ...] = field(default=DEFAULT_METHODS, metadata={"help": f"Any of {', '.join(METHODS)}."})
    max_new_tokens: int = field(default=128, metadata={"help": "New tokens per prompt (fewer on EOS)."})
    threads: int = field(default=2, metadata={"help": "torch.set_num_threads for the whole run."})
    prompt_lookup_num_tokens: int = field(default=10, metadata={"help": "Prompt lookup: tokens drafted per pass."})
    max_matching_ngram_size: int | None = field(
        default=None, metadata={"help": "Prompt lookup n-gram size; None: transformers' default (2)."}
    )
    early_exit_layers: int | None = field(
        default=None, metadata={"help": "Layers the early-exit draft runs; None: a third of the model's layers."}
    )
    space_num_mask_tokens: int | str | None = field(
        default=None,
        metadata={"help": 'SPACE layout at generate time: masks per group (int) or "auto"; None: as trained.'},
    )
    warmup_tokens: int = field(default=16, metadata={"help": "New tokens of each method's untimed warm-up call."})
    progress: bool = field(default=True, metadata={"help": "Show a tqdm progress bar."})

    def __post_init__(self):
        self.methods = tuple(self.methods)
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"`methods` should be among {', '.join(METHODS)}, got {unknown}.")
        if REFERENCE not in self.methods:  # every speedup and match flag is relative to plain greedy
            self.methods = (REFERENCE, *self.methods)
        self.methods = tuple(dict.fromkeys(self.methods))
        for name in ("max_new_tokens", "threads", "prompt_lookup_num_tokens", "warmup_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` should be positive, got {getattr(self, name)}.")
        k = self.space_num_mask_tokens
        if k is not None and k != "auto" and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f'`space_num_mask_tokens` should be a positive int, "auto" or None, got {k!r}.')
        if self.early_exit_layers is not None and self.early_exit_layers < 1:
            raise ValueError(f"`early_exit_layers` should be positive, got {self.early_exit_layers}.")


def default_early_exit_layers(model) -> int:
    """About a third of the decoder layers (at least one)."""
    return max(1, round(model.config.num_hidden_layers / 3))


def method_kwargs(method: str, settings: BenchSettings, model, draft_model=None) -> dict:
    """The `generate` keyword arguments that select `method` (on top of the common greedy ones)."""
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; choose from {', '.join(METHODS)}.")
    return METHODS[method].kwargs(settings, model, draft_model)


def prepare_draft(model, draft_model) -> None:
    """Give the draft the target's vocabulary size, which transformers requires of a same-tokenizer assistant.

    The target's extra rows (the SPACE mask token) are never drafted: the target's logits processors,
    which suppress the mask token, also run on the assistant.
    """
    target_vocab = model.config.get_text_config().vocab_size
    draft_vocab = draft_model.config.get_text_config().vocab_size
    if draft_vocab > target_vocab:
        raise ValueError(
            f"The draft model's vocabulary ({draft_vocab}) is larger than the target's ({target_vocab}): the draft "
            "model must use the target's tokenizer."
        )
    if draft_vocab < target_vocab:
        logger.info("Resizing the draft model's embeddings from %d to %d rows", draft_vocab, target_vocab)
        draft_model.resize_token_embeddings(target_vocab, mean_resizing=False)
    if hasattr(draft_model.generation_config, "use_space"):
        draft_model.generation_config.use_space = False

"""`SpaceGenerationMixin`: `generate(..., use_space=True)` on any supported causal LM.

The mixin only decides and checks; the decoding itself runs inside transformers' own `generate` as a
`custom_generate` function, so input preparation, generation-config merging, logits processors,
stopping criteria and streamers all come from transformers.

Imports only torch, transformers and sibling modules (it ships as remote code).
"""

from __future__ import annotations

import contextlib
import threading

import torch
from transformers import GenerationConfig, LogitsProcessorList
from transformers.utils import logging

from .autotune import auto_plan
from .configuration import SpaceConfig
from .gated import install_gated_adapters
from .kernels import kernels_named
from .lookup import LOOKUP_EXTENSION
from .loop import space_decoding
from .planning import SpaceLayoutPlan
from .remote_code import write_custom_generate, write_model_card
from .verify import SuppressMaskTokenLogitsProcessor

logger = logging.get_logger(__name__)

HALF_PRECISION_NOTE = (
    "SPACE on a bfloat16/float16 model: a pass of several tokens rounds its products differently from plain "
    "decoding's one-token passes, and in half precision that flips near-tied greedy choices often enough that the "
    "output can differ from plain greedy decoding's (BENCHMARKS.md: 3 of 12 prompts on Qwen2.5-Coder-0.5B in bf16, "
    "and plain decoding through another matrix kernel differed as often). Load the model in float32 where "
    "token-for-token identity with plain decoding matters."
)


@contextlib.contextmanager
def _as_own_class(model):
    """FSDP2's `fully_shard` swaps a model's class for a generated `FSDP<Name>` subclass; saved as is, the remote
    code would name that class (and carry torch's FSDP sources). Save under the model's own class."""
    cls = type(model)
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch without distributed support: nothing can have been sharded
        FSDPModule = ()  # noqa: N806
    if not (FSDPModule and issubclass(cls, FSDPModule)):
        yield
        return
    model.__class__ = next(base for base in cls.__mro__ if not issubclass(base, FSDPModule))
    try:
        yield
    finally:
        model.__class__ = cls


class SpaceGenerationMixin:
    """Put first in the bases of a causal LM class: `class SpaceLlama(SpaceGenerationMixin, LlamaForCausalLM)`."""

    def __init__(self, config, *args, **kwargs):
        """The model's own `__init__`, then the gated adapters when `config.space_config` asks for them.

        `from_pretrained` builds the model through here before loading the weights, so a saved gated model
        gets its adapter weights back.
        """
        super().__init__(config, *args, **kwargs)
        if SpaceConfig.is_set(config) and SpaceConfig.of(config).mode == "gated":
            install_gated_adapters(self, SpaceConfig.of(config))

    def generate(self, inputs=None, generation_config=None, logits_processor=None, use_space=None, **kwargs):
        """`generate` with one more switch, `use_space` (default: `generation_config.use_space`, else False)."""
        return space_generate(self, super().generate, inputs, generation_config, logits_processor, use_space, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' save (weights, config with `auto_map`, the remote code), plus what makes the folder a
        Hub repo: `use_space` on in the saved generation config, `custom_generate/`, a model card."""
        config = self.generation_config
        previous = (getattr(config, "use_space", None), config._from_model_config)
        # a config marked as derived from the model config drops extra attributes such as `use_space` on load
        config.use_space, config._from_model_config = True, False
        try:
            with _as_own_class(self):
                super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            config.use_space, config._from_model_config = previous
        if kwargs.get("is_main_process", True):
            write_custom_generate(save_directory)
            write_model_card(self.config, save_directory)


def space_generate(model, base_generate, inputs=None, generation_config=None, logits_processor=None,
                   use_space=None, **kwargs):
    """The body of the mixin's `generate`, for any model and any underlying `generate`.

    A plain function (not only a method) so that a Hub `custom_generate/generate.py`, which replaces
    `model.generate` on a remote-code model, can run exactly the same logic. It resolves SPACE's own options
    (`use_space`, `num_mask_tokens`, `space_layout`, `weights_first`, `context_lookup`, `lookup_extension`) once,
    into a `SpaceLayoutPlan` and the context-lookup settings for the loop, and checks what only `generate`'s keyword
    arguments show; the loop checks the merged generation config (`loop.check_generation`).
    """
    space_config = SpaceConfig.of(model)
    if use_space is None:
        use_space = default_use_space(model, generation_config)
    weights_first = kwargs.pop("weights_first", False)
    if not isinstance(weights_first, bool):
        raise TypeError(f"`weights_first` should be a bool, got {weights_first!r}.")
    num_mask_tokens, space_layout = kwargs.pop("num_mask_tokens", None), kwargs.pop("space_layout", None)
    context_lookup = _setting(model, generation_config, kwargs, "context_lookup", True)
    if not isinstance(context_lookup, bool):
        raise TypeError(f"`context_lookup` should be a bool, got {context_lookup!r}.")
    lookup_extension = _setting(model, generation_config, kwargs, "lookup_extension", LOOKUP_EXTENSION)
    if isinstance(lookup_extension, bool) or not isinstance(lookup_extension, int):
        raise TypeError(f"`lookup_extension` should be an int (tokens; 0 turns it off), got {lookup_extension!r}.")
    if lookup_extension < 0:
        raise ValueError(f"`lookup_extension` should be at least 0 (0 turns it off), got {lookup_extension}.")
    # the same place in the processor list for plain and SPACE decoding: after transformers' own processors
    # and the caller's, before the sampling warpers (see SuppressMaskTokenLogitsProcessor)
    processors = LogitsProcessorList(logits_processor or [])
    processors.append(SuppressMaskTokenLogitsProcessor(space_config.mask_token_id))
    if not use_space:
        early_exit = kwargs.get("assistant_early_exit") or getattr(generation_config, "assistant_early_exit", None)
        with _plain_kernels(model, weights_first), \
                (_assistant_without_space() if early_exit is not None else contextlib.nullcontext()):
            return base_generate(inputs, generation_config, logits_processor=processors, **kwargs)
    if weights_first:
        raise ValueError(
            "`weights_first=True` is for plain decoding; SPACE's layout plan chooses its passes' kernels "
            "(`num_mask_tokens='auto'` measures each, or pass "
            "`space_layout=SpaceLayoutPlan(..., kernels='weights_first')`)."
        )
    check_generate_kwargs(inputs, kwargs)  # before "auto" spends time measuring the machine
    if num_mask_tokens is None and space_layout is None:
        num_mask_tokens = _own_config(model, generation_config, "num_mask_tokens")
    plan = resolve_layout(model, num_mask_tokens, space_layout)
    if plan.groups and model.dtype in (torch.bfloat16, torch.float16):
        logger.warning_once(HALF_PRECISION_NOTE)
    return base_generate(
        inputs,
        generation_config,
        logits_processor=processors,
        custom_generate=space_decoding,
        space_streamer=kwargs.pop("streamer", None),
        space_layout=plan,
        space_context_lookup=context_lookup,
        space_lookup_extension=lookup_extension,
        **kwargs,
    )


def resolve_layout(model, num_mask_tokens, space_layout) -> SpaceLayoutPlan:
    """The layout asked for: `num_mask_tokens` (an int up to the trained count, or "auto": chosen for this
    machine, see `autotune.py`) or an explicit `space_layout` plan; neither: every trained mask, every group.
    (Whether the plan fits the trained count is checked once, by the loop's `resolve_plan`.)"""
    if num_mask_tokens is not None and space_layout is not None:
        raise ValueError("Pass either `num_mask_tokens` or `space_layout`, not both.")
    if space_layout is not None and not isinstance(space_layout, SpaceLayoutPlan):
        raise TypeError(f"`space_layout` should be a SpaceLayoutPlan, got {type(space_layout).__name__}.")
    if num_mask_tokens == "auto":
        return auto_plan(model)
    if num_mask_tokens is not None:
        if isinstance(num_mask_tokens, bool) or not isinstance(num_mask_tokens, int) or num_mask_tokens < 1:
            raise ValueError(f'`num_mask_tokens` should be a positive int or "auto", got {num_mask_tokens!r}.')
        return SpaceLayoutPlan.full(num_mask_tokens)
    return space_layout or SpaceLayoutPlan.full(SpaceConfig.of(model).num_mask_tokens)


def _plain_kernels(model, weights_first: bool):
    """Plain decoding's kernels: transformers' own, or weights-first products as the kernel-matched baseline."""
    return kernels_named("weights_first").around_pass(model) if weights_first else contextlib.nullcontext()


_local = threading.local()


@contextlib.contextmanager
def _assistant_without_space():
    """Early-exit self-speculation makes the model its own assistant, which must draft with its first layers,
    not with SPACE, whatever its generation config says; switched for this thread only (transformers calls the
    assistant's `generate` in the caller's thread, with a config that no longer names the early exit)."""
    previous = getattr(_local, "assistant_without_space", False)
    _local.assistant_without_space = True
    try:
        yield
    finally:
        _local.assistant_without_space = previous


def default_use_space(model, generation_config: GenerationConfig | None) -> bool:
    """`use_space` from the generation config; as an assistant, from the assistant model's own config.

    Assisted generation calls the assistant's `generate` with a copy of the TARGET's config, which knows
    nothing of SPACE; the assistant drafts with SPACE when its own `generation_config.use_space` is True.
    """
    return bool(_own_config(model, generation_config, "use_space"))


def _setting(model, generation_config: GenerationConfig | None, kwargs: dict, name: str, default):
    """A SPACE setting from `generate`'s keyword arguments (popped), else the generation config, else `default`."""
    value = kwargs.pop(name, None)
    if value is None:
        value = _own_config(model, generation_config, name)
    return default if value is None else value


def _own_config(model, generation_config: GenerationConfig | None, name: str):
    """A SPACE setting (`use_space`, `num_mask_tokens`, `context_lookup`, `lookup_extension`) from the generation
    config, or None; as an assistant, from the assistant model's own config (see `default_use_space`)."""
    if generation_config is not None and getattr(generation_config, "is_assistant", False):
        if name == "use_space" and getattr(_local, "assistant_without_space", False):
            return False
        return getattr(model.generation_config, name, None)
    return getattr(generation_config or model.generation_config, name, None)


def check_generate_kwargs(inputs, kwargs: dict) -> None:
    """Refuse SPACE requests whose `generate` keyword arguments it cannot serve, saying what to change.

    Only what the decoding loop never sees (or sees already transformed) is checked here; everything the
    merged generation config says is checked once, in `loop.check_generation`.
    """
    if kwargs.get("assistant_model") is not None:
        raise ValueError(
            "`use_space=True` cannot be combined with `assistant_model`: SPACE drafts with the model itself. "
            "Drop `assistant_model` or pass use_space=False."
        )
    if kwargs.get("custom_generate") is not None:
        raise ValueError("`use_space=True` already sets `custom_generate`; pass only one of them.")
    mask = kwargs.get("attention_mask")
    if mask is not None and mask.dim() != 2:
        raise ValueError(
            f"SPACE decoding builds its own 4D attention masks; pass a 2D padding mask [batch, length], "
            f"got shape {tuple(mask.shape)}."
        )
    if mask is not None and mask.numel() and not _left_padded(mask):
        raise ValueError(
            "SPACE decoding needs left padding: every row's attention_mask must be zeros, then ones up to the "
            "last column (right padding would make the padding the row's continuation). Tokenize with "
            "`tokenizer.padding_side = 'left'`."
        )
    if kwargs.get("inputs_embeds") is not None:
        raise ValueError("SPACE decoding needs token ids; pass `input_ids` instead of `inputs_embeds`.")
    prompt = inputs if inputs is not None else kwargs.get("input_ids")
    if isinstance(prompt, torch.Tensor) and (prompt.dim() != 2 or prompt.shape[1] == 0):
        raise ValueError(
            f"SPACE decoding needs a non-empty prompt of token ids [batch, length], got shape {tuple(prompt.shape)}."
        )


def _left_padded(attention_mask: torch.Tensor) -> bool:
    """Each row: zeros (padding) then ones (tokens), ending in a token."""
    mask = attention_mask.bool()
    return bool(mask[:, -1].all()) and bool((mask[:, 1:] >= mask[:, :-1]).all())

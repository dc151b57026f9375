"""Loading a model for the command line (`generate`, `bench`, `demo`): whatever folder the user names.

A gated adapter folder (`save_space_adapter`) loads onto its base; a SPACE model folder (its config has
`space_config`) loads with the package's SPACE classes; a plain model gets `add_space_support` (untrained
masks: a baseline, not a speed-up). Default: the offline SmolLM2-135M-Instruct with the shipped adapter.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .decoding.configuration import SpaceConfig


def load_model(path: str | Path | None = None, num_mask_tokens: int = 4, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) with SPACE support, weights in `dtype`; default: the offline default model
    with the shipped gated adapter (as the demo).

    fp32 by default: greedy SPACE is identical to plain greedy there, token for token. On CPUs with AMX (Intel
    Sapphire Rapids and later) a bf16 pass of 2-16 tokens costs about what a 1-token pass costs, for models of ~0.5B
    parameters and more, which is the regime where drafting pays (BENCHMARKS.md, "bf16 on a CPU with AMX"); on
    CPUs with `avx512_bf16` (AMD EPYC, Zen 4) a bf16 pass costs about half an fp32 one (BENCHMARKS.md, "The
    kernel-matched baseline on an AMD EPYC").

    A gated adapter folder (`save_space_adapter`) loads onto its base; a SPACE model folder (its config has
    `space_config`) loads with `AutoSpaceModelForCausalLM`; a plain model gets `add_space_support(model,
    tokenizer, num_mask_tokens)` (untrained masks: a baseline, not a speed-up).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .hub import ADAPTER_CONFIG, AutoSpaceModelForCausalLM, load_space_adapter, shipped_adapter_dir
    from .modeling import add_space_support

    folder = Path(path) if path is not None else shipped_adapter_dir()
    options = {"dtype": dtype}  # attention: transformers' default (sdpa, or eager where sdpa cannot serve)
    if (folder / ADAPTER_CONFIG).is_file():
        model, tokenizer = load_space_adapter(folder, **options)
        tokenizer.padding_side = "left"
        return model.eval(), tokenizer
    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
    if _is_space_folder(folder):
        model = AutoSpaceModelForCausalLM.from_pretrained(folder, **options)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, **options)
        model = add_space_support(model, tokenizer, num_mask_tokens=num_mask_tokens)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer


def _is_space_folder(folder: Path) -> bool:
    config = folder / "config.json"
    return config.is_file() and bool(json.loads(config.read_text(encoding="utf-8")).get("space_config"))


def load_draft_model(path: str | Path, tokenizer, dtype: torch.dtype = torch.float32):
    """A draft model for assisted generation; its folder's tokenizer must have the target's vocabulary."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .hub import AutoSpaceModelForCausalLM

    folder = Path(path)
    try:
        draft_tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as error:
        raise ValueError(f"{folder} has no tokenizer to check; the draft model must share the target's.") from error
    ours, theirs = _plain_vocab(tokenizer), _plain_vocab(draft_tokenizer)
    if ours != theirs:
        raise ValueError(
            f"The draft model's tokenizer differs from the target's ({len(theirs)} vs {len(ours)} tokens, "
            f"{len(set(ours.items()) ^ set(theirs.items()))} entries differ); assisted generation here needs the "
            "same tokenizer (universal assisted decoding across tokenizers is not benchmarked)."
        )
    options = {"dtype": dtype}  # attention: transformers' default (sdpa, or eager where sdpa cannot serve)
    loader = AutoSpaceModelForCausalLM if _is_space_folder(folder) else AutoModelForCausalLM
    return loader.from_pretrained(folder, **options).eval()


def _plain_vocab(tokenizer) -> dict[str, int]:
    """The vocabulary without a SPACE mask token (added tokens after the base vocabulary are kept otherwise)."""
    mask = SpaceConfig().mask_token
    return {token: index for token, index in tokenizer.get_vocab().items() if token != mask}

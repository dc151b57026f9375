"""The matrix-product orientation of a SPACE pass's linear layers on a CPU.

`F.linear` computes x @ W^T. For a pass of a few tokens on a CPU, MKL handles that shape badly: on the
2-core machines this project is measured on, a SmolLM2-135M pass of 2 tokens costs ~1.7 single-token
passes, although the weights are read once either way. The same product written weights-first,
(W @ x^T)^T, is a tall-skinny GEMM that MKL streams well: 2-4 tokens then cost less than one token through
`F.linear` (BENCHMARKS.md, "pass kernel"). The values agree to float rounding (different summation order),
which is the same difference as between a 1-token and a multi-token pass through `F.linear`; greedy
verification compares argmaxes, and the benchmark checks every output against plain decoding.

Which orientation is faster depends on the machine, so `autotune.auto_plan` measures both and records the
choice in the plan (`SpaceLayoutPlan.weights_first`). Inside `weights_first_products()` every `nn.Linear`
call (they all go through `torch.nn.functional.linear`) uses the weights-first form on CPU tensors; GPU
tensors are untouched. The switch is process-wide while the context is open (as torch's own backend flags
are), so do not run other models in other threads during a SPACE pass you want bit-identical to theirs.

The second CPU choice here, `grouped_query_attention()`, is made for every SPACE pass on a CPU: transformers'
SDPA attention copies the cached keys and values once per query head group (`repeat_kv`) whenever a mask
is given, because GPU kernels would otherwise fall back to the math kernel; plain decoding's 1-token passes
avoid the copy another way. On a CPU, `enable_gqa=True` with a mask gives bit-identical outputs without the
copy (~3 ms of a ~65 ms SmolLM2 pass here). It swaps transformers' `use_gqa_in_sdpa` for the pass's duration,
process-wide like the weights-first switch (harmless to other threads: the values are the same); releases
without that function are left as they are.

Imports only torch and transformers (it ships as remote code).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from transformers.integrations import sdpa_attention

MAX_ROWS = 64  # the skinny shapes of decoding passes; `autotune` measures up to 48 tokens
MIN_WEIGHT_SIDE = 64  # low-rank adapter matrices gain nothing; they keep F.linear
_DEFAULT_LINEAR = torch._C._nn.linear  # what F.linear is; never a patched version, whatever is imported when
_SDPA_HAS_ENABLE_GQA = tuple(int(part) for part in torch.__version__.split(".")[:2]) >= (2, 5)


def weights_first_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` computed as (weight @ x^T)^T for up to MAX_ROWS rows on CPU; longer
    inputs (a prompt's prefill), thin weights (adapters) and other devices use F.linear itself."""
    if (x.device.type != "cpu" or x.dim() < 2 or weight.dim() != 2 or min(weight.shape) < MIN_WEIGHT_SIDE
            or x.numel() > MAX_ROWS * x.shape[-1]):
        return _DEFAULT_LINEAR(x, weight, bias)
    rows = x.reshape(-1, x.shape[-1])
    out = torch.mm(weight, rows.t()).t().contiguous().reshape(*x.shape[:-1], weight.shape[0])
    return out if bias is None else out + bias


@contextlib.contextmanager
def weights_first_products(enabled: bool = True) -> Iterator[None]:
    """While open (and `enabled`), `nn.Linear` layers on CPU multiply weights-first (see module docstring)."""
    if not enabled:
        yield
        return
    previous = F.linear
    F.linear = weights_first_linear
    try:
        yield
    finally:
        F.linear = previous


def _grouped_on_cpu(attention_mask, key, value, *, default):
    return key.device.type == "cpu" or default(attention_mask, key, value)


@contextlib.contextmanager
def grouped_query_attention() -> Iterator[None]:
    """While open, SDPA attention on CPU tensors runs grouped-query heads without copying keys and values."""
    default = getattr(sdpa_attention, "use_gqa_in_sdpa", None)
    if default is None or not _SDPA_HAS_ENABLE_GQA:
        yield  # no such hook in this transformers release, or torch's SDPA has no enable_gqa yet
        return
    sdpa_attention.use_gqa_in_sdpa = functools.partial(_grouped_on_cpu, default=default)
    try:
        yield
    finally:
        sdpa_attention.use_gqa_in_sdpa = default


@contextlib.contextmanager
def pass_kernels(weights_first: bool) -> Iterator[None]:
    """The CPU kernel choices of one SPACE pass: grouped-query attention always, weights-first if planned."""
    with grouped_query_attention(), weights_first_products(weights_first):
        yield

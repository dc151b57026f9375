"""`PassKernels`: the contexts a SPACE generate call and each of its passes run under (the seam for kernels).

The decoding loop knows nothing of how a pass is computed: it opens `kernels.around_generate(model)` once per
`generate` call and `kernels.around_pass(model)` around each pass's forward and LM head. A layout plan names
its kernels (`SpaceLayoutPlan.kernels`, a string, so that planning stays torch-free) and `PASS_KERNELS` maps the
name to the object. A new kernel (a GPU attention kernel, a fused adapter path) is one subclass here and one
entry in `PASS_KERNELS`; nothing in the loop changes. Both contexts must be thread-local: concurrent `generate`
calls on one model must not see each other's switches.

- "linear": transformers' own modules; the gated adapters' decoding products are prepared once per call
  (`gated.decoding_products`, a no-op for models without gated adapters).
- "weights_first": the same, plus the CPU product orientation below.

The weights-first orientation of a pass's linear layers on a CPU, switched per thread:

`F.linear` computes x @ W^T. For a pass of a few tokens on a CPU, MKL handles that shape badly: a pass of
2-4 tokens through `F.linear` costs well over one single-token pass, although the weights are read once
either way. The same product written weights-first, (W @ x^T)^T, is a tall-skinny GEMM that MKL streams
well (BENCHMARKS.md, "pass kernel"). The values agree to float rounding (different summation order), which
is the same difference as between a 1-token and a multi-token pass through `F.linear`; greedy verification
compares argmaxes, and the benchmark checks every output against plain decoding.

Which orientation is faster depends on the machine, so `autotune.auto_plan` measures both and records the
choice in the plan (`SpaceLayoutPlan(..., kernels="weights_first")`).

How it is switched, and why this way: nothing of torch or transformers is replaced. `pass_kernels(model, ...)`
gives each `nn.Linear` of that model (once, idempotently) an instance `forward` that asks a thread-local
flag which orientation to use; the flag is on only inside `weights_first_products()` in the calling thread.
So a plain `generate` in another thread, on this model or any other, runs `F.linear` exactly as before
while a SPACE pass multiplies weights-first (a torch function mode would also be thread-local, but it
intercepts every torch call of a pass, a measurable share of a small model's pass on a CPU).

`weights_first_products()` also serves plain decoding as a kernel-matched baseline (`transformers-space bench
--methods plain_matched`, `generate(weights_first=True)`).

One row, two: a SPACE pass never multiplies one row (its LM head reads the verify rows and the mask rows at once),
plain decoding always does, and on some CPUs MKL's matrix-vector path streams a large matrix far slower than its
matrix-matrix path: on an AMD EPYC (2 cores), SmolLM2's LM head [49153 x 576] in fp32 takes 6.2 ms for one row and
2.1 ms for two (BENCHMARKS.md, "The kernel-matched baseline on an AMD EPYC"). So a one-row weights-first product
runs as two rows (the row twice; row 0 kept) for weights where that was measured faster on this machine
(`pads_single_row`: timed once per weight shape and dtype in a process, both ways, and taken only when clearly
faster). The kernel-matched baseline then gets what SPACE's passes get; a SPACE pass's own one-row products (the
draft head's) take it too.

Imports only torch and sibling modules (it ships as remote code).
"""

from __future__ import annotations

import contextlib
import threading
import time
import types
from collections.abc import Iterator
from contextlib import AbstractContextManager

import torch
import torch.nn.functional as F
from torch import nn

from .gated import decoding_products

MAX_ROWS = 64  # the skinny shapes of decoding passes; `autotune` measures up to 48 tokens
MIN_WEIGHT_SIDE = 64  # low-rank adapter matrices gain nothing; they keep F.linear
PAD_MARGIN = 0.85  # a one-row product runs as two only when that was measured at most this share of its time
_local = threading.local()  # .weights_first: this thread's switch
_install_lock = threading.Lock()
_pad_lock = threading.Lock()
_pads_single_row: dict[tuple, bool] = {}  # (weight shape, dtype, device type) -> measured choice, this process


def weights_first_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` computed as (weight @ x^T)^T for up to MAX_ROWS rows on CPU; longer
    inputs (a prompt's prefill), thin weights (adapters) and other devices use F.linear itself."""
    if not uses_weights_first(x, weight):
        return F.linear(x, weight, bias)
    rows = x.reshape(-1, x.shape[-1])
    if rows.shape[0] == 1 and pads_single_row(weight):
        product = torch.mm(weight, torch.cat([rows, rows]).t())[:, :1]
    else:
        product = torch.mm(weight, rows.t())
    out = product.t().contiguous().reshape(*x.shape[:-1], weight.shape[0])
    return out if bias is None else out + bias


def pads_single_row(weight: torch.Tensor) -> bool:
    """Whether a one-row weights-first product with `weight` runs as two rows on this machine (module docstring).

    Measured on first use for each weight shape and dtype, and kept for the process: a weight shape's kernels do
    not change while it runs."""
    key = (tuple(weight.shape), weight.dtype, weight.device.type)
    choice = _pads_single_row.get(key)
    if choice is None:
        with _pad_lock:
            choice = _pads_single_row.get(key)
            if choice is None:
                choice = _pads_single_row[key] = two_rows_faster(weight)
    return choice


@torch.inference_mode()
def two_rows_faster(weight: torch.Tensor, repeats: int = 7) -> bool:
    """Times a one-row and a two-row weights-first product with `weight` (interleaved, the fastest of `repeats`
    each, after a warm-up); True when two rows take at most PAD_MARGIN of one row's time."""
    generator = torch.Generator().manual_seed(0)
    one = torch.randn(1, weight.shape[1], generator=generator).to(weight.device, weight.dtype)
    two = torch.cat([one, one])
    best = {1: float("inf"), 2: float("inf")}
    for round_index in range(repeats + 1):
        for count, rows in ((1, one), (2, two)):  # the operands exactly as `weights_first_linear` passes them
            start = time.perf_counter()
            torch.mm(weight, rows.t())
            if round_index:
                best[count] = min(best[count], time.perf_counter() - start)
    return best[2] <= PAD_MARGIN * best[1]


def uses_weights_first(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `weights_first_linear` takes the weights-first product for these operands."""
    return (x.device.type == "cpu" and x.dim() >= 2 and weight.dim() == 2 and min(weight.shape) >= MIN_WEIGHT_SIDE
            and x.numel() <= MAX_ROWS * x.shape[-1])


def weights_first_active() -> bool:
    return getattr(_local, "weights_first", False)


def _switchable_linear_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if getattr(_local, "weights_first", False):
        return weights_first_linear(x, self.weight, self.bias)
    return F.linear(x, self.weight, self.bias)


def enable_weights_first(model: nn.Module) -> nn.Module:
    """Let `weights_first_products()` switch this model's `nn.Linear` layers (idempotent, thread-safe)."""
    if getattr(model, "_space_switchable_linears", False):
        return model
    with _install_lock:
        for module in model.modules():
            if type(module) is nn.Linear and "forward" not in vars(module):
                module.forward = types.MethodType(_switchable_linear_forward, module)
        model._space_switchable_linears = True
    return model


@contextlib.contextmanager
def weights_first_products(enabled: bool = True) -> Iterator[None]:
    """While open in this thread (and `enabled`), switchable `nn.Linear` layers on CPU multiply weights-first."""
    previous = getattr(_local, "weights_first", False)
    _local.weights_first = enabled
    try:
        yield
    finally:
        _local.weights_first = previous


class PassKernels:
    """transformers' own modules for every pass; gated adapters' products prepared once per call."""

    name = "linear"

    def around_generate(self, model: nn.Module) -> AbstractContextManager:
        """Opened once per SPACE `generate` call, around every pass of it."""
        return decoding_products(model)

    def around_pass(self, model: nn.Module) -> AbstractContextManager:
        """Opened around one pass's forward and LM head."""
        return contextlib.nullcontext()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class WeightsFirstKernels(PassKernels):
    """As `PassKernels`, with the pass's large `nn.Linear` products computed weights-first on a CPU."""

    name = "weights_first"

    def around_pass(self, model: nn.Module) -> AbstractContextManager:
        enable_weights_first(model)
        return weights_first_products()


PASS_KERNELS: dict[str, PassKernels] = {kernels.name: kernels for kernels in (PassKernels(), WeightsFirstKernels())}


def kernels_named(name: str) -> PassKernels:
    """The registered `PassKernels` called `name` (see `PASS_KERNELS`)."""
    if name not in PASS_KERNELS:
        raise ValueError(f"Unknown pass kernels {name!r}; registered: {', '.join(sorted(PASS_KERNELS))}.")
    return PASS_KERNELS[name]

"""`num_mask_tokens="auto"`: measure this machine, then pick the layout with the highest expected speed.

Two measurements feed `planning.choose_plan`: the time of one forward pass against the number of tokens
in it (measured once per model object, on the model itself, through the same 4D-mask path SPACE uses),
and the model's acceptance rates per mask (`SpaceConfig.acceptance_rates`, which `calibrate_acceptance`
measures with SPACE runs on sample prompts). Each registered set of pass kernels (`kernels.PASS_KERNELS`) is
measured, and the plan records the one it was chosen with.

Imports only torch, transformers and sibling modules (it ships as remote code).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch

from .compat import cache_argument_name, new_cache
from .configuration import SpaceConfig
from .forward import forward_block, without_autograd
from .kernels import PASS_KERNELS, PassKernels
from .layout import build_pass_layout
from .planning import SpaceLayoutPlan, acceptance_rates, choose_plan, expected_speedup

logger = logging.getLogger(__name__)

MEASURED_TOKEN_COUNTS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 40, 48)  # short passes vary most
# `auto` drafts only when a layout is expected to beat plain decoding by this factor. The pass costs are measured at
# one context length, a few rounds each; real passes over longer contexts cost a few percent more, SPACE's loop adds
# its bookkeeping and drafting to every pass, and the calibrated rates average prompts that may be easier than the
# user's. Measured (BENCHMARKS.md): a layout expected at ~1.03x ran at 0.96x of plain `generate` (bench v11), one
# expected at 1.09x ran at 0.96x on HumanEval and 0.76x on MT-Bench (bench v16), while the draft-less plan runs at
# plain speed; layouts expected at 2x and more (bf16 on AMX) ran within ~10% of their expectation.
AUTO_MIN_EXPECTED_SPEEDUP = 1.15


def measure_pass_costs(
    model, token_counts: Sequence[int] = MEASURED_TOKEN_COUNTS, context_length: int = 128, repeats: int = 3,
    kernels: PassKernels | None = None,
) -> dict[int, float]:
    """Seconds of one pass (body on all tokens, LM head on up to 2k+1 rows) per token count, under `kernels`
    (default: transformers' own modules, `PassKernels()`).

    The second half of each block of 2 or more tokens is mask tokens, as in a SPACE pass, so that a gated
    model's adapters (which run at mask positions only) are part of the cost. The token counts take turns
    within each of `repeats` rounds and each keeps its fastest round: other load only ever slows a pass, and
    a burst of it then cannot make one count look dearer than its neighbours and flip the plan."""
    with without_autograd(model):  # as decoding runs its passes
        return _measure_pass_costs(model, token_counts, context_length, repeats, kernels or PassKernels())


def _measure_pass_costs(model, token_counts, context_length, repeats, kernels) -> dict[int, float]:
    space_config = SpaceConfig.of(model)
    mask_token_id, num_mask_tokens = space_config.mask_token_id, space_config.num_mask_tokens
    device = model.get_input_embeddings().weight.device
    generator = torch.Generator().manual_seed(0)
    context = torch.randint(0, mask_token_id, (1, context_length), generator=generator).to(device)
    body, head = model.base_model, model.get_output_embeddings()
    cache = new_cache()
    body(input_ids=context, use_cache=True, **{cache_argument_name(type(body).forward): cache})
    cache_positions = torch.arange(context_length, device=device)[None]
    layouts = {}
    for count in token_counts:
        fresh = torch.randint(0, mask_token_id, (1, count), generator=generator).to(device)
        fresh[:, count - count // 2 :] = mask_token_id
        positions = torch.arange(context_length, context_length + count, device=device)[None]
        layout = build_pass_layout(fresh, positions, fresh[:, :0], cache_positions, mask_token_id, 1, [])
        layouts[count] = (layout, min(count, 2 * num_mask_tokens + 1))
    timings: dict[int, list[float]] = {count: [] for count in token_counts}
    with kernels.around_generate(model):
        for round_index in range(repeats + 1):  # round 0 warms up
            for count, (layout, read) in layouts.items():
                start = time.perf_counter()
                with kernels.around_pass(model):
                    hidden = forward_block(model, layout, cache, cache_positions)
                    head(hidden[:, :read])
                if round_index:
                    timings[count].append(time.perf_counter() - start)
                cache.crop(-count)
    return {count: min(seconds) for count, seconds in timings.items()}


def cost_function(costs: dict[int, float]) -> Callable[[int], float]:
    """Piecewise-linear interpolation of measured pass costs (linear extrapolation beyond the last)."""
    points = sorted(costs.items())

    def cost(tokens: int) -> float:
        for (low, low_cost), (high, high_cost) in zip(points, points[1:], strict=False):
            if tokens <= high:
                return low_cost + (high_cost - low_cost) * (tokens - low) / (high - low)
        (low, low_cost), (high, high_cost) = points[-2], points[-1]
        return high_cost + (high_cost - low_cost) * (tokens - high) / (high - low)

    return cost


def calibrate_acceptance(model, prompts: Sequence[torch.Tensor], max_new_tokens: int = 64) -> list[float]:
    """Acceptance rate per mask from SPACE runs with every group, stored in `space_config`.

    Only passes that verified a full set of candidates count (not the first pass, nor a last pass cut short
    by a stop).
    """
    space_config = SpaceConfig.of(model)
    counts = []
    for prompt in prompts:
        out = model.generate(
            prompt, max_new_tokens=max_new_tokens, do_sample=False, use_space=True, return_dict_in_generate=True,
            space_layout=SpaceLayoutPlan.full(space_config.num_mask_tokens),
        )
        counts += [emitted - 1 for emitted in out.tokens_per_pass[0][1:-1]]
    space_config.acceptance_rates = acceptance_rates(counts, space_config.num_mask_tokens)
    space_config.save_to(model)
    return space_config.acceptance_rates


def auto_plan(model) -> SpaceLayoutPlan:
    """The layout (and pass kernels) with the highest expected speed on this machine for this model."""
    space_config = SpaceConfig.of(model)
    rates, num_mask_tokens = space_config.acceptance_rates, space_config.num_mask_tokens
    if not rates:
        logger.warning(
            "num_mask_tokens='auto' needs the model's acceptance rates (run "
            "`transformers_space.autotune.calibrate_acceptance`); using every group with %d masks.", num_mask_tokens
        )
        return SpaceLayoutPlan.full(num_mask_tokens)
    if getattr(model, "_space_pass_costs", None) is None:  # {kernels name: {tokens: seconds}}
        model._space_pass_costs = {
            name: measure_pass_costs(model, kernels=kernels) for name, kernels in PASS_KERNELS.items()
        }
    # speed-ups relative to plain decoding, which runs 1-token passes through transformers' own modules
    plain_cost = cost_function(model._space_pass_costs[PassKernels.name])(1)
    plan, speedup = SpaceLayoutPlan(0, ()), 1.0
    for name, costs in model._space_pass_costs.items():
        cost = cost_function(costs)
        candidate = replace(choose_plan(num_mask_tokens, rates, cost), kernels=name)
        candidate_speedup = expected_speedup(candidate, rates, cost) * plain_cost / cost(1)
        if candidate_speedup > speedup + 1e-12:
            plan, speedup = candidate, candidate_speedup
    if plan.groups and speedup < AUTO_MIN_EXPECTED_SPEEDUP:
        logger.info("Best SPACE layout %s is expected at only %.2fx of plain decoding (below %.2fx): not drafting.",
                    plan.to_dict(), speedup, AUTO_MIN_EXPECTED_SPEEDUP)
        plan, speedup = SpaceLayoutPlan(0, ()), 1.0
    logger.info("SPACE layout chosen for this machine: %s (expected speedup %.2fx)", plan.to_dict(), speedup)
    if not plan.groups and not getattr(model, "_space_no_draft_warned", False):  # once per model, not per call
        logger.warning("On this machine drafting is not expected to pay with these acceptance rates; SPACE runs "
                       "without drafts, at plain decoding's speed.")
        model._space_no_draft_warned = True
    return plan

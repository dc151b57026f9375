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

from .candidates import SpaceCandidateGenerator
from .compat import cache_argument_name, new_cache
from .configuration import SpaceConfig
from .draft_head import RestrictedDrafting, draft_head_of
from .forward import PassLogits, forward_block, lm_head_of, without_autograd
from .gated import masks_per_group
from .kernels import PASS_KERNELS, PassKernels
from .layout import build_pass_layout
from .planning import (
    SpaceLayoutPlan,
    acceptance_rates,
    choose_plan,
    pass_shapes,
    typical_speedup,
)

logger = logging.getLogger(__name__)

# `auto` drafts only when a layout is expected to beat plain decoding by this factor, because users' prompts may accept
# less than the calibration's: at the same layout MT-Bench ran 14% below held-out chat prompts (BENCHMARKS.md, "Pass
# costs as decoding runs them"). The whole-pass costs themselves predicted held-out speed-ups within -2% to +10%
# (the plain loop's own per-token work is left out, so they err low). Under the earlier body-only costs, layouts
# expected at ~1.03x and 1.09x ran at 0.96x of plain `generate` and below (bench v11, v16).
AUTO_MIN_EXPECTED_SPEEDUP = 1.15


def measure_pass_costs(
    model, context_length: int = 128, repeats: int = 3, kernels: PassKernels | None = None
) -> dict[int, float]:
    """Seconds of one SPACE pass per token count, under `kernels` (default: transformers' own modules,
    `PassKernels()`); at 1 token, of a plain decoding step.

    Each count is timed as a pass of that size runs in decoding (`planning.pass_shapes`): fresh token,
    candidates and mask groups through `forward_block`, the LM head on the rows decoding reads (`PassLogits`), and
    the next drafts made from one group (with the draft head where the model has one). Why whole passes: the body
    alone left out work that grows with the layout (the head's rows, drafting), and plans chosen on it ran up to
    15% slower than expected (BENCHMARKS.md, "Pass costs as decoding runs them"). The counts take turns within
    each of `repeats` rounds and each keeps its fastest round: other load only ever slows a pass, and a burst of
    it then cannot make one count look dearer than its neighbours and flip the plan."""
    with without_autograd(model):  # as decoding runs its passes
        return _measure_pass_costs(model, context_length, repeats, kernels or PassKernels())


def _measure_pass_costs(model, context_length, repeats, kernels) -> dict[int, float]:
    space_config = SpaceConfig.of(model)
    mask_token_id = space_config.mask_token_id
    device = model.get_input_embeddings().weight.device
    generator = torch.Generator().manual_seed(0)

    def random_ids(count: int) -> torch.Tensor:
        return torch.randint(0, mask_token_id, (1, count), generator=generator).to(device)

    context = random_ids(context_length)
    body, head = model.base_model, lm_head_of(model)
    cache = new_cache()
    body(input_ids=context, use_cache=True, **{cache_argument_name(type(body).forward): cache})
    cache_positions = torch.arange(context_length, device=device)[None]
    fresh_positions = torch.full((1, 1), context_length, device=device)
    draft_head = draft_head_of(model)
    head_drafting = None if draft_head is None else RestrictedDrafting(model, draft_head)
    shapes = {1: (0, 0, 0), **pass_shapes(space_config.num_mask_tokens)}
    passes = {  # count -> (masks per group, layout, drafter: None for the plain 1-token pass)
        count: (max(num_masks, 1),
                build_pass_layout(random_ids(1), fresh_positions, random_ids(candidates), cache_positions,
                                  mask_token_id, max(num_masks, 1), list(range(groups))),
                SpaceCandidateGenerator(mask_token_id, num_masks, draft_head=head_drafting, context_lookup=True)
                if num_masks else None)  # drafting as greedy decoding runs it, the context scan included
        for count, (num_masks, candidates, groups) in shapes.items()
    }
    timings: dict[int, list[float]] = {count: [] for count in passes}
    with kernels.around_generate(model):
        for round_index in range(repeats + 1):  # round 0 warms up
            for count, (group_size, layout, drafter) in passes.items():
                start = time.perf_counter()
                with kernels.around_pass(model), masks_per_group(model, group_size):
                    hidden = forward_block(model, layout, cache, cache_positions)
                    logits = PassLogits(head, hidden, layout)
                    logits.verify().argmax(-1)
                    if drafter is not None:
                        rows = layout.group_rows[-1:]
                        drafter.set_draft_logits(logits.drafts(rows), logits.hidden_at(rows), layout.input_ids[:, 0])
                        drafter.get_candidates(context)
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


def calibrate_acceptance(
    model, prompts: Sequence[torch.Tensor], max_new_tokens: int = 64, kinds: Sequence[str] | None = None
) -> list[float]:
    """Acceptance rate per mask from SPACE runs with every group, stored in `space_config`; with `kinds` (one
    label per prompt, e.g. "code" or "chat") also the rates of each kind apart (`acceptance_rates_by_kind`), which
    `auto_plan` then plans for.

    Only passes that verified a full set of candidates count (not the first pass, nor a last pass cut short
    by a stop). The lookup's extension is off here: the rates are the masks' (with the lookup's choices among their
    top tokens), the k drafts a plan's pass verifies, and a pass after an extension accepted in part verifies none.
    """
    if kinds is not None and len(kinds) != len(prompts):
        raise ValueError(f"`kinds` should give one kind per prompt: {len(kinds)} kinds for {len(prompts)} prompts.")
    space_config = SpaceConfig.of(model)
    counts: dict[str, list[int]] = {}
    for index, prompt in enumerate(prompts):
        out = model.generate(
            prompt, max_new_tokens=max_new_tokens, do_sample=False, use_space=True, return_dict_in_generate=True,
            space_layout=SpaceLayoutPlan.full(space_config.num_mask_tokens), lookup_extension=0,
        )
        kind = kinds[index] if kinds is not None else ""
        counts.setdefault(kind, []).extend(emitted - 1 for emitted in out.tokens_per_pass[0][1:-1])
    k = space_config.num_mask_tokens
    space_config.acceptance_rates = acceptance_rates([c for kind_counts in counts.values() for c in kind_counts], k)
    space_config.acceptance_rates_by_kind = (
        None if kinds is None else {kind: acceptance_rates(kind_counts, k) for kind, kind_counts in counts.items()}
    )
    space_config.save_to(model)
    return space_config.acceptance_rates


def auto_plan(model) -> SpaceLayoutPlan:
    """The layout (and pass kernels) with the highest expected speed on this machine for this model: for every kind
    of prompt it was calibrated on at once where the rates per kind are known (`planning.typical_speedup`)."""
    space_config = SpaceConfig.of(model)
    rates, num_mask_tokens = space_config.acceptance_rates, space_config.num_mask_tokens
    if not rates:
        logger.warning(
            "num_mask_tokens='auto' needs the model's acceptance rates (run "
            "`transformers_space.autotune.calibrate_acceptance`); using every group with %d masks.", num_mask_tokens
        )
        return SpaceLayoutPlan.full(num_mask_tokens)
    rates_by_kind = space_config.acceptance_rates_by_kind or {"all prompts": rates}
    if getattr(model, "_space_pass_costs", None) is None:  # {kernels name: {tokens: seconds}}
        logger.info("num_mask_tokens='auto': timing this machine's SPACE passes (once per model object)...")
        start = time.perf_counter()
        model._space_pass_costs = {
            name: measure_pass_costs(model, kernels=kernels) for name, kernels in PASS_KERNELS.items()
        }
        sizes = len(model._space_pass_costs[PassKernels.name])
        logger.info("Timed %d pass sizes under %d kernel sets in %.1f s.", sizes, len(PASS_KERNELS),
                    time.perf_counter() - start)
    costs = {name: cost_function(measured) for name, measured in model._space_pass_costs.items()}
    plain_cost = costs[PassKernels.name](1)  # plain decoding runs 1-token passes through transformers' own modules

    def speedup_of(plan: SpaceLayoutPlan, rate_sets: list[list[float]]) -> float:
        cost = costs[plan.kernels]
        return typical_speedup(plan, rate_sets, cost) * plain_cost / cost(1)

    rate_sets = list(rates_by_kind.values())
    plan, speedup = SpaceLayoutPlan(0, ()), 1.0
    for name, cost in costs.items():
        candidate = replace(choose_plan(num_mask_tokens, rate_sets, cost), kernels=name)
        if not candidate.groups:  # a draft-less plan always runs plain decoding's own kernels: see below
            continue
        candidate_speedup = speedup_of(candidate, rate_sets)
        if candidate_speedup > speedup + 1e-12:
            plan, speedup = candidate, candidate_speedup
    # Why never plain decoding under other kernels: its 1-token pass is a matrix-vector product either way, and
    # timings of it differ by noise (Qwen2.5-Coder in fp32: weights-first 17% faster in one timing, 12% slower in
    # another; plain decoding through it ran 0.98x in the bench, coder-v5-fp32).
    by_kind = {kind: round(speedup_of(plan, [kind_rates]), 2) for kind, kind_rates in rates_by_kind.items()}
    if plan.groups and speedup < AUTO_MIN_EXPECTED_SPEEDUP:
        logger.info("Best SPACE layout %s is expected at only %.2fx of plain decoding (below %.2fx; per kind of "
                    "prompt %s): plain decoding.", plan.to_dict(), speedup, AUTO_MIN_EXPECTED_SPEEDUP, by_kind)
        plan, speedup, by_kind = SpaceLayoutPlan(0, ()), 1.0, dict.fromkeys(by_kind, 1.0)
    logger.info("SPACE layout chosen for this machine: %s (expected speedup %.2fx; per kind of prompt %s)",
                plan.to_dict(), speedup, by_kind)
    if not plan.groups and not getattr(model, "_space_no_draft_warned", False):  # once per model, not per call
        logger.warning("On this machine drafting is not expected to pay with these acceptance rates; SPACE runs "
                       "without drafts, at plain decoding's speed.")
        model._space_no_draft_warned = True
    return plan

"""How stable `num_mask_tokens="auto"` is: its pass-cost measurement repeated, and the plans each draw ranks first.

`auto` measures the cost of a pass against its token count once per model object (`autotune.measure_pass_costs`,
at every count a plan's passes have) and picks the plan with the highest expected speed-up from those costs and
the model's calibrated acceptance rates, over each kind of prompt calibrated (`planning.choose_plan`). When two
plans are expected within a few percent of each other, a draw of the costs decides between them; this shows, per
draw and per registered kernel set, the pass cost at each size a plan feeds and the expected speed-up of the leading
plans, so that a choice can be checked against what `bench` then measures.

    python benchmarks/plan_choice.py --adapter hub_configs/qwen2.5-coder-0.5b-space-gated --dtype bfloat16 --draws 3

Run it alone on the machine: the costs are CPU timings.
"""

from __future__ import annotations

import argparse

import torch

from transformers_space.bench.runner import machine_info
from transformers_space.decoding.autotune import cost_function, measure_pass_costs
from transformers_space.decoding.configuration import SpaceConfig
from transformers_space.decoding.kernels import PASS_KERNELS, PassKernels
from transformers_space.decoding.planning import SpaceLayoutPlan, drafting_plans, expected_rates, typical_speedup
from transformers_space.hub import load_space_adapter


def ranked_plans(num_masks: int, rate_sets: list[list[float]], cost) -> list[tuple[float, SpaceLayoutPlan]]:
    """The drafting plans `planning.choose_plan` weighs, by expected speed-up over a 1-token pass of `cost`."""
    scored = ((typical_speedup(plan, rate_sets, cost), plan) for plan in drafting_plans(num_masks))
    return sorted(scored, key=lambda item: -item[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", required=True, help="A SPACE adapter folder (`export --adapter-only`).")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--draws", type=int, default=3, help="Independent cost measurements, as `auto` makes one.")
    parser.add_argument("--top", type=int, default=4, help="Plans shown per draw.")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, _ = load_space_adapter(args.adapter, dtype=getattr(torch, args.dtype))
    space_config = SpaceConfig.of(model)
    rates = space_config.acceptance_rates
    rate_sets = list((space_config.acceptance_rates_by_kind or {"all": rates}).values())
    if not rates:
        raise SystemExit(f"{args.adapter} has no calibrated acceptance rates (examples/calibrate_acceptance.py).")
    machine = machine_info(args.threads)
    print(f"{machine['cpu']}, torch {machine['torch']}, transformers {machine['transformers']}, "
          f"{args.threads} threads, {args.dtype}; rates {[round(rate, 3) for rate in rates]}")
    for draw in range(1, args.draws + 1):
        draws = {name: measure_pass_costs(model, kernels=kernels) for name, kernels in PASS_KERNELS.items()}
        plain_cost = draws[PassKernels.name][1]  # as `auto_plan`: plain decoding runs transformers' own modules
        for name, costs in draws.items():
            cost = cost_function(costs)
            relative = " ".join(f"{count}:{seconds / costs[1]:.2f}" for count, seconds in costs.items())
            print(f"draw {draw}, {name}: pass cost / 1-token pass {relative} (1 token: {costs[1] * 1e3:.1f} ms)")
            for speedup, plan in ranked_plans(space_config.num_mask_tokens, rate_sets, cost)[: args.top]:
                emitted, fed = expected_rates(plan, rates)
                print(f"    {plan.num_masks} masks, groups {list(plan.groups)}: {emitted:.2f} tokens/pass, "
                      f"{fed:.1f} tokens fed, expected {speedup * plain_cost / costs[1]:.2f}x plain")


if __name__ == "__main__":
    main()

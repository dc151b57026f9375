"""Which SPACE layout to run: how many masks per group and after which candidates a group runs.

A pass with n candidates and groups G costs `1 + n + |G| * k` tokens. On a GPU that is almost free; on a
CPU it is not (docs/method.md, "Cost of a pass"), so the layout is chosen per machine: the plan that maximises expected
tokens per unit of time, from the measured cost of a pass against its token count and the model's
acceptance rates. Pure arithmetic, no model.

With a subset of groups the next drafts come from the group that ran after the largest candidate count
g <= a (a = accepted candidates): its mask j stands at position p + g + 1 + j and predicts the token after
it, so masks a - g .. k - 1 draft the tokens after the bonus token. Fewer groups: cheaper passes, shorter
drafts after a partial acceptance.

Imports only the standard library and torch-free code (it ships as remote code).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class SpaceLayoutPlan:
    num_masks: int  # masks per group = the most candidates a pass verifies
    groups: tuple[int, ...]  # candidate counts after which a mask group runs; always holds 0
    kernels: str = "linear"  # name of the PassKernels a pass runs under (kernels.py), e.g. "weights_first"

    def __post_init__(self) -> None:
        if not isinstance(self.kernels, str) or not self.kernels:
            raise ValueError(f"`kernels` should be the name of registered pass kernels, got {self.kernels!r}.")
        groups = tuple(self.groups)
        if self.num_masks == 0 and not groups:  # no drafting at all: one token per pass, as plain decoding
            object.__setattr__(self, "groups", groups)
            return
        if self.num_masks < 1:
            raise ValueError(f"`num_masks` should be at least 1 (or 0 with no groups), got {self.num_masks}.")
        if groups != tuple(sorted(set(groups))) or not groups or groups[0] != 0 or groups[-1] > self.num_masks:
            raise ValueError(
                f"`groups` should be increasing candidate counts from 0 up to num_masks={self.num_masks}, "
                f"got {list(groups)}."
            )
        object.__setattr__(self, "groups", groups)

    @classmethod
    def full(cls, num_masks: int) -> SpaceLayoutPlan:
        """The paper's layout: a group after every candidate count."""
        return cls(num_masks, tuple(range(num_masks + 1)))

    def groups_for(self, num_candidates: int) -> list[int]:
        """The groups a pass verifying `num_candidates` runs; beyond `num_masks` (a context lookup's extension) also
        one after every candidate, so that a pass that accepts them all drafts on."""
        groups = [group for group in self.groups if group <= num_candidates]
        return groups + [num_candidates] if num_candidates > self.num_masks and groups else groups

    def tokens_in_pass(self, num_candidates: int) -> int:
        return 1 + num_candidates + len(self.groups_for(num_candidates)) * self.num_masks

    def next_offset(self, accepted: int) -> int:
        """First mask index of the next drafts, after `accepted` candidates were accepted."""
        if not self.groups:
            return self.num_masks
        return accepted - max(group for group in self.groups if group <= accepted)

    def to_dict(self) -> dict:
        return {"num_masks": self.num_masks, "groups": list(self.groups), "kernels": self.kernels}


def acceptance_rates(accepted_counts: Sequence[int], num_candidates: int) -> list[float]:
    """alpha_j = P(candidate j accepted | candidates before it accepted), from passes that had
    `num_candidates` candidates each (their accepted counts)."""
    rates = []
    for depth in range(num_candidates):
        reached = sum(1 for count in accepted_counts if count >= depth)
        passed = sum(1 for count in accepted_counts if count > depth)
        rates.append(passed / reached if reached else 0.0)
    return rates


def greedy_chain_accepted(drafts_right: Mapping[int, Sequence[bool]], first_start: int) -> list[int]:
    """Accepted counts of the passes greedy SPACE at the full layout makes over a known greedy text, from
    teacher-forced drafts: `drafts_right[s][j]` says whether mask j of the block starting at s (it sees the
    text before s and drafts s+1..s+k) equals the text. A pass that accepts a drafts emits a + 1 tokens and
    the next drafts come from the block at s + a + 1 (the group after the last accepted draft). The walk
    ends at the first start without a block (the end of the text).

    Why: uniform agreement weighs every position alike, but generation drafts only where the previous pass
    stopped, right after a rejection; this is the acceptance those positions give, without generating."""
    counts, start = [], first_start
    while start in drafts_right:
        right = drafts_right[start]
        accepted = 0
        while accepted < len(right) and right[accepted]:
            accepted += 1
        counts.append(accepted)
        start += accepted + 1
    return counts


def expected_rates(plan: SpaceLayoutPlan, alphas: Sequence[float]) -> tuple[float, float]:
    """(tokens emitted per pass, tokens fed per pass), long-run averages over the draft-offset chain."""
    stationary, emitted, fed = _offset_chain(plan, alphas)
    return _mean(stationary, emitted), _mean(stationary, fed)


def expected_speedup(plan: SpaceLayoutPlan, alphas: Sequence[float], cost: Callable[[int], float]) -> float:
    """Expected tokens per second relative to plain decoding (one token per pass costing cost(1))."""
    stationary, emitted, fed = _offset_chain(plan, alphas)
    return _mean(stationary, emitted) / _mean(stationary, [cost(tokens) for tokens in fed]) * cost(1)


def typical_speedup(plan: SpaceLayoutPlan, rate_sets: Sequence[Sequence[float]], cost: Callable[[int], float]) -> float:
    """Geometric mean over kinds of prompt (one set of acceptance rates each, e.g. code and chat) of the expected
    speedup.

    Why per kind: one layout serves every prompt, and a user's prompts tend to be of one kind, so a layout is scored
    by what each kind gets from it, not by what the pooled rates would get. The geometric mean weighs a 10% loss on
    one kind against a 10% gain on another; a layout that drafts nothing scores 1 on every kind. Measured, it
    rarely picks another layout than the pooled rates do (BENCHMARKS.md, "Pass costs as decoding runs them")."""
    product = 1.0
    for alphas in rate_sets:
        product *= expected_speedup(plan, alphas, cost)
    return product ** (1.0 / len(rate_sets))


def pass_shapes(max_masks: int) -> dict[int, tuple[int, int, int]]:
    """{tokens in a pass: (masks per group, candidates, groups)} for the passes that drafting plans of up to
    `max_masks` masks make (a pass with n candidates runs the groups after 1 to n + 1 candidate counts). Where
    several shapes share a token count, the one with the most masks per group: it drafts the most, the dearest.

    Why: `autotune.measure_pass_costs` times a pass of each of these shapes, so that the costs the plan is chosen
    with are those of passes it will run, not interpolated across a jump (a pass of 17 tokens cost about 8% more
    than one of 16 on a 2-core Xeon in bf16, BENCHMARKS.md)."""
    shapes: dict[int, tuple[int, int, int]] = {}
    for num_masks in range(1, max_masks + 1):
        for candidates in range(num_masks + 1):
            for groups in range(1, candidates + 2):
                shapes[1 + candidates + groups * num_masks] = (num_masks, candidates, groups)  # most masks last
    return dict(sorted(shapes.items()))


def drafting_plans(max_masks: int) -> Iterator[SpaceLayoutPlan]:
    """Every plan that drafts: each mask count up to `max_masks` with each subset of groups (group 0 always)."""
    for num_masks in range(1, max_masks + 1):
        for size in range(num_masks + 1):
            for extra in itertools.combinations(range(1, num_masks + 1), size):
                yield SpaceLayoutPlan(num_masks, (0, *extra))


def choose_plan(
    max_masks: int, rate_sets: Sequence[Sequence[float]], cost: Callable[[int], float]
) -> SpaceLayoutPlan:
    """The plan with the highest `typical_speedup` over the kinds of prompt in `rate_sets`: every drafting plan,
    and no drafting at all (where every layout costs more than it gains, as an untrained adapter on a CPU)."""
    if not rate_sets:
        raise ValueError("`rate_sets` should hold at least one list of acceptance rates.")
    best, best_speedup = SpaceLayoutPlan(0, ()), 1.0
    for plan in drafting_plans(max_masks):
        speedup = typical_speedup(plan, rate_sets, cost)
        if speedup > best_speedup + 1e-12:
            best, best_speedup = plan, speedup
    return best


def _offset_chain(plan: SpaceLayoutPlan, alphas: Sequence[float]):
    """Markov chain over the draft offset o (the next drafts are masks o..k-1; o = k means none).

    alphas[j] is the acceptance rate of a candidate drafted by mask j whose predecessors were accepted.
    Returns the stationary distribution and, per state, the expected tokens emitted and tokens fed.
    """
    k = plan.num_masks
    alphas = list(alphas[:k]) + [0.0] * max(0, k - len(alphas))
    transitions, emitted, fed = [], [], []
    for offset in range(k + 1):
        candidates = k - offset
        row, reach, expected = [0.0] * (k + 1), 1.0, 0.0
        for accepted in range(candidates + 1):
            probability = reach * (1.0 - alphas[offset + accepted] if accepted < candidates else 1.0)
            row[plan.next_offset(accepted)] += probability
            expected += probability * (accepted + 1)
            if accepted < candidates:
                reach *= alphas[offset + accepted]
        transitions.append(row)
        emitted.append(expected)
        fed.append(plan.tokens_in_pass(candidates))
    return _stationary(transitions), emitted, fed


def _mean(weights: list[float], values: list[float]) -> float:
    return sum(w * v for w, v in zip(weights, values, strict=True))


def _stationary(transitions: list[list[float]], iterations: int = 500) -> list[float]:
    """Long-run share of passes in each state, starting where decoding starts (no drafts: the last state).

    The time average (not the limit) is taken, so periodic chains are handled, and states the process
    never reaches from its start get no weight.
    """
    size = len(transitions)
    distribution = [0.0] * (size - 1) + [1.0]
    total = [0.0] * size
    for _ in range(iterations):
        distribution = [sum(distribution[i] * transitions[i][j] for i in range(size)) for j in range(size)]
        total = [t + d for t, d in zip(total, distribution, strict=True)]
    return [t / iterations for t in total]

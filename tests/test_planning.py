"""Layout plans: the pure arithmetic, losslessness under every plan, and the machine-aware choice."""

import pytest
import torch
from test_lossless import RecordingStreamer
from tiny_models import left_padded, random_prompts, tiny_model

from transformers_space import SpaceConfig
from transformers_space.decoding.autotune import auto_plan, calibrate_acceptance, cost_function, measure_pass_costs
from transformers_space.decoding.lookup import LOOKUP_EXTENSION
from transformers_space.decoding.planning import (
    SpaceLayoutPlan,
    acceptance_rates,
    choose_plan,
    drafting_plans,
    expected_rates,
    expected_speedup,
    greedy_chain_accepted,
    pass_shapes,
    typical_speedup,
)

CPU_LIKE = cost_function({1: 1.0, 2: 1.65, 4: 1.65, 8: 1.8, 16: 1.75, 24: 2.1, 36: 2.6})
FREE = cost_function({1: 1.0, 64: 1.0})


def test_plan_validation_and_arithmetic():
    plan = SpaceLayoutPlan(4, (0, 2, 4))
    assert plan.groups_for(3) == [0, 2] and plan.tokens_in_pass(3) == 1 + 3 + 2 * 4
    assert [plan.next_offset(a) for a in range(5)] == [0, 1, 0, 1, 0]
    assert SpaceLayoutPlan.full(2).groups == (0, 1, 2)
    for bad in [(1, 2), (0, 5), (0, 2, 1), ()]:
        with pytest.raises(ValueError, match="groups"):
            SpaceLayoutPlan(4, bad)
    with pytest.raises(ValueError, match="num_masks"):
        SpaceLayoutPlan(0, (0,))
    no_drafting = SpaceLayoutPlan(0, ())
    assert no_drafting.tokens_in_pass(0) == 1 and expected_rates(no_drafting, []) == (1.0, 1.0)


def test_acceptance_rates_from_counts():
    # 4 passes with 3 candidates each: accepted 0, 1, 3, 3
    assert acceptance_rates([0, 1, 3, 3], 3) == [3 / 4, 2 / 3, 1.0]


def test_greedy_chain_walks_from_where_each_pass_stopped():
    k = 3
    # text positions 1..9 have blocks; a pass at s accepting a drafts moves to s + a + 1
    right = {s: [False] * k for s in range(1, 10)}
    right[1] = [True, True, False]  # accept 2 -> next block at 4
    right[2] = [True, True, True]  # never visited: the chain jumps over it
    right[4] = [True, True, True]  # accept 3 -> 8
    right[8] = [False, True, True]  # accept 0: mask 2 right but mask 1 wrong -> 9
    assert greedy_chain_accepted(right, 1) == [2, 3, 0, 0]  # ends after 9 (no block at 10)
    assert acceptance_rates(greedy_chain_accepted(right, 1), k) == [2 / 4, 2 / 2, 1 / 2]
    assert greedy_chain_accepted(right, 2) == [3, 0, 0, 0, 0]  # 2 -> 6 -> 7 -> 8 -> 9
    assert greedy_chain_accepted(right, 10) == []


def test_expected_rates_match_closed_forms():
    alphas = [0.5, 0.5, 0.5]
    per_pass, fed = expected_rates(SpaceLayoutPlan.full(3), alphas)
    assert per_pass == pytest.approx(1 + 0.5 + 0.25 + 0.125)  # every pass has 3 candidates
    assert fed == 1 + 3 + 4 * 3
    per_pass, _ = expected_rates(SpaceLayoutPlan(3, (0, 3)), [1.0, 1.0, 1.0])
    assert per_pass == pytest.approx(4.0)  # perfect drafts: always k + 1
    per_pass, _ = expected_rates(SpaceLayoutPlan(3, (0,)), [1.0, 1.0, 1.0])
    assert per_pass == pytest.approx((4 + 1) / 2)  # no group after 3 candidates: a draft-less pass follows
    assert expected_speedup(SpaceLayoutPlan.full(3), [0.0] * 3, FREE) == pytest.approx(1.0)


def test_choice_follows_the_hardware():
    good = [0.9, 0.85, 0.8, 0.75, 0.7]
    on_gpu = choose_plan(5, [good], FREE)
    assert on_gpu == SpaceLayoutPlan.full(5)  # passes are free: draft as much as possible
    on_cpu = choose_plan(5, [good], CPU_LIKE)
    assert expected_speedup(on_cpu, good, CPU_LIKE) > expected_speedup(SpaceLayoutPlan.full(5), good, CPU_LIKE)
    assert choose_plan(5, [[0.1] * 5], CPU_LIKE) == SpaceLayoutPlan(0, ())  # drafting never pays: do not draft
    middling = [0.45] * 5
    chosen = choose_plan(5, [middling], CPU_LIKE)
    assert chosen.tokens_in_pass(chosen.num_masks) < SpaceLayoutPlan.full(5).tokens_in_pass(5)


def test_pass_shapes_cover_every_pass_a_plan_makes():
    for max_masks in (1, 3, 4):
        shapes = pass_shapes(max_masks)
        for tokens, (num_masks, candidates, groups) in shapes.items():
            assert tokens == 1 + candidates + groups * num_masks and 1 <= groups <= candidates + 1 <= num_masks + 1
        made = {plan.tokens_in_pass(n) for plan in drafting_plans(max_masks) for n in range(plan.num_masks + 1)}
        assert made == set(shapes)
    assert pass_shapes(4)[10] == (4, 1, 2)  # also (3, 3, 2): the shape with more masks drafts more, the dearer


def test_typical_speedup_is_the_geometric_mean_over_kinds():
    easy, hard = [0.9] * 4, [0.3] * 4
    plan = SpaceLayoutPlan(4, (0, 2))
    by_hand = (expected_speedup(plan, easy, CPU_LIKE) * expected_speedup(plan, hard, CPU_LIKE)) ** 0.5
    assert typical_speedup(plan, [easy, hard], CPU_LIKE) == pytest.approx(by_hand)
    assert typical_speedup(plan, [easy], CPU_LIKE) == pytest.approx(expected_speedup(plan, easy, CPU_LIKE))
    assert typical_speedup(SpaceLayoutPlan(0, ()), [easy, hard], CPU_LIKE) == pytest.approx(1.0)
    chosen = choose_plan(4, [easy, hard], CPU_LIKE)
    assert all(typical_speedup(chosen, [easy, hard], CPU_LIKE) >= typical_speedup(other, [easy, hard], CPU_LIKE)
               for other in drafting_plans(4))
    with pytest.raises(ValueError, match="rate_sets"):
        choose_plan(4, [], CPU_LIKE)


PLANS = [SpaceLayoutPlan(0, ()), SpaceLayoutPlan(3, (0,)), SpaceLayoutPlan(3, (0, 3)), SpaceLayoutPlan(2, (0, 1)),
         SpaceLayoutPlan(1, (0,)), SpaceLayoutPlan(3, (0, 1, 3)),
         SpaceLayoutPlan(3, (0, 1, 2, 3), kernels="weights_first"),
         SpaceLayoutPlan(2, (0,), kernels="weights_first")]


@pytest.mark.parametrize(
    "plan", PLANS, ids=lambda p: f"{p.num_masks}-{'_'.join(map(str, p.groups))}{'-' + p.kernels}"
)
@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen3"])
def test_every_plan_is_lossless(plan, arch, verification_log):
    for seed in range(3):
        model = tiny_model(arch, seed=seed, num_mask_tokens=3, drafty=True, favourite_strength=0.7)
        ids, mask = left_padded([5, 9, 3], seed)
        kwargs = dict(attention_mask=mask, max_new_tokens=20, do_sample=False, eos_token_id=2 + seed, pad_token_id=0)
        plain = model.generate(ids, **kwargs)
        space = model.generate(ids, use_space=True, space_layout=plan, return_dict_in_generate=True, **kwargs)
        assert torch.equal(plain, space.sequences)
        assert space.space_layout == plan.to_dict()
        most = plan.num_masks + 1 + LOOKUP_EXTENSION  # the masks' drafts, the lookup's extension, the bonus token
        assert all(count <= most for counts in space.tokens_per_pass for count in counts)
    if plan.groups:
        assert max(verification_log.counts()) >= 1
    else:  # nothing to draft: transformers' own loop ran, not SPACE's
        assert not verification_log.counts()


def test_a_plan_that_drafts_nothing_is_plain_decoding_and_counts_each_rows_tokens(verification_log):
    """No drafts is plain decoding, run by transformers' loop (SPACE's would only add its per-pass overhead);
    a dict output still says one token per pass for each row, up to where that row stopped."""
    model = tiny_model("llama", seed=1, num_mask_tokens=3, drafty=True)
    ids, mask = left_padded([5, 9, 3, 7], 1)
    unstopped = model.generate(ids, attention_mask=mask, max_new_tokens=16, do_sample=False, pad_token_id=0)
    eos = int(unstopped[0, ids.shape[1] + 4])  # row 0 stops after at most 5 tokens, other rows elsewhere
    kwargs = dict(attention_mask=mask, max_new_tokens=16, do_sample=False, eos_token_id=eos, pad_token_id=0,
                  output_scores=True, return_dict_in_generate=True)
    plain = model.generate(ids, **kwargs)
    space = model.generate(ids, use_space=True, space_layout=SpaceLayoutPlan(0, ()), **kwargs)
    assert torch.equal(plain.sequences, space.sequences)
    assert all(torch.equal(a, b) for a, b in zip(plain.scores, space.scores, strict=True))
    lengths = [row.tolist().index(eos) + 1 if eos in row else len(row) for row in plain.sequences[:, ids.shape[1]:]]
    assert len(set(lengths)) > 1
    assert space.tokens_per_pass == [[1] * length for length in lengths]
    assert space.space_layout == SpaceLayoutPlan(0, ()).to_dict()
    plain_streamer, space_streamer = RecordingStreamer(), RecordingStreamer()
    prompt = ids[1:2, mask[1].argmax():]
    model.generate(prompt, max_new_tokens=8, do_sample=False, streamer=plain_streamer)
    model.generate(prompt, max_new_tokens=8, do_sample=False, streamer=space_streamer, use_space=True,
                   space_layout=SpaceLayoutPlan(0, ()))
    assert space_streamer.puts == plain_streamer.puts and space_streamer.ended
    assert not verification_log.counts()


def test_num_mask_tokens_argument():
    model = tiny_model("llama", seed=0, num_mask_tokens=3, drafty=True)
    prompt = random_prompts(1, 5, 0)
    out = model.generate(prompt, max_new_tokens=12, use_space=True, num_mask_tokens=2, return_dict_in_generate=True)
    assert out.space_layout == {"num_masks": 2, "groups": [0, 1, 2], "kernels": "linear"}
    with pytest.raises(ValueError, match="trained with 3"):
        model.generate(prompt, max_new_tokens=5, use_space=True, num_mask_tokens=4)
    with pytest.raises(ValueError, match="positive int or"):
        model.generate(prompt, max_new_tokens=5, use_space=True, num_mask_tokens="fast")


def test_auto_measures_calibrates_and_chooses(caplog):
    model = tiny_model("llama", seed=0, num_mask_tokens=3, drafty=True)
    costs = measure_pass_costs(model, context_length=16, repeats=1)
    assert set(costs) == {1, *pass_shapes(3)} and all(seconds > 0 for seconds in costs.values())
    rates = calibrate_acceptance(model, [random_prompts(1, 5, s) for s in range(3)], max_new_tokens=20)
    assert len(rates) == 3 and model.config.space_config["acceptance_rates"] == rates
    with caplog.at_level("INFO"):
        plan = auto_plan(model)
    assert "SPACE layout chosen" in caplog.text and "timing this machine's SPACE passes" in caplog.text
    prompt = random_prompts(1, 6, 9)
    plain = model.generate(prompt, max_new_tokens=20, do_sample=False)
    out = model.generate(prompt, max_new_tokens=20, do_sample=False, use_space=True, num_mask_tokens="auto",
                         return_dict_in_generate=True)
    assert torch.equal(plain, out.sequences) and out.space_layout == plan.to_dict()


def test_calibration_per_kind_of_prompt_and_auto_plans_for_every_kind(caplog, tmp_path):
    model = tiny_model("llama", seed=0, num_mask_tokens=3, drafty=True)
    prompts = [random_prompts(1, 5, s) for s in range(4)]
    with pytest.raises(ValueError, match="one kind per prompt"):
        calibrate_acceptance(model, prompts, max_new_tokens=12, kinds=["code"])
    rates = calibrate_acceptance(model, prompts, max_new_tokens=20, kinds=["code", "code", "chat", "chat"])
    by_kind = SpaceConfig.of(model).acceptance_rates_by_kind
    assert set(by_kind) == {"code", "chat"} and all(len(kind_rates) == 3 for kind_rates in by_kind.values())
    # every pass reaches mask 1, so the pooled first rate is a mix of the kinds' first rates
    assert min(r[0] for r in by_kind.values()) <= rates[0] <= max(r[0] for r in by_kind.values())
    model.save_pretrained(tmp_path)
    assert SpaceConfig.of(type(model).from_pretrained(tmp_path)).acceptance_rates_by_kind == by_kind
    assert calibrate_acceptance(model, prompts[:1], max_new_tokens=12) and not SpaceConfig.of(
        model).acceptance_rates_by_kind  # pooled again: per-kind rates of other weights or prompts would mislead

    from transformers_space.decoding.kernels import PASS_KERNELS

    config = dict(model.config.space_config)
    config["acceptance_rates"], config["acceptance_rates_by_kind"] = [0.6] * 3, {"easy": [0.9] * 3, "hard": [0.3] * 3}
    model.config.space_config = config
    model._space_pass_costs = {name: {tokens: 1.0 + 0.02 * (tokens - 1) for tokens in (1, *pass_shapes(3))}
                               for name in PASS_KERNELS}
    with caplog.at_level("INFO"):
        plan = auto_plan(model)
    cost = cost_function(model._space_pass_costs["linear"])
    assert plan.groups and plan == choose_plan(3, [[0.9] * 3, [0.3] * 3], cost)
    assert "'easy':" in caplog.text and "'hard':" in caplog.text  # the expected speed-up of each kind is logged


@pytest.mark.parametrize("other_kernels_one_token", [0.95, 0.7])
def test_auto_never_moves_plain_decoding_to_other_kernels(other_kernels_one_token):
    """Where no layout drafts profitably, `auto` runs plain decoding on its own kernels, however much faster another
    kernel set's 1-token pass was timed: that is a matrix-vector product either way, and its timings differ by
    noise (17% in one timing of Qwen2.5-Coder in fp32)."""
    from transformers_space.decoding.kernels import PASS_KERNELS

    model = tiny_model("llama", seed=0, num_mask_tokens=1)
    config = dict(model.config.space_config)
    config["acceptance_rates"] = [0.1]  # drafting never pays
    model.config.space_config = config
    tokens = (1, *pass_shapes(1))
    model._space_pass_costs = {name: {t: 1.0 + 0.5 * (t > 1) for t in tokens} for name in PASS_KERNELS}
    model._space_pass_costs["weights_first"] = {t: other_kernels_one_token * (1.0 + 0.5 * (t > 1)) for t in tokens}
    assert auto_plan(model) == SpaceLayoutPlan(0, ())


def test_auto_drafts_only_for_a_clear_expected_gain(caplog):
    """Pass costs measured at one context understate real passes, and the loop adds its own work: layouts expected at
    ~1.03x and 1.09x ran at 0.96x of plain and below (BENCHMARKS.md, bench v11 and v16), so `auto` drafts only above
    AUTO_MIN_EXPECTED_SPEEDUP."""
    from transformers_space.decoding import autotune
    from transformers_space.decoding.kernels import PASS_KERNELS

    model = tiny_model("llama", seed=0, num_mask_tokens=1)
    config = dict(model.config.space_config)
    config["acceptance_rates"] = [0.5]

    def costs_with(extra_cost_per_token: float) -> dict[int, float]:
        return {tokens: 1.0 + extra_cost_per_token * (tokens - 1) for tokens in (1, *pass_shapes(1))}

    def plan_for(extra_cost_per_token: float) -> SpaceLayoutPlan:
        model.config.space_config = config
        model._space_pass_costs = {name: costs_with(extra_cost_per_token) for name in PASS_KERNELS}
        return auto_plan(model)

    # one mask, group [0], alpha 0.5: passes alternate 2 and 3 tokens and emit 1 and 1.5 tokens
    expected = [expected_speedup(SpaceLayoutPlan(1, (0,)), [0.5], cost_function(costs_with(extra)))
                for extra in (0.01, 0.18)]
    assert expected[0] > autotune.AUTO_MIN_EXPECTED_SPEEDUP > expected[1] > 1.0
    assert plan_for(0.01).groups  # a clear gain: draft
    with caplog.at_level("INFO"):
        assert plan_for(0.18) == SpaceLayoutPlan(0, ())  # above 1x, but not clearly: do not draft
        assert plan_for(0.18) == SpaceLayoutPlan(0, ())
    assert "plain decoding." in caplog.text
    warnings = [record for record in caplog.records if record.levelname == "WARNING"]
    assert len(warnings) == 1 and "not expected to pay" in warnings[0].getMessage()  # once per model, not per call


def test_groups_for_a_pass_with_more_candidates_than_masks():
    """A context lookup's extension: beyond `num_masks` candidates a group also runs after the last one."""
    assert SpaceLayoutPlan(1, (0, 1)).groups_for(4) == [0, 1, 4]
    assert SpaceLayoutPlan.full(2).groups_for(2) == [0, 1, 2]
    assert SpaceLayoutPlan.full(2).groups_for(5) == [0, 1, 2, 5]
    assert SpaceLayoutPlan(0, ()).groups_for(0) == []

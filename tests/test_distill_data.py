"""Self-distillation data (training/distill.py): a fixed held-out split, prompt sources, resumable answers."""

import gzip
import json

import pytest
import torch
from tiny_models import tiny_config, tiny_tokenizer
from transformers import AutoModelForCausalLM

from transformers_space.training import distill
from transformers_space.training.distill import (
    answered_prompts,
    append_answers,
    code_prompts,
    math_prompts,
    select_prompts,
    split_of,
)


def test_split_is_fixed_by_the_text_and_about_one_in_twenty():
    prompts = math_prompts(2000, seed=3)
    splits = [split_of(p) for p in prompts]
    assert splits == [split_of(p) for p in prompts]  # deterministic
    share = splits.count("heldout") / len(splits)
    assert 0.03 < share < 0.07
    assert split_of("def f(x):") == split_of("def f(x):") and split_of("a") in distill.SPLITS


def test_train_and_heldout_never_share_a_prompt():
    train = select_prompts("math", 300, "train", seed=1)
    heldout = select_prompts("math", 30, "heldout", seed=1)
    assert len(train) == 300 and len(heldout) == 30
    assert not set(train) & set(heldout)
    assert all(split_of(p) == "train" for p in train) and all(split_of(p) == "heldout" for p in heldout)
    code_train = select_prompts("code", 40, "train", seed=0)
    code_heldout = select_prompts("code", 10, "heldout", seed=0)
    assert len(code_heldout) == 10 and not set(code_train) & set(code_heldout)


def test_code_prompts_are_requests_for_documented_public_functions():
    prompts = code_prompts()
    assert len(prompts) > 1000 and len(set(prompts)) == len(prompts)
    stubs = [p for p in prompts if p.startswith("Complete the following Python function")]
    requests = [p for p in prompts if p.startswith("Write a Python function `")]
    assert stubs and requests and len(stubs) + len(requests) == len(prompts)
    assert all("```python\ndef " in p and p.endswith("```") for p in stubs)
    assert not any("(self" in p.split("\n")[0] for p in requests)


def test_bad_source_and_split_are_refused():
    with pytest.raises(ValueError, match="source"):
        select_prompts("poetry", 3)
    with pytest.raises(ValueError, match="split"):
        select_prompts("math", 3, split="test")


def tiny_chat_model():
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    config = tiny_config("llama", eos_token_id=None)
    return AutoModelForCausalLM.from_config(config).eval(), tokenizer


def test_answers_are_appended_and_a_rerun_resumes_without_redoing_rows(tmp_path):
    model, tokenizer = tiny_chat_model()
    output = tmp_path / "rows.jsonl"
    prompts = [f"w{i} w{i + 1} w{i + 2}" for i in range(1, 8)]
    assert append_answers(model, tokenizer, prompts[:4], output, max_new_tokens=5, batch_size=3) == 4
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert sorted(row["messages"][0]["content"] for row in rows) == sorted(prompts[:4])
    assert all(row["messages"][1]["role"] == "assistant" and row["messages"][1]["content"] for row in rows)
    expected = {row["messages"][0]["content"]: row["messages"][1]["content"] for row in rows}
    for prompt, reply in expected.items():  # each reply is the model's own greedy continuation
        ids = tokenizer(tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False),
                        return_tensors="pt", add_special_tokens=False)
        out = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
        assert tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip() == reply
    with output.open("a") as handle:
        handle.write('{"messages": [{"role": "user", "content": "w9')  # a write cut off by an interruption
    assert answered_prompts(output) == set(prompts[:4])
    assert output.read_text().endswith("\n")  # the torn line is gone
    assert append_answers(model, tokenizer, prompts, output, max_new_tokens=5, batch_size=3) == 3  # only the rest
    lines = output.read_text().splitlines()
    assert len(lines) == 7 and {json.loads(line)["messages"][0]["content"] for line in lines} == set(prompts)


def test_an_answer_store_rebuilds_the_rows_without_generating(tmp_path, monkeypatch):
    model, tokenizer = tiny_chat_model()
    prompts = [f"w{i} w{i + 2} w{i + 1}" for i in range(1, 7)]
    first = tmp_path / "first.jsonl"
    append_answers(model, tokenizer, prompts[:4], first, max_new_tokens=5, batch_size=2)
    (tmp_path / "first.jsonl.skipped").write_text(json.dumps("w3 w3") + "\n")  # a prompt answered empty
    store = tmp_path / "answers.jsonl.gz"
    assert distill.export_answers(first, store, max_new_tokens=5) == 5
    assert "w1 w3 w2" not in gzip.decompress(store.read_bytes()).decode()  # keyed by hash: no prompt text
    calls = []
    real_generate = model.generate
    monkeypatch.setattr(model, "generate", lambda *a, **k: calls.append(a or k["input_ids"]) or real_generate(*a, **k))
    second = tmp_path / "second.jsonl"
    written = append_answers(model, tokenizer, [*prompts, "w3 w3"], second, max_new_tokens=5, batch_size=8,
                             answer_store=store)
    assert written == 6 and len(calls) == 1 and calls[0].shape[0] == 2  # only the two unstored prompts ran
    rows = {json.loads(line)["messages"][0]["content"]: json.loads(line)["messages"][1]["content"]
            for line in second.read_text().splitlines()}
    reference = {json.loads(line)["messages"][0]["content"]: json.loads(line)["messages"][1]["content"]
                 for line in first.read_text().splitlines()}
    assert {p: rows[p] for p in reference} == reference
    assert json.loads((tmp_path / "second.jsonl.skipped").read_text()) == "w3 w3"
    with pytest.raises(ValueError, match="--max-new-tokens 5"):
        append_answers(model, tokenizer, prompts, tmp_path / "third.jsonl", max_new_tokens=9, answer_store=store)

    # Exporting other rows into the store merges them in: the first file's answers stay, the new prompts join.
    later = tmp_path / "later.jsonl"
    later.write_text("".join(line + "\n" for line in second.read_text().splitlines()
                             if json.loads(line)["messages"][0]["content"] in prompts[4:]))
    assert distill.export_answers(later, store, max_new_tokens=5) == 7
    stored = distill.stored_answers(store, max_new_tokens=5)
    assert {distill.prompt_key(p): a for p, a in rows.items()}.items() <= stored.items()


def test_rows_taken_from_a_store_are_written_in_the_order_generation_wrote_them(tmp_path):
    model, tokenizer = tiny_chat_model()
    prompts = [" ".join(f"w{i + j}" for j in range(i % 4 + 1)) for i in range(1, 13)]  # 1-4 words: batched by length
    generated = tmp_path / "generated.jsonl"
    append_answers(model, tokenizer, prompts, generated, max_new_tokens=4, batch_size=2)
    order = [json.loads(line)["messages"][0]["content"] for line in generated.read_text().splitlines()]
    assert [len(p) for p in order] != sorted(len(p) for p in order)  # shuffled batches: not simply by length
    whole, half = tmp_path / "whole.jsonl.gz", tmp_path / "half.jsonl.gz"
    distill.export_answers(generated, whole, max_new_tokens=4)
    rebuilt = tmp_path / "rebuilt.jsonl"
    append_answers(model, tokenizer, prompts, rebuilt, max_new_tokens=4, batch_size=2, answer_store=whole)
    assert rebuilt.read_text() == generated.read_text()  # the same rows in the same order: the same training batches

    some = tmp_path / "some.jsonl"  # a store holding every other answer: the rest are generated in their places
    some.write_text("".join(line + "\n" for line in generated.read_text().splitlines()[::2]))
    distill.export_answers(some, half, max_new_tokens=4)
    mixed = tmp_path / "mixed.jsonl"
    append_answers(model, tokenizer, prompts, mixed, max_new_tokens=4, batch_size=2, answer_store=half)
    assert [json.loads(line)["messages"][0]["content"] for line in mixed.read_text().splitlines()] == order


def test_answers_shorter_than_asked_are_skipped_not_trained_on(tmp_path):
    model, tokenizer = tiny_chat_model()  # no eos: every answer is max_new_tokens long
    prompts = [f"w{i} w{i + 1} w{i + 2}" for i in range(1, 6)]
    kept = tmp_path / "kept.jsonl"
    assert append_answers(model, tokenizer, prompts, kept, max_new_tokens=5, min_answer_tokens=5) == 5
    assert all(len(tokenizer(json.loads(line)["messages"][1]["content"], add_special_tokens=False)["input_ids"]) == 5
               for line in kept.read_text().splitlines())
    short = tmp_path / "short.jsonl"
    assert append_answers(model, tokenizer, prompts, short, max_new_tokens=5, min_answer_tokens=6) == 0
    assert short.read_text() == ""
    skipped = {json.loads(line) for line in (tmp_path / "short.jsonl.skipped").read_text().splitlines()}
    assert skipped == set(prompts)
    assert append_answers(model, tokenizer, prompts, short, max_new_tokens=5, min_answer_tokens=6) == 0  # resumes

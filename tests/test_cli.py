"""The command line: user errors give one clear line and a non-zero exit before anything loads; bugs keep tracebacks."""

import pytest
import torch
from tiny_models import tiny_config, tiny_tokenizer
from transformers import AutoModelForCausalLM

from transformers_space import add_space_support
from transformers_space.cli import main


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", "--model", "/no/such/dir", "--prompt", "hi"], "folder '/no/such/dir' does not exist"),
        (["generate", "--model", "user/model", "--prompt", ""], "the prompt is empty"),
        (["generate", "--model", "user/model", "--prompt", "hi", "--max-new-tokens", "0"], "positive int, got 0"),
        (["bench", "--limit", "-1"], "expected a positive int, got -1"),
        (["bench", "--limit", "0"], "expected a positive int, got 0"),
        (["bench", "--space-num-mask-tokens", "zero"], 'expected a positive int or "auto"'),
        (["bench", "--model", "./missing"], "folder './missing' does not exist"),
        (["demo", "--num-mask-tokens", "0"], 'expected a positive int or "auto"'),
        (["demo", "--prompt", "   "], "the prompt is empty"),
        (["export", "--model", "/no/such/dir", "--output-dir", "out"], "does not exist"),
    ],
)
def test_bad_arguments_fail_at_parse_time(argv, message, capsys):
    with pytest.raises(SystemExit) as raised:
        main(argv)
    assert raised.value.code == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error


def test_a_file_is_not_a_model_folder(tmp_path, capsys):
    path = tmp_path / "model.bin"
    path.write_bytes(b"")
    with pytest.raises(SystemExit):
        main(["generate", "--model", str(path), "--prompt", "hi"])
    assert "is a file; give the folder" in capsys.readouterr().err


def test_a_folder_without_a_model_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--model", str(tmp_path), "--prompt", "hi"])
    assert "holds no config.json" in capsys.readouterr().err


def test_errors_at_run_time_are_one_line(tmp_path, capsys):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("llama"))
    model.save_pretrained(tmp_path)  # a model, but no tokenizer beside it
    assert main(["generate", "--model", str(tmp_path), "--prompt", "hi"]) == 2
    error = capsys.readouterr().err
    ours = [line for line in error.splitlines() if line.startswith("transformers-space generate: error: ")]
    assert len(ours) == 1 and "Traceback" not in error


def test_generate_defaults_to_the_shipped_adapter_as_bench_and_demo_do(monkeypatch):
    import transformers_space.loading as loading

    asked = []

    def load_model(path, *args):
        asked.append(path)
        raise ValueError("stop here")  # what loads is tested elsewhere; here, which folder is asked for

    monkeypatch.setattr(loading, "load_model", load_model)
    assert main(["generate", "--prompt", "hi"]) == 2
    assert asked == [None]  # load_model(None): the shipped adapter on its offline base


def test_generate_runs_and_compares(tmp_path, capsys):
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    model = add_space_support(AutoModelForCausalLM.from_config(tiny_config("llama")), tokenizer, num_mask_tokens=2)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert main(["generate", "--model", str(tmp_path), "--prompt", "w1 w2 w3", "--max-new-tokens", "6"]) == 0
    assert "identical to plain greedy decoding: True" in capsys.readouterr().out


def test_demo_runs_an_adapter_in_the_dtype_asked(tmp_path, capsys, monkeypatch):
    """The demo end to end on a tiny gated adapter over its own saved base, loaded in bf16 as asked: each prompt's
    text, whether it equals plain decoding, tokens per pass and the overall speed."""
    from transformers_space.hub import save_space_adapter

    torch.manual_seed(0)
    base = tmp_path / "base"
    AutoModelForCausalLM.from_config(tiny_config("llama")).save_pretrained(base)
    tiny_tokenizer().save_pretrained(base)
    model = add_space_support(AutoModelForCausalLM.from_pretrained(base), tiny_tokenizer(), 3, mode="gated")
    save_space_adapter(model, tmp_path / "adapter", base_model=str(base))
    argv = ["demo", "--adapter", str(tmp_path / "adapter"), "--dtype", "bfloat16", "--prompt", "w1 w2 w3 w4",
            "--max-new-tokens", "6", "--num-mask-tokens", "2", "--threads", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "(llama, torch.bfloat16)" in out and "identical to plain decoding:" in out
    assert "tokens per pass:" in out and "Overall: plain" in out
    assert "not drafting" not in out  # transformers' own modules: the speed-up is the drafts'

    # where the machine's plan runs another kernel, the demo says that part of the speed-up is the kernel's
    from transformers_space.decoding import autotune
    from transformers_space.decoding.planning import SpaceLayoutPlan

    plan = SpaceLayoutPlan(2, (0,), kernels="weights_first")
    monkeypatch.setattr(autotune, "auto_plan", lambda model: plan)  # the choice is a timing of this machine
    argv[argv.index("--num-mask-tokens") + 1] = "auto"
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "'kernels': 'weights_first'" in out and "'weights_first' products), not drafting" in out

"""`transformers-space train`: HfArgumentParser options, a short gated run, the saved model generating."""

import json
import sys

import pytest
import torch
from tiny_models import tiny_tokenizer
from toy_language import toy_model, toy_rows

from transformers_space import load_space_model
from transformers_space.cli import build_parser, main
from transformers_space.training.cli import parse


@pytest.fixture
def model_dir(tmp_path):
    folder = tmp_path / "base"
    toy_model().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_train_options_come_from_the_dataclasses(tmp_path):
    args = build_parser().parse_args(
        ["train", "--model", "m", "--data", "d.jsonl", "--mode", "gated", "--num-mask-tokens", "3",
         "--output-dir", str(tmp_path), "--learning-rate", "1e-3", "--adapter-target-modules", "q_proj", "v_proj"]
    )
    script, space_config, training_args = parse(args)
    assert script.model == "m" and script.data == "d.jsonl"
    assert space_config.mode == "gated" and space_config.num_mask_tokens == 3
    assert space_config.adapter_target_modules == ["q_proj", "v_proj"]
    assert training_args.learning_rate == 1e-3 and training_args.output_dir == str(tmp_path)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--model", "m", "--data", "d", "--mode", "qlora"])


def test_train_command_gated(model_dir, tmp_path, capsys):
    rows = [{"text": " ".join(f"w{t}" for t in row["input_ids"])} for row in toy_rows(32, seed=0)]
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    out = tmp_path / "out"
    code = main(["train", "--model", str(model_dir), "--data", str(data), "--mode", "gated", "--num-mask-tokens", "4",
                 "--output-dir", str(out), "--max-steps", "3", "--per-device-train-batch-size", "8",
                 "--report-to", "none", "--save-strategy", "no", "--use-cpu", "--disable-tqdm", "true"])
    assert code == 0
    assert "trained 3 steps" in capsys.readouterr().out
    assert json.loads((out / "space_config.json").read_text())["mode"] == "gated"
    model = load_space_model(out).eval()
    prompt = torch.tensor([[1, 3, 5]])
    assert torch.equal(model.generate(prompt, max_new_tokens=8, use_space=True),
                       model.generate(prompt, max_new_tokens=8, use_space=False))


def test_train_command_continues_a_gated_adapter_folder(model_dir, tmp_path):
    """--model may name an adapter folder: training starts from its weights on its base (learning rate 0 keeps
    them, so the saved model must carry exactly the adapter's trained, non-zero weights), the base stays frozen."""
    from transformers_space.hub import load_space_adapter, save_space_adapter

    data = write_jsonl(tmp_path / "data.jsonl", toy_rows(16, seed=0))
    common = ["--data", str(data), "--mode", "gated", "--num-mask-tokens", "4", "--max-steps", "2",
              "--report-to", "none", "--save-strategy", "no", "--use-cpu", "--disable-tqdm", "true"]
    assert main(["train", "--model", str(model_dir), "--output-dir", str(tmp_path / "first"), *common]) == 0
    adapter = save_space_adapter(load_space_model(tmp_path / "first"), tmp_path / "adapter", base_model=str(model_dir))
    assert main(["train", "--model", str(adapter), "--output-dir", str(tmp_path / "then"), "--learning-rate", "0",
                 *common]) == 0
    saved, _ = load_space_adapter(adapter)
    continued = load_space_model(tmp_path / "then")
    expected, got = saved.state_dict(), continued.state_dict()
    adapter_keys = [name for name in expected if ".space_" in name]
    assert any(name.endswith("lora_B.weight") and expected[name].abs().sum() > 0 for name in adapter_keys)
    assert set(adapter_keys) == {name for name in got if ".space_" in name}
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    for smaller_or_rescaled in (["--adapter-rank", "8"], ["--adapter-rank", "32"]):  # alpha stays 32: another scale
        with pytest.raises(ValueError, match=f"adapter_rank={smaller_or_rescaled[1]} \\(model: 16\\).*"
                           "larger adapter_rank with adapter_alpha = 2 x adapter_rank"):
            main(["-v", "train", "--model", str(adapter), "--output-dir", str(tmp_path / "other"),
                  *smaller_or_rescaled, *common])
    # more rank at the same scale (alpha / rank) grows the adapter: its trained directions continue
    assert main(["train", "--model", str(adapter), "--output-dir", str(tmp_path / "grown"), "--learning-rate", "0",
                 "--adapter-rank", "32", "--adapter-alpha", "64", *common]) == 0
    grown = load_space_model(tmp_path / "grown").state_dict()
    assert json.loads((tmp_path / "grown" / "space_config.json").read_text())["adapter_rank"] == 32
    for name in adapter_keys:
        if name.endswith("lora_A.weight"):
            assert torch.equal(grown[name][:16], expected[name])
        elif name.endswith("lora_B.weight"):
            assert torch.equal(grown[name][:, :16], expected[name]) and not grown[name][:, 16:].any()
        else:
            assert torch.equal(grown[name], expected[name])


def test_train_command_lora_saves_a_merged_model(model_dir, tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", toy_rows(16, seed=0))
    out = tmp_path / "out"
    main(["train", "--model", str(model_dir), "--data", str(data), "--mode", "lora", "--output-dir", str(out),
          "--max-steps", "2", "--report-to", "none", "--save-strategy", "no", "--use-cpu"])
    model = load_space_model(out)
    assert model.config.space_config["mode"] == "lora"
    assert not any("lora" in name for name, _ in model.named_parameters())


def test_bad_data_file(model_dir, tmp_path, capsys):
    bad = tmp_path / "data.csv"
    bad.write_text("a,b\n")
    assert main(["train", "--model", str(model_dir), "--data", str(bad), "--output-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().endswith("should be a .jsonl or .json file, got " + repr(str(bad)) + ".")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "w1"}\n{oops\n')
    assert main(["train", "--model", str(model_dir), "--data", str(broken), "--output-dir", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "line 2: not valid JSON" in error and len(error.strip().splitlines()) == 1
    with pytest.raises(ValueError, match="line 2: not valid JSON"):  # --verbose keeps the traceback
        main(["-v", "train", "--model", str(model_dir), "--data", str(broken), "--output-dir", str(tmp_path)])


def test_example_script_and_accelerate_configs(model_dir, tmp_path, capsys, monkeypatch):
    """examples/train_space.py runs (one process here; DDP is tested above) and the accelerate configs parse."""
    import importlib.util
    from pathlib import Path

    from accelerate.commands.config.config_args import load_config_from_file

    examples = Path(__file__).parent.parent / "examples"
    spec = importlib.util.spec_from_file_location("train_space", examples / "train_space.py")
    example = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "train_space", example)  # dataclasses look their module up there
    spec.loader.exec_module(example)
    data = write_jsonl(tmp_path / "data.jsonl", toy_rows(16, seed=0))
    example.main(["--model", str(model_dir), "--data", str(data), "--mode", "gated", "--max_steps", "2",
                  "--output_dir", str(tmp_path / "out"), "--report_to", "none", "--save_strategy", "no", "--use_cpu"])
    assert "tokens per pass" in capsys.readouterr().out
    kinds = {}
    for config_file in sorted((examples / "accelerate").glob("*.yaml")):
        config = load_config_from_file(str(config_file))
        kinds[config_file.stem] = config.distributed_type.value
        deepspeed_file = (config.deepspeed_config or {}).get("deepspeed_config_file")
        if deepspeed_file:
            assert json.loads((examples.parent / deepspeed_file).read_text())["zero_optimization"]["stage"] in (2, 3)
    assert kinds == {"ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed_zero2": "DEEPSPEED", "deepspeed_zero3": "DEEPSPEED"}

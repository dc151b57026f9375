"""Saved SPACE models are Hub repos: they load and decode with remote code where this package is absent.

The remote side runs in a separate interpreter started with `-S` and only torch's and transformers'
site-packages on its path: the editable install of transformers_space (a .pth file) is invisible there,
and the script asserts that it cannot import it.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from tiny_models import random_prompts, tiny_model

from transformers_space import SpaceConfig, add_space_support
from transformers_space.decoding.autotune import calibrate_acceptance
from transformers_space.hub import AutoSpaceModelForCausalLM, export, push_to_hub

REMOTE_SCRIPT = r"""
import json, sys
try:
    import transformers_space
except ImportError:
    pass
else:
    raise SystemExit("transformers_space must not be importable here")
import torch
from transformers import AutoModelForCausalLM, GenerationMixin

folder, prompt, seed = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
prompt = torch.tensor(prompt)
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
common = dict(max_new_tokens=24, return_dict_in_generate=True)
greedy = model.generate(input_ids=prompt, do_sample=False, use_space=True, **common)
torch.manual_seed(seed)
sampled = model.generate(input_ids=prompt, do_sample=True, use_space=True, **common)
# the same decoding through transformers' custom_generate mechanism, called explicitly
via_custom = GenerationMixin.generate(
    model, input_ids=prompt, do_sample=False, custom_generate=folder, trust_remote_code=True, **common
)
plain = model.generate(input_ids=prompt, do_sample=False, use_space=False, max_new_tokens=24)
# `auto` measures this machine's passes through the remote code and plans with the saved per-kind rates
auto = model.generate(input_ids=prompt, do_sample=False, use_space=True, num_mask_tokens="auto", **common)
print(json.dumps({
    "auto": auto.sequences.tolist(), "auto_layout": auto.space_layout,
    "rates_by_kind": model.config.space_config["acceptance_rates_by_kind"],
    "class": type(model).__name__,
    "greedy": greedy.sequences.tolist(), "greedy_passes": greedy.tokens_per_pass,
    "sampled": sampled.sequences.tolist(), "sampled_passes": sampled.tokens_per_pass,
    "custom": via_custom.sequences.tolist(), "custom_passes": via_custom.tokens_per_pass,
    "plain": plain.tolist(),
}))
"""


def isolated_python(script: str, *args: str, cwd: Path) -> dict:
    paths = sorted({str(Path(module.__file__).parents[1]) for module in (torch, transformers)})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "HF_"))}
    env.update(PYTHONPATH=os.pathsep.join(paths), HF_HOME=str(cwd / "hf_home"), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-S", "-c", script, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def randomise_gated_adapters(model, seed: int) -> None:
    """Untrained gated adapters add nothing (B = 0); give them weights so the test means something."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "space_" in name:
                param.copy_(0.3 * torch.randn(param.shape, generator=generator))


def space_models():
    plain = tiny_model("llama", seed=1, num_mask_tokens=3, drafty=True)
    gated = tiny_model("qwen2", seed=2, num_mask_tokens=2, drafty=True)
    add_space_support(gated, num_mask_tokens=2, mode="gated")
    randomise_gated_adapters(gated, 2)
    gpt2 = tiny_model("gpt2", seed=3, num_mask_tokens=4, drafty=True)
    headed = tiny_model("qwen2", seed=4, num_mask_tokens=3, drafty=True)
    add_space_support(headed, num_mask_tokens=3, mode="gated", draft_head_width=16)  # random adapter and head
    randomise_gated_adapters(headed, 4)
    return {"plain-llama": plain, "gated-qwen2": gated, "gpt2": gpt2, "gated-head-qwen2": headed}


@pytest.mark.parametrize("kind", ["plain-llama", "gated-qwen2", "gpt2", "gated-head-qwen2"])
def test_remote_code_load_without_the_package_matches(kind, tmp_path):
    model = space_models()[kind]
    calibrate_acceptance(model, [random_prompts(1, 5, s) for s in range(2)], max_new_tokens=12, kinds=["code", "chat"])
    folder = tmp_path / "repo"
    model.save_pretrained(folder)
    prompt = random_prompts(2, 6, 0)
    common = dict(max_new_tokens=24, return_dict_in_generate=True)
    greedy = model.generate(input_ids=prompt, do_sample=False, use_space=True, **common)
    torch.manual_seed(7)
    sampled = model.generate(input_ids=prompt, do_sample=True, use_space=True, **common)

    remote = isolated_python(REMOTE_SCRIPT, str(folder), json.dumps(prompt.tolist()), "7", cwd=tmp_path)
    assert remote["class"] == type(model).__name__
    assert remote["greedy"] == greedy.sequences.tolist() == remote["custom"] == remote["plain"]
    assert remote["greedy_passes"] == greedy.tokens_per_pass == remote["custom_passes"]
    assert remote["sampled"] == sampled.sequences.tolist()
    assert remote["sampled_passes"] == sampled.tokens_per_pass
    assert remote["auto"] == remote["plain"] and remote["auto_layout"]["kernels"]
    assert remote["rates_by_kind"] == SpaceConfig.of(model).acceptance_rates_by_kind


def test_saved_folder_is_a_hub_repo(tmp_path):
    model = space_models()["gated-qwen2"]
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {"AutoModelForCausalLM": "modeling_space.SpaceQwen2ForCausalLM"}
    assert config["space_config"]["mode"] == "gated"
    assert json.loads((tmp_path / "generation_config.json").read_text())["use_space"] is True
    assert model.generation_config.use_space is False  # saving does not change the model in memory
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "custom_generate" / "generate.py").exists()
    card = (tmp_path / "README.md").read_text()
    assert "trust_remote_code=True" in card and "`mode` | `\"gated\"`" in card
    from safetensors import safe_open

    with safe_open(tmp_path / "model.safetensors", "pt") as weights:
        keys = list(weights.keys())  # noqa: SIM118 (safe_open is not iterable)
    assert any("space_adapter" in key for key in keys)
    for path in tmp_path.rglob("*.py"):
        source = path.read_text()
        imports = [line.split()[1] for line in source.splitlines() if line.startswith(("import ", "from "))]
        assert not any(name.startswith("transformers_space") for name in imports), f"{path} imports the package"
        allowed = {"torch", "transformers", *sys.stdlib_module_names}
        assert all(name.startswith(".") or name.split(".")[0] in allowed for name in imports), (path, imports)


def test_package_classes_load_the_folder(tmp_path):
    model = space_models()["gated-qwen2"]
    model.save_pretrained(tmp_path)
    loaded = AutoSpaceModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    prompt = random_prompts(1, 5, 3)
    kwargs = dict(max_new_tokens=20, do_sample=False, use_space=True)
    assert torch.equal(model.generate(prompt, **kwargs), loaded.generate(prompt, **kwargs))


def test_export_in_shards_loads_back(tmp_path):
    """`export(max_shard_size=...)`: the Hub folder in shards, as `save_pretrained` writes them, loads back whole
    (head and adapters included); a vLLM folder refuses the option before any work."""
    model = space_models()["gated-head-qwen2"]
    model.save_pretrained(tmp_path / "trained")
    out = export(tmp_path / "trained", tmp_path / "export", max_shard_size="20KB")
    assert (out / "model.safetensors.index.json").is_file() and len(list(out.glob("model-*-of-*.safetensors"))) > 1
    loaded = AutoSpaceModelForCausalLM.from_pretrained(out).eval()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    with pytest.raises(ValueError, match="not to `for_vllm`"):
        export(tmp_path / "trained", tmp_path / "vllm", for_vllm=True, max_shard_size="20KB")
    assert not (tmp_path / "vllm").exists()


def test_export_and_push_fail_fast_offline(tmp_path, monkeypatch):
    model = space_models()["plain-llama"]
    model.save_pretrained(tmp_path / "trained")
    out = export(tmp_path / "trained", tmp_path / "export", repo_id="someone/space-tiny")
    assert "someone/space-tiny" in (out / "README.md").read_text()
    assert (out / "custom_generate" / "generate.py").exists()
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(ConnectionError, match="huggingface-cli upload someone/space-tiny"):
        push_to_hub(out, "someone/space-tiny")


def test_export_for_vllm_writes_a_plain_parallel_drafter(tmp_path):
    """vLLM's parallel drafting reads `pard_token` from a plain architecture's config and wants the target's
    vocabulary size. The tiny model's mask token is an appended row (id 48 of 49), so the export drops that row and
    moves the mask embedding into an existing id; the folder loads without remote code and computes what the SPACE
    model computes (on the target's vocabulary), and a gated model (hooks vLLM lacks) is refused."""
    from transformers import AutoModelForCausalLM

    model = space_models()["plain-llama"]
    mask_id = model.config.space_config["mask_token_id"]
    assert mask_id == model.config.vocab_size - 1
    model.save_pretrained(tmp_path / "trained")
    with pytest.raises(ValueError, match="Pass pard_token_id"):
        export(tmp_path / "trained", tmp_path / "refused", for_vllm=True)
    out = export(tmp_path / "trained", tmp_path / "vllm", for_vllm=True, pard_token_id=40)
    config = json.loads((out / "config.json").read_text())
    assert config["pard_token"] == 40 and config["vocab_size"] == mask_id and not config["tie_word_embeddings"]
    assert config["architectures"] == ["LlamaForCausalLM"] and "auto_map" not in config
    assert not list(out.rglob("*.py")) and not (out / "custom_generate").exists()
    assert "use_space" not in json.loads((out / "generation_config.json").read_text())
    plain = AutoModelForCausalLM.from_pretrained(out).eval()  # no trust_remote_code
    assert type(plain).__name__ == "LlamaForCausalLM"
    for seed in range(4):
        prompt = random_prompts(1, 6, seed, high=40)  # prompts never hold the pard token
        with torch.no_grad():  # PARD's input: the accepted text, then k pard tokens where SPACE puts masks
            drafted = plain(torch.cat([prompt, torch.full((1, 3), 40)], dim=1)).logits
            expected = model(torch.cat([prompt, torch.full((1, 3), mask_id)], dim=1)).logits[..., :mask_id]
        assert torch.equal(drafted, expected)
    # tied input and output embeddings (GPT-2): both keys are cut, the head keeps its original rows
    tied = space_models()["gpt2"]
    tied_mask = tied.config.space_config["mask_token_id"]
    assert tied.config.tie_word_embeddings and tied_mask == tied.config.vocab_size - 1
    tied.save_pretrained(tmp_path / "tied")
    untied = AutoModelForCausalLM.from_pretrained(export(tmp_path / "tied", tmp_path / "vllm-tied", for_vllm=True,
                                                         pard_token_id=40)).eval()
    prompt = random_prompts(1, 6, 9, high=40)
    with torch.no_grad():
        assert torch.equal(untied(torch.cat([prompt, torch.full((1, 2), 40)], dim=1)).logits,
                           tied(torch.cat([prompt, torch.full((1, 2), tied_mask)], dim=1)).logits[..., :tied_mask])
    space_models()["gated-qwen2"].save_pretrained(tmp_path / "gated")
    with pytest.raises(ValueError, match="cannot be a vLLM parallel drafter"):
        export(tmp_path / "gated", tmp_path / "vllm-gated", for_vllm=True)


def test_export_adapter_only_command_line(tmp_path):
    """A gated run's adapter alone, in bf16, through the CLI; it loads back onto the named base."""
    from transformers_space.hub import load_space_adapter

    model, tokenizer = gated_model_on_saved_base(tmp_path / "base")
    model.save_pretrained(tmp_path / "trained")
    tokenizer.save_pretrained(tmp_path / "trained")
    command = ["transformers-space", "export", "--model", str(tmp_path / "trained"), "--output-dir"]
    done = subprocess.run([*command, str(tmp_path / "adapter"), "--adapter-only", "--base-model",
                           str(tmp_path / "base"), "--dtype", "bfloat16", "--max-shard-size", "1KB"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "adapter").glob("space_adapter-*-of-*.safetensors"))) > 1
    loaded, _ = load_space_adapter(tmp_path / "adapter")
    assert_adapter_stored_in_bf16(loaded, model)
    refused = subprocess.run([*command, str(tmp_path / "a2"), "--adapter-only"], capture_output=True, text=True,
                             timeout=300)
    assert refused.returncode != 0 and "needs --base-model" in refused.stderr
    space_models()["plain-llama"].save_pretrained(tmp_path / "plain-space")
    with pytest.raises(ValueError, match="Only gated"):
        export(tmp_path / "plain-space", tmp_path / "a3", adapter_only=True)


def test_export_refuses_non_space_models(tmp_path):
    from tiny_models import tiny_config
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_config(tiny_config("llama")).save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="not a SPACE model"):
        export(tmp_path / "plain", tmp_path / "out")
    with pytest.raises(ValueError, match="holds no model"):
        export(tmp_path / "nothing", tmp_path / "out")


def test_export_command_line(tmp_path):
    space_models()["gpt2"].save_pretrained(tmp_path / "trained")
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9"}
    ok = subprocess.run(
        ["transformers-space", "export", "--model", str(tmp_path / "trained"), "--output-dir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert ok.returncode == 0 and (tmp_path / "out" / "custom_generate" / "generate.py").exists(), ok.stderr
    pushed = subprocess.run(
        ["transformers-space", "export", "--model", str(tmp_path / "trained"), "--output-dir", str(tmp_path / "o2"),
         "--push-to-hub", "someone/tiny"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert pushed.returncode != 0 and "Cannot reach the Hugging Face Hub" in pushed.stderr


def progression_rows(count: int, length: int = 24, seed: int = 0) -> list[dict]:
    """A learnable toy language: arithmetic progressions modulo the vocabulary (ids 1..47)."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(count):
        start, step = (int(x) for x in torch.randint(1, 47, (2,), generator=generator))
        rows.append({"input_ids": [1 + (start + step * i) % 47 for i in range(length)]})
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["full", "lora", "gated"])
def test_train_save_load_remote_generate_round_trip(mode, tmp_path):
    """Train each mode briefly -> save (LoRA: merged) -> export -> load with remote code -> generate."""
    from tiny_models import tiny_config
    from transformers import AutoModelForCausalLM, TrainingArguments

    from transformers_space import SpaceConfig
    from transformers_space.training import SpaceTrainer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("llama"))
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=6, per_device_train_batch_size=4, learning_rate=5e-3,
        report_to=[], save_strategy="no", logging_steps=50, disable_tqdm=True,
    )
    trainer = SpaceTrainer(model=model, args=args, train_dataset=progression_rows(32),
                           space_config=SpaceConfig(mode=mode, num_mask_tokens=3))
    trainer.train()
    if mode == "lora":  # a LoRA run ships merged: the Hub folder must load with transformers alone
        trainer.model.merge_and_unload().save_pretrained(tmp_path / "trained")
    else:
        trainer.save_model(str(tmp_path / "trained"))
    folder = export(tmp_path / "trained", tmp_path / "repo")
    local = AutoSpaceModelForCausalLM.from_pretrained(folder).eval()
    assert local.config.space_config["mode"] == mode
    prompt = torch.tensor([progression_rows(2, length=6, seed=1)[i]["input_ids"] for i in range(2)])
    common = dict(max_new_tokens=24, return_dict_in_generate=True)
    greedy = local.generate(input_ids=prompt, do_sample=False, use_space=True, **common)
    torch.manual_seed(7)
    sampled = local.generate(input_ids=prompt, do_sample=True, use_space=True, **common)
    remote = isolated_python(REMOTE_SCRIPT, str(folder), json.dumps(prompt.tolist()), "7", cwd=tmp_path)
    assert remote["greedy"] == greedy.sequences.tolist() == remote["plain"] == remote["custom"]
    assert remote["greedy_passes"] == greedy.tokens_per_pass
    assert remote["sampled"] == sampled.sequences.tolist() and remote["sampled_passes"] == sampled.tokens_per_pass


@pytest.mark.parametrize("per_position", [False, True])
def test_gated_adapter_alone_round_trip(tmp_path, per_position):
    """A gated model's adapter saves on its own (a few MB) and loads back onto its base exactly."""
    from transformers_space.hub import load_space_adapter, save_space_adapter

    model, tokenizer = gated_model_on_saved_base(tmp_path / "base", per_position_mask_embeddings=per_position)
    assert model.get_input_embeddings().space_mask.weight.dim() == (2 if per_position else 1)
    save_space_adapter(model, tmp_path / "adapter", base_model=str(tmp_path / "base"))
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == [
        "space_adapter.safetensors", "space_adapter_config.json"]
    loaded, loaded_tokenizer = load_space_adapter(tmp_path / "adapter")
    assert loaded_tokenizer.convert_tokens_to_ids("<|space_mask|>") == model.config.space_config["mask_token_id"]
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    with pytest.raises(ValueError, match="Only gated"):
        save_space_adapter(space_models()["plain-llama"], tmp_path / "nope")

    # bf16 storage: half the bytes, loaded back as the model's fp32 weights rounded once to bf16.
    save_space_adapter(model, tmp_path / "bf16", base_model=str(tmp_path / "base"), dtype=torch.bfloat16)
    assert (tmp_path / "bf16" / "space_adapter.safetensors").stat().st_size < 0.6 * (
        tmp_path / "adapter" / "space_adapter.safetensors").stat().st_size
    small, _ = load_space_adapter(tmp_path / "bf16")
    assert_adapter_stored_in_bf16(small, model)
    with pytest.raises(TypeError, match="floating torch.dtype"):
        save_space_adapter(model, tmp_path / "nope", dtype="bf16")


def test_gated_adapter_saves_in_shards(tmp_path):
    """`max_shard_size` splits the adapter as `save_pretrained` splits a checkpoint; it loads back exactly, a new
    save replaces the old files, and a missing shard is named."""
    from transformers_space.hub import load_space_adapter, save_space_adapter
    from transformers_space.hub.adapter import ADAPTER_WEIGHTS_INDEX

    model, _ = gated_model_on_saved_base(tmp_path / "base", draft_head_width=48)
    adapter_bytes = sum(t.nbytes for name, t in model.state_dict().items() if ".space_" in name)
    folder = save_space_adapter(model, tmp_path / "adapter", base_model=str(tmp_path / "base"),
                                max_shard_size=adapter_bytes // 3)
    shards = sorted(p.name for p in folder.glob("space_adapter-*.safetensors"))
    assert len(shards) >= 3 and all(p.stat().st_size <= adapter_bytes // 3 + 4096 for p in folder.glob("*-of-*"))
    weight_map = json.loads((folder / ADAPTER_WEIGHTS_INDEX).read_text())["weight_map"]
    assert sorted(set(weight_map.values())) == shards
    assert any("space_draft_head" in name for name in weight_map)
    loaded, _ = load_space_adapter(folder)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name

    (folder / shards[1]).unlink()
    with pytest.raises(ValueError, match=shards[1]):
        load_space_adapter(folder)
    with pytest.raises(ValueError, match="Unit"):  # a bad size is refused before the old files are touched
        save_space_adapter(model, folder, max_shard_size="3 bananas")
    assert (folder / ADAPTER_WEIGHTS_INDEX).is_file()
    save_space_adapter(model, folder, base_model=str(tmp_path / "base"))  # one file again: the shards go
    assert sorted(p.name for p in folder.iterdir()) == ["space_adapter.safetensors", "space_adapter_config.json"]
    assert torch.equal(load_space_adapter(folder)[0].state_dict()["lm_head.space_draft_head.up.weight"],
                       model.state_dict()["lm_head.space_draft_head.up.weight"])


def gated_model_on_saved_base(folder, **options):
    """A tiny Llama saved (with its tokenizer) to `folder`, loaded back with gated SPACE adapters of random weights
    (`options`: further SpaceConfig fields): (model, tokenizer)."""
    from tiny_models import tiny_config, tiny_tokenizer
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(tiny_config("llama")).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    model, tokenizer = load_space_adapter_free_base(folder, **options)
    randomise_gated_adapters(model, 4)
    return model, tokenizer


def assert_adapter_stored_in_bf16(loaded, model) -> None:
    """`loaded` holds `model`'s weights, its adapter ones rounded once to bf16 and read back as fp32."""
    weights = loaded.state_dict()
    for name, tensor in model.state_dict().items():
        expected = tensor.to(torch.bfloat16).float() if ".space_" in name else tensor
        assert weights[name].dtype == torch.float32 and torch.equal(weights[name], expected), name


def load_space_adapter_free_base(folder, **options):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = add_space_support(AutoModelForCausalLM.from_pretrained(folder), tokenizer, 3, mode="gated", **options)
    return model, tokenizer

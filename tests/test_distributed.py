"""SAR-SFT under real distributed engines: DDP, DeepSpeed ZeRO-2 / ZeRO-3 and FSDP2, two CPU processes (gloo).

Each engine trains the tiny Llama of `distributed_worker.py` for a few steps with the same global batch as a
single-process run. The distributed run must (1) really use the engine (accelerate's distributed type is not a
silent DDP fallback), (2) log the same losses and (3) save the same weights as the single-process run, and (4)
save a SPACE model that loads and decodes losslessly. Tolerance 1e-5: the arithmetic is the same, only the order
of floating-point sums differs (two half-batch gradients all-reduced, optimizer state sharded), which moves fp32
results by ~1e-7 per step; a wrong gradient scale, a lost adapter or a mask block dropped by sharding moves them
by orders of magnitude more.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import random_prompts

from transformers_space import load_space_model

pytest.importorskip("deepspeed", reason="the distributed engines come with the `test` extra")  # never skipped in CI

WORKER = Path(__file__).with_name("distributed_worker.py")
EXPECTED_TYPE = {"ddp": "MULTI_CPU", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED", "fsdp2": "FSDP"}
TOLERANCE = 1e-5


def run_worker(engine: str, mode: str, output_dir: Path) -> dict:
    # PYTHONFAULTHANDLER: a rank that aborts (SIGABRT from a C++ thread) prints every thread's Python stack
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(WORKER.parent), "PYTHONFAULTHANDLER": "1"}
    if engine == "single":
        command = [sys.executable, str(WORKER)]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                   str(29500 + os.getpid() % 1000), str(WORKER)]
    done = subprocess.run([*command, engine, mode, str(output_dir)], capture_output=True, text=True, timeout=600,
                          env=env, cwd=WORKER.parent.parent)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return json.loads((output_dir / "losses.json").read_text())


@pytest.fixture(scope="module")
def single_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("single")
    modes = ("full", "gated", "gated_per_position")
    return {mode: (run_worker("single", mode, root / mode), root / mode) for mode in modes}


@pytest.mark.slow
@pytest.mark.parametrize("engine, mode", [
    *((engine, mode) for engine in ("ddp", "zero2", "zero3", "fsdp2") for mode in ("full", "gated")),
    # per-position mask embeddings [k, hidden] under the engines that shard and gather parameters
    ("zero3", "gated_per_position"), ("fsdp2", "gated_per_position"),
])
def test_distributed_training_matches_one_process(engine, mode, single_runs, tmp_path):
    reference, reference_dir = single_runs[mode]
    report = run_worker(engine, mode, tmp_path)
    assert report["world_size"] == 2 and report["distributed_type"] == f"DistributedType.{EXPECTED_TYPE[engine]}"
    assert len(report["losses"]) == len(reference["losses"])
    assert max(abs(a - b) for a, b in zip(report["losses"], reference["losses"], strict=True)) < TOLERANCE

    trained, expected = load_space_model(tmp_path).eval(), load_space_model(reference_dir).eval()
    assert type(trained) is type(expected)  # the SPACE class, not a wrapper's (FSDP2 swaps classes)
    assert not list(tmp_path.glob("_fsdp*.py"))  # and none of the engine's sources in the remote code
    reference_weights = expected.state_dict()
    assert trained.state_dict().keys() == reference_weights.keys()
    moved = 0.0
    for name, tensor in trained.state_dict().items():
        assert (tensor - reference_weights[name]).abs().max() < TOLERANCE, name
        moved = max(moved, float((tensor - initial_weights(mode)[name]).abs().max()))
    assert moved > 1e-3  # training changed the weights it trains (else equality above would prove little)

    prompts = random_prompts(6, 7, seed=3)
    for prompt in prompts:
        kwargs = dict(max_new_tokens=24, do_sample=False)
        plain = trained.generate(prompt[None], **kwargs)
        assert torch.equal(trained.generate(prompt[None], use_space=True, **kwargs), plain)


_initial: dict[str, dict] = {}


def initial_weights(mode: str) -> dict:
    if mode not in _initial:
        from distributed_worker import initial_model

        _initial[mode] = initial_model(mode)[0].state_dict()
    return _initial[mode]

"""SpaceTrainer under DDP: `torchrun --nproc_per_node 2` on CPU (gloo), the script unchanged from one process."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from toy_language import toy_model, toy_rows, training_args

from transformers_space import SpaceConfig, load_space_model
from transformers_space.training import SpaceTrainer

TESTS = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), str(TESTS / "scripts" / "ddp_train.py"), str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]

    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert all(r["world_size"] == 2 and r["global_step"] == 4 and r["sar_blocks"] > 0 for r in ranks)
    assert ranks[0]["checksum"] == ranks[1]["checksum"]  # DDP kept the processes' weights identical

    # one AR step on 2 x 4 rows under DDP == one step on the same 8 rows in one process
    rows = [{"input_ids": row["input_ids"][: 8 + 2 * i]} for i, row in enumerate(toy_rows(8, seed=3))]
    args = training_args(tmp_path / "single", 1, optim="sgd", learning_rate=0.5, warmup_steps=0,
                         lr_scheduler_type="constant", per_device_train_batch_size=8)
    torch.manual_seed(0)
    single = SpaceTrainer(model=toy_model(), args=args, train_dataset=rows,
                          space_config=SpaceConfig(num_mask_tokens=2, sar_probability=0.0))
    single.train()
    distributed = torch.load(tmp_path / "ar_step.pt")
    for name, weight in single.model.state_dict().items():
        torch.testing.assert_close(distributed[name], weight, rtol=1e-4, atol=1e-6, msg=name)

    model = load_space_model(tmp_path / "gated", attn_implementation="eager").eval()
    prompt = torch.tensor([[1, 3, 5]])
    space = model.generate(prompt, max_new_tokens=8, do_sample=False, use_space=True)
    assert torch.equal(space, model.generate(prompt, max_new_tokens=8, do_sample=False))

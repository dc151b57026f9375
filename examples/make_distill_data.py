"""Self-distillation rows for SAR-SFT: the base model's own greedy answers to code, chat and math prompts.

Prompts come from `transformers_space.training.distill` (standard-library and installed packages' functions,
ShareGPT first turns, generated word problems; never an evaluation set), from its train split (`--split
heldout` makes evaluation rows for `--eval_data`: the held-out split is what `examples/heldout_acceptance.py`
measures on, never training data). Rows are appended as they are made;
rerunning the same command resumes where an interrupted run stopped, without redoing rows. Run it in the
background with a log, e.g.

    nohup python examples/make_distill_data.py --output data/distill_v4.jsonl --code 2500 --chat 2000 \
        --math 500 --packages transformers torch accelerate huggingface_hub tqdm peft > data/distill.log 2>&1 &
"""

from __future__ import annotations

import argparse
import logging
import random

import torch

from transformers_space.assets import load_default_model
from transformers_space.training.distill import append_answers, select_prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="JSONL of chat `messages` rows (appended to).")
    parser.add_argument("--code", type=int, default=240, help="Code prompts to answer.")
    parser.add_argument("--chat", type=int, default=240, help="ShareGPT prompts to answer.")
    parser.add_argument("--math", type=int, default=0, help="Word problems to answer.")
    parser.add_argument("--packages", nargs="*", default=[],
                        help="Installed packages whose documented functions join the standard library's.")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="Which prompts of the split are drawn, and their order.")
    parser.add_argument("--split", choices=["train", "heldout"], default="train",
                        help="'heldout' only for evaluation rows (`transformers-space train --eval_data`), never "
                        "for training.")
    args = parser.parse_args()
    for name, minimum in (("code", 0), ("chat", 0), ("math", 0), ("max_new_tokens", 1), ("batch_size", 1),
                          ("threads", 1)):
        if getattr(args, name) < minimum:
            parser.error(f"--{name.replace('_', '-')} must be at least {minimum}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    prompts = (select_prompts("code", args.code, args.split, args.seed, args.packages)
               + select_prompts("chat", args.chat, args.split, args.seed)
               + select_prompts("math", args.math, args.split, args.seed))
    random.Random(args.seed).shuffle(prompts)
    model, tokenizer = load_default_model()
    written = append_answers(model, tokenizer, prompts, args.output, args.max_new_tokens, args.batch_size)
    logging.getLogger("make_distill_data").info("wrote %d rows to %s", written, args.output)


if __name__ == "__main__":
    main()

"""Self-distillation rows for SAR-SFT: the base model's own greedy answers to code, chat and math prompts.

Prompts come from `transformers_space.training.distill` (standard-library and installed packages' functions,
ShareGPT first turns, generated word problems; never an evaluation set), from its train split (`--split
heldout` makes evaluation rows for `--eval_data`: the held-out split is what `examples/heldout_acceptance.py`
measures on, never training data). Rows are appended as they are made;
rerunning the same command resumes where an interrupted run stopped, without redoing rows. Run it in the
background with a log; the exact command of the shipped recipe is in `recipes/smollm2-135m-gated/recipe.sh`.
`--answers-from` reuses a committed answer store (`--export-answers` writes one), so a new machine rebuilds the
training file without generating again.
"""

from __future__ import annotations

import argparse
import logging
import random

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from transformers_space.assets import load_default_model
from transformers_space.training.distill import append_answers, export_answers, select_prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="JSONL of chat `messages` rows (appended to).")
    parser.add_argument("--model", help="Folder of the base model whose answers are the rows (default: the default "
                        "model, SmolLM2-135M-Instruct, see transformers_space.assets).")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="dtype the base model generates in: the one its SPACE model will decode in, since the "
                        "adapter learns to predict exactly that model's greedy tokens.")
    parser.add_argument("--code", type=int, default=240, help="Code prompts to answer.")
    parser.add_argument("--chat", type=int, default=240, help="ShareGPT prompts to answer.")
    parser.add_argument("--math", type=int, default=0, help="Word problems to answer.")
    parser.add_argument("--packages", nargs="*", default=[],
                        help="Installed packages whose documented functions join the standard library's.")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--min-answer-tokens", type=int, default=1,
                        help="Shorter answers are skipped (recorded in OUTPUT.skipped): training needs num_mask_tokens "
                        "+ 1 answer tokens for a mask block, so give at least that (the recipes give 8).")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="Which prompts of the split are drawn, and their order.")
    parser.add_argument("--answers-from", metavar="STORE",
                        help="An answer store (.jsonl.gz, see --export-answers): prompts answered there are not "
                        "generated again.")
    parser.add_argument("--export-answers", metavar="STORE",
                        help="Only write the answers of --output (keyed by prompt hash, no prompt text) to STORE, "
                        "merged into it when it exists, to commit with the recipe; nothing is generated.")
    parser.add_argument("--split", choices=["train", "heldout"], default="train",
                        help="'heldout' only for evaluation rows (`transformers-space train --eval_data`), never "
                        "for training.")
    args = parser.parse_args()
    for name, minimum in (("code", 0), ("chat", 0), ("math", 0), ("max_new_tokens", 1), ("batch_size", 1),
                          ("threads", 1), ("min_answer_tokens", 1)):
        if getattr(args, name) < minimum:
            parser.error(f"--{name.replace('_', '-')} must be at least {minimum}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.export_answers:
        note = (f"{args.model}, {args.dtype}, greedy" if args.model
                else f"SmolLM2-135M-Instruct, Q4_1 GGUF dequantised to fp32, {args.dtype}, greedy")
        count = export_answers(args.output, args.export_answers, args.max_new_tokens, note)
        logging.getLogger("make_distill_data").info("%d answers written to %s", count, args.export_answers)
        return
    torch.set_num_threads(args.threads)
    prompts = (select_prompts("code", args.code, args.split, args.seed, args.packages)
               + select_prompts("chat", args.chat, args.split, args.seed)
               + select_prompts("math", args.math, args.split, args.seed))
    random.Random(args.seed).shuffle(prompts)
    dtype = getattr(torch, args.dtype)
    if args.model:
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).eval()
    else:
        model, tokenizer = load_default_model(dtype=dtype)
    written = append_answers(model, tokenizer, prompts, args.output, args.max_new_tokens, args.batch_size,
                             answer_store=args.answers_from, min_answer_tokens=args.min_answer_tokens)
    logging.getLogger("make_distill_data").info("wrote %d rows to %s", written, args.output)


if __name__ == "__main__":
    main()

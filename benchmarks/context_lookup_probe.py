"""Would a context lookup help the masks' drafts, and with which settings? (The probe behind `decoding/lookup.py`.)

Runs greedy SPACE at the full layout with the masks' drafts alone on TRAINING-split prompts that are not in the
training file (so neither held-out nor benchmark prompts are used to choose settings), records at every pass
the drafting context and each mask's top 16 tokens, and then replays the passes offline: at each pass, how many
of the masks' drafts the final (greedy, hence fixed) text accepts, against a hybrid that takes the lookup's token
where the mask ranks it high enough (probability at least `ratio` x the mask's favourite, among its top 16;
ratio -1: the lookup's token whenever there is one), for several n-gram ranges. Tokens per pass here are
1 + accepted drafts per pass, at the passes the masks-only run visited (a replay, not a new run: later masks'
draft-head inputs are those of the masks' own drafts).

    python benchmarks/context_lookup_probe.py --data data/distill_v5.jsonl --prompts 16
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math

import torch

from transformers_space import SpaceLayoutPlan
from transformers_space.decoding.candidates import SpaceCandidateGenerator
from transformers_space.decoding.lookup import context_continuation
from transformers_space.loading import load_model
from transformers_space.prompts import encode_prompts
from transformers_space.training.distill import select_prompts

PACKAGES = ["transformers", "torch", "accelerate", "huggingface_hub", "tqdm", "peft", "safetensors", "matplotlib",
            "numpy"]


@contextlib.contextmanager
def recording_drafts(records: list):
    """While open, every greedy draft records (context length, top-16 scores and tokens per mask) in `records`.
    Restores the drafter afterwards (this script's process only)."""
    original = SpaceCandidateGenerator.get_candidates

    def recorded(self, input_ids, *args, **kwargs):
        sequence, scores = original(self, input_ids, *args, **kwargs)
        if scores is not None:
            top = scores[0].topk(16, dim=-1)
            records.append((input_ids.shape[1], top.values.tolist(), top.indices.tolist()))
        return sequence, scores

    SpaceCandidateGenerator.get_candidates = recorded
    try:
        yield
    finally:
        SpaceCandidateGenerator.get_candidates = original


def accepted(drafts: list[int], truth: list[int]) -> int:
    count = 0
    for draft, token in zip(drafts, truth, strict=False):  # truth may be longer
        if draft != token:
            break
        count += 1
    return count


def replay(rows: list[dict], suite: str, ratio: float, min_ngram: int, max_ngram: int) -> tuple[float, float]:
    """(masks' tokens per pass, hybrid's tokens per pass) over the suite's recorded passes."""
    masks_total = hybrid_total = passes = 0
    for row in rows:
        if row["suite"] != suite:
            continue
        text = row["sequence"]
        for length, values, tokens in row["passes"]:
            truth = text[length : length + len(tokens)]
            if len(truth) < len(tokens):
                continue  # the text ends inside this pass
            masks = [ranked[0] for ranked in tokens]
            lookup = context_continuation(text[:length], len(tokens), min_ngram, max_ngram)
            hybrid, following = [], True
            for j, ranked in enumerate(tokens):
                proposed = lookup[j] if following and j < len(lookup) else None
                if proposed is not None and ratio < 0:
                    hybrid.append(proposed)
                    continue
                if proposed is not None and proposed in ranked:
                    probabilities = [math.exp(v - values[j][0]) for v in values[j]]
                    if probabilities[ranked.index(proposed)] >= ratio * probabilities[0]:
                        hybrid.append(proposed)
                        continue
                following = proposed is not None and proposed == masks[j]
                hybrid.append(masks[j])
            masks_total += accepted(masks, truth)
            hybrid_total += accepted(hybrid, truth)
            passes += 1
    return 1 + masks_total / passes, 1 + hybrid_total / passes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", default="hub_configs/smollm2-135m-space-gated")
    parser.add_argument("--data", required=True, help="The training file: its prompts are left out.")
    parser.add_argument("--prompts", type=int, default=16, help="Code and chat prompts each.")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    args = parser.parse_args()
    with open(args.data, encoding="utf-8") as handle:
        trained = {json.loads(line)["messages"][0]["content"] for line in handle}
    model, tokenizer = load_model(args.adapter)
    full = SpaceLayoutPlan.full(model.config.space_config["num_mask_tokens"])
    rows = []
    for suite in ("code", "chat"):
        pool = select_prompts(suite, 400, "train", seed=7, packages=PACKAGES if suite == "code" else ())
        for prompt in [p for p in pool if p not in trained][: args.prompts]:
            ids = encode_prompts(tokenizer, [prompt])["input_ids"]
            records: list = []
            with recording_drafts(records):
                out = model.generate(ids, max_new_tokens=args.max_new_tokens, do_sample=False, use_space=True,
                                     space_layout=full, context_lookup=False, return_dict_in_generate=True)
            rows.append({"suite": suite, "sequence": out.sequences[0].tolist(), "passes": records})
    print("ngram  ratio  code: masks -> hybrid   chat: masks -> hybrid")
    for min_ngram, max_ngram in ((1, 3), (2, 3), (2, 4), (3, 4), (2, 6)):
        for ratio in (-1, 0.0, 0.02, 0.05, 0.1, 0.2, 0.5):
            code, chat = (replay(rows, suite, ratio, min_ngram, max_ngram) for suite in ("code", "chat"))
            print(f"{min_ngram}-{max_ngram}   {ratio:5.2f}  {code[0]:.3f} -> {code[1]:.3f}        "
                  f"{chat[0]:.3f} -> {chat[1]:.3f}")


if __name__ == "__main__":
    with torch.inference_mode():
        main()

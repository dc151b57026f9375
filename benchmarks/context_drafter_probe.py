"""Would a drafter with attention over the verified context draft the first token better than the MLP draft head?

A teacher-forced probe for the 135M model, whose MLP head is saturated (BENCHMARKS.md, "a deeper head"). The
drafter is EAGLE's (arXiv 2401.15077) in its smallest form: for every position i of a row, u_i = fc([f_i;
E[x_{i+1}]]) from the base model's last hidden state f_i and the embedding of the next token, one pre-norm causal
self-attention + MLP layer over u, a learned norm, and the base's frozen LM head; g_i predicts the base model's
greedy choice at position i + 1, the token after x_{i+1}. That is what the first mask of a SPACE group drafts after
a pass that emitted x_{i+1}: f_i is the verify row that emitted it, and every f before it came from earlier
passes, so decoding would have all of them. Agreement is scored at every answer position of the held-out rows, the
quantity the MLP head's first mask reaches ~0.70 on (alpha_1 in `draft_head_probe.py`: blocks start at uniformly
drawn answer positions). Only the first draft is scored: later ones would run the layer on its own outputs.

    python benchmarks/context_drafter_probe.py --data data/distill_v5.jsonl --heldout data/heldout_v5.jsonl \
        --rows 1500 --epochs 2

A probe, not a feature: no drafter of this kind is built into the library.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from transformers_space import SpaceConfig
from transformers_space.assets import default_model_dir
from transformers_space.loading import load_model
from transformers_space.training.cli import load_rows
from transformers_space.training.data import prepare_rows

IGNORE = -100


@torch.no_grad()
def collect(model, tokenizer, rows: list[dict], max_length: int) -> list[dict[str, torch.Tensor]]:
    """Per row: input ids, the base's last hidden states and greedy choices, and which positions are answer."""
    tokenized = prepare_rows(rows, tokenizer, SpaceConfig(num_mask_tokens=1, mode="gated"), model.config, max_length)
    out = []
    for row in tokenized.rows:
        ids = torch.tensor([row["input_ids"]])
        outputs = model(input_ids=ids, output_hidden_states=True)
        out.append({"ids": ids[0], "features": outputs.hidden_states[-1][0].float(),
                    "choice": outputs.logits[0].argmax(-1),
                    "answer": torch.tensor(row["labels"]) != IGNORE})
    return out


class ContextDrafter(nn.Module):
    def __init__(self, hidden: int, heads: int, embedding: torch.Tensor):
        super().__init__()
        self.embedding = embedding
        self.fc = nn.Linear(2 * hidden, hidden)
        self.layer = nn.TransformerEncoderLayer(hidden, heads, 4 * hidden, dropout=0.0, activation="gelu",
                                                batch_first=True, norm_first=True)
        self.norm = nn.RMSNorm(hidden)

    def forward(self, features: torch.Tensor, next_ids: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """features [B, S, H] (f_0..f_{S-1}), next_ids [B, S] (x_1..x_S), padding [B, S] True at padding."""
        u = self.fc(torch.cat([features, self.embedding[next_ids]], -1))
        causal = torch.ones(u.shape[1], u.shape[1], dtype=torch.bool).triu(1)  # True: may not attend
        return self.norm(self.layer(u, src_mask=causal, src_key_padding_mask=padding))


def batches(rows: list[dict], size: int, shuffle: bool):
    order = torch.randperm(len(rows)).tolist() if shuffle else list(range(len(rows)))
    for start in range(0, len(order), size):
        part = [rows[i] for i in order[start : start + size]]
        length = max(len(r["ids"]) for r in part) - 1  # positions 0..S-2 have a next token
        hidden = part[0]["features"].shape[-1]
        features = torch.zeros(len(part), length, hidden)
        next_ids = torch.zeros(len(part), length, dtype=torch.long)
        target = torch.full((len(part), length), IGNORE, dtype=torch.long)
        padding = torch.ones(len(part), length, dtype=torch.bool)
        for b, r in enumerate(part):
            n = len(r["ids"]) - 1
            features[b, :n], next_ids[b, :n], padding[b, :n] = r["features"][:n], r["ids"][1:], False
            # g_i predicts the base's choice at i + 1 (the token at i + 2): scored where that token is an answer's
            scored = torch.zeros(n, dtype=torch.bool)
            scored[: n - 1] = r["answer"][2:]
            target[b, :n] = torch.where(scored, r["choice"][1:], IGNORE)
        yield features, next_ids, padding, target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="Base model folder (default: the project's default model).")
    parser.add_argument("--data", required=True)
    parser.add_argument("--heldout", required=True)
    parser.add_argument("--rows", type=int, default=1500)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--positions", type=int, default=96, help="Scored positions per row per step (LM-head cost).")
    parser.add_argument("--max-length", type=int, default=384)
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tokenizer = load_model(args.model or str(default_model_dir()))
    model.eval()
    started = time.time()
    train = collect(model, tokenizer, load_rows(args.data)[: args.rows], args.max_length)
    held = collect(model, tokenizer, load_rows(args.heldout), args.max_length)
    print(f"collected {len(train)} training and {len(held)} held-out rows in {time.time() - started:.0f} s", flush=True)
    head_weight = model.get_output_embeddings().weight.detach().float()
    embedding = model.get_input_embeddings().weight.detach().float()
    drafter = ContextDrafter(head_weight.shape[1], model.config.num_attention_heads, embedding)
    optimizer = torch.optim.AdamW(drafter.parameters(), lr=1e-3, weight_decay=0.0)
    batch = 8
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, pct_start=0.05,
                                                   total_steps=args.epochs * -(-len(train) // batch))
    for epoch in range(args.epochs):
        started = time.time()
        drafter.train()
        for features, next_ids, padding, target in batches(train, batch, shuffle=True):
            g = drafter(features, next_ids, padding)
            where = torch.nonzero(target != IGNORE)
            where = where[torch.randperm(len(where))[: args.positions * len(target)]]
            logits = g[where[:, 0], where[:, 1]] @ head_weight.T
            loss = F.cross_entropy(logits, target[where[:, 0], where[:, 1]])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        drafter.eval()
        right = total = 0
        with torch.no_grad():
            for features, next_ids, padding, target in batches(held, batch, shuffle=False):
                g = drafter(features, next_ids, padding)
                scored = target != IGNORE
                right += int(((g[scored] @ head_weight.T).argmax(-1) == target[scored]).sum())
                total += int(scored.sum())
        print(f"epoch {epoch}: first-draft agreement on held-out answer positions {right / total:.4f} "
              f"({total} positions; epoch {time.time() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()

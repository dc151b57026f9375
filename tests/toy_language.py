"""A learnable toy language for training tests: arithmetic progressions modulo 20.

Row: a, a+d, a+2d, ... (mod 20) with a random start a and a step d in {1, 2, 3}, written as token ids
1..20 of a tiny Llama (vocabulary 48, id 0 = padding). After two tokens the rest is determined, so a
model that learned it drafts all k mask tokens right and SPACE emits up to k+1 tokens per pass.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Trainer, TrainingArguments, default_data_collator

MODULUS = 20
STEPS = (1, 2, 3)
ROW_LENGTH = 16


def progression(start: int, step: int, length: int) -> list[int]:
    return [1 + (start + i * step) % MODULUS for i in range(length)]


def toy_rows(count: int, seed: int, length: int = ROW_LENGTH) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(MODULUS, (count,), generator=generator).tolist()
    steps = torch.randint(len(STEPS), (count,), generator=generator).tolist()
    return [{"input_ids": progression(a, STEPS[d], length)} for a, d in zip(starts, steps, strict=True)]


def toy_model(seed: int = 0, hidden: int = 48):
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=48, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, bos_token_id=None, eos_token_id=None, pad_token_id=0,
    )
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager")


def training_args(output_dir, max_steps: int, learning_rate: float = 1e-2, **overrides) -> TrainingArguments:
    values = dict(
        output_dir=str(output_dir), max_steps=max_steps, per_device_train_batch_size=16, learning_rate=learning_rate,
        lr_scheduler_type="cosine", warmup_steps=5, weight_decay=0.0, logging_steps=50, save_strategy="no",
        report_to=[], disable_tqdm=True, seed=0, use_cpu=True,
    )
    return TrainingArguments(**{**values, **overrides})


def train_ar_base(output_dir, steps: int = 150):
    """A plain causal LM trained on the toy language with transformers' own Trainer (no SPACE anywhere)."""
    model = toy_model()
    rows = [{"input_ids": row["input_ids"], "labels": row["input_ids"]} for row in toy_rows(16 * steps, seed=1)]
    Trainer(
        model=model, args=training_args(output_dir, steps), train_dataset=rows, data_collator=default_data_collator
    ).train()
    return model.eval()


def toy_prompts(count: int = 12) -> torch.Tensor:
    return torch.tensor([progression(3 * i % MODULUS, STEPS[i % len(STEPS)], 3) for i in range(count)])


def space_vs_plain(model, prompts: torch.Tensor | None = None, max_new_tokens: int = 16):
    """(SPACE output equals plain greedy output, mean tokens per pass over rows, the SPACE output)."""
    prompts = toy_prompts() if prompts is None else prompts
    model.eval()
    plain = model.generate(prompts, max_new_tokens=max_new_tokens, do_sample=False, use_space=False)
    space = model.generate(
        prompts, max_new_tokens=max_new_tokens, do_sample=False, use_space=True, return_dict_in_generate=True
    )
    per_row = [sum(counts) / len(counts) for counts in space.tokens_per_pass]
    return torch.equal(plain, space.sequences), sum(per_row) / len(per_row), space.sequences

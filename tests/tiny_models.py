"""Tiny random causal LMs of every supported architecture, built in-process (no Hub access).

`drafty=True` makes drafts often right without training: every residual branch's output projection is
shrunk (each position's prediction then depends mostly on its own token), all embeddings share one
common direction and the LM-head row of one "favourite" token is pointed along it, so most positions,
mask positions included, predict the favourite, but context still changes some predictions. The mask
token's input embedding is that of an ordinary token. Then the full-acceptance, partial-acceptance,
bonus-token and stop-inside-a-run paths of SPACE decoding all occur.
"""

from __future__ import annotations

import torch
import transformers
from transformers import (
    AutoModelForCausalLM,
    GemmaConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    Olmo2Config,
    Phi3Config,
    Qwen2Config,
    Qwen3Config,
)

from transformers_space import SUPPORTED_MODEL_TYPES, add_space_support

VOCAB = 48
COMMON = dict(vocab_size=VOCAB, bos_token_id=None, eos_token_id=None, pad_token_id=0)
LLAMA_LIKE = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    max_position_embeddings=512, **COMMON,
)

CONFIGS = {
    "llama": lambda **kw: LlamaConfig(**{**LLAMA_LIKE, **kw}),
    "mistral": lambda **kw: MistralConfig(**{**LLAMA_LIKE, "sliding_window": 4096, **kw}),
    "qwen2": lambda **kw: Qwen2Config(**{**LLAMA_LIKE, **kw}),
    "qwen3": lambda **kw: Qwen3Config(**{**LLAMA_LIKE, "head_dim": 8, **kw}),
    "phi3": lambda **kw: Phi3Config(**{**LLAMA_LIKE, **kw}),
    "gemma": lambda **kw: GemmaConfig(**{**LLAMA_LIKE, "head_dim": 8, **kw}),
    "olmo2": lambda **kw: Olmo2Config(**{**LLAMA_LIKE, **kw}),
    "gpt2": lambda **kw: GPT2Config(**{"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 512, **COMMON, **kw}),
    "gpt_neox": lambda **kw: GPTNeoXConfig(
        **{"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
           "max_position_embeddings": 512, **COMMON, **kw}
    ),
    # each switches on what the family does differently, small enough to bite in a 2-layer model: soft-capping with
    # a small cap, sliding windows shorter than the prompts, scaled logits, layers without rotary embeddings,
    # several experts with top-2 routing
    "gemma2": lambda **kw: transformers.Gemma2Config(**{
        **LLAMA_LIKE, "head_dim": 8, "final_logit_softcapping": 2.0, "attn_logit_softcapping": 3.0,
        "sliding_window": 4, **kw}),
    "gemma3_text": lambda **kw: transformers.Gemma3TextConfig(**{
        **LLAMA_LIKE, "head_dim": 8, "num_hidden_layers": 3, "final_logit_softcapping": 2.0, "sliding_window": 4,
        "sliding_window_pattern": 2, **kw}),
    "granite": lambda **kw: transformers.GraniteConfig(**{
        **LLAMA_LIKE, "logits_scaling": 4.0, "residual_multiplier": 0.5, "embedding_multiplier": 2.0,
        "attention_multiplier": 0.2, **kw}),
    "cohere": lambda **kw: transformers.CohereConfig(**{**LLAMA_LIKE, "logit_scale": 0.3, **kw}),
    "smollm3": lambda **kw: transformers.SmolLM3Config(**{**LLAMA_LIKE, "no_rope_layer_interval": 2, **kw}),
    "starcoder2": lambda **kw: transformers.Starcoder2Config(**{**LLAMA_LIKE, "sliding_window": 4, **kw}),
    "phi": lambda **kw: transformers.PhiConfig(**{**LLAMA_LIKE, **kw}),
    "glm4": lambda **kw: transformers.Glm4Config(**{**LLAMA_LIKE, "head_dim": 8, **kw}),
    "olmo3": lambda **kw: transformers.Olmo3Config(**{**LLAMA_LIKE, "sliding_window": 4, **kw}),
    "qwen3_moe": lambda **kw: transformers.Qwen3MoeConfig(**{
        **LLAMA_LIKE, "head_dim": 8, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16, **kw}),
    "mixtral": lambda **kw: transformers.MixtralConfig(**{
        **LLAMA_LIKE, "num_local_experts": 4, "num_experts_per_tok": 2, **kw}),
    "olmoe": lambda **kw: transformers.OlmoeConfig(**{**LLAMA_LIKE, "num_experts": 4, "num_experts_per_tok": 2, **kw}),
    "gpt_oss": lambda **kw: transformers.GptOssConfig(**{
        **LLAMA_LIKE, "head_dim": 8, "num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": 4, **kw}),
}
# families whose attention sdpa cannot compute (soft-capped scores, attention sinks)
EAGER_ONLY = ("gemma2", "gpt_oss")
ARCHITECTURES = SUPPORTED_MODEL_TYPES  # the test matrix is the table (test_architectures.py)

RESIDUAL_OUTPUTS = ("o_proj", "down_proj", "c_proj", "dense", "dense_4h_to_h", "fc2", "experts")


def tiny_config(arch: str, **overrides):
    return CONFIGS[arch](**overrides)


def tiny_model(
    arch: str,
    seed: int = 0,
    num_mask_tokens: int = 3,
    drafty: bool = False,
    residual_scale: float = 0.5,
    favourite_strength: float = 1.0,
    dtype=torch.float32,
    attn_implementation: str | None = None,
    **config_overrides,
):
    """A random `arch` model with SPACE support, in eval mode (sdpa attention where the family has it)."""
    attn_implementation = attn_implementation or ("eager" if arch in EAGER_ONLY else "sdpa")
    torch.manual_seed(seed)
    config = tiny_config(arch, **config_overrides)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation, dtype=dtype)
    model.eval()
    if drafty:
        make_drafty(model, seed, residual_scale, favourite_strength)
    add_space_support(model, num_mask_tokens=num_mask_tokens)
    if drafty:
        mask_id = model.config.space_config["mask_token_id"]
        generator = torch.Generator().manual_seed(seed)
        donor = int(torch.randint(1, VOCAB, (1,), generator=generator))
        with torch.no_grad():
            model.get_input_embeddings().weight[mask_id] = model.get_input_embeddings().weight[donor]
    return model


@torch.no_grad()
def make_drafty(model, seed: int, residual_scale: float, favourite_strength: float) -> None:
    for name, module in model.named_modules():
        if name.split(".")[-1] in RESIDUAL_OUTPUTS:
            for param in module.parameters():
                param.mul_(residual_scale)
    generator = torch.Generator().manual_seed(seed + 1)
    embeddings = model.get_input_embeddings().weight
    direction = torch.randn(embeddings.shape[1], generator=generator)
    direction = direction / direction.norm() * embeddings.norm(dim=1).mean()
    embeddings += direction
    favourite = 1 + seed % (VOCAB - 1)
    head = model.get_output_embeddings().weight
    head[favourite] += favourite_strength * head.norm(dim=1).mean() * direction / direction.norm()


def random_prompts(batch: int, length: int, seed: int, low: int = 1, high: int = VOCAB) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (batch, length), generator=generator)


def left_padded(lengths: list[int], seed: int, pad_token_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random prompts of the given lengths, left-padded as a tokenizer with padding_side='left' would."""
    width = max(lengths)
    ids = random_prompts(len(lengths), width, seed)
    mask = torch.ones_like(ids)
    for row, length in enumerate(lengths):
        ids[row, : width - length] = pad_token_id
        mask[row, : width - length] = 0
    return ids, mask


def tiny_tokenizer():
    """A real fast tokenizer over the tiny vocabulary: words w1..w47, '<pad>' is id 0."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, **{f"w{i}": i for i in range(1, VOCAB)}}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="w1"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", padding_side="left")
    return tokenizer

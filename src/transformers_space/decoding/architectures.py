"""The one table of architectures SPACE supports: a new family is one `ArchSpec` here plus its tiny test config.

An architecture qualifies when its causal-LM forward is exactly `lm_head(base_model(...))` (SPACE runs the
body and the head separately and feeds its own 4D attention mask and position ids through the stock
forward) and the test suite proves it lossless. The table gives, per family, the model types it covers,
the linear layers that get gated / LoRA adapters (the attention and MLP projections, by the last component
of their module path) and what a user should know about its chat template. Everything else (mask token,
masks per group, adapter rank) is a `SpaceConfig` default and the same for every family.

Who reads it: `add_space_support` (refuses other architectures, naming these), the gated and LoRA adapters
(default targets), the README's list, and the test matrix (`tests/tiny_models.py` must hold a tiny config
for every model type here; `tests/test_architectures.py` checks it).

Imports only the standard library (it ships as remote code).
"""

from __future__ import annotations

from dataclasses import dataclass

LLAMA_LIKE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ATTENTION_ONLY = ("q_proj", "k_proj", "v_proj", "o_proj")
# Mixture-of-experts families: transformers 5.x keeps each layer's experts as fused 3D parameters
# (`experts.gate_up_proj`, `experts.down_proj`), not as linear layers, so an adapter hook cannot reach one expert;
# their adapters sit on the attention projections. The router and the experts then run unchanged on every
# ordinary token (routing is per token), and a mask row is routed by what the adapted attention made of it.
# Exactness: a forward without masks (all of plain decoding) is bit-identical with or without the adapters; in a
# forward with masks, an expert multiplies every row routed to it at once, so the masks' new routing changes
# that product's shape and the ordinary rows sharing the expert by float rounding only (as any multi-token pass
# differs from a one-token pass; greedy verification compares argmaxes, tests/test_families.py).
MOE_NOTE = ("Mixture of experts: adapters on the attention projections only (the experts are fused 3D parameters "
            "in transformers 5.x); ordinary tokens' routing is untouched. ")


@dataclass(frozen=True)
class ArchSpec:
    family: str
    model_types: tuple[str, ...]  # `config.model_type` values
    adapter_targets: tuple[str, ...]  # attention and MLP projections: last component of their module path
    chat_notes: str = ""  # what training and decoding need to know about its tokenizer / chat template


ARCHITECTURES: tuple[ArchSpec, ...] = (
    ArchSpec("gemma", ("gemma",), LLAMA_LIKE,
             "<start_of_turn>user ... <end_of_turn>; no system role; generation should stop at <end_of_turn>."),
    ArchSpec("gemma2", ("gemma2",), LLAMA_LIKE,
             "Soft-capped logits and attention scores, alternating sliding-window and full layers; sdpa cannot "
             "soft-cap attention, so it loads with attn_implementation='eager'. Gemma chat template."),
    ArchSpec("gemma3", ("gemma3_text",), LLAMA_LIKE,
             "Text-only Gemma 3 (Gemma3ForCausalLM); sliding-window and full layers in a fixed pattern, optional "
             "logit soft-capping. Gemma chat template."),
    ArchSpec("granite", ("granite",), LLAMA_LIKE,
             "Logits divided by `logits_scaling`, embeddings and residuals scaled; <|start_of_role|> template."),
    ArchSpec("cohere", ("cohere",), LLAMA_LIKE,
             "Logits multiplied by `logit_scale`; parallel attention and MLP; <|START_OF_TURN_TOKEN|> template."),
    ArchSpec("smollm3", ("smollm3",), LLAMA_LIKE,
             "Every few layers run without rotary embeddings (no_rope_layers); ChatML with a /think flag."),
    ArchSpec("starcoder2", ("starcoder2",), ("q_proj", "k_proj", "v_proj", "o_proj", "c_fc", "c_proj"),
             "Code model without a chat template: train on plain `text` rows; sliding-window attention."),
    ArchSpec("phi", ("phi",), ("q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"),
             "Phi-1/1.5/2: parallel attention and MLP, partial rotary; no chat template (plain `text` rows)."),
    ArchSpec("glm4", ("glm4",), ("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"),
             "GLM-4 chat template ([gMASK]<sop><|user|>...); fused gate/up projection."),
    ArchSpec("olmo3", ("olmo3",), LLAMA_LIKE, "Sliding-window and full layers; OLMo chat template."),
    ArchSpec("qwen3_moe", ("qwen3_moe",), ATTENTION_ONLY, MOE_NOTE + "ChatML as Qwen3."),
    ArchSpec("mixtral", ("mixtral",), ATTENTION_ONLY, MOE_NOTE + "Mistral [INST] template."),
    ArchSpec("olmoe", ("olmoe",), ATTENTION_ONLY, MOE_NOTE + "OLMo / Tulu chat template."),
    ArchSpec("gpt_oss", ("gpt_oss",), ATTENTION_ONLY,
             MOE_NOTE + "Attention sinks and alternating sliding-window layers: loads with "
             "attn_implementation='eager'; the harmony chat format."),
    ArchSpec("gpt2", ("gpt2",), ("c_attn", "c_proj", "c_fc"),
             "No chat template: train on plain `text` rows. Learned absolute positions: keep max_length within "
             "n_positions."),
    ArchSpec("gpt_neox", ("gpt_neox",), ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
             "Pythia/GPT-NeoX base models have no chat template: train on plain `text` rows."),
    ArchSpec("llama", ("llama", "mistral"), LLAMA_LIKE,
             "Llama-3 / Mistral-instruct / SmolLM2 (ChatML) templates all work; set pad_token (often None) and "
             "padding_side='left' for batches."),
    ArchSpec("olmo2", ("olmo2",), LLAMA_LIKE, "Tulu-style <|user|>/<|assistant|> template in the instruct models."),
    ArchSpec("phi3", ("phi3",), ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
             "<|user|> ... <|end|><|assistant|>; eos is <|end|> (id 32007) for chat, not </s>."),
    ArchSpec("qwen", ("qwen2", "qwen3"), LLAMA_LIKE,
             "ChatML with <|im_start|>/<|im_end|>; Qwen3 templates add a <think> block unless "
             "enable_thinking=False. Qwen's embedding matrix is larger than its tokenizer: the mask token reuses "
             "the first unused row."),
)

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(sorted(t for spec in ARCHITECTURES for t in spec.model_types))


def arch_spec(model_type: str) -> ArchSpec:
    """The entry for `model_type`; ValueError naming the supported model types otherwise."""
    for spec in ARCHITECTURES:
        if model_type in spec.model_types:
            return spec
    raise ValueError(
        f"SPACE does not support the architecture {model_type!r}. Supported decoder-only architectures: "
        f"{', '.join(SUPPORTED_MODEL_TYPES)}."
    )

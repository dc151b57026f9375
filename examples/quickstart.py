"""Quickstart: give a causal LM SPACE decoding and compare it with plain greedy decoding.

Builds a small random Llama in-process (no download), adds SPACE support and generates both ways.
An untrained model almost never has its drafts accepted (about 1 token per pass); a SAR-SFT trained
model emits several per pass. The output is identical either way: that is the point of SPACE.
"""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from transformers_space import add_space_support


def main() -> None:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, bos_token_id=None, eos_token_id=None, pad_token_id=0,
    )
    model = add_space_support(LlamaForCausalLM(config).eval(), num_mask_tokens=4)
    prompt = torch.randint(1, 512, (1, 12))

    plain = model.generate(prompt, max_new_tokens=40, do_sample=False)
    space = model.generate(prompt, max_new_tokens=40, do_sample=False, use_space=True, return_dict_in_generate=True)

    counts = space.tokens_per_pass[0]
    print("SPACE settings:", model.config.space_config)
    print("generated ids:", space.sequences[0, prompt.shape[1]:].tolist())
    print(f"tokens per pass: {counts}  (mean {sum(counts) / len(counts):.2f})")
    print("identical to plain greedy:", torch.equal(plain, space.sequences))


if __name__ == "__main__":
    main()

"""Whether a row of a multi-token pass is computed bit for bit as a 1-token pass would compute it, per dtype.

Greedy SPACE is identical to plain greedy when every verifying row of its passes carries the bits a 1-token
pass would give that token; where it does not, a near-tie between the top two logits can flip (README, "What
identical means precisely"; in bf16, logits of magnitude ~20 come in steps of 1/8, so ties are common). This
checks the two operations whose results could depend on the number of rows, on random weights of a model's own
shapes (its config only):

- each distinct `nn.Linear` shape: the row counts n (2..MAX) for which some row of an n-row product differs
  from the 1-row product of the same input (`F.linear`, as plain decoding runs it), for the n-row product taken
  by `F.linear` and by the weights-first kernel SPACE's passes may run under (`kernels.weights_first_linear`);
- attention: SDPA over a cache of PREFIX keys with a pass of PASS query rows under a causal float mask (how SPACE
  feeds a pass: its first rows verify, mask rows follow), against each verifying row alone over the keys it sees
  (how plain decoding runs it).

    python benchmarks/row_independence.py --model "$(python -c 'from transformers_space.assets import \
        coder_model_dir; print(coder_model_dir())')" --dtypes float32 bfloat16
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from transformers import AutoConfig

from transformers_space.decoding.kernels import weights_first_linear

PRODUCTS = {"F.linear": F.linear, "weights-first": weights_first_linear}


def head_size(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def linear_shapes(config) -> list[tuple[int, int]]:
    """(out, in) of a decoder layer's projections and of the LM head, for Llama-like configs."""
    hidden, inner = config.hidden_size, config.intermediate_size
    kv = config.num_key_value_heads * head_size(config)
    return [(config.num_attention_heads * head_size(config), hidden), (kv, hidden), (hidden, inner), (inner, hidden),
            (config.vocab_size, hidden)]


def rows_differing(
    out_features: int, in_features: int, dtype: torch.dtype, max_rows: int, product=F.linear
) -> list[int]:
    """Row counts n whose n-row `product` differs somewhere from the same rows computed one at a time by `F.linear`."""
    weight = (torch.randn(out_features, in_features) / in_features**0.5).to(dtype)
    x = torch.randn(max_rows, in_features).to(dtype)
    one_at_a_time = torch.cat([F.linear(x[j:j + 1], weight) for j in range(max_rows)])
    return [n for n in range(2, max_rows + 1) if not torch.equal(product(x[:n], weight), one_at_a_time[:n])]


def attention_elements_differing(config, dtype: torch.dtype, rows: int, verifying: int, prefix: int) -> list[int]:
    """Per verifying row: elements of its SDPA output that differ between the pass's masked call and its own call."""
    head_dim, heads = head_size(config), config.num_attention_heads
    q = torch.randn(1, heads, rows, head_dim).to(dtype)
    k = torch.randn(1, heads, prefix + rows, head_dim).to(dtype)
    v = torch.randn(1, heads, prefix + rows, head_dim).to(dtype)
    mask = torch.full((rows, prefix + rows), float("-inf"))
    for j in range(rows):
        mask[j, : prefix + j + 1] = 0
    together = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(dtype)[None, None])
    return [int((together[:, :, j:j + 1] != F.scaled_dot_product_attention(
        q[:, :, j:j + 1], k[:, :, : prefix + j + 1], v[:, :, : prefix + j + 1])).sum()) for j in range(verifying)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="A model folder (only its config is read).")
    parser.add_argument("--dtypes", nargs="+", choices=["float32", "bfloat16"], default=["float32", "bfloat16"])
    parser.add_argument("--max-rows", type=int, default=32)
    parser.add_argument("--pass-rows", type=int, default=13, help="Rows of a pass (13: auto's plan for the coder).")
    parser.add_argument("--verifying-rows", type=int, default=5, help="Its verifying rows (1 + k).")
    parser.add_argument("--prefix", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(args.model)
    print(f"{config.model_type}, torch {torch.__version__}, {args.threads} threads")
    for name in args.dtypes:
        dtype = getattr(torch, name)
        for out_features, in_features in sorted(set(linear_shapes(config))):
            for label, product in PRODUCTS.items():
                differing = rows_differing(out_features, in_features, dtype, args.max_rows, product)
                first = f"from {differing[0]} rows on ({len(differing)} of {args.max_rows - 1} counts)" if differing \
                    else "never"
                print(f"{name:9s} linear {out_features}x{in_features}, {label}: rows differ from 1-row F.linear "
                      f"{first}")
        counts = attention_elements_differing(config, dtype, args.pass_rows, args.verifying_rows, args.prefix)
        print(f"{name:9s} attention, a pass of {args.pass_rows} rows vs each verifying row alone: elements differing "
              f"per row {counts} (of {config.num_attention_heads * head_size(config)})")


if __name__ == "__main__":
    main()

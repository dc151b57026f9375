"""SpaceDataCollator on hand-written token lists: tokens, positions, targets and 4D visibility, in both forms.

Plus two model-level checks of the layouts: a block's mask logits are the same whether it is laid out
one-pass (appended behind a 4D mask), truncated (plain causal) or in two passes (prefix KV in a cache).
"""

import pytest
import torch
from tiny_models import tiny_model
from transformers import DynamicCache

from transformers_space.decoding.compat import cache_argument_name
from transformers_space.training import SpaceDataCollator, valid_block_starts

M = 99  # the mask token id in these tests
IGNORE = -100


def visible(batch_mask: torch.Tensor, row: int = 0) -> list[list[int]]:
    """The 0/1 visibility matrix of one row of an additive [B, 1, q, k] mask."""
    return (batch_mask[row, 0] == 0).int().tolist()


def collator(**overrides) -> SpaceDataCollator:
    return SpaceDataCollator(**{"mask_token_id": M, "num_mask_tokens": 3, "sar_probability": 1.0, **overrides})


def test_valid_block_starts():
    assert valid_block_starts([5, 6, 7, 8, 9, 10], 2) == [1, 2, 3]
    assert valid_block_starts([IGNORE, IGNORE, 7, 8, 9, 10], 2) == [2, 3]
    assert valid_block_starts([1, 2, IGNORE, 4, 5, 6, IGNORE, 8], 2) == [3]
    assert valid_block_starts([1, 2, 3], 2) == []


def test_one_pass_single_block():
    # k=3, 5 tokens: the only valid start is s=1 (targets 1..4 must exist)
    out = collator(blocks_per_sequence=1)([{"input_ids": [11, 12, 13, 14, 15]}])
    assert out["input_ids"].tolist() == [[11, 12, 13, 14, 15, M, M, M]]
    assert out["position_ids"].tolist() == [[0, 1, 2, 3, 4, 1, 2, 3]]
    assert out["labels"].tolist() == [[12, 13, 14, 15, IGNORE, 13, 14, 15]]
    assert visible(out["attention_mask"]) == [
        [1, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0, 0],
        [1, 0, 0, 0, 0, 1, 0, 0],  # mask 0 of the block at s=1 sees x_0 only
        [1, 0, 0, 0, 0, 1, 1, 0],
        [1, 0, 0, 0, 0, 1, 1, 1],
    ]
    assert out["attention_mask"].dtype == torch.float32
    assert out["attention_mask"].min() == torch.finfo(torch.float32).min and out["attention_mask"].max() == 0


def test_one_pass_two_blocks_with_prompt_labels():
    # k=2; labels of the first three tokens are prompt (-100): valid starts are exactly s=3 and s=4
    row = {"input_ids": [21, 22, 23, 24, 25, 26, 27], "labels": [IGNORE, IGNORE, IGNORE, 24, 25, 26, 27]}
    out = collator(num_mask_tokens=2, blocks_per_sequence=4)([row])
    assert out["input_ids"].tolist() == [[21, 22, 23, 24, 25, 26, 27, M, M, M, M]]
    assert out["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5, 6, 3, 4, 4, 5]]
    assert out["labels"].tolist() == [[IGNORE, IGNORE, 24, 25, 26, 27, IGNORE, 25, 26, 26, 27]]
    rows = visible(out["attention_mask"])
    assert rows[7] == [1, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0]  # block s=3, mask 0: x_0..x_2
    assert rows[8] == [1, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0]
    assert rows[9] == [1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 0]  # block s=4 never sees block s=3
    assert rows[10] == [1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1]
    assert all(rows[t][7:] == [0, 0, 0, 0] for t in range(7))  # no real token sees a mask


def test_truncate_form():
    # k=2; valid start only s=2: the row is cut after x_1, the last real token predicts x_2
    row = {"input_ids": [11, 12, 13, 14, 15, 16], "labels": [IGNORE, IGNORE, 13, 14, 15, IGNORE]}
    out = collator(num_mask_tokens=2, sample_form="truncate")([row])
    assert out["input_ids"].tolist() == [[11, 12, M, M]]
    assert out["position_ids"].tolist() == [[0, 1, 2, 3]]
    assert out["labels"].tolist() == [[IGNORE, 13, 14, 15]]
    assert visible(out["attention_mask"]) == torch.ones(4, 4).tril().int().tolist()


def test_plain_ar_rows_and_padding():
    out = collator(sar_probability=0.0, pad_token_id=0)([{"input_ids": [5, 6, 7]}, {"input_ids": [8, 9]}])
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0]]
    assert out["labels"].tolist() == [[6, 7, IGNORE], [9, IGNORE, IGNORE]]
    assert visible(out["attention_mask"], 1) == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]  # padding sees only itself


def test_padding_in_a_sar_batch_is_invisible():
    rows = [{"input_ids": [1, 2, 3, 4]}, {"input_ids": list(range(1, 9))}]
    out = collator(num_mask_tokens=2, blocks_per_sequence=1)(rows)
    short = visible(out["attention_mask"], 0)
    length = 4 + 2
    for query in range(length):
        assert not any(short[query][length:])
    for query in range(length, out["input_ids"].shape[1]):
        assert short[query] == [int(key == query) for key in range(len(short))]
    assert (out["labels"][0, length:] == IGNORE).all()


def test_two_pass_layout():
    rows = [
        {"input_ids": [21, 22, 23, 24, 25, 26, 27], "labels": [IGNORE, IGNORE, IGNORE, 24, 25, 26, 27]},  # s=3, 4
        {"input_ids": [31, 32, 33, 34]},  # k=2: only s=1
    ]
    out = collator(num_mask_tokens=2, two_pass=True, pad_token_id=0)(rows)
    assert out["input_ids"].tolist() == [[21, 22, 23, 24], [31, 32, 33, 34]]  # prefix up to the largest start
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 1]]
    assert out["mask_input_ids"].tolist() == [[M, M, M, M], [M, M, 0, 0]]
    assert out["mask_position_ids"].tolist() == [[3, 4, 4, 5], [1, 2, 0, 0]]
    assert out["labels"].tolist() == [[25, 26, 26, 27], [33, 34, IGNORE, IGNORE]]
    assert visible(out["mask_attention_mask"], 0) == [
        [1, 1, 1, 0, 1, 0, 0, 0],
        [1, 1, 1, 0, 1, 1, 0, 0],
        [1, 1, 1, 1, 0, 0, 1, 0],
        [1, 1, 1, 1, 0, 0, 1, 1],
    ]
    assert visible(out["mask_attention_mask"], 1) == [
        [1, 0, 0, 0, 1, 0, 0, 0],
        [1, 0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 0, 0, 1, 0],  # padding masks see only themselves
        [0, 0, 0, 0, 0, 0, 0, 1],
    ]


def test_blocks_are_drawn_afresh_and_reproducibly():
    rows = [{"input_ids": list(range(1, 41))}]
    draws = {tuple(collator(blocks_per_sequence=2)(rows)["position_ids"][0, 40:].tolist()) for _ in range(20)}
    assert len(draws) > 5  # every call draws new starts (so every epoch does)
    seeded = [collator(generator=torch.Generator().manual_seed(3))(rows)["position_ids"] for _ in range(2)]
    assert torch.equal(*seeded)


@pytest.mark.parametrize("two_pass", [False, True])
def test_row_seed_draws_each_rows_blocks_from_the_row_alone(two_pass):
    """Evaluation's draws: a row keeps its blocks whatever rows come before it, and another seed draws others."""
    generator = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(1, 90, (30 + 3 * i,), generator=generator).tolist()} for i in range(6)]
    ids, positions = ("mask_input_ids", "mask_position_ids") if two_pass else ("input_ids", "position_ids")

    def blocks(batch_rows, seed=7):  # per row, the positions of its mask tokens
        out = collator(blocks_per_sequence=3, two_pass=two_pass, row_seed=seed)(batch_rows)
        pairs = zip(out[ids], out[positions], strict=True)
        return [row_positions[row_ids == M].tolist() for row_ids, row_positions in pairs]

    alone = [blocks([row])[0] for row in rows]
    assert blocks(rows) == alone  # one batch or one row at a time
    assert blocks(rows[::-1]) == alone[::-1]  # in any order
    assert blocks([{"input_ids": [5] * 40}, *rows[2:]]) == [blocks([{"input_ids": [5] * 40}])[0], *alone[2:]]
    assert blocks(rows, seed=8) != alone  # the seed still decides
    assert len({tuple(b) for b in alone}) > 1  # rows draw their own blocks, not one shared pattern


def test_mask_dtype_and_refusals():
    out = collator(mask_dtype=torch.bfloat16)([{"input_ids": [1, 2, 3, 4, 5, 6]}])
    assert out["attention_mask"].dtype == torch.bfloat16
    with pytest.raises(ValueError, match="contains the SPACE mask token"):
        collator()([{"input_ids": [1, 2, M, 4, 5, 6]}])
    with pytest.raises(ValueError, match="`labels` has 2 entries"):
        collator()([{"input_ids": [1, 2, 3], "labels": [1, 2]}])
    with pytest.raises(ValueError, match="no room for a mask block"):
        collator(two_pass=True)([{"input_ids": [1, 2, 3]}])
    with pytest.raises(ValueError, match="pad_token_id"):
        collator(pad_token_id=M)


# --- the layouts against a model -------------------------------------------------------------------------


def _mask_logits_one_pass(model, row, k):
    out = SpaceDataCollator(mask_token_id=model.config.space_config["mask_token_id"], num_mask_tokens=k,
                            sar_probability=1.0, blocks_per_sequence=8)([row])
    logits = model(input_ids=out["input_ids"], attention_mask=out["attention_mask"],
                   position_ids=out["position_ids"]).logits
    masks = out["input_ids"][0] == model.config.space_config["mask_token_id"]
    return out["position_ids"][0, masks].view(-1, k)[:, 0].tolist(), logits[0, masks].view(-1, k, logits.shape[-1])


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_one_pass_blocks_equal_truncated_and_two_pass_blocks(arch):
    model = tiny_model(arch, seed=2, num_mask_tokens=3)
    mask_id = model.config.space_config["mask_token_id"]
    row = {"input_ids": torch.randint(1, 40, (12,), generator=torch.Generator().manual_seed(0)).tolist()}
    with torch.no_grad():
        starts, one_pass = _mask_logits_one_pass(model, row, 3)
        for index, s in enumerate(starts):  # truncated: x_0..x_{s-1} then the block, plain causal attention
            ids = torch.tensor([row["input_ids"][:s] + [mask_id] * 3])
            truncated = model(input_ids=ids).logits[0, s:]
            torch.testing.assert_close(one_pass[index], truncated, atol=1e-5, rtol=1e-4)
        two = SpaceDataCollator(mask_token_id=mask_id, num_mask_tokens=3, two_pass=True, blocks_per_sequence=8)([row])
        cache = {cache_argument_name(type(model).forward): DynamicCache()}
        model(input_ids=two["input_ids"], attention_mask=two["attention_mask"], use_cache=True, **cache)
        logits = model(input_ids=two["mask_input_ids"], attention_mask=two["mask_attention_mask"],
                       position_ids=two["mask_position_ids"], use_cache=True, **cache).logits
        two_starts = two["mask_position_ids"][0].view(-1, 3)[:, 0].tolist()
        assert two_starts == starts
        torch.testing.assert_close(logits[0].view(-1, 3, logits.shape[-1]), one_pass, atol=1e-5, rtol=1e-4)

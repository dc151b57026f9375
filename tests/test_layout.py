"""The pure layout arithmetic, alone and against a real model run token by token."""

import pytest
import torch
from tiny_models import ARCHITECTURES, random_prompts, tiny_model

from transformers_space.decoding import forward_block
from transformers_space.decoding.compat import cache_argument_name, new_cache
from transformers_space.decoding.layout import (
    INVALID,
    block_structure,
    build_pass_layout,
    cache_positions_after_pass,
    draft_rows,
    prompt_positions,
    restrict_to_window,
)


def test_block_structure_by_hand():
    # 1 fresh token t, 2 candidates, groups after 0 and 2 candidates, 2 masks each.
    s = block_structure(num_fresh=1, num_candidates=2, num_masks=2, group_after=[0, 2]).int()
    expected = torch.tensor(
        [
            # t c1 c2 | g0m0 g0m1 | g2m0 g2m1
            [1, 0, 0, 0, 0, 0, 0],  # t
            [1, 1, 0, 0, 0, 0, 0],  # c1
            [1, 1, 1, 0, 0, 0, 0],  # c2
            [1, 0, 0, 1, 0, 0, 0],  # group after 0 candidates, mask 0
            [1, 0, 0, 1, 1, 0, 0],  # group after 0, mask 1
            [1, 1, 1, 0, 0, 1, 0],  # group after 2, mask 0
            [1, 1, 1, 0, 0, 1, 1],  # group after 2, mask 1
        ]
    )
    assert torch.equal(s, expected)


def test_prompt_positions_skip_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert prompt_positions(mask).tolist() == [[-1, -1, 0, 1, 2], [0, 1, 2, 3, 4]]


def test_positions_rows_and_ids():
    fresh = torch.tensor([[7], [9]])
    fresh_pos = torch.tensor([[10], [4]])
    cands = torch.tensor([[1, 2, 3], [4, 5, 6]])
    cache = torch.arange(11).repeat(2, 1)
    layout = build_pass_layout(fresh, fresh_pos, cands, cache, mask_token_id=99, num_masks=2, group_after=[0, 1, 3])
    assert layout.input_ids[0].tolist() == [7, 1, 2, 3] + [99] * 6
    # t at p, c_i at p+i, mask j of the group after i candidates at p+i+1+j
    assert layout.block_positions[0].tolist() == [10, 11, 12, 13, 11, 12, 12, 13, 14, 15]
    assert layout.block_positions[1].tolist() == [4, 5, 6, 7, 5, 6, 6, 7, 8, 9]
    assert layout.verify_rows.tolist() == [0, 1, 2, 3]
    assert layout.group_rows.tolist() == [[4, 5], [6, 7], [8, 9]]
    assert layout.visible.shape == (2, 10, 21)


def test_idle_row_sees_only_itself_and_padding_is_invisible():
    fresh = torch.tensor([[5, 6, 7], [0, 6, 7], [0, 0, 0]])
    fresh_pos = torch.tensor([[0, 1, 2], [INVALID, 0, 1], [INVALID, INVALID, INVALID]])
    cands = torch.empty(3, 0, dtype=torch.long)
    cache = torch.empty(3, 0, dtype=torch.long)
    layout = build_pass_layout(fresh, fresh_pos, cands, cache, mask_token_id=99, num_masks=2, group_after=[0])
    visible = layout.visible
    assert not visible[1, :, 0][1:].any()  # nobody looks at row 1's padding
    assert visible[1, 0, 0]  # the pad token sees itself (no all-masked row)
    assert torch.equal(visible[2], torch.eye(5, dtype=torch.bool))  # idle row
    assert (layout.block_positions[2] == INVALID).all()
    assert (layout.position_ids >= 0).all()


def test_position_limit_clamps_fed_positions_only():
    layout = build_pass_layout(
        torch.tensor([[1]]), torch.tensor([[9]]), torch.tensor([[2, 3]]), torch.arange(9)[None],
        mask_token_id=50, num_masks=2, group_after=[0, 1, 2], position_limit=11,
    )
    assert layout.position_ids.max() == 10
    assert layout.block_positions.max() == 9 + 2 + 1 + 1


def test_group_after_out_of_range_is_refused():
    with pytest.raises(ValueError, match="group_after"):
        build_pass_layout(
            torch.tensor([[1]]), torch.tensor([[0]]), torch.tensor([[2]]), torch.empty(1, 0, dtype=torch.long),
            mask_token_id=50, num_masks=1, group_after=[2],
        )


def test_window_uses_logical_positions():
    cache_pos = torch.tensor([[0, 1, INVALID, 2, 3]])
    block_pos = torch.tensor([[4, 5]])
    visible = torch.ones(1, 2, 7, dtype=torch.bool)
    visible[0, :, 2] = False
    restricted = restrict_to_window(visible, cache_pos, block_pos, window=3)
    # query at 4 sees positions 2, 3, 4; query at 5 sees 3, 4, 5
    assert restricted[0, 0].tolist() == [False, False, False, True, True, True, True]
    assert restricted[0, 1].tolist() == [False, False, False, False, True, True, True]


def test_cache_positions_after_pass_keeps_holes():
    fresh = torch.tensor([[1], [1]])
    layout = build_pass_layout(
        fresh, torch.tensor([[3], [5]]), torch.tensor([[2, 2, 2], [2, 2, 2]]), torch.zeros(2, 4, dtype=torch.long),
        mask_token_id=50, num_masks=3, group_after=[0, 1, 2, 3],
    )
    after = cache_positions_after_pass(torch.zeros(2, 4, dtype=torch.long), layout, torch.tensor([2, 0]), 2)
    assert after[:, 4:].tolist() == [[3, 4, 5], [5, INVALID, INVALID]]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_one_pass_equals_plain_model_on_each_prefix(arch):
    """Every row read from a SPACE pass equals the plain model run on exactly the text that row stands for."""
    model = tiny_model(arch, seed=3)
    mask_id = model.config.space_config["mask_token_id"]
    prefix = random_prompts(1, 9, seed=4)
    t, cands = random_prompts(1, 1, seed=5), random_prompts(1, 3, seed=6)
    num_masks, group_after = 2, [0, 1, 2, 3]

    cache = new_cache()
    body = model.base_model
    with torch.no_grad():
        body(input_ids=prefix, use_cache=True, **{cache_argument_name(type(body).forward): cache})
        cache_pos = torch.arange(9)[None]
        layout = build_pass_layout(t, torch.tensor([[9]]), cands, cache_pos, mask_id, num_masks, group_after)
        hidden = forward_block(model, layout, cache, cache_pos)

        def plain_last(tokens):
            return body(input_ids=tokens).last_hidden_state[0, -1]

        chain = torch.cat([prefix, t, cands], 1)
        for depth, row in enumerate(layout.verify_rows.tolist()):
            torch.testing.assert_close(hidden[0, row], plain_last(chain[:, : 10 + depth]), atol=2e-5, rtol=1e-4)
        masks = torch.full((1, num_masks), mask_id)
        for group, after in enumerate(group_after):
            for j, row in enumerate(layout.group_rows[group].tolist()):
                tokens = torch.cat([chain[:, : 10 + after], masks[:, : j + 1]], 1)
                torch.testing.assert_close(hidden[0, row], plain_last(tokens), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("merged_limit", [16, 0], ids=["one-head-call", "two-head-calls"])
def test_pass_logits_read_the_rows_draft_rows_names(merged_limit, monkeypatch):
    from transformers_space.decoding import PassLogits

    monkeypatch.setattr(PassLogits, "MERGED_HEAD_ROWS", merged_limit)
    group_after = [0, 1, 2]
    layout = build_pass_layout(
        torch.tensor([[5], [6]]), torch.tensor([[7], [9]]), torch.tensor([[3, 4], [8, 2]]),
        torch.arange(9)[None].expand(2, -1), mask_token_id=1, num_masks=2, group_after=group_after,
    )
    generator = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(8, 11, bias=False, dtype=torch.float64)
    hidden = torch.randn(2, layout.input_ids.shape[1], 8, generator=generator, dtype=torch.float64)
    logits = PassLogits(head, hidden, layout)
    assert logits.merged == (merged_limit == 16)
    torch.testing.assert_close(logits.verify(), head(hidden[:, layout.verify_rows]).float())
    for accepted in ([0, 2], [1, 1], [2, 0]):
        rows = draft_rows(layout, group_after, torch.tensor(accepted), torch.tensor([True, True]))
        expected = head(hidden.gather(1, rows[..., None].expand(-1, -1, 8))).float()
        torch.testing.assert_close(logits.drafts(rows), expected)


def test_draft_rows_beyond_the_masks_give_no_drafts():
    """A pass may verify more candidates than there are masks (a context lookup's extension) with a group after
    all of them: accepting them all drafts from that group; accepting only some leaves no group that saw exactly
    the accepted text within reach, so no row drafts (n = 0), rather than a negative count."""
    num_masks, group_after = 1, [0, 1, 4]
    layout = build_pass_layout(
        torch.tensor([[5], [6]]), torch.tensor([[7], [9]]), torch.tensor([[3, 4, 2, 8], [8, 2, 3, 3]]),
        torch.arange(9)[None].expand(2, -1), mask_token_id=1, num_masks=num_masks, group_after=group_after,
    )
    active = torch.tensor([True, True])
    assert draft_rows(layout, group_after, torch.tensor([4, 4]), active).tolist() == [[layout.group_rows[2, 0]]] * 2
    assert draft_rows(layout, group_after, torch.tensor([1, 0]), active).tolist() == [
        [layout.group_rows[1, 0]], [layout.group_rows[0, 0]]]
    for accepted in ([2, 0], [3, 4], [2, 3]):
        assert draft_rows(layout, group_after, torch.tensor(accepted), active).shape == (2, 0)

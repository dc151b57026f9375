"""SpaceTrainer refuses bad settings and bad data before any training step, saying what to fix.

Also: chat `messages` rows carry loss only on assistant turns, `text` rows are tokenised, SpaceConfig
validates its training fields.
"""

import pytest
import torch
from tiny_models import tiny_tokenizer
from toy_language import toy_model, toy_rows, training_args

from transformers_space import SpaceConfig, add_space_support
from transformers_space.training import SpaceTrainer, prepare_rows

CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}w40 {% else %}w41 {% endif %}{{ m['content'] }} w47 "
    "{% endfor %}{% if add_generation_prompt %}w41 {% endif %}"
)


def make_trainer(tmp_path, rows, model=None, tokenizer=None, **space):
    return SpaceTrainer(
        model=model if model is not None else toy_model(), args=training_args(tmp_path, 1), train_dataset=rows,
        processing_class=tokenizer, space_config=SpaceConfig(**{"num_mask_tokens": 4, **space}),
    )


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"input_ids": [1, 2, 3, 4, 5]}], r"Rows \[0\] .* too short for a mask block"),
        ([{"prompt": "w1", "completion": "w2"}], r"Row 0 has none of the fields .*\['completion', 'prompt'\]"),
        ([{"input_ids": [1, 2, 3, 4, 5, 6, 7], "id": 3}], r"Row 0 has fields SpaceTrainer does not read: \['id'\]"),
        ([{"input_ids": [1] * 8, "text": "w1"}], "several of"),
        ([{"input_ids": [1] * 8, "labels": [1] * 7}], "`labels` has 7 entries"),
        ([{"input_ids": [1] * 8, "labels": [-100] * 8}], "no token that carries loss"),
        ([{"input_ids": "w1 w2"}], "should be a list of ints"),
        ([{"text": "w1 w2 w3 w4 w5 w6 w7"}], "needs a tokenizer: pass `processing_class"),
        ([{"input_ids": [1] * 8, "attention_mask": [1] * 7 + [0]}], "unpadded rows"),
        ([], "empty"),
    ],
)
def test_bad_rows_are_refused_before_training(tmp_path, rows, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make_trainer(tmp_path, rows)


def test_short_rows_are_fine_when_no_blocks_are_drawn(tmp_path):
    make_trainer(tmp_path, [{"input_ids": [1, 2, 3]}], sar_probability=0.0)
    with pytest.raises(ValueError, match="too short"):
        make_trainer(tmp_path, [{"input_ids": [1, 2, 3]}], mode="gated")


def test_rows_containing_the_mask_token_are_refused(tmp_path):
    model = add_space_support(toy_model(), num_mask_tokens=4)
    mask_id = model.config.space_config["mask_token_id"]
    rows = toy_rows(3, seed=0) + [{"input_ids": [1, 2, 3, mask_id, 5, 6, 7, 8]}]
    with pytest.raises(ValueError, match=rf"Rows \[3\] .* contain the SPACE mask token \(id {mask_id}"):
        make_trainer(tmp_path, rows, model=model)


def test_messages_need_a_chat_template(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "w3"}, {"role": "assistant", "content": "w4 w5 w6 w7 w8"}]}]
    with pytest.raises(ValueError, match="no chat template"):
        make_trainer(tmp_path, rows, tokenizer=tiny_tokenizer())


def test_mask_token_clashing_with_an_existing_token(tmp_path):
    with pytest.raises(ValueError, match="already exists in the tokenizer"):
        make_trainer(tmp_path, [{"text": "w1 w2 w3 w4 w5 w6 w7"}], tokenizer=tiny_tokenizer(), mask_token="w5")


def test_gated_on_a_model_trained_with_other_settings(tmp_path):
    model = add_space_support(toy_model(), num_mask_tokens=3)  # as a full SAR-SFT run with k=3 leaves it
    with pytest.raises(ValueError, match=r"already has SPACE settings .*mode 'gated' .*num_mask_tokens=4 \(model: 3\)"):
        make_trainer(tmp_path, toy_rows(4, seed=0), model=model, mode="gated")
    make_trainer(tmp_path, toy_rows(4, seed=0), model=model, num_mask_tokens=3, mode="gated")  # same k: fine


def test_full_mode_on_a_gated_model_is_refused(tmp_path):
    model = add_space_support(toy_model(), num_mask_tokens=4, mode="gated")
    with pytest.raises(ValueError, match="carries gated SPACE adapters"):
        make_trainer(tmp_path, toy_rows(4, seed=0), model=model, mode="full")


def test_resume_without_a_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, toy_rows(4, seed=0))
    with pytest.raises(ValueError, match="No checkpoint found"):
        trainer.train(resume_from_checkpoint=True)


def test_wrong_argument_types(tmp_path):
    with pytest.raises(TypeError, match="`space_config` should be a SpaceConfig"):
        SpaceTrainer(model=toy_model(), args=training_args(tmp_path, 1), train_dataset=toy_rows(2, 0),
                     space_config={"num_mask_tokens": 4})
    peft = pytest.importorskip("peft")
    wrapped = peft.get_peft_model(toy_model(), peft.LoraConfig(target_modules=["q_proj"]))
    with pytest.raises(TypeError, match="not a PeftModel"):
        make_trainer(tmp_path, toy_rows(2, 0), model=wrapped)


@pytest.mark.parametrize(
    "fields, error, message",
    [
        (dict(mode="qlora"), ValueError, r"`mode` should be one of 'full', 'lora', 'gated'; got 'qlora'"),
        (dict(sar_probability=1.5), ValueError, r"`sar_probability` should lie in \[0.0, 1.0\], got 1.5"),
        (dict(sample_form="packed"), ValueError, "`sample_form` should be one of"),
        (dict(blocks_per_sequence=0), ValueError, "`blocks_per_sequence` should be at least 1, got 0"),
        (dict(adapter_rank=2.0), TypeError, "`adapter_rank` should be an int, got 2.0"),
        (dict(adapter_target_modules="q_proj"), ValueError, "`adapter_target_modules` should be a non-empty list"),
        (dict(mode="gated", mask_loss_weight=0), ValueError, "`mask_loss_weight` should be positive in 'gated'"),
        (dict(mask_loss_weight=float("nan")), ValueError, "`mask_loss_weight` should lie in"),
        (dict(per_position_mask_embeddings=True), ValueError, "per_position_mask_embeddings=True needs mode='gated'"),
        (dict(mode="gated", per_position_mask_embeddings="yes"), TypeError, "should be a bool, got 'yes'"),
    ],
)
def test_space_config_validates_training_fields(fields, error, message):
    with pytest.raises(error, match=message):
        SpaceConfig(**fields)


# --- data forms ------------------------------------------------------------------------------------------


def test_chat_messages_carry_loss_only_on_assistant_turns():
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    messages = [
        {"role": "user", "content": "w3 w4"},
        {"role": "assistant", "content": "w5 w6 w7"},
        {"role": "user", "content": "w8"},
        {"role": "assistant", "content": "w9 w10 w11 w12"},
    ]
    rows = prepare_rows([{"messages": messages}], tokenizer, SpaceConfig(num_mask_tokens=2, mask_token_id=99))
    ids, labels = rows[0]["input_ids"], rows[0]["labels"]
    assert ids == [40, 3, 4, 47, 41, 5, 6, 7, 47, 40, 8, 47, 41, 9, 10, 11, 12, 47]
    ignore = -100
    assert labels == [ignore] * 5 + [5, 6, 7, 47] + [ignore] * 4 + [9, 10, 11, 12, 47]


def test_text_rows_and_max_length():
    tokenizer = tiny_tokenizer()
    config = SpaceConfig(num_mask_tokens=2, mask_token_id=99)
    rows = prepare_rows([{"text": "w3 w4 w5 w6 w7 w8 w9 w10"}], tokenizer, config, max_length=6)
    assert rows[0] == {"input_ids": [3, 4, 5, 6, 7, 8], "labels": [3, 4, 5, 6, 7, 8]}


def test_rows_whose_answer_truncation_cuts_off_are_dropped_with_a_warning(caplog):
    tokenizer = tiny_tokenizer()
    config = SpaceConfig(num_mask_tokens=2, mask_token_id=99)
    long_prompt = {"input_ids": list(range(1, 13)), "labels": [-100] * 8 + [9, 10, 11, 12]}
    kept = {"input_ids": list(range(1, 7)), "labels": [-100, 2, 3, 4, 5, 6]}
    with caplog.at_level("WARNING", logger="transformers_space.training.data"):
        rows = prepare_rows([long_prompt, kept], tokenizer, config, max_length=8)
    assert list(rows) == [kept]
    assert "Dropped 1 of 2 rows" in caplog.text and "Rows [0]" in caplog.text and "max_length=8" in caplog.text
    # Without truncation the same row trains; with only such rows nothing is left, which is an error.
    assert len(prepare_rows([long_prompt], tokenizer, config)) == 1
    with pytest.raises(ValueError, match="no row keeps a token that carries loss"):
        prepare_rows([long_prompt], tokenizer, config, max_length=8)
    # A row that never carried loss is a data error whatever max_length is, named by its index.
    with pytest.raises(ValueError, match=r"Rows \[1\] .*no token that carries loss"):
        prepare_rows([kept, {"input_ids": [1, 2, 3], "labels": [-100] * 3}], tokenizer, config, max_length=8)


def test_tokenised_rows_may_be_tensors_and_carry_labels():
    config = SpaceConfig(num_mask_tokens=2, mask_token_id=99)
    rows = prepare_rows([{"input_ids": torch.arange(1, 9), "labels": [-100, -100, 3, 4, 5, 6, 7, 8]}], None, config)
    assert rows[0]["input_ids"] == list(range(1, 9)) and rows[0]["labels"][:2] == [-100, -100]

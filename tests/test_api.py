"""Public API: add_space_support, SpaceConfig, save/load, generation-config default, clear errors."""

import pytest
import torch
from tiny_models import VOCAB, random_prompts, tiny_config, tiny_model, tiny_tokenizer
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    OPTConfig,
    TextIteratorStreamer,
)

from transformers_space import (
    SUPPORTED_MODEL_TYPES,
    SpaceConfig,
    SpaceGenerationMixin,
    SpaceLayoutPlan,
    add_space_support,
    space_decoding,
)


def plain_model(arch="llama", seed=0):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(arch)).eval()


def test_add_space_support_with_tokenizer():
    tokenizer = tiny_tokenizer()
    model = add_space_support(plain_model(), tokenizer, num_mask_tokens=3)
    mask_id = tokenizer.convert_tokens_to_ids("<|space_mask|>")
    assert model.config.space_config["mask_token_id"] == mask_id == VOCAB
    assert model.config.space_config["num_mask_tokens"] == 3
    assert model.get_input_embeddings().weight.shape[0] == VOCAB + 1
    assert isinstance(model, SpaceGenerationMixin) and type(model).__name__ == "SpaceLlamaForCausalLM"
    embeddings = model.get_input_embeddings().weight
    torch.testing.assert_close(embeddings[mask_id], embeddings[:VOCAB].mean(0))
    assert tokenizer.decode([3, mask_id, 4], skip_special_tokens=True) == "w3 w4"


def test_add_space_support_without_tokenizer_uses_next_id():
    model = add_space_support(plain_model("gpt2"), num_mask_tokens=2)
    assert model.config.space_config["mask_token_id"] == VOCAB
    assert model.config.vocab_size == VOCAB + 1


def test_add_space_support_keeps_plain_outputs():
    model = plain_model()
    prompt = random_prompts(1, 6, 0)
    before = model.generate(prompt, max_new_tokens=12, do_sample=False)
    add_space_support(model, num_mask_tokens=2)
    after = model.generate(prompt, max_new_tokens=12, do_sample=False)
    assert torch.equal(before, after)


def test_add_space_support_is_idempotent_and_checks_settings():
    tokenizer = tiny_tokenizer()
    model = add_space_support(plain_model(), tokenizer, num_mask_tokens=3)
    again = add_space_support(model, tokenizer, num_mask_tokens=3)
    assert again.config.space_config["mask_token_id"] == VOCAB and len(tokenizer) == VOCAB + 1
    with pytest.raises(ValueError, match="already has SPACE settings"):
        add_space_support(model, tokenizer, num_mask_tokens=5)


def test_mask_token_clash_is_refused():
    with pytest.raises(ValueError, match="already exists in the tokenizer"):
        add_space_support(plain_model(), tiny_tokenizer(), mask_token="w5")


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-2, ValueError), (2.5, TypeError), (True, TypeError)])
def test_num_mask_tokens_validated(bad, error):
    with pytest.raises(error, match="num_mask_tokens"):
        add_space_support(plain_model(), num_mask_tokens=bad)


def test_unsupported_architecture_names_supported_ones():
    torch.manual_seed(0)
    opt = AutoModelForCausalLM.from_config(
        OPTConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2,
                  word_embed_proj_dim=16)
    )
    with pytest.raises(ValueError, match="does not support the architecture 'opt'") as info:
        add_space_support(opt)
    assert all(arch in str(info.value) for arch in SUPPORTED_MODEL_TYPES)


def test_space_config_roundtrip_and_unknown_keys(caplog):
    config = SpaceConfig(num_mask_tokens=5, mask_token_id=7)
    assert SpaceConfig.from_dict(config.to_dict()) == config
    with caplog.at_level("WARNING"):
        loaded = SpaceConfig.from_dict({**config.to_dict(), "from_the_future": 1})
    assert loaded == config and "from_the_future" in caplog.text


def test_save_and_load_keep_space_settings(tmp_path):
    tokenizer = tiny_tokenizer()
    model = tiny_model("qwen2", seed=1, num_mask_tokens=3, drafty=True)
    prompt = random_prompts(1, 5, 1)
    expected = model.generate(prompt, max_new_tokens=15, use_space=True, do_sample=False)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    reloaded = add_space_support(AutoModelForCausalLM.from_pretrained(tmp_path).eval(), num_mask_tokens=3)
    assert reloaded.config.space_config == model.config.space_config
    assert torch.equal(reloaded.generate(prompt, max_new_tokens=15, use_space=True, do_sample=False), expected)
    direct = type(model).from_pretrained(tmp_path).eval()
    assert torch.equal(direct.generate(prompt, max_new_tokens=15, use_space=True, do_sample=False), expected)


def test_use_space_default_comes_from_generation_config(verification_log):
    model = tiny_model("llama", seed=0, num_mask_tokens=2)
    prompt = random_prompts(1, 4, 0)
    model.generate(prompt, max_new_tokens=5, do_sample=False)
    assert verification_log.passes == []
    model.generation_config.use_space = True
    model.generate(prompt, max_new_tokens=5, do_sample=False)
    assert verification_log.passes
    verification_log.clear()
    model.generate(prompt, max_new_tokens=5, do_sample=False, use_space=False)
    model.generate(prompt, generation_config=GenerationConfig(max_new_tokens=5, use_space=False))
    assert verification_log.passes == []


def test_num_mask_tokens_default_comes_from_generation_config():
    model = tiny_model("llama", seed=0, num_mask_tokens=3)
    prompt = random_prompts(1, 4, 0)
    kwargs = dict(max_new_tokens=6, do_sample=False, use_space=True, return_dict_in_generate=True)
    assert model.generate(prompt, **kwargs).space_layout["num_masks"] == 3  # trained count
    model.generation_config.num_mask_tokens = 2
    assert model.generate(prompt, **kwargs).space_layout["num_masks"] == 2
    assert model.generate(prompt, **kwargs, num_mask_tokens=1).space_layout["num_masks"] == 1  # the call wins
    plan = SpaceLayoutPlan(1, (0,))
    assert model.generate(prompt, **kwargs, space_layout=plan).space_layout == plan.to_dict()
    with pytest.raises(TypeError, match="should be a SpaceLayoutPlan"):
        model.generate(prompt, **kwargs, space_layout=plan.to_dict())
    model.generation_config.num_mask_tokens = "fast"
    with pytest.raises(ValueError, match="positive int or"):
        model.generate(prompt, **kwargs)
    model.generate(prompt, max_new_tokens=3, do_sample=False)  # plain decoding ignores it


def test_custom_generate_without_the_mixin(verification_log):
    """A model prepared with add_space_support can also be driven through transformers' custom_generate."""
    model = tiny_model("llama", seed=3, num_mask_tokens=3, drafty=True)
    prompt = random_prompts(1, 6, 3)
    expected = model.generate(prompt, max_new_tokens=20, do_sample=False)
    plain_generate = super(SpaceGenerationMixin, model).generate  # transformers' own generate
    got = plain_generate(input_ids=prompt, max_new_tokens=20, do_sample=False, custom_generate=space_decoding)
    assert torch.equal(got, expected) and verification_log.passes


def test_outputs_are_ordinary_tensors_callers_can_edit():
    """The loop runs in inference mode; what it hands back must not be inference tensors."""
    model = tiny_model("llama", seed=3, num_mask_tokens=3, drafty=True)
    prompt = random_prompts(2, 6, 3)
    ids = model.generate(prompt, max_new_tokens=8, do_sample=False, use_space=True)
    output = model.generate(prompt, max_new_tokens=8, do_sample=False, use_space=True,
                            return_dict_in_generate=True, output_scores=True, output_logits=True)
    assert torch.equal(output.sequences, ids)
    for tensor in (ids, output.sequences, *output.scores, *output.logits):
        assert not tensor.is_inference()
    ids[:, -1] = 0
    output.scores[0].add_(1.0)
    with torch.enable_grad():  # usable in autograd, as plain generate's outputs are
        weight = torch.ones(output.logits[0].shape[-1], requires_grad=True)
        (output.logits[0] @ weight).sum().backward()
    assert weight.grad is not None


def test_text_streamers_with_real_tokenizer():
    tokenizer = tiny_tokenizer()
    model = tiny_model("llama", seed=5, num_mask_tokens=3, drafty=True)
    inputs = tokenizer(["w3 w9 w12 w7"], return_tensors="pt")
    texts = []
    for use_space in (False, True):
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True)
        model.generate(**inputs, max_new_tokens=20, do_sample=False, streamer=streamer, use_space=use_space)
        texts.append("".join(streamer))
    assert texts[0] == texts[1] and texts[0].strip()


# --- clear errors before any work ---------------------------------------------------------------


@pytest.fixture
def model():
    return tiny_model("llama", seed=0, num_mask_tokens=2)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_beams=3), "beam search"),
        (dict(prompt_lookup_num_tokens=3), "prompt_lookup_num_tokens"),
        (dict(assistant_early_exit=1), "assistant_early_exit"),
        (dict(output_attentions=True), "output_attentions"),
        (dict(output_hidden_states=True), "output_hidden_states"),
    ],
)
def test_refused_generation_settings(model, kwargs, message, verification_log):
    with pytest.raises(ValueError, match=message):
        model.generate(random_prompts(1, 4, 0), max_new_tokens=5, use_space=True, **kwargs)
    assert verification_log.passes == []


def test_assistant_model_refused(model):
    with pytest.raises(ValueError, match="assistant_model"):
        model.generate(random_prompts(1, 4, 0), max_new_tokens=5, use_space=True, assistant_model=plain_model())


def test_flash_attention_refused(model):
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="flash_attention_2.*'sdpa' or 'eager'"):
        model.generate(random_prompts(1, 4, 0), max_new_tokens=5, use_space=True)


def test_4d_attention_mask_refused(model):
    prompt = random_prompts(1, 4, 0)
    with pytest.raises(ValueError, match="2D padding mask"):
        model.generate(prompt, attention_mask=torch.ones(1, 1, 4, 4), max_new_tokens=5, use_space=True)


def test_prompt_with_mask_token_refused(model):
    prompt = random_prompts(1, 4, 0)
    prompt[0, 2] = model.config.space_config["mask_token_id"]
    with pytest.raises(ValueError, match="mask token"):
        model.generate(prompt, max_new_tokens=5, use_space=True)


def test_model_without_space_settings_refused():
    model = tiny_model("llama")
    del model.config.space_config
    with pytest.raises(ValueError, match="add_space_support"):
        model.generate(random_prompts(1, 4, 0), max_new_tokens=5, use_space=True)


@pytest.mark.parametrize(
    "mask", [[[1, 1, 1, 1], [1, 1, 0, 0]], [[1, 1, 1, 1], [0, 1, 0, 1]], [[0, 0, 0, 0], [1, 1, 1, 1]]],
    ids=["right", "holes", "empty-row"],
)
def test_padding_other_than_left_is_refused(model, mask, verification_log):
    with pytest.raises(ValueError, match="padding_side = 'left'"):
        model.generate(random_prompts(2, 4, 0), attention_mask=torch.tensor(mask), max_new_tokens=5, use_space=True)
    assert verification_log.passes == []


def test_right_padded_batch_from_a_real_tokenizer_is_refused(model):
    tokenizer = tiny_tokenizer()
    tokenizer.padding_side = "right"
    batch = tokenizer(["w1 w2 w3", "w4"], return_tensors="pt", padding=True)
    with pytest.raises(ValueError, match="left padding"):
        model.generate(**batch, max_new_tokens=5, use_space=True)
    tokenizer.padding_side = "left"
    batch = tokenizer(["w1 w2 w3", "w4"], return_tensors="pt", padding=True)
    space = model.generate(**batch, max_new_tokens=5, use_space=True, do_sample=False)
    assert torch.equal(space, model.generate(**batch, max_new_tokens=5, use_space=False, do_sample=False))


def test_empty_prompt_is_refused(model):
    with pytest.raises(ValueError, match="non-empty prompt"):
        model.generate(torch.zeros(1, 0, dtype=torch.long), max_new_tokens=5, use_space=True)

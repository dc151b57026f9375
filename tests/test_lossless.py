"""Greedy SPACE output equals plain greedy output, token for token, in every situation we support."""

import random

import pytest
import torch
from tiny_models import ARCHITECTURES, VOCAB, left_padded, random_prompts, tiny_model
from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from transformers_space.decoding.lookup import LOOKUP_EXTENSION


def generate_both(model, input_ids, **kwargs):
    """(plain output ids, SPACE output with tokens_per_pass), same arguments otherwise."""
    kwargs.setdefault("do_sample", False)
    plain = model.generate(input_ids, use_space=False, **kwargs)
    space = model.generate(input_ids, use_space=True, return_dict_in_generate=True, **kwargs)
    return plain, space


def assert_lossless(model, input_ids, **kwargs):
    plain, space = generate_both(model, input_ids, **kwargs)
    assert torch.equal(plain, space.sequences), f"\nplain {plain.tolist()}\nspace {space.sequences.tolist()}"
    generated = plain.shape[1] - input_ids.shape[1]
    pad = model.generation_config.pad_token_id if kwargs.get("pad_token_id") is None else kwargs["pad_token_id"]
    for row, counts in enumerate(space.tokens_per_pass):
        # the masks' drafts, the context lookup's extension (LOOKUP_EXTENSION by default) and the bonus token
        assert all(1 <= c <= model.config.space_config["num_mask_tokens"] + 1 + LOOKUP_EXTENSION for c in counts)
        if kwargs.get("eos_token_id") is None:
            assert sum(counts) == generated
        else:
            assert sum(counts) <= generated
            assert (plain[row, input_ids.shape[1] + sum(counts) :] == pad).all()
    return space


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("num_mask_tokens", [1, 2, 4])
def test_random_prompts_every_architecture(arch, num_mask_tokens, verification_log):
    rng = random.Random(f"{arch}-{num_mask_tokens}")
    for seed in range(4):
        drafty = seed % 2 == 1
        model = tiny_model(arch, seed=seed, num_mask_tokens=num_mask_tokens, drafty=drafty)
        prompt = random_prompts(1, rng.randint(1, 24), seed=rng.randrange(10**6))
        assert_lossless(model, prompt, max_new_tokens=rng.randint(1, 40))
    assert max(verification_log.counts()) >= 1, "no draft was ever accepted"


def test_all_paths_occur_and_stay_lossless(verification_log):
    """Full and partial acceptance, zero acceptance, and stops inside an accepted run, over many models."""
    stopped_inside_run = 0
    for seed in range(24):
        arch = ARCHITECTURES[seed % len(ARCHITECTURES)]
        model = tiny_model(arch, seed=seed, num_mask_tokens=4, drafty=True, favourite_strength=0.6 + 0.05 * seed)
        prompt = random_prompts(1, 3 + seed % 7, seed)
        verification_log.clear()
        space = assert_lossless(model, prompt, max_new_tokens=7 + seed)
        last_pass_emitted = verification_log.passes[-1][0] + 1
        stopped_inside_run += last_pass_emitted > space.tokens_per_pass[0][-1]
        if seed == 0:
            all_counts = []
        all_counts += verification_log.counts()
    assert {0, 4} <= set(all_counts) and any(0 < c < 4 for c in all_counts)
    assert stopped_inside_run > 0


def eos_inside_a_run(model, prompt) -> int | None:
    """A token that SPACE emits strictly inside a multi-token pass, for the first time: as EOS it stops a run."""
    free = model.generate(prompt, max_new_tokens=30, do_sample=False, use_space=True, return_dict_in_generate=True)
    new = free.sequences[0, prompt.shape[1] :].tolist()
    start = 0
    for count in free.tokens_per_pass[0]:
        for index in range(start, start + count - 1):
            if new[index] not in new[:index]:
                return new[index]
        start += count
    return None


def test_eos_inside_accepted_runs(verification_log):
    stops_inside_run = 0
    for arch in ("llama", "gpt2", "qwen3", "gpt_neox"):
        for seed in range(12):
            model = tiny_model(arch, seed=seed, num_mask_tokens=3, drafty=True, favourite_strength=0.5 + 0.04 * seed)
            prompt = random_prompts(1, 5, seed)
            eos = eos_inside_a_run(model, prompt)
            if eos is None:
                continue
            verification_log.clear()
            space = assert_lossless(model, prompt, max_new_tokens=30, eos_token_id=eos, pad_token_id=0)
            produced = space.sequences[0, prompt.shape[1] :].tolist()
            assert produced.index(eos) == sum(space.tokens_per_pass[0]) - 1
            stops_inside_run += verification_log.passes[-1][0] + 1 > space.tokens_per_pass[0][-1]
    assert stops_inside_run >= 4


@pytest.mark.parametrize("arch", ["llama", "gpt2", "phi3"])
def test_max_length_and_max_new_tokens(arch):
    for seed in range(6):
        model = tiny_model(arch, seed=seed, num_mask_tokens=3, drafty=True)
        prompt = random_prompts(1, 4 + seed, seed)
        assert_lossless(model, prompt, max_length=prompt.shape[1] + 1 + 3 * seed)
        assert_lossless(model, prompt, max_new_tokens=1 + 2 * seed)


class StopAfterRowLength(StoppingCriteria):
    """Row-dependent stop: row r stops once it has `base + 3*r` tokens; logs every length it was shown."""

    def __init__(self, base: int):
        self.base = base
        self.seen: list[int] = []

    def __call__(self, input_ids, scores, **kwargs):
        self.seen.append(input_ids.shape[1])
        limits = torch.tensor([self.base + 3 * row for row in range(input_ids.shape[0])])
        return input_ids.shape[1] >= limits


@pytest.mark.parametrize("with_eos", [False, True])
def test_custom_stopping_criteria_see_every_token(with_eos):
    for seed in range(4):
        model = tiny_model("llama", seed=seed, num_mask_tokens=3, drafty=True)
        ids, mask = left_padded([6, 3, 5], seed)
        plain_stop, space_stop = StopAfterRowLength(10 + seed), StopAfterRowLength(10 + seed)
        kwargs = dict(attention_mask=mask, max_new_tokens=25, do_sample=False, pad_token_id=0)
        if with_eos:
            kwargs["eos_token_id"] = 1 + seed
        plain = model.generate(ids, stopping_criteria=StoppingCriteriaList([plain_stop]), **kwargs)
        space = model.generate(ids, stopping_criteria=StoppingCriteriaList([space_stop]), use_space=True, **kwargs)
        assert torch.equal(plain, space)
        assert plain_stop.seen == space_stop.seen == list(range(ids.shape[1] + 1, plain.shape[1] + 1))


PROCESSOR_SETTINGS = {
    "repetition_penalty": dict(repetition_penalty=1.5),
    "no_repeat_ngram_size": dict(no_repeat_ngram_size=2),
    "bad_words_ids": dict(bad_words_ids=[[5], [7, 8], [9, 10, 11]]),
    "suppress_tokens": dict(suppress_tokens=[2, 3, 4]),
    "min_new_tokens": dict(min_new_tokens=12, eos_token_id=6),
    "begin_suppress_tokens": dict(begin_suppress_tokens=[1, 2]),
    "sequence_bias": dict(sequence_bias={(3,): 2.0, (4, 5): -3.0}),
    "encoder_repetition": dict(encoder_repetition_penalty=1.4, repetition_penalty=1.2, no_repeat_ngram_size=3),
}


@pytest.mark.parametrize("setting", sorted(PROCESSOR_SETTINGS))
def test_logits_processors_applied_at_every_verified_position(setting, verification_log):
    for seed in range(5):
        model = tiny_model(["llama", "qwen2", "gpt2"][seed % 3], seed=seed, num_mask_tokens=3, drafty=True)
        ids, mask = left_padded([7, 4], seed)
        kwargs = dict(PROCESSOR_SETTINGS[setting], pad_token_id=0)
        assert_lossless(model, ids, attention_mask=mask, max_new_tokens=24, **kwargs)
    assert max(verification_log.counts()) >= 1


def test_prefix_allowed_tokens_fn_sees_row_index():
    def allowed(batch_id, sent):
        return list(range(1, 20)) if batch_id == 0 else list(range(15, VOCAB))

    for seed in range(4):
        model = tiny_model("llama", seed=seed, num_mask_tokens=2, drafty=True)
        ids, mask = left_padded([5, 8], seed)
        assert_lossless(model, ids, attention_mask=mask, max_new_tokens=20, prefix_allowed_tokens_fn=allowed)


def test_user_logits_processor_list():
    class Halve(torch.nn.Module):
        def __call__(self, input_ids, scores):
            return scores - 0.1 * input_ids.shape[1] * (torch.arange(scores.shape[1]) % 3 == 0)

    model = tiny_model("olmo2", seed=2, num_mask_tokens=2, drafty=True)
    assert_lossless(model, random_prompts(1, 6, 1), max_new_tokens=30, logits_processor=LogitsProcessorList([Halve()]))


@pytest.mark.parametrize("arch", ["llama", "gpt2", "mistral", "gemma"])
def test_batches_with_left_padding_and_ragged_acceptance(arch, verification_log):
    ragged = 0
    for seed in range(5):
        model = tiny_model(arch, seed=seed, num_mask_tokens=3, drafty=True, favourite_strength=0.7)
        lengths = [random.Random(seed).randint(1, 12) for _ in range(4)]
        ids, mask = left_padded(lengths, seed)
        verification_log.clear()
        assert_lossless(model, ids, attention_mask=mask, max_new_tokens=30, eos_token_id=2 + seed, pad_token_id=0)
        assert_lossless(model, ids, attention_mask=mask, max_new_tokens=17)
        ragged += sum(len(set(entry.values())) > 1 for entry in verification_log.passes)
    assert ragged > 0, "rows never accepted different numbers of tokens in one pass"


def test_finished_rows_padded_like_transformers():
    padded_rows = 0
    for seed in range(8):
        model = tiny_model("llama", seed=seed, num_mask_tokens=3, drafty=seed % 2 == 0, favourite_strength=0.6)
        ids, mask = left_padded([4, 9, 6], seed=seed)
        free = model.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False)[:, ids.shape[1] :]
        others = set(free[0].tolist()) | set(free[2].tolist())
        early = [token for token in free[1, :10].tolist() if token not in others]
        if not early:
            continue
        plain, space = generate_both(
            model, ids, attention_mask=mask, max_new_tokens=20, eos_token_id=early[0], pad_token_id=47
        )
        assert torch.equal(plain, space.sequences)
        padded_rows += int((space.sequences[1] == 47).any())
    assert padded_rows >= 2


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_eager_and_sdpa_attention(attn):
    for seed in range(3):
        model = tiny_model("llama", seed=seed, num_mask_tokens=3, drafty=True, attn_implementation=attn)
        ids, mask = left_padded([3, 7], seed)
        assert_lossless(model, ids, attention_mask=mask, max_new_tokens=20)


def test_sliding_window_models(verification_log):
    """Windows far shorter than the text, so the window really cuts attention (Mistral; Qwen2 mixed layers)."""
    for seed in range(3):
        mistral = tiny_model("mistral", seed=seed, num_mask_tokens=3, drafty=True, sliding_window=5)
        qwen2 = tiny_model(
            "qwen2", seed=seed, num_mask_tokens=3, drafty=True, use_sliding_window=True, sliding_window=4,
            max_window_layers=1,
        )
        for model in (mistral, qwen2):
            ids, mask = left_padded([6, 2], seed)
            assert_lossless(model, ids, attention_mask=mask, max_new_tokens=30)
    assert max(verification_log.counts()) >= 2


def test_float64_models_long_generation():
    model = tiny_model("qwen3", seed=11, num_mask_tokens=4, drafty=True, dtype=torch.float64)
    assert_lossless(model, random_prompts(2, 30, 11), max_new_tokens=150)


class RecordingStreamer(BaseStreamer):
    def __init__(self):
        self.puts: list[list[int]] = []
        self.ended = False

    def put(self, value):
        self.puts.append(value.reshape(-1).tolist() if value.dim() < 2 or value.shape[0] == 1 else value.tolist())

    def end(self):
        self.ended = True


def test_streamer_gets_prompt_then_tokens_in_order():
    several = []
    for seed in range(4):
        model = tiny_model("llama", seed=seed, num_mask_tokens=4, drafty=True)
        prompt = random_prompts(1, 5, seed)
        plain_streamer, space_streamer = RecordingStreamer(), RecordingStreamer()
        plain = model.generate(prompt, max_new_tokens=25, do_sample=False, streamer=plain_streamer)
        space = model.generate(prompt, max_new_tokens=25, do_sample=False, streamer=space_streamer, use_space=True)
        assert torch.equal(plain, space) and space_streamer.ended
        assert space_streamer.puts[0] == prompt[0].tolist()
        streamed = [token for put in space_streamer.puts[1:] for token in put]
        assert streamed == space[0, prompt.shape[1] :].tolist()
        several.append(any(len(put) > 1 for put in space_streamer.puts[1:]))
    assert sum(several) >= 2, "passes that emitted several tokens were not streamed together"


def test_mask_token_never_generated_in_either_mode():
    model = tiny_model("llama", seed=0, num_mask_tokens=2)
    mask_id = model.config.space_config["mask_token_id"]
    with torch.no_grad():  # make the mask token the model's favourite everywhere
        model.get_output_embeddings().weight[mask_id] = 50 * model.get_output_embeddings().weight[1:].mean(0)
        model.get_output_embeddings().weight[mask_id] += torch.randn_like(model.get_output_embeddings().weight[0])
    prompt = random_prompts(2, 6, 0)
    space = assert_lossless(model, prompt, max_new_tokens=20)
    assert not (space.sequences == mask_id).any()


def test_drafting_in_half_precision_warns_that_rounding_can_change_greedy_output(caplog):
    """In bf16 a multi-token pass rounds differently from a one-token pass often enough, on real models, to flip
    near-tied greedy choices (BENCHMARKS.md), so SPACE says so when it drafts on a half-precision model."""
    from transformers.utils import logging as hf_logging

    from transformers_space.decoding.generation import HALF_PRECISION_NOTE

    prompt = random_prompts(1, 6, seed=0)
    for dtype, warns in ((torch.float32, False), (torch.bfloat16, True)):
        model = tiny_model("llama", seed=0, num_mask_tokens=2).to(dtype)
        hf_logging.warning_once.cache_clear()
        caplog.clear()
        with caplog.at_level("WARNING", logger="transformers_space"):
            model.generate(prompt, max_new_tokens=4, do_sample=False, use_space=True)
        assert (HALF_PRECISION_NOTE in caplog.text) == warns, dtype

"""Context lookup (`decoding/lookup.py`): the continuation it finds, how greedy drafting uses it, and that
decoding with it stays lossless and drafts better where text repeats."""

import pytest
import torch
from tiny_models import ARCHITECTURES, random_prompts, tiny_model

from transformers_space import SpaceCandidateGenerator, SpaceLayoutPlan
from transformers_space.decoding import candidates as candidates_module
from transformers_space.decoding.lookup import (
    EXTENSION_MIN_NGRAM,
    LOOKUP_CANDIDATES,
    context_continuation,
    context_match,
)


def naive_continuation(tokens, length, min_ngram, max_ngram):
    """The definition, spelled out: for n from max_ngram down, the most recent earlier occurrence of the last n; what
    followed it, and past the end of the text the text once more with the period that occurrence shows."""
    for size in range(min(max_ngram, len(tokens) - 1), min_ngram - 1, -1):
        for start in range(len(tokens) - size - 1, -1, -1):
            if tokens[start : start + size] == tokens[-size:]:
                period = len(tokens) - start - size
                extended = list(tokens)
                while len(extended) < len(tokens) + length:
                    extended.append(extended[-period])
                return extended[start + size : start + size + length]
    return []


def test_longest_then_most_recent_match():
    #        0  1  2  3  4  5  6  7  8  9
    tokens = [1, 2, 3, 9, 2, 3, 8, 7, 2, 3]
    assert context_continuation(tokens, 3) == [8, 7, 2]  # "2 3" most recently at 4-5
    tokens = [5, 2, 3, 4, 4, 9, 2, 3, 6, 5, 2, 3]
    assert context_continuation(tokens, 2) == [4, 4]  # "5 2 3" (at 0-2) beats the more recent "2 3" (6-7)


def test_no_match_short_context_and_the_minimum():
    assert context_continuation([1, 2, 3, 4], 4) == []
    assert context_continuation([7], 4) == []
    assert context_continuation([], 4) == []
    assert context_continuation([1, 5, 2, 5], 2) == []  # only a 1-token match: below the default minimum of 2
    assert context_continuation([1, 5, 2, 5], 2, min_ngram=1) == [2, 5]


def test_overlapping_match_and_the_end_of_the_text():
    assert context_continuation([1, 2, 1, 2], 4) == [1, 2, 1, 2]  # "1 2" at 0-1: period 2, past the end as well
    assert context_continuation([3, 3, 3, 3], 4, max_ngram=2) == [3, 3, 3, 3]  # "3 3" most recently at 1-2: period 1
    assert context_continuation([5, 1, 2, 3, 1, 2], 5) == [3, 1, 2, 3, 1]  # "1 2" at 1-2: period 3
    assert context_continuation([4, 4, 4, 4, 4], 2) == [4, 4]


@pytest.mark.parametrize("min_ngram,max_ngram", [(1, 1), (1, 3), (2, 6), (3, 4)])
def test_matches_the_definition_on_random_texts(min_ngram, max_ngram):
    generator = torch.Generator().manual_seed(min_ngram * 10 + max_ngram)
    found = 0
    for trial in range(300):
        length = int(torch.randint(0, 40, (1,), generator=generator))
        vocabulary = 2 + trial % 6  # small vocabularies: many repeats
        tokens = torch.randint(0, vocabulary, (length,), generator=generator).tolist()
        want = naive_continuation(tokens, 4, min_ngram, max_ngram)
        assert context_continuation(tokens, 4, min_ngram, max_ngram) == want, tokens
        found += bool(want)
    assert found > 50  # the lookups found something often, not only empty answers


@pytest.mark.parametrize("arguments", [(0, 2, 6), (4, 0, 6), (4, 3, 2)])
def test_bad_settings_are_refused(arguments):
    length, min_ngram, max_ngram = arguments
    with pytest.raises(ValueError, match="min_ngram"):
        context_continuation([1, 2, 1, 2], length, min_ngram, max_ngram)


VOCAB, MASK = 40, 39


def drafter_logits(rankings: list[list[int]]) -> torch.Tensor:
    """[1, len(rankings), VOCAB] logits ranking the listed tokens first, in order, every other token below."""
    logits = torch.zeros(1, len(rankings), VOCAB)
    for position, ranking in enumerate(rankings):
        for rank, token in enumerate(ranking):
            logits[0, position, token] = 100.0 - rank
    return logits


def draft(rankings, context, lookup=True, do_sample=False, lengths=None, extension=0):
    drafter = SpaceCandidateGenerator(MASK, len(rankings), do_sample=do_sample, context_lookup=lookup,
                                      lookup_extension=extension)
    logits = drafter_logits(rankings).expand(len(context), -1, -1)
    drafter.set_draft_logits(logits)
    ids = torch.tensor(context)
    candidates, _ = drafter.get_candidates(ids, lengths=lengths)
    return candidates[:, ids.shape[1] :].tolist()


def test_lookup_token_taken_where_the_mask_ranks_it_high_enough():
    context = [[1, 2, 3, 4, 5, 6, 1, 2]]  # the lookup continues "1 2" with 3 4 5
    others = list(range(10, 10 + LOOKUP_CANDIDATES))
    # 3 ranked second: taken; 4 ranked first: the same either way; 5 ranked 17th: the mask's own argmax (10)
    rankings = [[30, 3], [4], others + [5]]
    assert draft(rankings, context) == [[3, 4, 10]]
    assert draft(rankings, context, lookup=False) == [[30, 4, 10]]


def test_a_row_stops_following_its_lookup_after_another_draft():
    context = [[1, 2, 3, 4, 5, 6, 1, 2]]  # lookup: 3 4 5
    others = list(range(10, 10 + LOOKUP_CANDIDATES - 1))
    rankings = [[30] + others, [31, 4], [31, 5]]  # 3 is not among mask 0's 16: it drafts 30, and 4, 5 no longer count
    assert draft(rankings, context) == [[30, 31, 31]]


def test_each_row_looks_up_in_its_own_tokens():
    # row 0 is right-padded with 0s after its 8 tokens; row 1's "7 8" was followed by 9 before
    context = [[1, 2, 3, 4, 5, 6, 1, 2, 0, 0], [7, 8, 9, 7, 1, 1, 1, 1, 7, 8]]
    rankings = [[30, 3, 9]]
    assert draft(rankings, context, lengths=torch.tensor([8, 10])) == [[3], [9]]
    assert draft(rankings, context, lengths=torch.tensor([10, 10]))[0] == [30]  # "0 0" was followed by nothing


def test_sampling_drafts_from_the_masks_alone():
    context = [[1, 2, 3, 4, 5, 6, 1, 2]]
    assert SpaceCandidateGenerator(MASK, 1, do_sample=True, context_lookup=True).context_lookup is False
    torch.manual_seed(0)
    drafts = [draft([[30, 3]], context, do_sample=True)[0][0] for _ in range(200)]  # p(30) ~ 0.73, p(3) ~ 0.27
    assert 100 < drafts.count(30) < 190 and drafts.count(3) == 200 - drafts.count(30)


def repetitive_prompt(seed: int, length: int = 24) -> torch.Tensor:
    """A prompt made of one random phrase said three times: text a lookup can copy from."""
    phrase = random_prompts(1, length // 3, seed)
    return phrase.repeat(1, 3)


def space_runs(model, prompt, lookup: bool, plain: torch.Tensor) -> tuple[int, int]:
    """(tokens emitted after the first pass, passes after the first) of greedy SPACE, checked against plain."""
    space = model.generate(prompt, do_sample=False, max_new_tokens=30, use_space=True, context_lookup=lookup,
                           return_dict_in_generate=True)
    assert torch.equal(plain, space.sequences), (type(model).__name__, lookup)
    return (sum(sum(counts[1:]) for counts in space.tokens_per_pass),
            sum(len(counts) - 1 for counts in space.tokens_per_pass))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_lossless_with_and_without_lookup(arch):
    """Greedy SPACE equals plain greedy with the lookup on (the default) and off, on repeated and random prompts."""
    for seed in range(3):
        model = tiny_model(arch, seed=seed, num_mask_tokens=3, drafty=seed % 2 == 0)
        for prompt in (repetitive_prompt(seed), random_prompts(2, 9, seed + 50)):
            plain = model.generate(prompt, do_sample=False, max_new_tokens=30)
            for lookup in (True, False):
                space_runs(model, prompt, lookup, plain)


def test_lookup_drafts_more_where_text_repeats():
    """Over several families, random models and prompts (random models' greedy text repeats itself), the lookup's
    drafts are accepted more often: more tokens per pass than the masks' drafts alone."""
    totals = {True: [0, 0], False: [0, 0]}
    for arch in ("llama", "gpt2", "qwen2", "phi", "cohere"):
        for seed in range(3):
            model = tiny_model(arch, seed=seed, num_mask_tokens=3, drafty=seed % 2 == 0)
            for prompt in (repetitive_prompt(seed), random_prompts(2, 9, seed + 50)):
                plain = model.generate(prompt, do_sample=False, max_new_tokens=30)
                for lookup in (True, False):
                    emitted, passes = space_runs(model, prompt, lookup, plain)
                    totals[lookup][0] += emitted
                    totals[lookup][1] += passes
    with_lookup, without = (emitted / passes for emitted, passes in (totals[True], totals[False]))
    assert with_lookup > 1.1 * without, (with_lookup, without)


def test_context_lookup_setting_from_the_generation_config_and_bad_values():
    model = tiny_model("llama", seed=1, num_mask_tokens=3)
    prompt = repetitive_prompt(3)
    model.generation_config.context_lookup = False
    off = model.generate(prompt, do_sample=False, max_new_tokens=20, use_space=True, return_dict_in_generate=True)
    explicit = model.generate(prompt, do_sample=False, max_new_tokens=20, use_space=True, context_lookup=False,
                              return_dict_in_generate=True)
    assert off.tokens_per_pass == explicit.tokens_per_pass
    with pytest.raises(TypeError, match="context_lookup"):
        model.generate(prompt, max_new_tokens=4, use_space=True, context_lookup="yes")


# --- the extension: lookup tokens drafted after the masks' drafts ------------------------------------------------


def naive_match_size(tokens, min_ngram, max_ngram):
    """The longest n (min_ngram..max_ngram) whose last n tokens occurred earlier; 0 if none."""
    for size in range(min(max_ngram, len(tokens) - 1), min_ngram - 1, -1):
        if any(tokens[start : start + size] == tokens[-size:] for start in range(len(tokens) - size)):
            return size
    return 0


def test_context_match_says_how_long_the_matched_end_is():
    tokens = [5, 2, 3, 4, 4, 9, 2, 3, 6, 5, 2, 3]
    assert context_match(tokens, 2) == (3, [4, 4])  # "5 2 3"
    assert context_match([1, 2, 3, 4], 4) == (0, [])
    generator = torch.Generator().manual_seed(5)
    for trial in range(300):
        tokens = torch.randint(0, 2 + trial % 5, (int(torch.randint(0, 30, (1,), generator=generator)),),
                               generator=generator).tolist()
        size, continuation = context_match(tokens, 3)
        assert size == naive_match_size(tokens, 2, 6), tokens
        assert continuation == context_continuation(tokens, 3)


def batch_for_extension():
    """Three rows of 16 tokens. A: its last 6 tokens occurred before (followed by 7 8 9 29 1 ...). B: the same end,
    once followed by 26 27 ..., a token the masks rank too low. C: only its last 2 tokens occurred before."""
    row_a = [1, 2, 3, 4, 5, 6, 7, 8, 9, 29, 1, 2, 3, 4, 5, 6]
    row_b = [1, 2, 3, 4, 5, 6, 26, 27, 28, 29, 1, 2, 3, 4, 5, 6]
    row_c = [3, 1, 2, 7, 8, 9, 31, 32, 33, 34, 35, 36, 37, 38, 1, 2]
    others = list(range(10, 10 + LOOKUP_CANDIDATES))
    rankings = [[30, 7] + others, [8]]  # mask 0 ranks 7 second and 26 below 17 others; mask 1 favours 8
    return [row_a, row_b, row_c], rankings


def test_extension_continues_the_lookup_past_the_masks():
    assert 3 <= EXTENSION_MIN_NGRAM <= 6  # row A's match (6) is long enough and row C's (2) is not
    context, rankings = batch_for_extension()
    # A followed its lookup through both masks: 3 more of its tokens. B left its lookup at mask 0 and C's match is
    # short: no extension, padded with token 0 to the batch's width.
    assert draft(rankings, context, extension=3) == [[7, 8, 9, 29, 1], [30, 8, 0, 0, 0], [7, 8, 0, 0, 0]]
    assert draft(rankings, context, extension=0) == [[7, 8], [30, 8], [7, 8]]
    assert draft(rankings, context[1:], extension=3) == [[30, 8], [7, 8]]  # nobody extends: no extra columns
    assert draft(rankings, context, lookup=False, extension=3) == [[30, 8], [30, 8], [30, 8]]
    # past the end of the text row A's lookup repeats the text's period (10 tokens)
    assert draft(rankings, [context[0]], extension=9)[0] == [7, 8, 9, 29, 1, 2, 3, 4, 5, 6, 7]


def test_sampling_never_extends_and_bad_extension_settings_are_refused():
    sampler = SpaceCandidateGenerator(MASK, 2, do_sample=True, context_lookup=True, lookup_extension=4)
    assert sampler.lookup_extension == 0
    model = tiny_model("llama", seed=1, num_mask_tokens=3)
    prompt = repetitive_prompt(3)
    for bad, error in ((-1, ValueError), (True, TypeError), (2.0, TypeError), ("4", TypeError)):
        with pytest.raises(error, match="lookup_extension"):
            model.generate(prompt, max_new_tokens=4, use_space=True, lookup_extension=bad)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_lossless_with_the_extension_at_every_length_and_layout(arch, monkeypatch):
    """With the extension, passes verify more candidates than there are masks, and a pass that accepts only some of
    them leaves no group to draft from: greedy output still equals plain greedy, for every max_new_tokens (a stop
    inside an extension), with an EOS met inside one, at the full layout and at a one-mask layout, batched and
    left-padded; and the extension ran (some pass emitted more tokens than the masks could draft). Random models
    rarely repeat 5 tokens, so extensions start from 2-token matches here (losslessness cannot depend on it)."""
    monkeypatch.setattr(candidates_module, "EXTENSION_MIN_NGRAM", 2)
    extended = 0
    for seed in range(2):
        model = tiny_model(arch, seed=seed, num_mask_tokens=2, drafty=seed == 0)
        prompts = [repetitive_prompt(seed, 18), repetitive_prompt(seed + 7, 12)]
        batch = torch.cat([prompts[0], torch.cat([torch.zeros(1, 6, dtype=torch.long), prompts[1]], 1)])
        mask = (torch.arange(18)[None, :] >= torch.tensor([[0], [6]])).long()
        for plan in (SpaceLayoutPlan.full(2), SpaceLayoutPlan(1, (0, 1))):
            for max_new_tokens in (1, 5, 9, 24):
                plain = model.generate(prompts[0], do_sample=False, max_new_tokens=max_new_tokens)
                space = model.generate(prompts[0], do_sample=False, max_new_tokens=max_new_tokens, use_space=True,
                                       space_layout=plan, lookup_extension=4, return_dict_in_generate=True)
                assert torch.equal(plain, space.sequences), (arch, plan, max_new_tokens)
                extended += max(space.tokens_per_pass[0]) > plan.num_masks + 1
            eos = int(plain[0, -5])  # a token greedy text emits: decoding stops there
            kwargs = dict(do_sample=False, max_new_tokens=24, eos_token_id=eos, pad_token_id=0, attention_mask=mask)
            plain = model.generate(batch, **kwargs)
            space = model.generate(batch, use_space=True, space_layout=plan, lookup_extension=4, **kwargs)
            assert torch.equal(plain, space), (arch, plan, "batch")
    assert extended, arch


def test_lookup_extension_setting_from_the_generation_config(monkeypatch):
    """`generation_config.lookup_extension` is read as `context_lookup` is, and an explicit argument wins."""
    monkeypatch.setattr(candidates_module, "EXTENSION_MIN_NGRAM", 2)  # so that this tiny model's text extends
    model = tiny_model("llama", seed=0, num_mask_tokens=2, drafty=True)
    prompt = repetitive_prompt(0, 18)
    kwargs = dict(do_sample=False, max_new_tokens=24, use_space=True, return_dict_in_generate=True)
    with_extension = model.generate(prompt, **kwargs).tokens_per_pass
    explicit_off = model.generate(prompt, lookup_extension=0, **kwargs).tokens_per_pass
    assert with_extension != explicit_off
    model.generation_config.lookup_extension = 0
    assert model.generate(prompt, **kwargs).tokens_per_pass == explicit_off
    assert model.generate(prompt, lookup_extension=4, **kwargs).tokens_per_pass == with_extension

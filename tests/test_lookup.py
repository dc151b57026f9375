"""Context lookup (`decoding/lookup.py`): the continuation it finds, how greedy drafting uses it, and that
decoding with it stays lossless and drafts better where text repeats."""

import pytest
import torch
from tiny_models import ARCHITECTURES, random_prompts, tiny_model

from transformers_space import SpaceCandidateGenerator
from transformers_space.decoding.lookup import LOOKUP_CANDIDATES, context_continuation


def naive_continuation(tokens, length, min_ngram, max_ngram):
    """The definition, spelled out: for n from max_ngram down, the most recent earlier occurrence of the last n."""
    for size in range(min(max_ngram, len(tokens) - 1), min_ngram - 1, -1):
        for start in range(len(tokens) - size - 1, -1, -1):
            if tokens[start : start + size] == tokens[-size:]:
                return tokens[start + size : start + size + length]
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
    assert context_continuation([1, 2, 1, 2], 4) == [1, 2]  # "1 2" at 0-1, continued up to the end only
    assert context_continuation([3, 3, 3, 3], 4, max_ngram=2) == [3]  # the most recent "3 3" ends at index 2
    assert context_continuation([4, 4, 4, 4, 4], 2) == [4]  # the longest earlier run of 4s ends at index 3


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


def draft(rankings, context, lookup=True, do_sample=False, lengths=None):
    drafter = SpaceCandidateGenerator(MASK, len(rankings), do_sample=do_sample, context_lookup=lookup)
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

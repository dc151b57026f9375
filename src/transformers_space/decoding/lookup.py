"""Context lookup: drafts copied from earlier in the text, taken where the masks find them likely.

Why: text repeats itself (code reuses its names and the signature it was asked for, answers restate their
question and their own phrases), and there the tokens that followed the last occurrence of what was just written
are often the ones that follow now: prompt lookup decoding drafts from that alone. A small model's masks often
rank such a repeated token high but pick another one. So greedy SPACE drafting takes, at each mask, the lookup's
token instead of the mask's argmax when the mask ranks it among its top `LOOKUP_CANDIDATES` tokens (with a draft
head: among the candidates the head rescores), and goes on following the lookup while it keeps doing so. The
masks veto lookups they find unlikely (a bare lookup is mostly wrong on chat), the lookup settles what the masks
half know. On training-split prompts outside the training data this added about +0.1 tokens per pass on code
and +0.2 on chat at the full layout (BENCHMARKS.md, "Context lookup").

The extension: a row that followed its lookup through every mask, with a matched end of at least
`EXTENSION_MIN_NGRAM` tokens, also drafts up to `lookup_extension` more of the lookup's tokens after the masks'
drafts (the pass then verifies more candidates than there are masks, and runs one more mask group after the last,
`SpaceLayoutPlan.groups_for`). Where the masks agreed with a long match, the copied text tends to go on (replayed
on training-split code passes, 4 tokens extended after a 6-token match were right for 3 of the 4 on average).
Extra candidates cost a CPU pass time, so only long matches extend (BENCHMARKS.md, "Lookup extension": on a
2-core EPYC extending from 2-token matches made chat slower).

Drafts only, as every draft: verification is unchanged, so greedy output stays exactly plain greedy output. Greedy
only: a sampled draft must be drawn from the distribution q it is verified against, and a rule that picks between
two sources is not such a draw, so sampling drafts from the masks alone.

Pure functions of a token list, tested alone (tests/test_lookup.py); the rules that use them are
`SpaceCandidateGenerator._lookups` (which rows extend), `_prefer_lookup` and `_extension`. Imports only the
standard library (it ships as remote code).
"""

from __future__ import annotations

from collections.abc import Sequence

LOOKUP_CANDIDATES = 16  # a lookup token is taken where the mask ranks it this high
MIN_NGRAM, MAX_NGRAM = 2, 6  # the matched end of the text: at least 2 tokens (1 is mostly chance), at most 6
LOOKUP_EXTENSION = 4  # default: most lookup tokens drafted after the masks' drafts
EXTENSION_MIN_NGRAM = 5  # an extension only where the matched end is at least this long


def context_continuation(tokens: Sequence[int], length: int, min_ngram: int = MIN_NGRAM,
                         max_ngram: int = MAX_NGRAM) -> list[int]:
    """The (up to) `length` tokens that followed the earlier occurrence of the longest end of `tokens` (at most
    `max_ngram` tokens; the most recent occurrence among equally long ones); [] when no end of at least
    `min_ngram` tokens occurred before.

    An occurrence may overlap the end itself ("a b a b" continues "a b" with "a b"). Where the continuation reaches
    the end of `tokens`, it goes on with itself: an end that occurred d tokens earlier says the text repeats with
    period d ("a b a b" continues "a b a b ...", "x x x" continues "x x ..."), which is what a model caught in a
    loop goes on doing. One backward scan: a small model's contexts are a few hundred tokens.
    """
    return context_match(tokens, length, min_ngram, max_ngram)[1]


def context_match(tokens: Sequence[int], length: int, min_ngram: int = MIN_NGRAM,
                  max_ngram: int = MAX_NGRAM) -> tuple[int, list[int]]:
    """(how many tokens the matched end is long, `context_continuation`); (0, []) without a match."""
    if length < 1 or not 1 <= min_ngram <= max_ngram:
        raise ValueError(f"need length >= 1 and 1 <= min_ngram <= max_ngram; got {length}, {min_ngram}, {max_ngram}.")
    tokens = list(tokens)
    count = len(tokens)
    if count < 2:
        return 0, []
    best_size, best_end, last = 0, -1, tokens[-1]
    for end in range(count - 2, -1, -1):  # end: where an earlier occurrence ends
        if tokens[end] != last:
            continue
        size = 1
        while size < max_ngram and size <= end and tokens[end - size] == tokens[count - 1 - size]:
            size += 1
        if size > best_size:
            best_size, best_end = size, end
            if size == max_ngram:
                break
    if best_size < min_ngram:
        return 0, []
    period = count - 1 - best_end
    continuation = tokens[best_end + 1 : best_end + 1 + length]
    while len(continuation) < length:  # past the end of the text: the text repeats with this period
        continuation.append(continuation[len(continuation) - period])
    return best_size, continuation

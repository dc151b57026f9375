"""SPACE sampling draws from exactly plain sampling's distribution; the drafting interface; SPACE as assistant.

The statistical tests are two-sample chi-square tests per generated position over thousands of batched
samples, with fixed seeds (so they cannot flake) and a negative control: a sampler that resamples from p
instead of the residual after a rejection (the reference code's mistake) must be rejected by the same test.
"""

import pytest
import torch
from scipy.stats import chi2_contingency, chisquare
from tiny_models import random_prompts, tiny_model
from transformers import AutoModelForCausalLM, LogitsProcessorList, StoppingCriteriaList

import transformers_space.decoding.loop as decoding
import transformers_space.decoding.verify as verify
from transformers_space import SpaceCandidateGenerator
from transformers_space.decoding.verify import residual_distribution, sampling_verify

SAMPLES = 4000
PROMPT_LENGTH = 5
NEW_TOKENS = 4


def sharp_model(seed: int, drafty: bool, num_mask_tokens: int = 3, arch: str = "llama"):
    """Peaked next-token distributions (LM head scaled up), so p and q differ measurably."""
    model = tiny_model(arch, seed=seed, num_mask_tokens=num_mask_tokens, drafty=drafty)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(20)
    return model


def draw(model, use_space: bool, seed: int, **kwargs) -> torch.Tensor:
    prompt = random_prompts(1, PROMPT_LENGTH, 0).repeat(SAMPLES, 1)
    torch.manual_seed(seed)
    out = model.generate(prompt, max_new_tokens=NEW_TOKENS, do_sample=True, use_space=use_space, **kwargs)
    return out[:, PROMPT_LENGTH:]


def position_pvalues(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """Chi-square two-sample p-value per generated position (categories under 10 counts pooled)."""
    pvalues = []
    for position in range(a.shape[1]):
        tokens = sorted(set(a[:, position].tolist()) | set(b[:, position].tolist()))
        table = torch.tensor([[int((side[:, position] == t).sum()) for t in tokens] for side in (a, b)])
        frequent = table.sum(0) >= 10
        pooled = table[:, ~frequent].sum(1, keepdim=True)
        table = torch.cat([table[:, frequent], pooled], 1)
        table = table[:, table.sum(0) > 0]
        pvalues.append(float(chi2_contingency(table.numpy())[1]) if table.shape[1] > 1 else 1.0)
    return pvalues


SETTINGS = {
    "t1": dict(temperature=1.0, top_k=0),
    "t07_topk": dict(temperature=0.7, top_k=10),
    "topp": dict(temperature=1.0, top_k=0, top_p=0.8),
    "minp_rep": dict(temperature=1.0, top_k=0, min_p=0.05, repetition_penalty=1.3),
    "typical": dict(temperature=1.3, top_k=0, typical_p=0.9),
}


@pytest.mark.parametrize("drafty", [False, True], ids=["poor-drafts", "good-drafts"])
@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_space_sampling_matches_plain_sampling(setting, drafty, verification_log):
    model = sharp_model(seed=0, drafty=drafty)
    plain = draw(model, False, seed=1, **SETTINGS[setting])
    space = draw(model, True, seed=2, **SETTINGS[setting])
    assert min(position_pvalues(plain, space)) > 1e-4
    counts = verification_log.counts()
    assert max(counts) >= 1 and min(counts) == 0  # drafts were both accepted and rejected


@pytest.mark.parametrize("drafty", [False, True], ids=["poor-drafts", "good-drafts"])
def test_negative_control_wrong_residual_is_detected(drafty, monkeypatch):
    model = sharp_model(seed=0, drafty=drafty)
    plain = draw(model, False, seed=1, temperature=1.0, top_k=0)
    monkeypatch.setattr(verify, "residual_distribution", lambda p, q: p)  # the reference code's resampling
    wrong = draw(model, True, seed=2, temperature=1.0, top_k=0)
    assert min(position_pvalues(plain, wrong)) < 1e-5


def test_sampling_verify_alone_preserves_the_target():
    """Synthetic p and q, no model: the first emitted token is distributed as p at depth 0."""
    torch.manual_seed(0)
    trials, vocab = 20000, 6
    target = torch.randn(3, vocab) * 2  # logits at depths 0..2
    draft = torch.randn(2, vocab) * 2
    q = draft.softmax(-1)
    candidates = torch.multinomial(q, trials, replacement=True).T  # [trials, 2]
    logits = target[None].expand(trials, -1, -1)
    accepted, next_token, _ = sampling_verify(
        logits, candidates, q[None].expand(trials, -1, -1), lambda d, x, a: x, torch.ones(trials, dtype=torch.bool)
    )
    first = torch.where(accepted > 0, candidates[:, 0], next_token)
    expected = target[0].double().softmax(-1).numpy() * trials
    observed = torch.bincount(first, minlength=vocab).numpy()
    assert chisquare(observed, expected).pvalue > 1e-4
    wrong_first = torch.where(torch.rand(trials) < 0.5, candidates[:, 0], torch.multinomial(q[0], trials, True))
    wrong = torch.bincount(wrong_first, minlength=vocab).numpy()
    assert chisquare(wrong, expected).pvalue < 1e-6


def test_residual_distribution():
    p = torch.tensor([[0.5, 0.3, 0.2]])
    q = torch.tensor([[0.2, 0.5, 0.3]])
    torch.testing.assert_close(residual_distribution(p, q), torch.tensor([[1.0, 0.0, 0.0]]))
    torch.testing.assert_close(residual_distribution(p, p), p)  # nothing left: fall back to p


def test_seeded_sampling_is_reproducible_and_batched():
    model = sharp_model(seed=1, drafty=True)
    prompt = random_prompts(3, 6, 1)
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        runs.append(model.generate(prompt, max_new_tokens=20, do_sample=True, use_space=True, num_return_sequences=2))
    assert torch.equal(runs[0], runs[1]) and runs[0].shape == (6, 26)
    torch.manual_seed(124)
    other = model.generate(prompt, max_new_tokens=20, do_sample=True, use_space=True, num_return_sequences=2)
    assert not torch.equal(runs[0], other)


def test_sampling_rows_accept_independently_and_stop_alone(verification_log):
    model = sharp_model(seed=2, drafty=True)
    prompt = random_prompts(1, 6, 2).repeat(16, 1)
    torch.manual_seed(5)
    out = model.generate(
        prompt, max_new_tokens=30, do_sample=True, use_space=True, eos_token_id=3, pad_token_id=0,
        return_dict_in_generate=True,
    )
    assert any(len(set(entry.values())) > 1 for entry in verification_log.passes)
    for row, counts in enumerate(out.tokens_per_pass):
        generated = out.sequences[row, 6:].tolist()
        if 3 in generated:  # nothing but padding after EOS
            assert sum(counts) == generated.index(3) + 1
            assert all(t == 0 for t in generated[generated.index(3) + 1 :])


def test_sampling_with_stopping_criteria_and_output_scores():
    class StopAtLength:
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), input_ids.shape[1] >= 15)

    model = sharp_model(seed=3, drafty=True)
    torch.manual_seed(0)
    out = model.generate(
        random_prompts(2, 6, 3), max_new_tokens=30, do_sample=True, use_space=True, output_scores=True,
        output_logits=True, return_dict_in_generate=True, stopping_criteria=StoppingCriteriaList([StopAtLength()]),
    )
    assert out.sequences.shape[1] == 15 and len(out.scores) == len(out.logits) == 9
    for step, scores in enumerate(out.scores):  # each emitted token had positive probability
        chosen = out.sequences[:, 6 + step]
        assert (scores.softmax(-1).gather(1, chosen[:, None]) > 0).all()


def test_greedy_output_scores_match_plain():
    model = tiny_model("qwen2", seed=4, num_mask_tokens=3, drafty=True)
    prompt = random_prompts(1, 5, 4)
    kwargs = dict(max_new_tokens=15, do_sample=False, output_scores=True, output_logits=True,
                  return_dict_in_generate=True, repetition_penalty=1.2)
    plain = model.generate(prompt, **kwargs)
    space = model.generate(prompt, use_space=True, **kwargs)
    assert torch.equal(plain.sequences, space.sequences)
    for a, b in zip(plain.scores, space.scores, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    for a, b in zip(plain.logits, space.logits, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_candidate_generator_interface():
    drafter = SpaceCandidateGenerator(mask_token_id=5, num_mask_tokens=3)
    ids = torch.tensor([[1, 2, 3]])
    same, none = drafter.get_candidates(ids)
    assert torch.equal(same, ids) and none is None
    logits = torch.zeros(1, 3, 6)
    logits[0, 0, 5] = logits[0, 1, 4] = logits[0, 2, 2] = 10.0  # the mask token (5) is never drafted
    logits[0, 0, 1] = 5.0
    drafter.set_draft_logits(logits)
    candidates, scores = drafter.get_candidates(ids)
    assert candidates.tolist() == [[1, 2, 3, 1, 4, 2]] and scores.shape == (1, 3, 6)
    assert drafter.get_candidates(ids)[1] is None  # drafts are used once


def plain_copy(model, noise: float = 0.0, seed: int = 0):
    """The same weights without SPACE (optionally perturbed): a target, or the assistant baseline."""
    plain = AutoModelForCausalLM.from_config(model.config)
    plain.load_state_dict(model.state_dict())
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in plain.parameters():
            param.add_(noise * param.std() * torch.randn(param.shape, generator=generator))
    return plain.eval()


def space_assistant(seed: int, **kwargs):
    assistant = tiny_model("llama", seed=seed, num_mask_tokens=3, drafty=True, **kwargs)
    assistant.generation_config.use_space = True
    assistant.generation_config.assistant_confidence_threshold = 0.0  # draft the full budget every round
    return assistant


@pytest.mark.parametrize("seed", [2, 5, 6])
def test_space_model_as_assistant_greedy_is_exact(seed, verification_log):
    assistant = space_assistant(seed, favourite_strength=0.8)
    target = plain_copy(assistant, noise=0.3, seed=seed)
    mask_id = assistant.config.space_config["mask_token_id"]  # a real target's vocabulary has no mask token
    for prompt_seed in range(3):
        prompt = random_prompts(1, 5 + prompt_seed, prompt_seed)
        kwargs = dict(max_new_tokens=25, do_sample=False, suppress_tokens=[mask_id])
        expected = target.generate(prompt, **kwargs)
        got = target.generate(prompt, assistant_model=assistant, **kwargs)
        assert torch.equal(got, expected)
    assert verification_log.passes, "the assistant did not draft with SPACE"
    assert max(verification_log.counts()) >= 2, "the assistant never emitted several tokens in one pass"


def test_space_assistant_takes_its_layout_from_its_generation_config(monkeypatch):
    """transformers calls the assistant's generate itself; `num_mask_tokens` in the assistant's own generation
    config is how a user picks its layout (e.g. "auto")."""
    assistant = space_assistant(2, favourite_strength=0.8)
    assistant.generation_config.num_mask_tokens = 1
    target = plain_copy(assistant, noise=0.3, seed=2)
    masks_per_group = []
    real = decoding.build_pass_layout

    def spy(*args, **kwargs):
        masks_per_group.append(args[5])
        return real(*args, **kwargs)

    monkeypatch.setattr(decoding, "build_pass_layout", spy)
    prompt = random_prompts(1, 6, 0)
    kwargs = dict(max_new_tokens=20, do_sample=False, suppress_tokens=[assistant.config.space_config["mask_token_id"]])
    assert torch.equal(target.generate(prompt, assistant_model=assistant, **kwargs), target.generate(prompt, **kwargs))
    assert masks_per_group and set(masks_per_group) == {1}


def test_space_model_as_assistant_sampling_matches_plain_sampling(verification_log):
    assistant = space_assistant(0, favourite_strength=0.8)
    with torch.no_grad():
        assistant.get_output_embeddings().weight.mul_(20)
    target = plain_copy(assistant, noise=0.3)
    prompt = random_prompts(1, PROMPT_LENGTH, 0).repeat(300, 1)
    plain, assisted = [], []
    kwargs = dict(max_new_tokens=3, do_sample=True, suppress_tokens=[assistant.config.space_config["mask_token_id"]])
    torch.manual_seed(0)
    for row in prompt.split(1):  # assisted generation takes one row at a time
        plain.append(target.generate(row, **kwargs)[:, PROMPT_LENGTH:])
        assisted.append(target.generate(row, assistant_model=assistant, **kwargs)[:, PROMPT_LENGTH:])
    assert min(position_pvalues(torch.cat(plain), torch.cat(assisted))) > 1e-4
    assert verification_log.passes


def test_early_exit_self_speculation_is_not_hijacked(verification_log):
    """A SPACE model with use_space on by default still runs transformers' own early-exit drafting."""
    model = tiny_model("llama", seed=1, num_mask_tokens=3, drafty=True)
    model.generation_config.use_space = True
    prompt = random_prompts(1, 5, 1)
    expected = model.generate(prompt, max_new_tokens=12, do_sample=False, use_space=False)
    got = model.generate(prompt, max_new_tokens=12, do_sample=False, use_space=False, assistant_early_exit=1)
    assert torch.equal(got, expected) and verification_log.passes == []


def heavy_mask_model(mask_share: float = 0.5, flatten: float = 1.0):
    """A sharp model whose mask token takes ~`mask_share` of the first position's probability (its LM-head row
    is pointed along the hidden state there), so any processor that sees the mask token's mass changes the
    nucleus / min-p / typical set."""
    model = sharp_model(seed=0, drafty=True)
    mask = model.config.space_config["mask_token_id"]
    with torch.no_grad():
        model.get_output_embeddings().weight.div_(flatten)  # more tokens near the processors' thresholds
    prompt = random_prompts(1, PROMPT_LENGTH, 0)
    head = model.get_output_embeddings()
    with torch.no_grad():
        hidden = model.base_model(prompt).last_hidden_state[0, -1]
        logits = head(hidden[None])[0]
        others = torch.logsumexp(torch.cat([logits[:mask], logits[mask + 1 :]]), 0)
        wanted = others + torch.log(torch.tensor(mask_share / (1 - mask_share)))  # logit giving that share
        head.weight[mask] = hidden * (wanted / hidden.dot(hidden))
        if head.bias is not None:
            head.bias[mask] = 0
        share = model(prompt).logits[0, -1].softmax(-1)[mask]
    assert abs(share - mask_share) < 0.1
    return model


@pytest.mark.parametrize(
    ("setting", "flatten"),
    [(dict(temperature=1.3, top_p=0.9, top_k=0), 1.0), (dict(min_p=0.15, top_k=0), 4.0),
     (dict(typical_p=0.7, top_k=0), 4.0)],
    ids=["top_p", "min_p", "typical_p"],
)
def test_sampling_matches_plain_when_the_mask_token_carries_mass(setting, flatten):
    model = heavy_mask_model(flatten=flatten)
    plain = draw(model, False, seed=1, **setting)
    space = draw(model, True, seed=2, **setting)
    first_plain = set(plain[:, 0].tolist())
    assert set(space[:, 0].tolist()) <= first_plain  # nothing outside plain's processed support
    assert min(position_pvalues(plain, space)) > 1e-4


def test_mask_suppression_goes_before_the_first_warper():
    from transformers import RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopPLogitsWarper

    from transformers_space.decoding.verify import SuppressMaskTokenLogitsProcessor, with_mask_suppressed

    processors = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(1.2), TemperatureLogitsWarper(0.7),
                                      TopPLogitsWarper(0.9)])
    placed = with_mask_suppressed(processors, 7)
    assert [type(p).__name__ for p in placed] == ["RepetitionPenaltyLogitsProcessor",
                                                  "SuppressMaskTokenLogitsProcessor", "TemperatureLogitsWarper",
                                                  "TopPLogitsWarper"]
    assert with_mask_suppressed(placed, 7) is placed  # already there: left as is
    assert isinstance(with_mask_suppressed(LogitsProcessorList(), 7)[0], SuppressMaskTokenLogitsProcessor)

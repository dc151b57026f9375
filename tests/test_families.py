"""Every family of the architecture table, each with what it does differently switched on (tests/tiny_models.py:
soft-capped logits and attention with small caps, sliding windows shorter than the prompts, scaled logits,
layers without rotary embeddings, several experts with top-2 routing, attention sinks).

Per family: left-padded batches stay lossless with multi-token passes; gated adapters leave ordinary tokens'
logits bit-identical and decode losslessly; one SAR-SFT step in each mode; the Hub round trip without the
package. Sampling keeps plain sampling's distribution on the families whose logits are not the head's output.
"""

import json

import pytest
import torch
from test_hub import isolated_python, randomise_gated_adapters
from test_sampling import SETTINGS, draw, position_pvalues, sharp_model
from tiny_models import ARCHITECTURES, left_padded, random_prompts, tiny_config, tiny_model

import transformers_space.decoding.loop as loop
from transformers_space import SpaceConfig, add_space_support
from transformers_space.training import SpaceTrainer

TRANSFORMED_LOGITS = ("gemma2", "gemma3_text", "granite", "cohere")  # soft-capped, divided, multiplied
MIXTURE_OF_EXPERTS = ("gpt_oss", "mixtral", "olmoe", "qwen3_moe")


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_left_padded_batches_are_lossless_with_multi_token_passes(arch, verification_log):
    for seed in range(2):
        model = tiny_model(arch, seed=seed, num_mask_tokens=3, drafty=True)
        ids, mask = left_padded([3, 11, 7], seed)  # longer than the tiny sliding windows (4)
        common = dict(attention_mask=mask, max_new_tokens=18, do_sample=False, pad_token_id=0)
        plain = model.generate(ids, **common)
        space = model.generate(ids, **common, use_space=True, return_dict_in_generate=True)
        assert torch.equal(space.sequences, plain)
    assert max(verification_log.counts()) >= 1, "no draft was ever accepted"


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_gated_adapters_keep_ordinary_tokens_exact_and_decode_losslessly(arch, verification_log):
    model = tiny_model(arch, seed=1, num_mask_tokens=2, drafty=True)
    ids = random_prompts(2, 9, 1)
    mask_id = SpaceConfig.of(model).mask_token_id
    with_masks = torch.cat([ids, torch.full((2, 2), mask_id)], dim=1)
    with torch.no_grad():
        before, before_masks = model(ids).logits, model(with_masks).logits
    add_space_support(model, num_mask_tokens=2, mode="gated")
    randomise_gated_adapters(model, 1)
    with torch.no_grad():
        after, after_masks = model(ids).logits, model(with_masks).logits
    assert torch.equal(after, before)  # bit-identical, not close
    ordinary_after, ordinary_before = after_masks[:, : ids.shape[1]], before_masks[:, : ids.shape[1]]
    if arch in MIXTURE_OF_EXPERTS:  # an expert multiplies all rows routed to it at once: the masks, routed anew
        torch.testing.assert_close(ordinary_after, ordinary_before, rtol=0, atol=1e-6)  # by the adapters, change
    else:  # that product's shape and so, at float rounding only, the ordinary rows that share the expert
        assert torch.equal(ordinary_after, ordinary_before)
    assert not torch.equal(after_masks[:, ids.shape[1] :], before_masks[:, ids.shape[1] :])  # the adapters act
    plain = model.generate(ids, max_new_tokens=14, do_sample=False)
    assert torch.equal(model.generate(ids, max_new_tokens=14, do_sample=False, use_space=True), plain)


@pytest.mark.parametrize("mode", ["full", "lora", "gated"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_one_training_step_in_each_mode(arch, mode, tmp_path):
    from toy_language import training_args

    window = getattr(tiny_config(arch), "sliding_window", None)  # SAR-SFT refuses rows longer than a window
    model = tiny_model(arch, seed=2, num_mask_tokens=2, **({"sliding_window": 64} if window and window < 64 else {}))
    generator = torch.Generator().manual_seed(2)
    rows = [{"input_ids": torch.randint(1, 40, (24,), generator=generator).tolist()} for _ in range(4)]
    trainer = SpaceTrainer(
        model=model, train_dataset=rows,
        args=training_args(tmp_path, 1, per_device_train_batch_size=4, warmup_steps=0, lr_scheduler_type="constant"),
        space_config=SpaceConfig(num_mask_tokens=2, mode=mode, adapter_rank=4, adapter_alpha=8),
    )
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert any(not torch.equal(b, p) for b, p in zip(before, trainable, strict=True))  # a step was taken


@pytest.mark.parametrize("arch", TRANSFORMED_LOGITS)
def test_sampling_keeps_the_distribution_where_logits_are_transformed(arch, verification_log):
    model = sharp_model(seed=0, drafty=True, arch=arch)
    plain = draw(model, False, seed=1, **SETTINGS["t1"])
    space = draw(model, True, seed=2, **SETTINGS["t1"])
    assert min(position_pvalues(plain, space)) > 1e-4
    counts = verification_log.counts()
    assert max(counts) >= 1 and min(counts) == 0


def test_negative_control_untransformed_logits_are_detected(monkeypatch):
    """Without the family's logit transform (here Gemma 2's soft-capping) the sampling test above fails."""
    model = sharp_model(seed=0, drafty=True, arch="gemma2")
    plain = draw(model, False, seed=1, **SETTINGS["t1"])
    monkeypatch.setattr(loop, "lm_head_of", lambda m: m.get_output_embeddings())
    space = draw(model, True, seed=2, **SETTINGS["t1"])
    assert min(position_pvalues(plain, space)) < 1e-6


REMOTE_MANY = r"""
import json, sys
try:
    import transformers_space
except ImportError:
    pass
else:
    raise SystemExit("transformers_space must not be importable here")
import torch
from transformers import AutoModelForCausalLM

folders, prompt = json.loads(sys.argv[1]), torch.tensor(json.loads(sys.argv[2]))
out = {}
for arch, folder in folders.items():
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    space = model.generate(input_ids=prompt, do_sample=False, use_space=True, max_new_tokens=16,
                           return_dict_in_generate=True)
    out[arch] = {"class": type(model).__name__, "sequences": space.sequences.tolist(),
                 "passes": space.tokens_per_pass}
print(json.dumps(out))
"""


def test_every_family_round_trips_through_the_hub_without_the_package(tmp_path):
    prompt = random_prompts(2, 7, 4)
    folders, expected = {}, {}
    for arch in ARCHITECTURES:
        model = tiny_model(arch, seed=4, num_mask_tokens=2, drafty=True)
        add_space_support(model, num_mask_tokens=2, mode="gated")
        randomise_gated_adapters(model, 4)
        folders[arch] = str(tmp_path / arch)
        model.save_pretrained(folders[arch])
        out = model.generate(prompt, do_sample=False, use_space=True, max_new_tokens=16, return_dict_in_generate=True)
        expected[arch] = {"class": type(model).__name__, "sequences": out.sequences.tolist(),
                          "passes": out.tokens_per_pass}
    remote = isolated_python(REMOTE_MANY, json.dumps(folders), json.dumps(prompt.tolist()), cwd=tmp_path)
    assert remote == expected

"""Concurrent `generate` calls (SPACE and plain, gated and not, weights-first or not) from several threads give
exactly what the same calls give one after another, and leave nothing of torch or transformers changed."""

import threading

import pytest
import torch
import torch.nn.functional as F
from tiny_models import random_prompts, tiny_config
from transformers import AutoModelForCausalLM
from transformers.integrations import sdpa_attention

from transformers_space import add_space_support
from transformers_space.decoding.planning import SpaceLayoutPlan

WIDE = 64  # wide enough for the weights-first product (kernels.MIN_WEIGHT_SIDE)


def wide_model(mode: str, seed: int = 0):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config("llama", hidden_size=WIDE, intermediate_size=2 * WIDE))
    model = add_space_support(model.eval(), None, num_mask_tokens=3, mode=mode)
    if mode == "gated":  # random adapters, so that masks really differ from the base
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "space_adapter" in name:
                    parameter.normal_(0, 0.3)
    return model


CALLS = {
    "plain": dict(use_space=False),
    "space_weights_first": dict(use_space=True, space_layout=SpaceLayoutPlan(3, (0, 1, 2, 3), kernels="weights_first")),
    "space_one_mask": dict(use_space=True, space_layout=SpaceLayoutPlan(1, (0, 1), kernels="weights_first")),
    "space_default_kernel": dict(use_space=True, space_layout=SpaceLayoutPlan(2, (0, 1, 2))),
}


def run(model, name, prompts):
    out = model.generate(prompts, max_new_tokens=16, do_sample=False, return_dict_in_generate=True, **CALLS[name])
    return out.sequences, getattr(out, "tokens_per_pass", None)


@pytest.mark.parametrize("mode", ["full", "gated"])
def test_concurrent_generate_equals_sequential(mode):
    model = wide_model(mode)
    prompts = {name: random_prompts(2, 7, seed) for seed, name in enumerate(CALLS)}
    sequential = {name: run(model, name, prompts[name]) for name in CALLS}
    linear, use_gqa = F.linear, getattr(sdpa_attention, "use_gqa_in_sdpa", None)
    for _ in range(3):
        results, errors = {}, []
        start = threading.Barrier(len(CALLS))

        def worker(name, start=start, results=results, errors=errors):
            try:
                start.wait()
                results[name] = run(model, name, prompts[name])
            except Exception as error:  # pragma: no cover - reported below
                errors.append(error)

        threads = [threading.Thread(target=worker, args=(name,)) for name in CALLS]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors
        for name in CALLS:
            assert torch.equal(results[name][0], sequential[name][0]), name
            assert results[name][1] == sequential[name][1], name  # the same drafts were accepted
    assert F.linear is linear and getattr(sdpa_attention, "use_gqa_in_sdpa", None) is use_gqa

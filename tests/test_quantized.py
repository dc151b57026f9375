"""Quantized weights (optimum-quanto, the optimum family's quantization backend): SPACE decoding and gated training
on int8 and int4 weights, lossless against plain greedy decoding of the SAME quantized model.

Two ways in, both real: transformers' own integration (`from_pretrained(..., quantization_config=
QuantoConfig(weights="int8"))`) and optimum-quanto's `quantize` + `freeze` on a model in memory.
"""

import pytest
import torch
from optimum import quanto
from test_hub import randomise_gated_adapters
from tiny_models import left_padded, random_prompts, tiny_model
from transformers import QuantoConfig

from transformers_space import SpaceConfig, add_space_support, load_space_model
from transformers_space.training import SpaceTrainer


def quantized(arch: str, weights: str, seed: int = 1):
    model = tiny_model(arch, seed=seed, num_mask_tokens=3, drafty=True)
    quanto.quantize(model, weights={"int8": quanto.qint8, "int4": quanto.qint4}[weights])
    quanto.freeze(model)
    assert type(model.get_output_embeddings()).__name__ == "QLinear" or arch == "gpt2"
    return model


@pytest.mark.parametrize("weights", ["int8", "int4"])
@pytest.mark.parametrize("arch", ["llama", "qwen3_moe", "gemma2"])
def test_space_on_quantized_weights_is_lossless(arch, weights, verification_log):
    model = quantized(arch, weights)
    ids, mask = left_padded([4, 9, 6], seed=2)
    common = dict(attention_mask=mask, max_new_tokens=16, do_sample=False, pad_token_id=0)
    plain = model.generate(ids, **common)
    for layout in ({}, {"num_mask_tokens": 1}):
        assert torch.equal(model.generate(ids, **common, use_space=True, **layout), plain)
    assert max(verification_log.counts()) >= 1
    add_space_support(model, num_mask_tokens=3, mode="gated")  # adapters on quantized linear layers
    randomise_gated_adapters(model, 3)
    assert torch.equal(model.generate(ids, **common), plain)  # ordinary tokens: the quantized base, exactly
    assert torch.equal(model.generate(ids, **common, use_space=True), plain)


@pytest.mark.parametrize("weights", ["int8", "int4"])
def test_gated_training_on_quantized_weights(weights, tmp_path):
    from toy_language import training_args

    model = quantized("llama", weights, seed=2)
    generator = torch.Generator().manual_seed(2)
    rows = [{"input_ids": torch.randint(1, 40, (24,), generator=generator).tolist()} for _ in range(8)]
    prompt = random_prompts(2, 6, 5)
    plain = model.generate(prompt, max_new_tokens=12, do_sample=False)
    trainer = SpaceTrainer(
        model=model, train_dataset=rows, space_config=SpaceConfig(num_mask_tokens=3, mode="gated", adapter_rank=4),
        args=training_args(tmp_path, 3, per_device_train_batch_size=4, warmup_steps=0, lr_scheduler_type="constant"),
    )
    trainable = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("space_" in name for name in trainable)
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(value, after[name]) for name, value in trainable.items())
    model = trainer.model.eval()
    assert torch.equal(model.generate(prompt, max_new_tokens=12, do_sample=False, use_space=True), plain)


def test_transformers_quanto_integration_loads_a_space_model(tmp_path):
    model = tiny_model("qwen2", seed=4, num_mask_tokens=2, drafty=True)
    model.save_pretrained(tmp_path)
    loaded = load_space_model(tmp_path, quantization_config=QuantoConfig(weights="int8")).eval()
    assert type(loaded.model.layers[0].mlp.down_proj).__name__ == "QLinear"
    prompt = random_prompts(2, 7, 4)
    plain = loaded.generate(prompt, max_new_tokens=14, do_sample=False)
    assert torch.equal(loaded.generate(prompt, max_new_tokens=14, do_sample=False, use_space=True), plain)

"""What `save_pretrained` of a SPACE model writes beyond transformers' own files, so the folder is a Hub repo.

transformers itself copies `modeling_space.py` and its relative imports and writes `auto_map` (the SPACE
classes are registered for `AutoModelForCausalLM`). This module adds:
- `custom_generate/generate.py` (with its own copy of the decoding modules), so SPACE decoding also runs
  through transformers' `custom_generate` mechanism: on a remote-code load it becomes `model.generate`,
  and `any_model.generate(..., custom_generate=<repo>, trust_remote_code=True)` runs it;
- a model card (README.md) unless the folder already has one.

Imports only torch, transformers and sibling modules (it ships as remote code).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .configuration import SpaceConfig

HERE = Path(__file__).parent
# The decoding core: what `custom_generate/generate.py` imports, directly or not.
CORE_MODULES = (
    "architectures.py", "autotune.py", "candidates.py", "compat.py", "configuration.py", "draft_head.py",
    "forward.py", "gated.py", "generation.py", "kernels.py", "layout.py", "lookup.py", "loop.py", "modeling_space.py",
    "planning.py", "remote_code.py", "verify.py",
)

CUSTOM_GENERATE = '''"""SPACE decoding through transformers' `custom_generate` (written by transformers-space).

`generate(model=..., **generate_kwargs)`: `use_space` (default: the model's generation config) switches
SPACE decoding on; everything else is transformers' `generate`.
"""

import functools

from transformers import GenerationMixin

from .generation import space_generate


def generate(*args, model, **kwargs):
    kwargs.pop("custom_generate", None)
    return space_generate(model, functools.partial(GenerationMixin.generate, model), *args, **kwargs)
'''

MODEL_CARD = """---
library_name: transformers
tags:
- space
- speculative-decoding
- custom_generate
{base_model}---

# {name}: SPACE model

This model drafts and verifies its own tokens in one forward pass (SPACE, arXiv 2402.11809): greedy output
is identical to the same weights' plain greedy decoding, sampling keeps plain sampling's distribution.{gated}

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{repo}", padding_side="left")
model = AutoModelForCausalLM.from_pretrained("{repo}", trust_remote_code=True)
inputs = tokenizer(["Hello, my name is"], return_tensors="pt")
out = model.generate(**inputs, max_new_tokens=64, use_space=True, return_dict_in_generate=True)
print(tokenizer.decode(out.sequences[0]), out.tokens_per_pass[0])
```

`use_space` is on by default in this repo's generation config; `use_space=False` is plain decoding.
The code ships with the weights (`modeling_space.py`, `custom_generate/`) and needs only torch and
transformers >= 5.17; with the `transformers-space` package installed, `AutoSpaceModelForCausalLM`
loads it with the package's own classes.

## SPACE settings

| setting | value |
|---|---|
{settings}
"""


def write_custom_generate(save_directory: str | Path) -> None:
    target = Path(save_directory) / "custom_generate"
    target.mkdir(parents=True, exist_ok=True)
    for name in CORE_MODULES:
        shutil.copyfile(HERE / name, target / name)
    (target / "generate.py").write_text(CUSTOM_GENERATE)
    (target / "requirements.txt").write_text("torch\ntransformers>=5.17\n")


def write_model_card(config, save_directory: str | Path, repo_id: str | None = None) -> None:
    path = Path(save_directory) / "README.md"
    if path.exists():
        return
    space_config = SpaceConfig.of(config)
    base = getattr(config, "_name_or_path", "") or ""
    base_is_repo = base.count("/") == 1 and not Path(base).exists()
    path.write_text(
        MODEL_CARD.format(
            name=Path(save_directory).resolve().name,
            repo=repo_id or str(save_directory),
            base_model=f"base_model: {base}\n" if base_is_repo else "",
            gated=(
                " Its gated adapter acts only at mask positions, so the output is the ORIGINAL base model's."
                if space_config.mode == "gated" else ""
            ),
            settings="\n".join(
                f"| `{key}` | `{json.dumps(value)}` |" for key, value in sorted(space_config.to_dict().items())
            ),
        )
    )

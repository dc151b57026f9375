"""Everything a saved SPACE model runs with: the settings schema, the decoding loop and its parts, the gated adapters.

This folder is flat on purpose: `save_pretrained` copies `modeling_space.py` and, through transformers'
remote-code mechanism, every module it imports with a one-dot relative import, next to the weights; the
Hub loads them from there without this package. transformers follows only flat sibling imports, so every
module a saved model needs lives here, side by side, and imports only torch, transformers and its siblings.

Where a change goes (each is one module):

| module | responsibility |
|---|---|
| `configuration.py` | `SpaceConfig`, the only reader and writer of `config.space_config` |
| `architectures.py` | the table of supported families (`ArchSpec`): a new architecture is one entry |
| `generation.py` | `generate(use_space=...)`: resolves SPACE's options into a plan, once |
| `loop.py` | the decoding loop (one pass: lay out, forward, verify, emit, crop, draft) |
| `forward.py` | what one pass computes: body on the block, LM head on the rows read |
| `kernels.py` | `PassKernels`: the contexts a pass runs under (a new pass kernel is one subclass) |
| `layout.py` | pure: where candidates and masks sit in a pass, its 4D mask, cache bookkeeping |
| `verify.py` | verification rules (greedy, distribution-preserving sampling) |
| `candidates.py` | drafts from mask logits, behind transformers' `CandidateGenerator` interface |
| `planning.py` | pure: which layout (masks, groups) pays on this machine |
| `autotune.py` | measures a machine and a model for `planning.py` |
| `gated.py` | adapters active only at mask positions (the base model stays exact) |
| `draft_head.py` | optional: each mask's draft conditioned on the token before it |
| `modeling_space.py` | the `Space<Class>` model classes that `from_pretrained` finds |
| `remote_code.py` | what `save_pretrained` writes beyond transformers' files |
| `compat.py` | every difference between the supported transformers releases |
"""

from .configuration import SpaceConfig
from .forward import PassLogits, attention_masks, forward_block
from .loop import SpaceGenerateOutput, space_decoding

__all__ = ["PassLogits", "SpaceConfig", "SpaceGenerateOutput", "attention_masks", "forward_block", "space_decoding"]

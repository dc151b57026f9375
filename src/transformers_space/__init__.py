"""transformers-space: lossless faster decoding for transformers causal LMs (SPACE, arXiv 2402.11809).

Layout: `decoding/` (what a saved model runs with: schema, loop, pass, kernels, gated adapters; flat because it
ships as remote code), `modeling.py` (`add_space_support`), `training/` (SAR-SFT), `hub/` (export, adapters,
`AutoSpaceModelForCausalLM`), `bench/` (methods, runner, report), `cli.py` and `demo.py` at the top.
"""

from .decoding.candidates import SpaceCandidateGenerator
from .decoding.configuration import SpaceConfig
from .decoding.gated import install_gated_adapters, remove_gated_adapters
from .decoding.generation import SpaceGenerationMixin
from .decoding.loop import SpaceGenerateOutput, space_decoding
from .decoding.planning import SpaceLayoutPlan
from .decoding.verify import SuppressMaskTokenLogitsProcessor
from .modeling import SUPPORTED_MODEL_TYPES, add_space_support, load_space_model

__version__ = "0.2.0"

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "SpaceCandidateGenerator",
    "SpaceConfig",
    "SpaceDataCollator",
    "SpaceGenerateOutput",
    "SpaceGenerationMixin",
    "SpaceLayoutPlan",
    "SpaceTrainer",
    "SuppressMaskTokenLogitsProcessor",
    "__version__",
    "add_space_support",
    "install_gated_adapters",
    "load_space_model",
    "remove_gated_adapters",
    "space_decoding",
]

_TRAINING = ("SpaceDataCollator", "SpaceTrainer")  # loaded on first use: importing Trainer is slow


def __getattr__(name: str):
    if name in _TRAINING:
        from . import training

        return getattr(training, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

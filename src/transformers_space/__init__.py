"""transformers-space: lossless faster decoding for transformers causal LMs (SPACE, arXiv 2402.11809)."""

from .candidates import SpaceCandidateGenerator
from .configuration import SpaceConfig
from .decoding import SpaceGenerateOutput, space_decoding
from .generation import SpaceGenerationMixin, SuppressMaskTokenLogitsProcessor
from .modeling import SUPPORTED_MODEL_TYPES, add_space_support

__version__ = "0.1.0"

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "SpaceCandidateGenerator",
    "SpaceConfig",
    "SpaceGenerateOutput",
    "SpaceGenerationMixin",
    "SuppressMaskTokenLogitsProcessor",
    "__version__",
    "add_space_support",
    "space_decoding",
]

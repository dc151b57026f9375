"""Moved to `transformers_space.decoding.modeling_space`."""

from ._moved import alias

alias(__name__, "transformers_space.decoding.modeling_space")

"""Moved to `transformers_space.decoding.gated`."""

from ._moved import alias

alias(__name__, "transformers_space.decoding.gated")

"""Moved to `transformers_space.decoding.generation`."""

from ._moved import alias

alias(__name__, "transformers_space.decoding.generation")

"""Moved to `transformers_space.decoding.candidates`."""

from ._moved import alias

alias(__name__, "transformers_space.decoding.candidates")

"""Moved to `transformers_space.decoding.remote_code`."""

from ._moved import alias

alias(__name__, "transformers_space.decoding.remote_code")

"""SAR-SFT training: `SpaceTrainer` (a `transformers.Trainer`), its data collator, data checks and CLI.

One module per responsibility: `collator.py` (token lists -> tensors, pure), `data.py` (rows -> checked
token lists), `setup.py` (model set-up per mode, settings checks), `trainer.py` (loss, metrics,
checkpoints), `cli.py` (`transformers-space train`). Names load on first use, so the command line does not
import the Trainer stack until it trains.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "SpaceDataCollator": ".collator",
    "SpaceTrainer": ".trainer",
    "TokenizedRows": ".data",
    "grow_gated_adapters": ".setup",
    "prepare_rows": ".data",
    "valid_block_starts": ".collator",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

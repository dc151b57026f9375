"""Old module paths that moved in 0.2 (the folder layout): each old module is an alias that warns once."""

from __future__ import annotations

import importlib
import sys
import warnings


def alias(old: str, new: str) -> None:
    """Make the module `old` (being imported) the module `new`, with a DeprecationWarning naming the new path."""
    warnings.warn(f"`{old}` moved to `{new}`; import it from there (the old path goes away in 0.3).",
                  DeprecationWarning, stacklevel=3)
    sys.modules[old] = importlib.import_module(new)

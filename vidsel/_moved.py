"""Old module paths that moved, kept importable for one release with a DeprecationWarning.

A moved module whose old name is also a function of its package (``vidsel.ops.merge`` is both) cannot
be a file: importing the file would rebind the package attribute from the function to the module.
So the old name is installed in ``sys.modules`` as a forwarding module object instead; importing it
does not touch the package, and reading any name from it warns and returns the new module's value.
"""

from __future__ import annotations

import importlib
import sys
import types
import warnings


class MovedModule(types.ModuleType):
    """Stands in for module `old`; every attribute read warns and forwards to module `new`."""

    def __init__(self, old: str, new: str):
        super().__init__(old, f"Deprecated alias of {new} (moved); import {new} instead.")
        self._new = new

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        warnings.warn(
            f"{self.__name__} is deprecated and will be removed; import {self._new} instead",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(self._new), name)


def install(old: str, new: str) -> None:
    """Makes `import old` / `from old import name` work as aliases of module `new`."""
    sys.modules.setdefault(old, MovedModule(old, new))

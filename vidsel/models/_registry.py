"""Model registry: `vidsel.create_model(name, **overrides)` and `vidsel.list_models()` (timm-style).

A model family registers one builder per config name; configs are plain dataclasses and
`overrides` replace their fields (e.g. depth=2 for a small test model).
"""

from __future__ import annotations

import re
from collections.abc import Callable

_BUILDERS: dict[str, Callable] = {}
_PATTERNS: list[tuple[re.Pattern, Callable]] = []


def register_model(name: str):
    """Decorator: `@register_model("testa_f16") def _(**overrides) -> nn.Module`."""

    def wrap(builder: Callable) -> Callable:
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} is registered twice")
        _BUILDERS[name] = builder
        return builder

    return wrap


def register_model_pattern(regex: str):
    """Decorator for a family whose names follow a grammar (e.g. STTS "mvit_b16-T0.6@0-S0.9@4"):
    `@register_model_pattern(r"mvit_b16(-[TS][0-9.]+@[0-9]+)*") def _(name, **overrides)`.

    `create_model` tries the patterns (full match) for names that are not registered exactly.
    """

    def wrap(builder: Callable) -> Callable:
        _PATTERNS.append((re.compile(regex), builder))
        return builder

    return wrap


def list_models(pattern: str = "*") -> list[str]:
    import fnmatch

    _import_families()
    return sorted(n for n in _BUILDERS if fnmatch.fnmatch(n, pattern))


def create_model(name: str, **overrides):
    """Builds a registered model; unknown names raise ValueError listing the known ones.

    Integer overrides (depth, heads, frames, ...) must be >= 0: a negative one raises ValueError.
    """
    for key, value in overrides.items():
        if isinstance(value, int) and not isinstance(value, bool) and value < 0:
            raise ValueError(f"create_model({name!r}): {key}={value} must be >= 0")
    _import_families()
    if name not in _BUILDERS:
        for pattern, builder in _PATTERNS:
            if pattern.fullmatch(name):
                return builder(name, **overrides)
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(_BUILDERS))}")
    return _BUILDERS[name](**overrides)


def _import_families() -> None:
    """Imports every vidsel.models.<family> module so their @register_model calls run."""
    import importlib
    import pkgutil

    import vidsel.models

    for info in pkgutil.iter_modules(vidsel.models.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"vidsel.models.{info.name}")

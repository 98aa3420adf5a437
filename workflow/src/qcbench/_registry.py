"""Tiny timm-style registries: ``register_*`` decorators and ``create_*`` factories.

Every pluggable family (datasets, models, quantization schemes, triggers, attacks, defenses,
tables) is a :class:`Registry`. A family's package imports all its modules
(:func:`import_submodules`), so a new method is one new module: its decorator registers it.
Names are looked up exactly; an unknown name raises a ``KeyError`` whose message lists what is
registered, so a typo in a config file is easy to spot.
"""

from __future__ import annotations

import importlib
import pkgutil
import warnings
from collections.abc import Callable
from typing import Any


class Registry:
    """A name -> factory mapping for one kind of component."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., Any]] = {}

    def register(self, name: str | None = None) -> Callable[[Callable], Callable]:
        """Decorator: register ``fn`` (a class or function) under ``name`` (default: its name)."""

        def deco(fn: Callable) -> Callable:
            key = name or fn.__name__
            if key in self._entries and self._entries[key] is not fn:
                warnings.warn(f"{self.kind} {key!r} registered twice; the last one wins", stacklevel=2)
            self._entries[key] = fn
            return fn

        return deco

    def get(self, name: str) -> Callable[..., Any]:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {known}") from None

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries


def import_submodules(package: str, path) -> list[str]:
    """Import every public module (name not starting with ``_``) of the package ``package`` whose
    ``__path__`` is ``path``, in name order, so each registers its entries; return their names. A
    family package calls this from its ``__init__``: adding a method needs no import list."""
    names = sorted(m.name for m in pkgutil.iter_modules(path) if not m.name.startswith("_"))
    for name in names:
        importlib.import_module(f"{package}.{name}")
    return names

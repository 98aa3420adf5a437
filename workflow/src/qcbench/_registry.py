"""Tiny timm-style registries: ``register_*`` decorators and ``create_*`` factories.

Every pluggable family (datasets, models, quantization schemes, triggers, attacks, defenses)
is a :class:`Registry`. Names are looked up exactly; an unknown name raises a ``KeyError`` whose
message lists what is registered, so a typo in a config file is easy to spot.
"""

from __future__ import annotations

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

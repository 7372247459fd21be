"""A name → function table for the online engine's parts (advantage estimators, policy losses, KL
estimators, reward transforms), so a config names a part and a typo gets the closest valid name."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from pluralign.errors import ConfigError


class Registry:
    def __init__(self, what: str):
        self.what = what
        self._items: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._items:
                raise ValueError(f"{self.what} {name!r} is registered twice")
            self._items[name] = fn
            return fn

        return decorator

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._items:
            close = difflib.get_close_matches(name, list(self._items), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown {self.what} {name!r}{hint}; valid: {', '.join(self.names())}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

"""A name → part table: decoders, loss combiners, group objectives, conditioning schemes, advantage
estimators and policy losses are all registered by name, so a config names a part and a typo gets the
closest valid name. (The loss registry keeps its own table: each loss also declares its kind and inputs.)"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from pluralign.errors import ConfigError


class Registry:
    """`what` names the kind of part in errors; `modules` are imported before the first lookup, so parts
    that register themselves in other modules are found without importing those modules up front."""

    def __init__(self, what: str, *, modules: Sequence[str] = ()):
        self.what = what
        self._modules = tuple(modules)
        self._items: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        def decorator(part: Any) -> Any:
            if name in self._items:
                raise ValueError(f"{self.what} {name!r} is registered twice")
            self._items[name] = part
            return part

        return decorator

    def _load(self) -> None:
        for module in self._modules:
            importlib.import_module(module)

    def get(self, name: str) -> Any:
        self._load()
        if name not in self._items:
            close = difflib.get_close_matches(name, list(self._items), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown {self.what} {name!r}{hint}; valid: {', '.join(self.names())}")
        return self._items[name]

    def check_params(self, name: str, params: Any, *, reserved: Sequence[str] = ()) -> None:
        """A `ConfigError` naming part `name`'s settings when `params` holds one it does not take: its
        keyword-only arguments (a class's, of its constructor), less the `reserved` ones its caller passes."""
        part = self.get(name)
        signature = inspect.signature(part.__init__ if isinstance(part, type) else part)
        accepted = [p.name for p in signature.parameters.values()
                    if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in reserved]
        unknown = sorted(set(params or {}) - set(accepted))
        if unknown:
            close = difflib.get_close_matches(unknown[0], accepted, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{self.what} {name!r} has no parameter {unknown}{hint}; its parameters: "
                              f"{', '.join(accepted) or 'none'}")
        for key, value in (params or {}).items():
            annotation = signature.parameters[key].annotation  # text under `from __future__ import annotations`
            text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
            wanted = text.replace(" ", "").split("|")
            if not _matches(value, wanted):
                raise ConfigError(f"{self.what} {name!r}: {key} must be {' or '.join(_WORDS[w] for w in wanted)}, "
                                  f"got {value!r}", field=key)

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._items


_TYPES = {"float": (int, float), "int": (int,), "bool": (bool,), "str": (str,), "None": (type(None),)}
_WORDS = {"float": "a number", "int": "an integer", "bool": "true or false", "str": "a string", "None": "null"}


def _matches(value: Any, wanted: list[str]) -> bool:
    """Whether `value` fits annotation parts like ["float", "None"]; unannotated or other types pass."""
    if any(w not in _TYPES for w in wanted):
        return True
    if isinstance(value, bool) and "bool" not in wanted:  # True is an int to Python, not a number here
        return False
    return any(isinstance(value, _TYPES[w]) for w in wanted)

"""`Registry.check_params`: the settings a registered part takes, checked by name and by annotated type."""

from __future__ import annotations

import pytest

from pluralign.errors import ConfigError
from pluralign.registry import Registry

parts = Registry("toy part")


@parts.register("fn")
def fn(x, *, group_size: int, rate: float = 0.1, steps: int = 3, clip: bool = True, mode: str = "a",
       cap: float | None = None, anything=None):
    return x


@parts.register("cls")
class Part:
    def __init__(self, objectives=(), *, alpha: float = 1.0):
        self.alpha = alpha


def test_good_settings_pass():
    parts.check_params("fn", {"rate": 1, "steps": 2, "clip": False, "mode": "b", "cap": None, "anything": [1]},
                       reserved=("group_size",))
    parts.check_params("fn", {"cap": 0.5})
    parts.check_params("cls", {"alpha": 2.0})
    parts.check_params("cls", None)


@pytest.mark.parametrize("name, params, message", [
    ("fn", {"rat": 1.0}, "toy part 'fn' has no parameter ['rat'] (did you mean 'rate'?); its parameters: rate, steps"),
    ("fn", {"group_size": 2}, "has no parameter ['group_size']"),  # reserved: the caller passes it
    ("fn", {"rate": "fast"}, "toy part 'fn': rate must be a number, got 'fast'"),
    ("fn", {"rate": True}, "rate must be a number, got True"),  # a bool is not a number here
    ("fn", {"steps": 2.5}, "steps must be an integer, got 2.5"),
    ("fn", {"clip": 1}, "clip must be true or false, got 1"),
    ("fn", {"cap": "x"}, "cap must be a number or null, got 'x'"),
    ("cls", {"beta": 1}, "toy part 'cls' has no parameter ['beta']; its parameters: alpha"),
    ("nope", {}, "unknown toy part 'nope'"),
])
def test_bad_settings_are_config_errors_naming_them(name, params, message):
    with pytest.raises(ConfigError) as e:
        parts.check_params(name, params, reserved=("group_size",))
    assert message in str(e.value)

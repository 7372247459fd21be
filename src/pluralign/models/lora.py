"""LoRA adapters through peft (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models"): which
layers to adapt (`LoraSpec`), adding them with their names checked, and telling a peft model apart. peft is
imported only when LoRA is used."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pluralign.config import option
from pluralign.errors import ConfigError, PluralignError


@dataclass(frozen=True)
class LoraSpec:
    """Which LoRA adapters to add: ΔW = (alpha / r) · B A on each targeted linear layer."""

    r: int = option(16, help="rank of the low-rank update")
    alpha: float = option(32.0, help="scale numerator: the update is multiplied by alpha / r")
    dropout: float = option(0.0, help="dropout on the adapter input during training")
    target_modules: str | list[str] = option("all-linear", help="module names to adapt, or 'all-linear' "
                                             "(every linear layer except the output head)")
    modules_to_save: list[str] = option(default_factory=list, help="modules trained in full alongside the "
                                        "adapters (e.g. a reward head)")

    def __post_init__(self) -> None:
        # Checked when the config is made: peft refused r=0 or dropout=1.5 with a traceback at load time, and
        # alpha=0 scales every update to nothing (the adapters and their gradients stay 0: nothing trains).
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ConfigError(f"'lora.r' must be an integer >= 1, got {self.r!r}", field="lora.r")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, int | float) or not 0 < self.alpha < math.inf:
            raise ConfigError(f"'lora.alpha' must be a finite number > 0, got {self.alpha!r}", field="lora.alpha")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, int | float) or not 0 <= self.dropout < 1:
            raise ConfigError(f"'lora.dropout' must be in [0, 1), got {self.dropout!r}", field="lora.dropout")
        if not self.target_modules:
            raise ConfigError("'lora.target_modules' is empty: name the modules to adapt, or 'all-linear'",
                              field="lora.target_modules")


def add_lora(model: Any, spec: LoraSpec, *, task_type: str = "CAUSAL_LM") -> Any:
    """``model`` wrapped by peft with trainable LoRA adapters (the base weights frozen)."""
    peft = peft_module()
    check_lora_names(model, spec)
    config = peft.LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                             target_modules=spec.target_modules, modules_to_save=list(spec.modules_to_save) or None,
                             task_type=task_type)
    try:
        with peft_quietly():
            return peft.get_peft_model(model, config)
    except ValueError as e:  # the names exist (checked above): a targeted module LoRA cannot adapt (a norm, a block)
        raise ConfigError(f"lora: {str(e).splitlines()[0][:300]}", field="lora") from None


def check_lora_names(model: Any, spec: LoraSpec) -> None:
    """Every entry of ``spec.target_modules`` and ``spec.modules_to_save`` names a module of `model`, matched as
    peft matches them. peft skips list entries that match nothing as long as another one matches, and every
    modules_to_save entry that matches nothing: ``[q_proj, v_porj]`` adapted q_proj alone, and a misspelt
    module to save stayed frozen, without a word; a target list matching nothing at all was peft's traceback."""
    from peft.tuners.tuners_utils import check_target_module_exists

    names = [n for n, _ in model.named_modules() if n]
    targets = spec.target_modules
    if targets != "all-linear":
        for key in [targets] if isinstance(targets, str) else targets:
            one = peft_module().LoraConfig(target_modules=key if isinstance(targets, str) else [key])
            if not any(check_target_module_exists(one, n) for n in names):
                # one text is a regular expression to peft: lora.target_modules=q_proj,v_proj is not a list
                listed = f"; several names are a list: [{key}]" if isinstance(targets, str) and "," in key else ""
                raise ConfigError(f"lora.target_modules: {key!r} names no module of {type(model).__name__}"
                                  f"{listed or _closest(key, names)}", field="lora.target_modules")
    for key in spec.modules_to_save:
        if not any(n.endswith(key) for n in names):  # peft's rule for modules_to_save
            raise ConfigError(f"lora.modules_to_save: {key!r} names no module of {type(model).__name__}"
                              f"{_closest(key, names)}", field="lora.modules_to_save")


def _closest(key: str, names: Sequence[str]) -> str:
    """'; did you mean …?' with the module names (last parts, as LoRA configs give them) nearest `key`."""
    import difflib

    parts = sorted({n.rsplit(".", 1)[-1] for n in names if not n.rsplit(".", 1)[-1].isdigit()})
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], parts, n=3)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else f"; its modules: {', '.join(parts)}"


@contextlib.contextmanager
def peft_quietly() -> Iterator[None]:
    """peft reads transformers' deprecated ``is_gradient_checkpointing`` when it wraps a model, and every
    LoRA run would print that FutureWarning, which is neither the user's to act on nor ours."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*deprecated", category=FutureWarning)
        yield


def is_peft_model(model: Any) -> bool:
    """Whether `model` is a peft (LoRA) model, which merges into its base with `merge_and_unload`."""
    return hasattr(model, "peft_config") and hasattr(model, "merge_and_unload")


def peft_module() -> Any:
    try:
        import peft
    except ImportError:
        raise PluralignError("LoRA needs peft: pip install 'pluralign[peft]'") from None
    return peft

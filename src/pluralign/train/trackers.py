"""Experiment trackers (TensorBoard, Weights & Biases, MLflow, Trackio, …) through accelerate's tracker
support, chosen like the HF Trainer's `report_to`: a list of names, "all" for every installed one, or
"none". None of them is a dependency of pluralign: a named tracker that is not installed is a clear error.

Every tracker receives the rows the loop writes to metrics.jsonl (training metrics every `log_every`
steps, eval metrics prefixed `eval/`) at their optimizer step, and the run's config as flat
hyper-parameters. TensorBoard (and other file-based trackers) write under `<run_dir>/trackers/`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pluralign.config import to_dict
from pluralign.errors import ConfigError


def tracker_names(report_to: Sequence[str]) -> list[str]:
    """The accelerate tracker names `report_to` asks for ([] for none); unknown or uninstalled ones raise."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

    names = [str(n).strip().lower() for n in report_to if str(n).strip()]
    if not names or names == ["none"]:
        return []
    available = [str(getattr(t, "value", t)) for t in get_available_trackers()]
    if "all" in names:
        return available
    unknown = [n for n in names if n not in LOGGER_TYPE_TO_CLASS]
    if unknown:
        raise ConfigError(f"report_to: unknown tracker(s) {unknown}; choose from none, all, {', '.join(LOGGER_TYPE_TO_CLASS)}")
    missing = [n for n in names if n not in available]
    if missing:
        raise ConfigError(f"report_to: {', '.join(missing)} is not installed (pip install {' '.join(missing)}), "
                          f"or leave it out of report_to")
    return names


def start(accelerator: Any, names: Sequence[str], run_dir: Path | None, run_config: Any) -> None:
    """Open the trackers for this run (project = the run directory's name) and store its config."""
    if not names:
        return
    project = run_dir.name if run_dir is not None else "pluralign"
    accelerator.init_trackers(project, config=flat_config(run_config))


def log(accelerator: Any, names: Sequence[str], row: Mapping[str, Any], step: int) -> None:
    if names:
        accelerator.log({k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}, step=step)


def finish(accelerator: Any, names: Sequence[str]) -> None:
    if names:
        accelerator.end_training()


def flat_config(config: Any) -> dict[str, Any]:
    """A (nested) config as dotted keys with scalar values, which every tracker accepts as hyper-parameters."""
    data = to_dict(config) if not isinstance(config, Mapping) else dict(config)
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(f"{prefix}{k}.", v)
        elif value is None or isinstance(value, (bool, int, float, str)):
            out[prefix[:-1]] = value
        else:
            out[prefix[:-1]] = str(value)

    walk("", data)
    return out


def quiet_unless_progress(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run `fn` (the loop) with transformers' progress bars off when `config.progress` is false (no bars:
    its own, saving and loading, go quiet too), and as the caller had them afterwards: turned off for good,
    they stayed off in the caller's session after the run."""

    @functools.wraps(fn)
    def quiet(model, dataset, collate, step, config, *args, **kwargs):
        from transformers.utils import logging as hf_logging

        was_on = hf_logging.is_progress_bar_enabled()
        if not config.progress:
            hf_logging.disable_progress_bar()
        try:
            return fn(model, dataset, collate, step, config, *args, **kwargs)
        finally:
            if was_on and not config.progress:
                hf_logging.enable_progress_bar()

    return quiet

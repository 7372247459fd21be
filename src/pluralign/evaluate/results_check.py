"""The check that a results dict follows the report's schema (`pluralign.evaluate.report`) in every part the
report reads: a file written by hand or by another tool fails here with the key that is wrong, not as a
traceback deep inside a plot."""

from __future__ import annotations

from typing import Any

from pluralign.errors import ConfigError

LIST_KEYS = ("runs", "calibration", "judge_reliability", "curves", "tables")


def pareto_objectives(results: dict) -> list:
    """The objectives the Pareto section compares: ``pareto.objectives``, else the first two objectives of
    the runs (hypervolume by slicing grows fast with the dimension)."""
    spec = results.get("pareto") or {}
    runs = [r for r in results.get("runs", []) if r.get("objectives")]
    return list(spec.get("objectives") or list(dict.fromkeys(o for r in runs for o in r["objectives"]))[:2])


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _is_prompt(x: Any) -> bool:
    """Text, or chat messages: a non-empty list of {role, content} objects with text in both."""
    return isinstance(x, str) or (isinstance(x, list) and bool(x) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in x))


def check_results(results: Any, source: str = "results") -> dict:
    """`results` if it follows the schema above in every part the report reads, else a ConfigError naming
    `source` and the offending key (e.g. ``runs[2].kl``): a malformed results.json never reaches numpy
    or matplotlib as a traceback."""
    def fail(where: str, want: str, got: Any) -> ConfigError:
        shown = "null" if got is None else f"{type(got).__name__} {str(got)[:40]!r}"
        return ConfigError(f"{source}: '{where}' must be {want}, got {shown} (schema: pluralign.evaluate.report)")

    def number(where: str, v: Any, required: bool = False) -> None:
        if (v is not None or required) and not _is_number(v):
            raise fail(where, "a number" if required else "a number or null", v)

    def obj(where: str, v: Any) -> dict:
        if not isinstance(v, dict):
            raise fail(where, "an object", v)
        return v

    def items(where: str, v: Any) -> list:
        if not isinstance(v, list):
            raise fail(where, "a list", v)
        return v

    def numbers(where: str, v: Any, required: bool = False) -> None:
        for k, x in obj(where, v).items():
            number(f"{where}.{k}", x, required)

    obj("the top level", results)
    from pluralign.data.field_checks import hostile_issues

    # a lone surrogate ("\ud800" is valid JSON) was a TypeError from matplotlib or the UTF-8 writer
    for where, message in hostile_issues("", results)[:1]:
        raise ConfigError(f"{source}: '{(where or '').lstrip('.') or 'the top level'}': {message}")
    if results.get("judge") is not None and not isinstance(results["judge"], str):
        raise fail("judge", "a label such as 'gold utility'", results["judge"])
    for key in LIST_KEYS:
        if key in results:
            for i, entry in enumerate(items(key, results[key])):
                obj(f"{key}[{i}]", entry)
    for i, run in enumerate(results.get("runs", [])):
        for k in ("kl", "kl_se", "reward", "reward_se", "reward_n", "n"):
            number(f"runs[{i}].{k}", run.get(k))
        for k in ("per_group", "per_group_se", "per_group_n"):  # null: not measured (NaN is written as null)
            if run.get(k) is not None:
                numbers(f"runs[{i}].{k}", run[k])
        for j, sample in enumerate(items(f"runs[{i}].samples", run["samples"]) if run.get("samples") is not None else []):
            where = f"runs[{i}].samples[{j}]"
            number(f"{where}.score", obj(where, sample).get("score"))
            if "prompt" in sample and not _is_prompt(sample["prompt"]):
                raise fail(f"{where}.prompt", "text or a list of {role, content} chat messages", sample["prompt"])
        if run.get("objectives") is not None:
            numbers(f"runs[{i}].objectives", run["objectives"])
        if run.get("objectives_se") is not None:
            numbers(f"runs[{i}].objectives_se", run["objectives_se"])
        if run.get("metrics") is not None:
            obj(f"runs[{i}].metrics", run["metrics"])
        wr = run.get("win_rate")
        if wr is not None and not isinstance(wr, dict):
            raise fail(f"runs[{i}].win_rate", "an object (win_rate, ci, lc_win_rate)", wr)
        if isinstance(wr, dict) and wr.get("baseline") is not None and not isinstance(wr["baseline"], str):
            raise fail(f"runs[{i}].win_rate.baseline", "the baseline run's name", wr["baseline"])
    if results.get("pareto") is not None:
        spec = obj("pareto", results["pareto"])
        for k in ("objectives", "reference"):
            if spec.get(k) is not None:
                items(f"pareto.{k}", spec[k])
        for j, x in enumerate(spec.get("objectives") or []):
            if not isinstance(x, str):
                raise fail(f"pareto.objectives[{j}]", "an objective name", x)
        for j, x in enumerate(spec.get("reference") or []):
            number(f"pareto.reference[{j}]", x, required=True)
        objectives = pareto_objectives(results)
        known = {o for r in results.get("runs", []) if isinstance(r.get("objectives"), dict) for o in r["objectives"]}
        for j, x in enumerate(spec.get("objectives") or []):
            if known and x not in known:  # a misspelt objective dropped the whole Pareto section without a word
                raise fail(f"pareto.objectives[{j}]", f"an objective of the runs ({', '.join(map(str, sorted(known)))})", x)
        if spec.get("reference") and len(objectives) >= 2 and len(objectives) != len(spec["reference"]):
            which = "" if spec.get("objectives") else ": the runs' first two, as pareto.objectives is not given"
            raise fail("pareto.reference", f"one number per objective ({', '.join(map(str, objectives))}{which})",
                       spec["reference"])
    for i, entry in enumerate(results.get("calibration", [])):
        if "probs" in entry or "labels" in entry:
            probs, labels = items(f"calibration[{i}].probs", entry.get("probs")), items(f"calibration[{i}].labels", entry.get("labels"))
            if len(probs) != len(labels) or not probs:
                raise fail(f"calibration[{i}].labels", f"a non-empty list as long as probs ({len(probs)})", labels)
            for j, x in enumerate(probs):
                if not (_is_number(x) and 0 <= x <= 1):
                    raise fail(f"calibration[{i}].probs[{j}]", "a probability in [0, 1]", x)
            for j, x in enumerate(labels):
                if not (_is_number(x) and x in (0, 1)):
                    raise fail(f"calibration[{i}].labels[{j}]", "0 or 1", x)
        elif "rows" not in entry:
            raise fail(f"calibration[{i}]", "an object with 'probs' and 'labels', or 'rows'", entry)
        # both were tracebacks from the plot (int('x'), dict('x')), or an error naming no file or key
        n_bins = entry.get("n_bins")
        if n_bins is not None and not (isinstance(n_bins, int) and not isinstance(n_bins, bool) and n_bins >= 1):
            raise fail(f"calibration[{i}].n_bins", "an integer >= 1", n_bins)
        if entry.get("errors") is not None:
            numbers(f"calibration[{i}].errors", entry["errors"])
        for part in ("rows", "rows_after"):
            if part in entry and (part == "rows" or entry[part] is not None):
                for j, row in enumerate(items(f"calibration[{i}].{part}", entry[part])):
                    for k in ("confidence", "accuracy"):
                        number(f"calibration[{i}].{part}[{j}].{k}", obj(f"calibration[{i}].{part}[{j}]", row).get(k), True)
    for i, curve in enumerate(results.get("curves", [])):
        for j, row in enumerate(items(f"curves[{i}].rows", curve.get("rows", []))):
            obj(f"curves[{i}].rows[{j}]", row)
    for i, table in enumerate(results.get("tables", [])):
        items(f"tables[{i}].columns", table.get("columns", []))
        for j, row in enumerate(items(f"tables[{i}].rows", table.get("rows", []))):
            items(f"tables[{i}].rows[{j}]", row)
    return results

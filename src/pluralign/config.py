"""Typed configuration: dataclasses ⇄ YAML ⇄ `key=value` overrides.

Every field is declared with `option(default, help=...)`, so the help text lives next to the type. A run
loads its config with `load(MyConfig, path, overrides)`: YAML first, then dotted `key=value` overrides,
then type checks. Unknown keys are errors that suggest the closest valid key.

YAML is loaded safely (no object construction), but a config is still code: fields that name a
`module:function` import and call it, and a judge's `api_key_env` + `base_url` send an environment
variable's value to a URL. Only run configs you trust.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from pluralign.errors import ConfigError

T = TypeVar("T")


def option(default: Any = dataclasses.MISSING, *, help: str, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with its help text."""
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)


@dataclasses.dataclass(frozen=True)
class _Scalar:
    """An override's value that YAML read as a number, boolean or null, with the text it was given: a string
    field takes the text. Read as YAML alone, output_dir=007 wrote to '7', 2024_01 to '202401' and 12:30 to
    '750' (YAML 1.1's base-60), without a word."""

    value: Any
    text: str


def parse_overrides(overrides: list[str], *, keep_text: bool = False) -> dict:
    """`["train.lr=1e-4", "loss=dpo"]` → nested dict. Values are parsed as YAML scalars/lists. With
    `keep_text` (for `from_dict`, which gives a string field the text as typed) a number, boolean or null
    comes wrapped with its text; without, the dict holds plain values (a caller that reads or stores it)."""
    out: dict = {}
    for item in overrides:
        if "=" not in item:
            hint = f"; a config file is given as --config {item}" if item.endswith((".yaml", ".yml")) else ""
            raise ConfigError(f"override '{item}' is not of the form key=value{hint}")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        if keep_text and value is not None and not isinstance(value, str | list | dict):
            value = _Scalar(value, raw.strip())
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' sets a key below a non-mapping")
        node[parts[-1]] = value
    return out


def merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def _yaml_where(e: yaml.YAMLError) -> str:
    """':line:column' of a parse error (PyYAML counts from 0), as the data files' errors locate a row."""
    mark = getattr(e, "problem_mark", None)
    return f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""


def _yaml_why(e: yaml.YAMLError) -> str:
    """The parser's problem in one line, without its excerpt of a '<unicode string>' the user never named."""
    parts = [getattr(e, "context", None), getattr(e, "problem", None)]
    return "; ".join(p for p in parts if p) or str(e).splitlines()[0]


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe YAML that refuses a key given twice in one mapping: YAML keeps the last without a word, so a second
    ``loop:`` section would silently drop every setting of the first (JSON data files refuse this too)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` then overriding its keys is what merge keys are for
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} given more than once (first on line {seen[key] + 1}); YAML would "
                        "keep only the last", key_node.start_mark)
                seen[key] = key_node.start_mark.line
            except TypeError:  # an unhashable key: the base constructor says so
                continue
        return super().construct_mapping(node, deep)


def read_text(path: Path, what: str) -> str:
    """`path`'s UTF-8 text; a ConfigError naming the file (and the line of a byte that is not UTF-8) when it
    cannot be read, so that a user's bad file is a one-line error, not a traceback."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = e.object[: e.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{e.object[e.start]:02x})") from None
    except OSError as e:  # a directory, no permission
        raise ConfigError(f"{path}: cannot read {what}: {e.strerror or e}") from None


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    text = read_text(path, "the config")
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}{_yaml_where(e)}: invalid YAML: {_yaml_why(e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    return data


def load(cls: type[T], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> T:
    data = read_yaml(path) if path else {}
    data = merge(data, parse_overrides(list(overrides), keep_text=True))
    return from_dict(cls, data)


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build dataclass `cls` from a plain dict, checking keys and types."""
    if not isinstance(data, dict):
        raise ConfigError(f"'{prefix.rstrip('.') or 'config'}' must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in data:
        if isinstance(key, str) and "." in key and key.split(".")[0] in fields:
            section, rest = key.split(".", 1)
            raise ConfigError(f"config key '{prefix}{key}': dotted keys are for key=value overrides; in YAML nest it "
                              f"('{section}:' and under it '{rest}:')")
        if key not in fields:
            close = _nearest(cls, key) or _in_a_section(hints, key)
            hint = f"; did you mean '{prefix}{close}'?" if close else f"; valid keys: {', '.join(fields)}"
            raise ConfigError(f"unknown config key '{prefix}{key}'{hint}")
    kwargs = {name: _coerce(hints[name], _with_field_default(fields[name], hints[name], data[name]), prefix + name)
              for name in fields if name in data}
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field without a value
        raise ConfigError(f"{prefix or 'config'}: {e}") from None


def _nearest(cls: type, key: Any) -> str | None:
    """The field of `cls` that unknown `key` most likely means: the one a class names it in its `OTHER_NAMES`
    (what other tools call it: the HF Trainer's `lr`, `gradient_accumulation_steps`), else the closest spelling."""
    if not isinstance(key, str):
        return None
    if key in getattr(cls, "OTHER_NAMES", {}):
        return cls.OTHER_NAMES[key]
    close = difflib.get_close_matches(key, [f.name for f in dataclasses.fields(cls)], n=1)
    return close[0] if close else None


def _in_a_section(hints: dict[str, Any], key: str) -> str | None:
    """`key` as the key of a nested section it most likely means (`learning_rate` → `loop.learning_rate`), or
    None: a key given a level too high listed every top-level key and named none."""
    for name, tp in hints.items():
        if dataclasses.is_dataclass(tp) and (close := _nearest(tp, key)):
            return f"{name}.{close}"
    return None


def _with_field_default(f: dataclasses.Field, tp: Any, value: Any) -> Any:
    """A partial mapping for a nested dataclass fills in from the field's own default, not the nested
    class's: a recipe that defaults `loop` to a learning rate of 1e-4 keeps it when YAML sets only
    `loop.batch_size`."""
    if not (dataclasses.is_dataclass(tp) and isinstance(value, dict)):
        return value
    if f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    elif f.default is not dataclasses.MISSING:
        default = f.default
    else:
        return value
    return merge(dataclasses.asdict(default), value)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = get_origin(tp)
    if isinstance(value, _Scalar):
        value = value.text if tp is str or (origin in (Union, types.UnionType) and str in get_args(tp)) else value.value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key + ".")
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"'{key}': bad value {_shown(value)}")
    if origin is Literal:
        value = _literal_word(value, get_args(tp))
        if value not in get_args(tp):
            choices = ", ".join(repr(a) for a in get_args(tp))
            raise ConfigError(f"'{key}' must be one of {choices}, got {_shown(value)}")
        return value
    if isinstance(value, os.PathLike) and tp is str:  # a Python caller's Path, where a path goes
        return os.fspath(value)
    if isinstance(value, os.PathLike) and origin in (list, tuple):  # one path where paths go (not split at commas)
        value = [value]
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"'{key}' must be a list, got {_shown(value)}")
        (inner,) = get_args(tp)[:1] or (Any,)
        items = [_coerce(inner, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"'{key}' must be a mapping, got {_shown(value)}")
        _, inner = get_args(tp) or (Any, Any)
        return {k: _coerce(inner, v, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"'{key}' must be true or false, got {_shown(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"'{key}' must be a number, got {_shown(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"'{key}' must be an integer, got {_shown(value)}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"'{key}' must be a string, got {_shown(value)}")
    return value


def _shown(value: Any) -> str:
    """A value as a message shows it: cut short, so a loaded model given as `model=` (its repr hundreds of
    lines long) or a record given as a data path does not flood the error."""
    from pluralign.data.field_checks import short

    return short(value)


# YAML 1.1 reads these unquoted words as booleans; a choice spelled as one of them is what was meant.
_BOOL_WORDS = {True: ("yes", "on", "true", "y"), False: ("no", "off", "false", "n")}


def _literal_word(value: Any, choices: tuple) -> Any:
    """The choice a boolean stands for when YAML turned an unquoted word into it: ``mixed_precision: no``
    (or ``loop.mixed_precision=no``) means the choice "no", not False; other values are unchanged."""
    if not isinstance(value, bool) or value in choices:
        return value
    words = [c for c in choices if isinstance(c, str) and c.lower() in _BOOL_WORDS[value]]
    return words[0] if len(words) == 1 else value


def describe(cls: type, prefix: str = "", defaults: Any = None) -> list[tuple[str, str, Any, str]]:
    """(key, type, default, help) for every field, nested ones dotted: used by `--help` output.

    A nested config's defaults are those of the field that holds it (a recipe may default `loop` to its
    own learning rate), so the help shows the values a run actually uses."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if defaults is not None:
            default = getattr(defaults, f.name)
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "(required)"
        if dataclasses.is_dataclass(tp):
            rows += describe(tp, prefix + f.name + ".", default if dataclasses.is_dataclass(default) else None)
            continue
        # a choice shows its values ('linear' | 'cosine' | …): "Literal" alone left them to the error message
        name = " | ".join(repr(a) for a in get_args(tp)) if get_origin(tp) is Literal else (
            getattr(tp, "__name__", None) or str(tp).replace("typing.", ""))
        rows.append((prefix + f.name, name, default, f.metadata.get("help", "")))
    return rows


def format_help(cls: type, defaults: Any = None) -> str:
    """Every field of `cls` with its type, default and help; `defaults` (an instance) shows its values as the
    defaults, e.g. those a command implies."""
    lines = []
    for key, tp, default, help_ in describe(cls, defaults=defaults):
        lines.append(f"  {key}  ({tp}, default {default!r})\n      {help_}")
    return "\n".join(lines)

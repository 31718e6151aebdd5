"""Typed loading with pydantic: YAML files and finished objects checked against their dataclass tree.

Each field's type and constraint is declared on the tree; pydantic's ``TypeAdapter`` checks every
value in one pass, in strict mode (no coercion beyond int -> float and lists -> tuples), and each
problem becomes one line naming where the value came from, its dotted key, what the field expects
and the value found. Values are validated as JSON, the form in which strict mode accepts mappings
for dataclasses.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import yaml

T = TypeVar("T")

# What each pydantic error type says the field expects; "{name}" takes the error's context.
EXPECTED = {
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "a string",
    "tuple_type": "a list",
    "dataclass_type": "a mapping of fields",
    "finite_number": "a finite number",
    "greater_than": "a value > {gt}",
    "greater_than_equal": "a value >= {ge}",
    "less_than": "a value < {lt}",
    "less_than_equal": "a value <= {le}",
    "literal_error": "one of {expected}",
    "string_too_short": "a string of at least {min_length} character(s)",
    "too_short": "a list of at least {min_length} item(s)",
    "too_long": "a list of at most {max_length} item(s)",
    "value_error": "{error}",
}


class ConfigError(ValueError):
    """A configuration that cannot work; the message names every offending field."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader reading plain scalars as YAML 1.2 does: ``1e-6`` (exponent, no dot) is a
    float, ``2026-01-01`` stays text (no field holds a date)."""

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def read_yaml(cls: type[T], path: Path) -> T:
    """A ``cls`` from a YAML file: its defaults overridden by the file's values, each one checked."""
    try:
        data = yaml.load(path.read_text(), Loader=_Loader)
        text = json.dumps({} if data is None else data)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    except TypeError as e:  # an explicitly tagged YAML-only value (a set, binary) that no field holds
        raise ConfigError(f"{path}: {e}") from e
    try:
        return _adapter(cls).validate_json(text)
    except pydantic.ValidationError as e:
        raise invalid(_describe(e, cls, str(path))) from None


def field_problems(obj: Any, source: str) -> list[str]:
    """Every field of the dataclass tree ``obj`` outside its declared type or constraint."""
    adapter = _adapter(type(obj))
    try:
        adapter.validate_json(adapter.dump_json(obj, warnings=False))
    except pydantic.ValidationError as e:
        return _describe(e, type(obj), source)
    return []


def as_dict(obj: Any) -> dict[str, Any]:
    """The dataclass tree ``obj`` as plain nested dicts and lists (YAML- and JSON-ready)."""
    return _adapter(type(obj)).dump_python(obj, mode="json")


def invalid(problems: list[str]) -> ConfigError:
    """One error listing every problem."""
    return ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))


@functools.cache
def _adapter(cls: type) -> pydantic.TypeAdapter:
    return pydantic.TypeAdapter(cls)


def _describe(error: pydantic.ValidationError, cls: type, source: str) -> list[str]:
    """One ``source: key: expected ..., got ...`` line per problem in ``error``."""
    details = error.errors(include_url=False)
    # A problem inside a value (data.ops[0]) explains the one pydantic then reports on the whole value.
    inner = {d["loc"][:i] for d in details for i in range(len(d["loc"]))}
    # A list too short for a fixed-length tuple is one "missing" error per absent item.
    missing = Counter(d["loc"][:-1] for d in details if d["type"] == "missing" and _is_index(d["loc"]))
    lines = []
    for d in details:
        kind, loc, value = d["type"], d["loc"], d["input"]
        if loc in inner:
            continue
        if kind == "unexpected_keyword_argument":
            lines.append(f"{source}: unknown key {_key(loc)} ({_fields_of(cls, loc[:-1])})")
        elif kind == "missing" and _is_index(loc):
            length = len(value) + missing[loc[:-1]]
            lines.append(f"{source}: {_key(loc[:-1])}: expected a list of {length} items, got {value!r}")
        elif kind in EXPECTED:
            expected = EXPECTED[kind].format(**d.get("ctx", {}))
            lines.append(f"{source}: {_key(loc)}: expected {expected}, got {value!r}")
        else:
            lines.append(f"{source}: {_key(loc)}: {d['msg']}, got {value!r}")
    return list(dict.fromkeys(lines))  # the missing items of one list give one line


def _is_index(loc: tuple) -> bool:
    return bool(loc) and isinstance(loc[-1], int)


def _key(loc: tuple) -> str:
    """``('data', 'ops', 0)`` -> ``data.ops[0]``; the empty location is the file's top level."""
    key = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")
    return key or "top level"


def _fields_of(cls: type, loc: tuple) -> str:
    """The field names of the section at ``loc``, to suggest the key that was meant."""
    section = cls()
    for name in loc:
        section = getattr(section, name)
    return f"fields of {_key(loc)}: {', '.join(sorted(f.name for f in dataclasses.fields(section)))}"

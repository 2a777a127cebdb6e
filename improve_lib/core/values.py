"""One parameter value, checked: the validators every stage uses, so a bad value is reported the same way.

Each takes the value and the parameter's name and returns the value in its type or raises
:class:`~improve_lib.core.errors.StudyInputError` naming the parameter, the value and what was expected.
Importing this module loads no notebook reader and no study code (a training process imports it).
"""
from __future__ import annotations

import re
from typing import Any, Iterable, Sequence

import yaml

from improve_lib.core.errors import StudyInputError


#: A number in exponent notation without a dot (``1e-3``), which YAML 1.1 reads as a string.
_EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class _UserYamlLoader(yaml.SafeLoader):
    """SafeLoader that reads only true/false as booleans, as YAML 1.2 does. YAML 1.1 also reads yes/no/on/off
    (any case) as booleans, so ``--set MIXED_PRECISION=no`` (accelerate's word for fp32) arrived as False."""


_UserYamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_UserYamlLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                      list("tTfF"))


def read_user_yaml(text: str) -> Any:
    """What a user wrote in YAML (a profile, a preset, a ``--set`` or ``--grid`` value), read safely and with YAML
    1.2's booleans: ``no``, ``off``, ``yes`` and ``on`` stay words. Raises ``yaml.YAMLError`` on bad YAML."""
    return yaml.load(text, Loader=_UserYamlLoader)  # noqa: S506 (a SafeLoader subclass)


def as_number(value: Any) -> Any:
    """A string written as a number in exponent notation becomes a float (YAML 1.1 reads ``1e-3`` as a string);
    other values are unchanged (the words ``Nan`` and ``Infinity`` stay text: they may be names)."""
    if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value.strip()):
        return float(value)
    return value


def _a(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def check_type(key: str, value: Any, references: list[Any], where: str) -> Any:
    """``value`` if it has the type of the notebook default / profile value (ints become floats where
    the parameter is a float), else a :class:`StudyInputError` naming the key."""
    known = [r for r in references if r is not None]
    if value is None or not known:  # None means "the notebook's own rule" (e.g. MAX_STEPS=None: use EPOCHS)
        return value
    ref = known[0]
    ok = {bool: lambda v: isinstance(v, bool),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          str: lambda v: isinstance(v, str), list: lambda v: isinstance(v, list),
          dict: lambda v: isinstance(v, dict)}.get(type(ref))
    if ok is not None and not ok(value):
        raise StudyInputError(f"{where}: {key}={value!r} is {_a(type(value).__name__)}, but {key} takes "
                              f"{_a(type(ref).__name__)} (e.g. {ref!r})")
    if isinstance(ref, float) and not any(isinstance(r, int) and not isinstance(r, bool) for r in known):
        return float(value)
    return value


def as_int(value: Any, key: str, minimum: int | None = None) -> int:
    """``value`` as an int (``"3"`` and ``3.0`` accepted, ``3.5`` and booleans not), at least ``minimum``."""
    try:
        if isinstance(value, bool):
            raise ValueError
        out = int(float(value))
        if float(value) != out:
            raise ValueError
    except (TypeError, ValueError):
        raise StudyInputError(f"{key} must be an integer, got {value!r}") from None
    if minimum is not None and out < minimum:
        raise StudyInputError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return out


def as_float(value: Any, key: str, low: float | None = None, high: float | None = None,
             low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a float (YAML's ``"1e-4"`` strings accepted) inside the given bounds."""
    try:
        if isinstance(value, bool):
            raise ValueError
        out = float(value)
    except (TypeError, ValueError):
        raise StudyInputError(f"{key} must be a number, got {value!r}") from None
    too_low = low is not None and (out <= low if low_open else out < low)
    too_high = high is not None and (out >= high if high_open else out > high)
    if too_low or too_high:
        lo = "" if low is None else f"{'(' if low_open else '['}{low}"
        hi = "" if high is None else f"{high}{')' if high_open else ']'}"
        where = f"in {lo}, {hi}" if low is not None and high is not None else \
            (f"{'>' if low_open else '>='} {low}" if low is not None else f"{'<' if high_open else '<='} {high}")
        raise StudyInputError(f"{key} must be {where}, got {value!r}")
    return out


def as_bool(value: Any, key: str) -> bool:
    """``value`` as a bool (``true/false/yes/no/1/0`` strings accepted)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.lower() in ("true", "yes", "1")
    raise StudyInputError(f"{key} must be true or false, got {value!r}")


def one_of(value: Any, key: str, choices: Sequence[Any]) -> Any:
    """``value`` if it is one of ``choices``, else an error listing them."""
    if value not in choices:
        raise StudyInputError(f"{key} must be one of {list(choices)}, got {value!r}")
    return value


def require(config: dict[str, Any], keys: Iterable[str], what: str, notebook: str) -> None:
    """Raise naming every key of ``keys`` that ``config`` lacks, and where their defaults live."""
    missing = [k for k in keys if k not in config]
    if missing:
        raise StudyInputError(
            f"{what} lacks {missing}: pass a complete config, e.g. the one notebook {notebook} writes, or "
            f"start from improve_lib.core.notebook_parameters.notebook_defaults({notebook[:2]!r})")

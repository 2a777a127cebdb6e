"""The study's parameters: the notebooks' ``parameters`` cells are the defaults, profiles the differences.

One source for every default: each notebook's cell tagged ``parameters`` declares its UPPER_CASE
parameters with their default values (the ``demo`` profile, what ``make study`` runs). A profile
``params/<name>.yaml`` lists only the values that differ from those defaults (flat keys, plus an optional
``datasets: {name: {...}}`` block of per-dataset values); ``--set KEY=VALUE`` flags come last. The library
has no table of its own: its entry points take explicit arguments or a complete resolved config, and
:func:`notebook_defaults` gives a library user the notebook's values.

The small validators at the end (:func:`as_int`, :func:`as_float`, :func:`as_bool`, :func:`one_of`) check
one value and name the parameter in their error, so every stage reports a bad value the same way.
"""
from __future__ import annotations

import ast
import functools
import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from .errors import StudyInputError

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = Path(os.environ.get("IMPROVE_NOTEBOOKS", REPO / "notebooks"))
PARAMS_DIR = Path(os.environ.get("IMPROVE_PARAMS", REPO / "params"))
# Notebooks that read a sweep folder, not a run folder: not part of a run's pipeline.
SWEEP_NOTEBOOKS = ("08_compare_runs.ipynb",)
# User paths, made absolute before the notebooks (which run in notebooks/) see them.
PATH_KEYS = ("DATA_DIR", "CACHE_DIR", "CLASSIFIER_WEIGHTS")


# ----------------------------------------------------------------------------- the notebooks' cells

def list_notebooks(only: Iterable[str] | None = None, notebook_dir: Path = NOTEBOOK_DIR) -> list[Path]:
    """The pipeline's notebooks in order (``NN_name.ipynb``), optionally only the given numbers."""
    books = sorted(p for p in notebook_dir.glob("[0-9][0-9]_*.ipynb") if p.name not in SWEEP_NOTEBOOKS)
    if only:
        wanted = {str(o).zfill(2) for o in only}
        unknown = wanted - {p.name[:2] for p in books}
        if unknown:
            raise StudyInputError(f"--only names notebook(s) {sorted(unknown)} that do not exist in {notebook_dir}; "
                                  f"available: {[p.name[:2] for p in books]}")
        books = [p for p in books if p.name[:2] in wanted]
    return books


def declared_parameters(notebook: Path) -> dict[str, Any]:
    """Names and default *source texts* of the notebook's ``parameters`` cell (papermill's own parser)."""
    st = Path(notebook).stat()
    return dict(_declared(str(notebook), st.st_mtime_ns, st.st_size))


@functools.lru_cache(maxsize=256)
def _declared(path: str, mtime_ns: int, size: int) -> tuple[tuple[str, Any], ...]:
    # cached per file version: a sweep asks for every notebook's parameters once per run
    try:
        import papermill  # here, not at the top: the training entry point imports this module on bare GPU images
    except ImportError:
        return _declared_without_papermill(path)
    return tuple((k, v["default"]) for k, v in papermill.inspect_notebook(path).items())


def _declared_without_papermill(path: str) -> tuple[tuple[str, str], ...]:
    """The ``parameters`` cell's ``NAME = value`` assignments read with ``ast``: for machines without papermill
    (a bare GPU image running the training benchmark), and for :func:`notebook_defaults`, which the training
    process calls when it exports its model (importing papermill costs seconds per process: nbformat's
    jsonschema compiles dozens of grammars). It reads the one-line ``NAME = value  # help`` form the notebooks
    use (papermill's parser differs on other forms: typed or multi-line assignments, magics);
    tests/test_environment.py checks that both agree on every notebook."""
    cells = json.loads(Path(path).read_text(encoding="utf-8"))["cells"]
    cell = next((c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    if cell is None:
        return ()
    source = "".join(cell["source"])
    return tuple((node.targets[0].id, ast.get_source_segment(source, node.value)) for node in ast.parse(source).body
                 if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name))


def literal(text: str) -> Any:
    """The Python value of a parameter's default text (None when it is not a literal)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None


def notebook_defaults(notebook: str, notebook_dir: Path = NOTEBOOK_DIR) -> dict[str, Any]:
    """The default values of a notebook's parameters, by number or name (``"04"``, ``"04_train_diffusion"``).

    This is how code outside the notebooks gets the study's defaults, e.g. a complete training config:
    ``{**notebook_defaults("04"), "RUN_DIR": ..., "ARM": "prototype"}``.
    """
    key = str(notebook).removesuffix(".ipynb")
    books = [p for p in sorted(notebook_dir.glob("[0-9][0-9]_*.ipynb")) if key in (p.stem, p.name[:2])]
    if len(books) != 1:
        raise StudyInputError(f"no notebook {notebook!r} in {notebook_dir}; "
                              f"available: {sorted(p.stem for p in notebook_dir.glob('[0-9][0-9]_*.ipynb'))}")
    return {k: literal(v) for k, v in _declared_without_papermill(str(books[0]))}


def all_declared(notebooks: Sequence[Path] | None = None) -> dict[str, dict[str, Any]]:
    """``{notebook name: {parameter: default value}}`` for every pipeline notebook (or ``notebooks``)."""
    books = list_notebooks() if notebooks is None else notebooks
    return {nb.name: {k: literal(v) for k, v in declared_parameters(nb).items()} for nb in books}


# ----------------------------------------------------------------------------- profiles and flags

def read_yaml_mapping(path: Path, what: str, name: str, holds: str) -> dict[str, Any]:
    """Read a YAML mapping from ``path``; a missing file names the ``what`` files available beside it,
    anything but a mapping says what it must hold."""
    if not path.is_file():
        avail = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise StudyInputError(f"unknown {what} {name!r}: {path} does not exist; available: {avail}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise StudyInputError(f"{path} must hold a mapping of {holds}")
    return data


def load_profile(profile: str, params_dir: Path = PARAMS_DIR) -> dict[str, Any]:
    """Read ``params/<profile>.yaml`` (only what differs from the notebooks' defaults); an unknown
    profile lists the available ones."""
    return read_yaml_mapping(params_dir / f"{profile}.yaml", "profile", profile, "UPPER_CASE keys")


def as_number(value: Any) -> Any:
    """A string that reads as a float becomes one (YAML 1.1 reads ``1e-3`` as a string); others unchanged."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def parse_sets(items: Iterable[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings to a dict; values are parsed as YAML (``3`` -> int, ``[a,b]`` -> list)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise StudyInputError(f"--set {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        key = key.strip()
        if not key.isupper():
            raise StudyInputError(f"--set {item!r}: parameter names are UPPER_CASE")
        out[key] = as_number(yaml.safe_load(value)) if value.strip() else None
    return out


def resolve_params(profile: str, dataset: str | None = None, data_dir: str | None = None,
                   sets: dict[str, Any] | None = None, notebooks: list[Path] | None = None) -> dict[str, Any]:
    """Every notebook parameter's value for a run: the notebooks' defaults, then the profile, then its
    per-dataset values, then ``data_dir`` and ``sets``. A ``sets`` key no notebook declares is an error."""
    # the study's notebooks give the defaults; other notebooks (a custom folder) add their own parameters
    books = list_notebooks() + [nb for nb in (notebooks or []) if nb.parent.resolve() != NOTEBOOK_DIR.resolve()]
    params: dict[str, Any] = {}
    for defaults in all_declared(books).values():
        params.update({k: v for k, v in defaults.items() if k not in params})
    raw = load_profile(profile)
    per_dataset = raw.pop("datasets", {}) or {}
    params.update(raw)
    if dataset:
        params["DATASET"] = dataset
    params.update(per_dataset.get(params.get("DATASET"), {}) or {})
    if data_dir is not None:
        params["DATA_DIR"] = str(Path(data_dir).expanduser().resolve())
    sets = sets or {}
    unknown = sorted(k for k in sets if k not in params)
    if unknown:
        raise StudyInputError(f"--set key(s) {unknown} are not parameters of any notebook nor of profile {profile!r}")
    params.update(sets)
    # Notebooks run with the notebooks folder as working directory: make user paths absolute here.
    for key in PATH_KEYS:
        if isinstance(params.get(key), str) and params[key]:
            params[key] = str(Path(params[key]).expanduser().resolve())
    params["PROFILE"] = profile
    return params


# ----------------------------------------------------------------------------- one value, checked

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


# The types of the parameters whose default is None (any other parameter takes the type of its default).
OPTIONAL_TYPES: dict[str, Any] = {"DATA_DIR": "", "CACHE_DIR": "", "CLASSIFIER_WEIGHTS": "", "REVIEWER_DISPLAY_NAME": "",
                                  "CLASSES": ["LYT", "MON"], "METRICS": ["TSTR macro F1 %"], "EPOCHS": 1.0,
                                  "SNR_GAMMA": 1.0}


def check_types(params: dict[str, Any], where: str = "parameter") -> dict[str, Any]:
    """Every notebook parameter in ``params`` checked against the type of its notebook default (ints
    become floats where the parameter is a float; None is always allowed: "the notebook's own rule").
    List parameters take lists of the right items (``CLASSES=lymphocyte`` is refused, not split into
    letters). Returns ``params`` with those coercions; raises naming the key and an example value."""
    defaults: dict[str, Any] = {}
    for declared in all_declared().values():
        defaults.update(declared)
    out = dict(params)
    for key, value in params.items():
        if key not in defaults:
            continue
        ref = defaults[key] if defaults[key] is not None else OPTIONAL_TYPES.get(key)
        out[key] = check_type(key, value, [ref], f"{where} {key}")
        if isinstance(ref, list) and ref and isinstance(out[key], list):  # the items too, typed as the default's
            out[key] = [check_type(f"{key} item", v, [ref[0]], f"{where} {key}") for v in out[key]]
    return out


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
            f"start from improve_lib.parameters.notebook_defaults({notebook[:2]!r})")

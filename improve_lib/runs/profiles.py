"""Profiles and flags: a run's parameters are the notebooks' defaults, then a profile, then ``--set``.

A profile ``params/<name>.yaml`` lists only the values that differ from the notebooks' defaults
(:mod:`improve_lib.core.notebook_parameters`): flat keys, plus an optional ``datasets: {name: {...}}`` block
of per-dataset values; ``--set KEY=VALUE`` flags come last (:func:`resolve_params`).
"""
from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, Iterable

import yaml

from improve_lib.core.errors import StudyInputError
from improve_lib.core.notebook_parameters import NOTEBOOK_DIR, REPO, all_declared, list_notebooks
from improve_lib.core.values import as_number, read_user_yaml

PARAMS_DIR = Path(os.environ.get("IMPROVE_PARAMS", REPO / "params"))
# User paths, made absolute before the notebooks (which run in notebooks/) see them.
PATH_KEYS = ("DATA_DIR", "CACHE_DIR", "CLASSIFIER_WEIGHTS")


# ----------------------------------------------------------------------------- profiles and flags

def read_yaml_mapping(path: Path, what: str, name: str, holds: str) -> dict[str, Any]:
    """Read a YAML mapping from ``path``; a missing file names the ``what`` files available beside it,
    anything but a mapping says what it must hold."""
    if not path.is_file():
        avail = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise StudyInputError(f"unknown {what} {name!r}: {path} does not exist; available: {avail}")
    data = read_user_yaml(path.read_text()) or {}
    if not isinstance(data, dict):
        raise StudyInputError(f"{path} must hold a mapping of {holds}")
    return data


def profile_path(profile: str, params_dir: Path = PARAMS_DIR) -> Path:
    """The file of ``profile``: ``params/<profile>.yaml`` for a name (letters, digits, ``_``, ``-``), or the
    path itself when the user gives one ending in ``.yaml``; anything else (``../elsewhere/mine``) is refused."""
    if str(profile).endswith((".yaml", ".yml")):
        path = Path(profile).expanduser()
        if not path.is_file():
            raise StudyInputError(f"--profile {profile}: no such file")
        return path
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]*", str(profile)):
        raise StudyInputError(f"--profile {profile!r}: give a profile's name from {params_dir} "
                              f"({sorted(q.stem for q in params_dir.glob('*.yaml'))}) or a path ending in .yaml")
    return params_dir / f"{profile}.yaml"


def profile_name(profile: str) -> str:
    """The name a profile goes by in run folders and manifests: its file's stem (``paper``, ``mine``)."""
    return Path(str(profile)).stem if str(profile).endswith((".yaml", ".yml")) else str(profile)


def load_profile(profile: str, params_dir: Path = PARAMS_DIR) -> dict[str, Any]:
    """Read a profile (:func:`profile_path`: only what differs from the notebooks' defaults); an unknown
    profile lists the available ones."""
    path = profile_path(profile, params_dir)
    return read_yaml_mapping(path, "profile", str(profile), "UPPER_CASE keys")


def _refuse_unknown(keys: Iterable[str], known: dict[str, Any], where: str) -> None:
    """A key no notebook declares is a typo (``MAX_STEP``): name it and the nearest known key."""
    for key in keys:
        if key not in known:
            near = difflib.get_close_matches(str(key), list(known), n=1)
            raise StudyInputError(f"{where}: {key!r} is not a parameter of any notebook"
                                  + (f"; did you mean {near[0]!r}?" if near else ""))


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
        try:
            parsed = read_user_yaml(value)
        except yaml.YAMLError as exc:  # a syntax error, or a tag such as !!python/object
            reason = str(exc).splitlines()[0]
            raise StudyInputError(f"--set {item!r}: the value is not plain YAML ({reason})") from None
        out[key] = as_number(parsed) if value.strip() else None
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
    if not isinstance(per_dataset, dict) or not all(isinstance(v, dict) or v is None for v in per_dataset.values()):
        raise StudyInputError(f"profile {profile!r}: 'datasets' must map dataset names to parameter mappings")
    _refuse_unknown(raw, params, f"profile {profile!r}")
    for name, values in per_dataset.items():
        _refuse_unknown(values or {}, params, f"profile {profile!r}, datasets: {name}")
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
    params["PROFILE"] = profile_name(profile)
    return params


# ----------------------------------------------------------------------------- one value, checked



"""The notebooks' ``parameters`` cells, read: the study's defaults live there and nowhere else.

Each notebook's cell tagged ``parameters`` declares its UPPER_CASE parameters with their default values
(the ``demo`` profile, what ``make study`` runs). :func:`notebook_defaults` gives code outside the
notebooks those values (``{**notebook_defaults("04"), "RUN_DIR": ..., "ARM": "prototype"}``);
:func:`check_types` checks a resolved run's values against the defaults' types. Profiles and ``--set``
flags are :mod:`improve_lib.runs.profiles`'.
"""
from __future__ import annotations

import ast
import functools
import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from improve_lib.core.errors import StudyInputError
from improve_lib.core.values import check_type

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = Path(os.environ.get("IMPROVE_NOTEBOOKS", REPO / "notebooks"))


# Notebooks that read a sweep folder, not a run folder: not part of a run's pipeline.
SWEEP_NOTEBOOKS = ("08_compare_runs.ipynb",)


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
    tests/integration/test_environment.py checks that both agree on every notebook."""
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


# The types of the parameters whose default is None (any other parameter takes the type of its default).
OPTIONAL_TYPES: dict[str, Any] = {"DATA_DIR": "", "CACHE_DIR": "", "CLASSIFIER_WEIGHTS": "", "REVIEWER_DISPLAY_NAME": "",
                                  "CLASSES": ["LYT", "MON"], "METRICS": ["TSTR macro F1 %"], "EPOCHS": 1.0,
                                  "SNR_GAMMA": 1.0, "SPLIT_SEED": 0, "EXTERNAL_TEST_DIR": ""}


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

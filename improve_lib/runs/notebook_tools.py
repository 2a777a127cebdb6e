"""Notebook housekeeping: strip outputs before committing, prepare parameterised copies for nbval.

``python -m improve_lib.runs.notebook_tools strip notebooks/*.ipynb``
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import nbformat
import papermill


def strip_outputs(path: str | Path) -> bool:
    """Remove outputs and execution counts from a notebook in place; True if it changed."""
    nb = nbformat.read(path, as_version=4)
    changed = False
    for cell in nb.cells:
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None):
            cell.outputs, cell.execution_count = [], None
            changed = True
        if cell.metadata.pop("execution", None) is not None:
            changed = True
    if changed:
        nbformat.write(nb, path)
    return changed


def parameter_cells(path: str | Path) -> list[int]:
    """Indices of the cells tagged ``parameters``."""
    nb = nbformat.read(path, as_version=4)
    return [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]


def prepare(path: str | Path, out: str | Path, parameters: dict[str, Any]) -> Path:
    """Write a copy of the notebook with ``parameters`` injected (papermill --prepare-only)."""
    papermill.execute_notebook(str(path), str(out), parameters=parameters, prepare_only=True,
                               kernel_name="python3", progress_bar=False)
    return Path(out)


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "strip":
        sys.exit("usage: python -m improve_lib.runs.notebook_tools strip NOTEBOOK...")
    for p in sys.argv[2:]:
        if strip_outputs(p):
            print(f"stripped {p}")

"""Every notebook runs under nbval (--nbval-lax) on a copy prepared with smoke parameters.

The copies run in order against one run folder, as the runner would run them, so that each
notebook finds what the earlier ones wrote.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from improve_lib.core import notebook_parameters
from improve_lib.runs import notebook_tools, profiles

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def test_notebooks_under_nbval(tmp_path):
    params = profiles.resolve_params("smoke")
    params["RUN_DIR"] = str(tmp_path / "run")
    prepared = []
    for nb in notebook_parameters.list_notebooks():
        declared = notebook_parameters.declared_parameters(nb)
        out = tmp_path / "nbs" / nb.name
        out.parent.mkdir(exist_ok=True)
        prepared.append(notebook_tools.prepare(nb, out, {k: params[k] for k in declared if k in params}))
    # nbval runs notebooks in the order given; the working directory is the repo's notebooks folder.
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
                           "--nbval-current-env", "--nbval-cell-timeout=600", *map(str, prepared)],
                          cwd=REPO / "notebooks", capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout

"""Every results folder committed under results/ is complete, and its numbers are the ones its runs'
manifests hashed when the runs wrote them (no number edited by hand)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from improve_lib import results
from improve_lib.errors import StudyInputError

COMMITTED = sorted(p for p in (Path(__file__).resolve().parents[1] / "results").glob("*") if (p / "COMMAND.md").is_file())


@pytest.mark.parametrize("folder", COMMITTED, ids=lambda p: p.name)
def test_committed_results_are_complete_and_untouched(folder):
    runs = results.verify(folder)
    assert runs, folder


def test_an_edited_number_is_caught(tmp_path):
    """A committed table or metrics file changed by hand no longer hashes to its manifest's record."""
    source = next((p for p in COMMITTED if list(p.glob("runs/*/objective_plausibility.csv"))), None)
    assert source is not None, "no committed results folder holds per-run tables"
    for name in ("objective_plausibility.csv", "metrics.json"):
        copy = tmp_path / name.split(".")[0]
        shutil.copytree(source, copy)
        edited = next(copy.glob(f"runs/*/{name}"))
        edited.write_text(edited.read_text().replace("4", "5", 1))
        with pytest.raises(StudyInputError, match="sha256 differs"):
            results.verify(copy)

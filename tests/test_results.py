"""Every results folder committed under results/ is complete, and its numbers are the ones its runs'
manifests hashed when the runs wrote them (no number edited by hand)."""
from __future__ import annotations

from pathlib import Path

import pytest

from improve_lib import results

COMMITTED = sorted(p for p in (Path(__file__).resolve().parents[1] / "results").glob("*") if (p / "COMMAND.md").is_file())


@pytest.mark.parametrize("folder", COMMITTED, ids=lambda p: p.name)
def test_committed_results_are_complete_and_untouched(folder):
    runs = results.verify(folder)
    assert runs, folder

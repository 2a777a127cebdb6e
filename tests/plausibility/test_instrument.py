"""Notebook 07's choice of instrument (improve_lib.plausibility.instrument): which datasets get which, and a
checker that fails its validation stops the notebook instead of scoring."""
from __future__ import annotations

import pandas as pd
import pytest

from improve_lib.data.synthetic_cells import CLASSES
from improve_lib.plausibility import checker_scoring, instrument


def test_datasets_without_an_instrument_say_why(tmp_path):
    small = instrument.validate(tmp_path, "synthetic", 16, 0, 2, 0)
    assert small.name is None and "32 and 64 px" in small.note
    other = instrument.validate(tmp_path, "dermamnist", 32, 0, 2, 0)
    assert other.name is None and "dermamnist" in other.note
    assert instrument.score(tmp_path, other, ["baseline"]) is None
    assert not any(tmp_path.iterdir())  # nothing written without an instrument


def test_a_checker_that_fails_validation_stops_before_scoring(tmp_path, monkeypatch):
    bad = pd.DataFrame(100.0, index=list(CLASSES), columns=list(CLASSES))  # every class passes every rule
    seeds = []
    monkeypatch.setattr(checker_scoring, "validation_table",
                        lambda resolution, n, seed: seeds.append(seed) or bad)
    with pytest.raises(instrument.CheckerInvalidError, match="any other class <= 10 %: False"):
        instrument.validate(tmp_path, "synthetic", 32, 3, 2, 0)
    assert seeds == [instrument.VALIDATION_SEED + 3]


def test_the_checker_validates_on_fresh_renders_and_writes_its_curves(tmp_path):
    found = instrument.validate(tmp_path, "synthetic", 32, 0, 4, 1)
    assert found.name == "checker" and found.note.endswith("True")
    assert set(found.validation.index) == set(CLASSES)
    assert (tmp_path / "tables" / "objective_robustness.csv").is_file()
    assert "met" in found.robustness and found.robustness["level"] == 8

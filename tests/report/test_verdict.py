"""The pre-registered analysis (improve_lib.report.verdict) against the registration's text and hand-made cases."""
from __future__ import annotations

import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from improve_lib.report import verdict as v

ROOT = Path(__file__).resolve().parents[2]


def test_the_code_says_what_the_registration_says():
    text = (ROOT / v.PREREGISTRATION).read_text(encoding="utf-8")
    assert f"±{v.MARGIN:.1f} points" in text and f"α = {v.ALPHA}" in text
    seeds = re.search(r"Seeds \*\*([\d, ]+)\*\*", text).group(1)
    assert tuple(int(s) for s in seeds.split(",")) == v.PREREGISTERED_SEEDS
    assert len(v.PREREGISTERED_SEEDS) == v.PLANNED_REPLICATES and f"({v.PLANNED_REPLICATES} per dataset)" in text
    for words in v.WORDS.values():  # every outcome's words as registered (the table's bold part at least)
        assert words.split(":")[0] in text
    # the power figures printed there come from the same function
    for sd, effect, shown in ((1.7, 2.7, "0.97"), (2.7, 2.7, "0.68"), (2.7, 4.0, "0.95"), (1.7, 2.0, "0.81")):
        assert f"{v.power(sd, effect):.2f}" == shown and shown in text
    assert v.power(2.52, 11.18) == pytest.approx(1.0) and v.power(2.52, -11.18) == pytest.approx(1.0)  # no nan


def test_tost_rejects_exactly_when_the_90_percent_interval_is_inside_the_margin():
    rng = np.random.default_rng(0)
    agree = 0
    for _ in range(200):
        x = rng.normal(rng.uniform(-3, 3), rng.uniform(0.3, 3), size=8)
        res = v.verdict(x)
        inside = -v.MARGIN < res.low90 and res.high90 < v.MARGIN
        agree += (res.tost_p < v.ALPHA) == inside
    assert agree == 200


@pytest.mark.parametrize("diffs, outcome", [
    ([4.1, 3.2, 5.0, 4.4, 3.9, 4.6, 3.5, 4.8], "prototype"),
    ([-4.1, -3.2, -5.0, -4.4, -3.9, -4.6, -3.5, -4.8], "baseline"),
    ([0.1, -0.2, 0.3, 0.0, -0.1, 0.2, -0.3, 0.1], "equivalent"),
    ([1.0, 1.1, 0.9, 1.0, 1.2, 0.8, 1.0, 1.1], "small"),
    ([5.0, -4.0, 3.0, -6.0, 2.0, -1.0, 6.0, -5.0], "inconclusive"),
    ([4.1, 3.2, 5.0], "incomplete"),
])
def test_each_outcome_gets_its_registered_words(diffs, outcome):
    res = v.verdict(diffs)
    assert res.outcome == outcome and res.n == len(diffs)
    assert res.complete == (outcome != "incomplete")
    assert res.words == (v.WORDS[outcome] if outcome != "incomplete" else
                         f"incomplete, n = 3 of {v.PLANNED_REPLICATES}: no verdict until all registered replicates are in")
    assert res.low < res.mean < res.high and res.low < res.low90 < res.high90 < res.high


def test_per_class_differences_and_forest_figure():
    a = pd.DataFrame({"class_name": ["x", "y"], "baseline": [40.0, 50.0], "prototype": [42.0, 49.0]})
    b = pd.DataFrame({"class_name": ["x", "y"], "baseline": [41.0, 52.0], "prototype": [44.0, 50.0]})
    table = v.per_class_differences([a, b]).set_index("class")
    assert table.loc["x", "difference"] == pytest.approx(2.5) and table.loc["y", "difference"] == pytest.approx(-1.5)
    assert table.loc["x", "low"] < 2.5 < table.loc["x", "high"] and (table["n"] == 2).all()
    reps = pd.DataFrame({"seed": [3, 4, 5], "diff": [1.0, 2.0, -0.5], "low": [-1.0, 0.5, -2.0], "high": [3.0, 3.5, 1.0]})
    fig = v.forest_figure(reps, v.verdict(reps["diff"]), "test")
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["seed 3", "seed 4", "seed 5", "pooled"]
    plt.close(fig)

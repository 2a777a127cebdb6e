"""The registered second instrument: a logistic-regression probe on encoder features (improve_lib.metrics.probe)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from improve_lib.metrics import probe


def test_probe_scores_a_separable_set_high_and_shuffled_labels_near_chance():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, size=(4, 16))

    def draw(n):
        y = np.repeat(np.arange(4), n)
        return centres[y] + rng.normal(size=(len(y), 16)), y

    (xt, yt), (xr, yr) = draw(30), draw(40)
    vectors = {"real test": xt, "real train": xr, "baseline": xr, "prototype": xr}
    labels = {"real test": yt, "real train": yr, "baseline": rng.permutation(yr), "prototype": yr}
    table = probe.probe_table(vectors, labels).set_index("training_set")
    assert list(table.index) == ["real", "baseline", "prototype"] and (table["n_train"] == 160).all()
    assert table.loc["real", "macro_f1"] > 95 and table.loc["prototype", "macro_f1"] == table.loc["real", "macro_f1"]
    assert table.loc["baseline", "macro_f1"] < 50
    again = probe.probe_table(vectors, labels)  # deterministic: one fit per training set needs no seed
    pd.testing.assert_frame_equal(again, table.reset_index())


def test_the_probe_fits_on_one_blas_thread_whatever_the_machine_allows(monkeypatch):
    """lbfgs's stopping point follows the rounding of BLAS products, which follows the thread count (a registered
    replicate's real-image probe moved 0.55 points between one and two threads), so the fit is pinned to one."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_info, threadpool_limits

    seen = []
    fit = LogisticRegression.fit

    def recording_fit(self, *args, **kwargs):
        seen.append({i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"})
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(LogisticRegression, "fit", recording_fit)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 8)), np.repeat(np.arange(4), 10)
    with threadpool_limits(limits=2, user_api="blas"):
        probe.probe_table({"real test": x, "real train": x, "baseline": x}, {"real test": y, "real train": y, "baseline": y})
    assert seen == [{1}, {1}]


def test_the_tool_gives_the_notebooks_probe_for_a_finished_run(smoke_synthetic_run, load_tool):
    """Notebook 06 writes the probe into metrics.json; tools/probe_replicates.py recomputes it from the run's files
    (for runs made before the probe cell) and must agree."""
    tool = load_tool("probe_replicates")
    written = pd.DataFrame(json.loads((smoke_synthetic_run / "metrics" / "metrics.json").read_text())["probe"])
    assert list(written["training_set"]) == ["real", "baseline", "prototype"]
    again = tool.probe_run(smoke_synthetic_run)
    assert again["macro_f1"].to_numpy() == pytest.approx(written["macro_f1"].to_numpy(), abs=1e-9)

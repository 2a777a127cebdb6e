"""The registration's checks (improve_lib.report.registered_checks): split and training variance apart, the
training precision, and how the check runs travel in a results folder."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from improve_lib.core.errors import StudyInputError
from improve_lib.core.files import sha256_file
from improve_lib.report import comparison
from improve_lib.report import registered_checks as rc
from improve_lib.report import results_folder

ROOT = Path(__file__).resolve().parents[2]


def frame(rows):
    return pd.DataFrame(rows, columns=rc.COLUMNS)


def test_variance_components_by_hand():
    splits = pd.DataFrame({"split_seed": [3, 4], "diff": [1.0, 3.0], "second_seed": [1003, 1004],
                           "diff_second": [2.0, 6.0]})
    v = rc.variance_components([1.0, 3.0, 5.0, 7.0], splits)
    # total: var(1, 3, 5, 7) = 20 / 3; training: mean of 1/2 and 9/2
    assert v["total"] == pytest.approx(20 / 3) and v["training"] == pytest.approx(2.5)
    assert v["split"] == pytest.approx(20 / 3 - 2.5) and v["pairs"] == 2


def test_the_estimator_recovers_known_split_and_training_variance():
    """Δ = split effect (sd 2) + training noise (sd 1): with many replicates and pairs the estimates approach 4 and 1."""
    rng = np.random.default_rng(0)
    n = 20000
    split = rng.normal(0, 2, n)
    first, second = split + rng.normal(0, 1, n), split + rng.normal(0, 1, n)
    pairs = pd.DataFrame({"split_seed": range(n), "diff": first, "second_seed": range(n), "diff_second": second})
    v = rc.variance_components(first, pairs)
    assert v["training"] == pytest.approx(1.0, rel=0.05) and v["split"] == pytest.approx(4.0, rel=0.05)


def test_check_runs_pair_by_their_parameters_and_their_split():
    reps = frame([(3, 1.0, "bf16", None, "a"), (4, -2.0, "bf16", None, "b"), (5, 0.5, "bf16", None, "c")])
    checks = frame([(1003, 2.0, "bf16", 3, "a"), (3, 1.5, "no", None, "a"), (99, 0.0, "bf16", None, "z"),
                    (4, -2.0, "bf16", None, "b")])
    splits, precisions, repeats, unpaired = rc.pair_checks(reps, checks)
    assert splits.to_dict("records") == [{"split_seed": 3, "diff": 1.0, "second_seed": 1003, "diff_second": 2.0}]
    assert precisions.to_dict("records") == [{"seed": 3, "precision": "bf16", "diff": 1.0, "other_precision": "no",
                                              "diff_other": 1.5}]
    assert repeats.to_dict("records") == [{"seed": 4, "diff": -2.0, "diff_repeat": -2.0}]  # the replicate rerun
    assert unpaired["seed"].tolist() == [99]
    with pytest.raises(StudyInputError, match="SPLIT_SEED=4: its data/split.csv differs from replicate 4's"):
        rc.pair_checks(reps, frame([(1004, 0.0, "bf16", 4, "other")]))
    text = "\n".join(rc.summary_lines(reps, checks))
    assert "split 3: +1.0 (seed 3) and +2.0 (seed 1003)" in text and "training accounts for an sd of 0.71" in text
    assert "seed 3: bf16 +1.0, fp32 +1.5. Change of Δ +0.5 points" in text and "SEED=99" in text
    assert "reproduced to 0.01 points in 1 of 1 (largest change 0.00)" in text
    assert rc.summary_lines(reps, frame([])) == []
    # more spread within a split than over the replicates: the split's share is said to be none, not a negative sd
    wide = "\n".join(rc.summary_lines(reps, frame([(1003, 5.0, "bf16", 3, "a")])))
    assert "training accounts for an sd of 2.83" in wide and "the split for none: the rest of the variance is " \
        "negative (-5.42 points²)" in wide


def _as_sweep(results: Path, runs: dict[str, dict], out: Path) -> Path:
    """A sweep folder rebuilt from a committed results folder's files (the files write_results copies), its runs
    renamed and their seed, parameters and training precision set as ``runs`` says."""
    out.mkdir(parents=True)
    for rel in results_folder.SWEEP_FILES:
        if (results / rel).is_file():
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(results / rel, out / rel)
    for name, change in runs.items():
        src, dst = results / "runs" / change["from"], out / name
        for rel, kept in (*results_folder.RUN_FILES, *results_folder.RUN_TABLES):
            if (src / kept).is_file():
                (dst / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src / kept, dst / rel)
        m = json.loads((src / "manifest.json").read_text())
        m["sweep"]["seed"] = change["seed"]
        for arm in m["facts"]["04_train_diffusion"]["mixed_precision"]:
            m["facts"]["04_train_diffusion"]["mixed_precision"][arm] = change.get("precision", "bf16")
        if "prototype_f1" in change:  # another training's outcome: the table and its recorded hash change together
            t = pd.read_csv(dst / "tables/tstr.csv")
            t.loc[t["training_set"] == "prototype", "f1_mean"] = change["prototype_f1"]
            t.to_csv(dst / "tables/tstr.csv", index=False)
            m["outputs"]["tables/tstr.csv"] = sha256_file(dst / "tables/tstr.csv")
        if "external" in change:  # notebook 06 rerun with EXTERNAL_TEST_DIR: its metrics.json says so
            metrics = json.loads((dst / "metrics/metrics.json").read_text())
            metrics["tstr"]["external"] = {"external": {"sets": {k: {"mean": {"f1": v}}
                                                                 for k, v in change["external"].items()}}}
            (dst / "metrics/metrics.json").write_text(json.dumps(metrics))
            m["outputs"]["metrics/metrics.json"] = sha256_file(dst / "metrics/metrics.json")
        (dst / "manifest.json").write_text(json.dumps(m))
        params = yaml.safe_load((dst / "params.yaml").read_text())
        params.update(change.get("params", {}))
        (dst / "params.yaml").write_text(yaml.safe_dump(params))
    pd.DataFrame({"run": list(runs)}).to_csv(out / "runs.csv", index=False)
    return out


def test_check_sweeps_travel_in_the_results_folder_and_reach_the_summary(tmp_path):
    """write_results(checks=...) keeps the check runs under checks/<sweep>/, verify() checks their hashes, and the
    registered section of SUMMARY.md reports the variance split and the precision change from them."""
    pilot = ROOT / "results" / "pilot_ham10000"
    main = _as_sweep(pilot, {f"seed{s}": {"from": f"seed{i}", "seed": s} for i, s in enumerate((3, 4, 5))},
                     tmp_path / "sweeps" / "prereg")
    split = _as_sweep(pilot, {"seed1003": {"from": "seed0", "seed": 1003, "params": {"SPLIT_SEED": 3},
                                           "prototype_f1": 45.0}}, tmp_path / "sweeps" / "prereg-split3")
    fp32 = _as_sweep(pilot, {"seed4": {"from": "seed1", "seed": 4, "precision": "no", "prototype_f1": 50.0}},
                     tmp_path / "sweeps" / "prereg-fp32")
    rerun = _as_sweep(pilot, {"seed5": {"from": "seed2", "seed": 5,
                                        "external": {"prototype": 0.40, "baseline": 0.37, "real": 0.5}}},
                      tmp_path / "sweeps" / "prereg-external")
    assert "**On the external test set**" not in (pilot / results_folder.SUMMARY).read_text()
    out = results_folder.write_results(main, tmp_path / "results" / "ham10000", "cmd", checks=[split, fp32, rerun])
    assert sorted(p.name for p in (out / "checks").iterdir()) == ["prereg-external", "prereg-fp32", "prereg-split3"]
    assert results_folder.verify(out) == ["seed3", "seed4", "seed5"]
    text = (out / results_folder.SUMMARY).read_text()
    base0 = pd.read_csv(pilot / "runs/seed0/tstr.csv").set_index("training_set")["f1_mean"]
    first = base0["prototype"] - base0["baseline"]
    assert f"split 3: {first:+.1f} (seed 3) and {45.0 - base0['baseline']:+.1f} (seed 1003)" in text
    base1 = pd.read_csv(pilot / "runs/seed1/tstr.csv").set_index("training_set")["f1_mean"]
    change = 50.0 - base1["prototype"]
    assert f"seed 4: bf16 {base1['prototype'] - base1['baseline']:+.1f}, fp32 {50.0 - base1['baseline']:+.1f}" in text
    assert f"Change of Δ {change:+.1f} points" in text and not math.isnan(change)
    # the rerun with an external test set: its Δ on the test split is the replicate's, its external scores are shown
    assert "reproduced to 0.01 points in 1 of 1" in text
    assert "**On the external test set**" in text and "| 1 of 8 | +3.0 | - | - | - |" in text
    edited = out / "checks/prereg-split3/runs/seed1003/tstr.csv"  # a check run's number edited by hand is caught
    edited.write_text(edited.read_text().replace("4", "5", 1))
    with pytest.raises(StudyInputError, match="sha256 differs"):
        results_folder.verify(out)
    with pytest.raises(StudyInputError, match="share a folder name"):
        results_folder.write_results(main, tmp_path / "results" / "other", "cmd", checks=[split, split])


def test_runs_are_read_in_seed_order_not_in_name_order(tmp_path):
    """seed10 after seed9 in the comparison's table (notebook 08) and in a results folder, as in the registered
    sweeps (seeds 3-10); a name sort would put seed10 first."""
    pilot = ROOT / "results" / "pilot_ham10000"
    sweep = _as_sweep(pilot, {"seed10": {"from": "seed0", "seed": 10}, "seed9": {"from": "seed1", "seed": 9},
                              "seed2": {"from": "seed2", "seed": 2}}, tmp_path / "sweeps" / "prereg")
    long, _ = comparison.collect(sweep)
    assert list(dict.fromkeys(long["run"])) == ["seed2", "seed9", "seed10"]
    out = results_folder.write_results(sweep, tmp_path / "results" / "ham10000", "cmd")
    assert results_folder.verify(out) == ["seed2", "seed9", "seed10"]

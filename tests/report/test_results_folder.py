"""Every results folder committed under results/ is complete, and its numbers are the ones its runs'
manifests hashed when the runs wrote them (no number edited by hand)."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from improve_lib.core.errors import StudyInputError
from improve_lib.report import results_folder

# results/<name>/ or, for a study over datasets, results/<name>/<dataset>/
COMMITTED = sorted(p.parent for p in (Path(__file__).resolve().parents[2] / "results").rglob("COMMAND.md"))


@pytest.mark.parametrize("folder", COMMITTED, ids=lambda p: p.name)
def test_committed_results_are_complete_and_untouched(folder):
    runs = results_folder.verify(folder)
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
            results_folder.verify(copy)


@pytest.mark.parametrize("name", ["bone_marrow", "ham10000", "pilot_bone_marrow", "pilot_ham10000"])
def test_the_real_data_study_is_committed_with_its_summary(name, tmp_path):
    """results/<dataset>/ (the registered replicates) and results/pilot_<dataset>/ (the pilot, seeds 0-2) are
    complete, each SUMMARY.md is what its runs give, and a hand edit of the summary is caught."""
    import yaml

    from improve_lib.report import verdict

    dataset = name.removeprefix("pilot_")
    folder = Path(__file__).resolve().parents[2] / "results" / name
    assert results_folder.verify(folder)
    spec = yaml.safe_load((folder / "sweep.yaml").read_text())
    assert spec["dataset"] == dataset and spec["profile"] == "laptop" and not spec["grid"]
    text = (folder / results_folder.SUMMARY).read_text()
    assert text.startswith(f"# {dataset}:") and "| real " in text  # the real-image ceiling is reported
    seeds = set(spec["seeds"]) if name.startswith("pilot_") else set(spec["seeds"]) & set(verdict.PREREGISTERED_SEEDS)
    assert seeds == (set(verdict.PILOT_SEEDS) if name.startswith("pilot_") else set(spec["seeds"]))
    assert ("## The pre-registered verdict" in text) != name.startswith("pilot_")
    copy = tmp_path / dataset
    shutil.copytree(folder, copy)
    (copy / results_folder.SUMMARY).write_text(text.replace("| baseline ", "| baseline 1", 1))
    with pytest.raises(StudyInputError, match="SUMMARY.md is not what"):
        results_folder.verify(copy)


def test_demo_objective_tables_are_the_ones_its_run_wrote():
    """results/demo_objective holds files copied from one run folder: each must hash to what that run's
    manifest recorded for it (tables/ and figures/ there)."""
    import json

    from improve_lib.core.files import sha256_file

    folder = Path(__file__).resolve().parents[2] / "results" / "demo_objective"
    outputs = json.loads((folder / "manifest.json").read_text())["outputs"]
    copied = sorted(p.name for p in folder.iterdir() if p.name not in ("manifest.json", "README.md"))
    assert {"objective_plausibility.csv", "objective_criteria.csv", "params.yaml"} <= set(copied)
    for name in copied:
        key = name if name == "params.yaml" else (f"figures/{name}" if name.endswith(".png") else f"tables/{name}")
        assert sha256_file(folder / name) == outputs[key], f"{name} is not the file its run wrote"


def test_a_registered_folder_gets_the_registered_analysis(tmp_path):
    """A results folder whose replicates are the pre-registered seeds gets the registered section (test, TOST,
    words, forest plot, per-class differences, precision per replicate); before all 8 it says incomplete."""
    import json

    from improve_lib.report import verdict

    copy = tmp_path / "ham10000"
    shutil.copytree(Path(__file__).resolve().parents[2] / "results" / "pilot_ham10000", copy)
    for run, seed in zip(sorted((copy / "runs").iterdir()), verdict.PREREGISTERED_SEEDS):
        m = json.loads((run / "manifest.json").read_text())
        m["sweep"]["seed"] = seed  # the pilot's files posing as registered replicates
        (run / "manifest.json").write_text(json.dumps(m))
    (copy / results_folder.SUMMARY).unlink()  # the pilot's summary, written for other seeds
    with pytest.raises(StudyInputError, match="verdict_forest.png missing"):
        results_folder.verify(copy)
    results_folder.write_summary(copy)
    assert results_folder.verify(copy) and (copy / results_folder.FOREST).stat().st_size > 1000
    text = (copy / results_folder.SUMMARY).read_text()
    assert "## The pre-registered verdict" in text and "(pre-registered)" in text.splitlines()[0]
    assert f"| 3 of {verdict.PLANNED_REPLICATES} | +2.7 [-1.5, +7.0] | 0.110 |" in text
    assert "**incomplete, n = 3 of 8" in text and re.search(r"\|\s+3 \| \+3\.2 \[\+0\.3, \+6\.7\]\s+\| no\s+\| AVX2", text)
    assert "Per class" in text and "| bkl " in text and "Second instrument" not in text
    rows = [{"run": run, "seed": seed, "training_set": ts, "macro_f1": f1, "n_train": 700}
            for run, seed, d in (("seed0", 3, 2.0), ("seed1", 4, 1.0), ("seed2", 5, -1.0))
            for ts, f1 in (("real", 50.0), ("baseline", 40.0), ("prototype", 40.0 + d))]
    pd.DataFrame(rows).to_csv(copy / results_folder.PROBE, index=False)  # as tools/probe_replicates.py writes it
    with pytest.raises(StudyInputError, match="SUMMARY.md is not what"):
        results_folder.verify(copy)
    results_folder.write_summary(copy)
    text = (copy / results_folder.SUMMARY).read_text()
    assert "prototype − baseline macro F1 +0.7 [-3.1, +4.5] points over 3 replicate(s)" in text
    assert "its sign agrees with TSTR's in 2 of 3" in text


def test_registered_replicates_ran_after_the_registration_was_committed():
    """Every replicate committed under results/ with a pre-registered seed ran at a commit that has the commit
    adding results/PREREGISTRATION.md as a strict ancestor (the registration came before the data)."""
    import json
    import subprocess

    from improve_lib.report import verdict

    root = Path(__file__).resolve().parents[2]

    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)

    if git("rev-parse", "--is-shallow-repository").stdout.strip() != "false":
        pytest.skip("no whole git history here (an exported tree or a shallow clone): the ancestry cannot be read")
    added = git("log", "--diff-filter=A", "--format=%H", "--", verdict.PREREGISTRATION).stdout.split()
    assert added, f"{verdict.PREREGISTRATION} was never committed"
    # the replicates, and every check run the registration asked for (checks/<sweep>/runs/, any seed)
    registered = [run for folder in COMMITTED for run in sorted((folder / "runs").glob("*/manifest.json"))
                  if (json.loads(run.read_text()).get("sweep") or {}).get("seed") in verdict.PREREGISTERED_SEEDS]
    registered += [run for folder in COMMITTED for run in sorted(folder.glob(f"{results_folder.CHECKS}/*/runs/*/manifest.json"))]
    for run in registered:
        commit = json.loads(run.read_text())["git"]["commit"]
        assert commit != added[-1], f"{run}: ran at the registration's own commit"
        assert git("merge-base", "--is-ancestor", added[-1], commit).returncode == 0, \
            f"{run}: ran at {commit[:7]}, not after the registration {added[-1][:7]}"


def test_the_external_test_set_line_reads_notebook_06s_external_scores():
    def run(seed, proto, base, real):
        sets = {k: {"mean": {"f1": v}} for k, v in (("prototype", proto), ("baseline", base), ("real", real))}
        return {"seed": seed, "external": {"sets": sets, "n_test": 250,
                                           "n_test_per_class": {"akiec": 125, "df": 0, "nv": 125}}}

    test_split = pd.DataFrame({"seed": [3, 4], "diff": [-0.5, 2.0]})
    lines = results_folder._external_lines([run(3, 0.40, 0.38, 0.50), run(4, 0.41, 0.40, 0.52),
                                            {"seed": 5, "external": None}], test_split)
    text = "\n".join(lines)
    assert lines[0].startswith("**On the external test set**") and "250 images of 2 classes (akiec, nv)" in lines[0]
    assert "| 2 of 8 | +1.5 [-4.9, +7.9] | 0.205 |" in text and "incomplete, n = 2 of 8" in text
    assert "real 51.0 [" in text and "3: +2.0, -0.5; 4: +1.0, +2.0; the sign agrees in 1 of 2" in text
    assert results_folder._external_lines([{"seed": 3, "external": None}], test_split) == []

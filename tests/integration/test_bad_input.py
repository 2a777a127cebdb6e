"""Bad input fails before any work, naming the thing at fault, and leaves earlier folders as they were."""
from __future__ import annotations

import shutil

import pandas as pd
import pytest
import yaml

from improve_lib.core.errors import StudyInputError
from improve_lib.core.files import sha256_file
from improve_lib.data import synthetic_cells as sc
from improve_lib.plausibility.review import label_studio, tasks
from improve_lib.runs import pipeline


@pytest.mark.parametrize("sets,match", [
    ({"GUIDANCE_SCALE": [1]}, "GUIDANCE_SCALE.*takes a float"),
    ({"MAX_STEPS": "abc"}, "MAX_STEPS.*takes an int"),
    ({"CLASSES": "lymphocyte"}, "CLASSES.*takes a list"),
    ({"EVAL_SEEDS": ["x"]}, "EVAL_SEEDS item.*int"),
    ({"GAMMA": 0.0}, r"GAMMA=0.0 is outside \(0, inf\)"),
    ({"EVAL_LR": 0.0}, r"EVAL_LR=0.0 is outside \(0, inf\)"),
    ({"ARMS": ["proto"]}, "ARMS"),
    ({"GUIDANCE_INTERVAL": [0.8, 0.2]}, "GUIDANCE_INTERVAL"),
    ({"PREDICTION_TYPE": "noise"}, "PREDICTION_TYPE"),
    ({"ZERO_TERMINAL_SNR": True, "PREDICTION_TYPE": "epsilon"}, "ZERO_TERMINAL_SNR.*PREDICTION_TYPE"),
    ({"ENCODER": "open_clip:ViT-B-32:missing/weights.safetensors"}, "ENCODER.*not found"),
    ({"EVAL_SPLIT": "validation"}, "EVAL_SPLIT='validation' needs validation images: set N_VALIDATION"),
    ({"EVAL_SPLIT": "train"}, "EVAL_SPLIT must be one of"),
    ({"N_VALIDATION": 1000}, "N_VALIDATION must be >= 0 and below N_TRAIN"),
])
def test_a_bad_value_fails_before_the_run_folder_exists(tmp_path, sets, match, finished_run):
    with pytest.raises(StudyInputError, match=match):
        pipeline.run_pipeline("smoke", run_dir=tmp_path / "run", sets=sets, progress=False)
    assert not (tmp_path / "run").exists()
    # and a finished run folder given the same bad value to resume with is left byte for byte as it was
    before = _tree(finished_run)
    with pytest.raises(StudyInputError, match=match):
        pipeline.run_pipeline("smoke", run_dir=finished_run, sets=sets, resume=True, progress=False)
    assert _tree(finished_run) == before


@pytest.fixture(scope="module")
def finished_run(smoke_synthetic_run, tmp_path_factory):
    """A copy of a finished smoke run: the earlier run that bad input must leave untouched."""
    run = tmp_path_factory.mktemp("earlier") / "run"
    shutil.copytree(smoke_synthetic_run, run)
    return run


def _tree(folder) -> dict[str, str]:
    """Every file under ``folder`` with its sha256 (and every folder), to compare a folder byte for byte."""
    return {str(p.relative_to(folder)): (sha256_file(p) if p.is_file() else "dir") for p in sorted(folder.rglob("*"))}


def test_encoder_checkpoint_path_is_resolved_against_the_working_directory(tmp_path, monkeypatch):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    params = pipeline.check_parameters({**pipeline.resolve_params("smoke"), "ENCODER": "open_clip:ViT-B-32:w.safetensors"})
    assert params["ENCODER"] == f"open_clip:ViT-B-32:{weights}"


def test_force_deletes_only_this_projects_run_folders(tmp_path):
    foreign = tmp_path / "x"
    foreign.mkdir()
    (foreign / "params.yaml").write_text("a: 1\n")
    (foreign / "important.txt").write_text("b")
    with pytest.raises(StudyInputError, match="not a run folder of this project"):
        pipeline.run_pipeline("smoke", only=["01"], run_dir=foreign, force=True, progress=False)
    assert sorted(p.name for p in foreign.iterdir()) == ["important.txt", "params.yaml"]
    run = pipeline.run_pipeline("smoke", only=["01"], run_dir=tmp_path / "run", progress=False)
    (run / "notes.txt").write_text("my notes")  # a file the project did not write
    with pytest.raises(StudyInputError, match=r"1 file\(s\) this project did not write: \['notes.txt'\]"):
        pipeline.run_pipeline("smoke", only=["01"], run_dir=run, force=True, progress=False)
    assert (run / "notes.txt").read_text() == "my notes"
    (run / "notes.txt").unlink()
    pipeline.run_pipeline("smoke", only=["01"], run_dir=run, force=True, progress=False)  # its own files only: allowed
    (tmp_path / "file").write_text("")
    with pytest.raises(StudyInputError, match="is a file, not a folder"):
        pipeline.run_pipeline("smoke", only=["01"], run_dir=tmp_path / "file", progress=False)


def _review_run(root):
    for arm in ("baseline", "prototype"):
        folder = root / "samples" / arm / "blast"
        folder.mkdir(parents=True)
        for i in range(2):
            sc.render_cell("blast", sc.image_rng(1, "blast", i), 32)[0].save(folder / f"{i}.png")
    tasks.build_review_tasks(root, ("baseline", "prototype"), 0, None)
    return root


@pytest.mark.parametrize("column,value,match", [
    ("task_id", "../../../../elsewhere/ESCAPED", "is not a task id"),
    ("image_path", "../outside.png", "points outside the run folder"),
])
def test_review_paths_are_checked_where_they_are_read(tmp_path, column, value, match):
    run = _review_run(tmp_path / "run")
    (tmp_path / "outside.png").write_bytes((run / tasks.load_tasks(run).image_path[0]).read_bytes())
    table = pd.read_csv(run / "review" / "tasks.csv", dtype=str)
    table.loc[0, column] = value
    table.to_csv(run / "review" / "tasks.csv", index=False)
    with pytest.raises(StudyInputError, match=match):
        label_studio.export_label_studio(run, "synthetic", tmp_path / "ls" / "tasks.json")
    assert not (tmp_path / "elsewhere").exists() and not (tmp_path / "ls").exists()


def test_comments_that_a_spreadsheet_would_evaluate_are_text(tmp_path):
    run = _review_run(tmp_path / "run")
    tid = tasks.load_tasks(run).task_id[0]
    row = tasks.append_judgment(run, "alice", tid, False, ["cell_size"], comment="=HYPERLINK(\"http://x\")")
    assert row["comment"].startswith("'=")
    with pytest.raises(StudyInputError, match="1-64"):
        tasks.append_judgment(run, "a" * 300, tid, True)


def _blank_lesion_ids(data_dir):
    meta = pd.read_csv(data_dir / "HAM10000_metadata.csv", dtype=str)
    meta.loc[meta.index[:2], "lesion_id"] = None
    meta.to_csv(data_dir / "HAM10000_metadata.csv", index=False)
    return "2 row.*no lesion_id"


def _drop_dx_column(data_dir):
    meta = pd.read_csv(data_dir / "HAM10000_metadata.csv", dtype=str)
    meta.drop(columns="dx").to_csv(data_dir / "HAM10000_metadata.csv", index=False)
    return "dx"


def _truncate_an_image(data_dir):
    meta = pd.read_csv(data_dir / "HAM10000_metadata.csv", dtype=str)
    victim = next(p for p in sorted((data_dir / "images").glob("*.jpg")) if p.stem in set(meta["image_id"]))
    victim.write_bytes(victim.read_bytes()[:400])
    return victim.name


# Broken data files, run through the runner into a new folder beside an earlier, finished run (as runs/
# holds them): the error names the file, row or column at fault, no new folder is left, and the earlier
# run is byte for byte as it was.
@pytest.mark.parametrize("breakage,sets", [
    (_blank_lesion_ids, {}),
    (_drop_dx_column, {}),
    (_truncate_an_image, {"N_TRAIN": 200, "N_TEST": 1}),  # every image is selected, so every image is read
    (lambda d: r"no training image left after N_TEST=200", {"N_TEST": 200}),
    (lambda d: "melanomaX", {"CLASSES": ["mel", "melanomaX"]}),
])
def test_bad_data_files_are_named_before_the_run_and_leave_earlier_runs_alone(tmp_path, ham_dir, finished_run,
                                                                              breakage, sets):
    data_dir = tmp_path / "ham"
    shutil.copytree(ham_dir, data_dir)
    match = breakage(data_dir)
    before = _tree(finished_run)
    new_run = finished_run.parent / "later"
    with pytest.raises(StudyInputError, match=match):
        pipeline.run_pipeline("smoke", dataset="ham10000", data_dir=data_dir, run_dir=new_run, sets=sets,
                              progress=False)
    assert not new_run.exists()
    assert _tree(finished_run) == before


def test_a_killed_training_does_not_block_a_rerun_with_other_upstream_parameters(smoke_synthetic_run, tmp_path):
    """A SIGKILL in notebook 04 leaves checkpoints the manifest never recorded; rerun with a changed upstream
    parameter (--resume --force), notebook 04 starts its models/ afresh instead of refusing to resume a
    checkpoint of other training data."""
    run = tmp_path / "run"
    shutil.copytree(smoke_synthetic_run, run)
    stale = run / "models" / "prototype" / "checkpoint-999"
    shutil.copytree(run / "models" / "prototype" / "checkpoint-4", stale)  # what a kill leaves: not in the manifest
    state = stale / "training_state.json"
    state.write_text(state.read_text().replace('"step": 4', '"step": 999'))
    # an upstream change in 03 (other prototypes, so another class table): 03 and 04 rerun
    pipeline.run_pipeline("smoke", run_dir=run, only=["03", "04"], sets={"PROTO_EPOCHS": 5}, resume=True,
                          force=True, progress=False)
    assert not stale.exists()
    assert yaml.safe_load((run / "params.yaml").read_text())["PROTO_EPOCHS"] == 5

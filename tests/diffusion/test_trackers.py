"""Training curves in TensorBoard, MLflow and W&B (REPORT_TO): read back with each tracker's own reader and compared
with loss.csv; a REPORT_TO that is unknown or whose package is missing is refused before any training.

The tiny training of test_train (2 classes, 16 px, a few steps). TensorBoard and MLflow are installed by make venv
(the Makefile's EXTRAS); a test is skipped only where its package is missing.
"""
from __future__ import annotations

import importlib.util

import pandas as pd
import pytest
import yaml
from test_train import make_run, tiny_config

from improve_lib.core import manifest, run_layout
from improve_lib.core.errors import StudyInputError
from improve_lib.diffusion import checkpoint_export, trackers
from improve_lib.diffusion.train import RESUME_KEYS, RUN_OPTIONS, resolve_config, train
from improve_lib.runs import pipeline

ARM = "baseline"


@pytest.fixture()
def run(tmp_path):
    return make_run(tmp_path / "run")


def _loss_csv(run):
    return pd.read_csv(run_layout.arm_dir(run, ARM) / "loss.csv")


@pytest.mark.slow
def test_tensorboard_event_files_hold_the_loss_of_loss_csv(run, one_thread):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(tiny_config(run, ARM, MAX_STEPS=3, SAMPLE_EVERY=2, REPORT_TO="tensorboard"))
    events = EventAccumulator(str(run_layout.trackers_dir(run, "tensorboard") / ARM), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    losses = _loss_csv(run)
    assert [e.step for e in events.Scalars("loss")] == losses["step"].tolist() == [1, 2, 3]
    assert [e.value for e in events.Scalars("loss")] == pytest.approx(losses["loss"].tolist(), rel=1e-5)
    assert [e.value for e in events.Scalars("lr")] == pytest.approx(losses["lr"].tolist(), rel=1e-5)
    assert all(e.value > 0 for e in events.Scalars("step_seconds"))
    assert [e.step for e in events.Images("preview")] == [2, 3]  # SAMPLE_EVERY and the last step


@pytest.mark.slow
def test_the_smoke_profile_trained_with_tensorboard_and_mlflow(smoke_synthetic_run, tmp_path, monkeypatch):
    """The smoke profile's own training config, as notebook 04 wrote it in the shared smoke run, trained again in a
    copy of that run with each tracker: the curves read back equal loss.csv."""
    import shutil

    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    for name in ("tensorboard", "mlflow"):
        run = tmp_path / name
        shutil.copytree(smoke_synthetic_run, run, ignore=shutil.ignore_patterns("models", "samples", "trackers"))
        config = yaml.safe_load((run_layout.arm_dir(smoke_synthetic_run, ARM) / "config.yaml").read_text())
        train({**config, "RUN_DIR": str(run), "PROGRESS": False, "REPORT_TO": name})
        losses = _loss_csv(run)
        if name == "tensorboard":
            events = EventAccumulator(str(run_layout.trackers_dir(run, name) / ARM), size_guidance={"scalars": 0})
            events.Reload()
            logged = [(e.step, e.value) for e in events.Scalars("loss")]
        else:
            client = MlflowClient(run_layout.trackers_dir(run, name).resolve().as_uri())
            (arm_run,) = client.search_runs([client.get_experiment_by_name(run.name).experiment_id])
            logged = sorted((m.step, m.value) for m in client.get_metric_history(arm_run.info.run_id, "loss"))
        assert [s for s, _ in logged] == losses["step"].tolist() and len(logged) == config["MAX_STEPS"]
        assert [v for _, v in logged] == pytest.approx(losses["loss"].tolist(), rel=1e-5)


@pytest.mark.slow
def test_mlflow_file_store_holds_the_loss_and_a_resumed_arm_goes_on_in_its_run(run, one_thread, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 opens its file store only when asked
    train(tiny_config(run, ARM, MAX_STEPS=2, SAMPLE_EVERY=0, REPORT_TO="mlflow"))
    train(tiny_config(run, ARM, MAX_STEPS=4, SAMPLE_EVERY=0, REPORT_TO="mlflow"))  # resumes from checkpoint-2
    client = MlflowClient(run_layout.trackers_dir(run, "mlflow").resolve().as_uri())
    experiment = client.get_experiment_by_name(run.name)
    (arm_run,) = client.search_runs([experiment.experiment_id])
    assert arm_run.info.run_name == ARM and arm_run.data.params["ARM"] == ARM
    history = sorted(client.get_metric_history(arm_run.info.run_id, "loss"), key=lambda m: m.step)
    losses = _loss_csv(run)
    assert [m.step for m in history] == losses["step"].tolist() == [1, 2, 3, 4]
    assert [m.value for m in history] == pytest.approx(losses["loss"].tolist(), rel=1e-5)
    assert {m.step for m in client.get_metric_history(arm_run.info.run_id, "step_seconds")} == {1, 2, 3, 4}
    assert [a.path for a in client.list_artifacts(arm_run.info.run_id, "previews")] == ["previews/step-2.png",
                                                                                      "previews/step-4.png"]


@pytest.mark.slow
def test_wandb_writes_an_offline_run_inside_the_run_folder(run, one_thread):
    pytest.importorskip("wandb")  # not among the Makefile's EXTRAS: make venv EXTRAS=tensorboard,mlflow,wandb

    train(tiny_config(run, ARM, MAX_STEPS=3, SAMPLE_EVERY=2, REPORT_TO="wandb"))
    (offline,) = (run_layout.trackers_dir(run, "wandb") / "wandb").glob("offline-run-*")
    assert next(offline.glob("run-*.wandb")).stat().st_size > 0
    grids = sorted(p.name.split("_")[1] for p in (offline / "files" / "media" / "images").glob("preview_*.png"))
    assert grids == ["2", "3"]


def test_report_to_is_a_run_option_refused_when_unknown_or_not_installed(run, monkeypatch):
    """REPORT_TO is how a run is watched, not what it computes: a resume with another tracker is the same run. A bad
    value, or a tracker whose package is missing, stops the training config and the run's preflight, naming it."""
    assert RUN_OPTIONS["REPORT_TO"] == "none" and "REPORT_TO" not in RESUME_KEYS
    with pytest.raises(StudyInputError, match=r"REPORT_TO must be one of .*'neptune'"):
        resolve_config(tiny_config(run, REPORT_TO="neptune"))
    with pytest.raises(StudyInputError, match="REPORT_TO"):
        pipeline.check_parameters({**pipeline.resolve_params("smoke"), "REPORT_TO": "neptune"})
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else find_spec(name, *a))
    with pytest.raises(StudyInputError, match=r"REPORT_TO='mlflow' needs the mlflow package.*\.\[mlflow\]"):
        resolve_config(tiny_config(run, REPORT_TO="mlflow"))
    with pytest.raises(StudyInputError, match="REPORT_TO='mlflow'"):
        pipeline.check_parameters({**pipeline.resolve_params("smoke"), "REPORT_TO": "mlflow"})
    assert resolve_config(tiny_config(run, REPORT_TO="none"))["REPORT_TO"] == "none"


@pytest.mark.slow
def test_a_checkpoint_exports_where_its_tracker_is_not_installed(run, one_thread, monkeypatch, tmp_path):
    """An export (python -m improve_lib export) logs no curves: it does not need REPORT_TO's package."""
    pytest.importorskip("tensorboard")
    cfg = tiny_config(run, ARM, MAX_STEPS=1, REPORT_TO="tensorboard")
    (run_layout.arm_dir(run, ARM) / "config.yaml").parent.mkdir(parents=True)
    (run_layout.arm_dir(run, ARM) / "config.yaml").write_text(yaml.safe_dump(cfg))
    train(cfg)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else find_spec(name, *a))
    out = checkpoint_export.export_checkpoint(run, ARM, out=tmp_path / "export")
    assert (out / "model_index.json").is_file()


def test_the_manifest_names_the_tracker_folder_and_holds_its_files_as_records(run):
    assert trackers.manifest_facts(run, "tensorboard") == {"report_to": "tensorboard", "tracker_dir": "trackers/tensorboard"}
    assert trackers.manifest_facts(run, "none") == {"report_to": "none", "tracker_dir": None}
    # the curves carry wall times and host names: records of the execution, never outputs a rerun reproduces
    event_file = "trackers/tensorboard/baseline/events.out.tfevents.1.host.1.0"
    assert manifest.is_record(event_file) and run_layout.is_tool_file(event_file)
    assert run_layout.TRACKERS in run_layout.OWNED_FOLDERS["04"]

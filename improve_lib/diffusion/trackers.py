"""Training curves in the trackers people use: TensorBoard, MLflow or Weights & Biases, offline, inside the run folder.

``REPORT_TO`` (a run option of notebook 04, :data:`improve_lib.diffusion.train.RUN_OPTIONS`) names one tracker or
``"none"``. It is one of 🤗 Accelerate's trackers (``Accelerator(log_with=...)``, ``init_trackers``, ``log``,
``end_training``), made to write nothing outside ``RUN_DIR/trackers/<tracker>/``
(:func:`improve_lib.core.run_layout.trackers_dir`) and to reach no server::

    tensorboard  event files, a folder per arm       tensorboard --logdir RUN_DIR/trackers/tensorboard
    mlflow       MLflow's file store, a run per arm  MLFLOW_ALLOW_FILE_STORE=true mlflow ui
                                                         --backend-store-uri RUN_DIR/trackers/mlflow  (full mlflow)
    wandb        W&B offline runs, one per session   wandb sync RUN_DIR/trackers/wandb/wandb/offline-run-*

Every optimizer step logs ``loss`` and ``lr`` (the rows of ``loss.csv``) and ``step_seconds``; every preview grid is
logged as an image (TensorBoard, W&B) or as an artifact ``previews/step-<n>.png`` (MLflow, whose file store keeps
files, not images). The recipe (the keys a resume checks) is stored as the run's hyperparameters. The packages are
optional extras of ``pyproject.toml`` (``pip install -e '.[tensorboard]'``, ``[mlflow]``, ``[wandb]``); a
``REPORT_TO`` whose package is missing is refused with the training config, before any training starts.
"""
from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
from accelerate.tracking import GeneralTracker, MLflowTracker, TensorBoardTracker, WandBTracker
from PIL import Image

from improve_lib.core import run_layout
from improve_lib.core.errors import StudyInputError
from improve_lib.diffusion.loss_log import LossLog

try:
    import fcntl  # the lock of _FileStoreMLflow.start
except ImportError:  # Windows: arms trained side by side may each create the experiment
    fcntl = None

__all__ = ["REPORT_TO", "TrainingCurves", "check_installed", "log_with", "manifest_facts", "start"]

#: The values of ``REPORT_TO``: no tracker, or the one named.
REPORT_TO = ("none", "tensorboard", "mlflow", "wandb")
# tracker -> (the module it imports, the pip extra of pyproject.toml that installs it)
_PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow"), "wandb": ("wandb", "wandb")}


def check_installed(report_to: str) -> str:
    """``report_to`` when its tracker's package can be imported here (or it is ``"none"``); else raise
    :class:`StudyInputError` naming ``REPORT_TO`` and the extra to install. Accelerate would drop a tracker whose
    package is missing with a debug message only, so a long training would end with no curves."""
    if report_to in _PACKAGES:
        module, extra = _PACKAGES[report_to]
        if importlib.util.find_spec(module) is None:
            raise StudyInputError(f"REPORT_TO={report_to!r} needs the {module} package, which is not installed in "
                                  f"this environment: pip install -e '.[{extra}]' (or REPORT_TO='none')")
    return report_to


def manifest_facts(run_dir: str | os.PathLike, report_to: str) -> dict[str, Any]:
    """What the run's manifest records about the curves: ``report_to`` and ``tracker_dir`` (run-relative, None
    when ``report_to`` is ``"none"``)."""
    folder = None if report_to == "none" else run_layout.relative_to_run(run_layout.trackers_dir(run_dir, report_to), run_dir)
    return {"report_to": report_to, "tracker_dir": folder}


class _FileStoreMLflow(MLflowTracker):
    """Accelerate's MLflow tracker on a file store of its own (MLflow would otherwise pick ./mlruns, a database or a
    server from the environment); a resumed arm goes on in its earlier MLflow run."""

    def __init__(self, folder: Path, experiment: str, arm_name: str):
        super().__init__(experiment_name=experiment, run_name=arm_name)
        self.folder, self.continues, self.previous_uri = folder.resolve(), False, None
        self.uri = self.folder.as_uri()

    def start(self) -> None:
        """Point MLflow at the file store, then start (or, when :attr:`continues`, reopen) the arm's run."""
        import mlflow

        # MLflow 3 keeps its file store in maintenance mode and refuses it unless asked: a folder of plain files
        # needs no database and opens anywhere (`mlflow migrate-filestore` moves it to SQLite).
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
        self.previous_uri = mlflow.get_tracking_uri() if os.environ.get("MLFLOW_TRACKING_URI") else None
        mlflow.set_tracking_uri(self.uri)
        if mlflow.active_run() is not None:
            mlflow.end_run("KILLED")  # left open by a training that raised in this process (a notebook kernel)
        if self.continues:
            client = mlflow.MlflowClient(self.uri)
            exp = client.get_experiment_by_name(self.experiment_name)
            runs = [] if exp is None else client.search_runs(
                [exp.experiment_id], f"tags.`mlflow.runName` = '{self.run_name}'", max_results=1,
                order_by=["attributes.start_time DESC"])
            self.run_id = runs[0].info.run_id if runs else None
        self.folder.mkdir(parents=True, exist_ok=True)
        # arms training side by side (launch.launch_concurrently) find or create the one experiment in turn
        with open(self.folder / ".experiment.lock", "a") as lock:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)
            super().start()

    def finish(self) -> None:
        """End the run and give MLflow back the tracking URI it had before."""
        import mlflow

        super().finish()
        mlflow.set_tracking_uri(self.previous_uri)


def log_with(cfg: Mapping[str, Any]) -> list[GeneralTracker] | None:
    """The ``log_with`` of the training's ``Accelerator``: the tracker ``cfg["REPORT_TO"]`` names, writing into
    ``RUN_DIR/trackers/<tracker>/`` under the arm's name, or None. Nothing is written until :func:`start`."""
    name, run_dir, arm = cfg["REPORT_TO"], cfg["RUN_DIR"], cfg["ARM_NAME"]
    if name == "none":
        return None
    folder, study_run = run_layout.trackers_dir(run_dir, name), Path(run_dir).resolve().name
    if name == "tensorboard":
        return [TensorBoardTracker(arm, str(folder))]
    if name == "mlflow":
        return [_FileStoreMLflow(folder, study_run, arm)]
    # W&B: offline (nothing is sent; `wandb sync` uploads later), one project per run folder, a run per arm and
    # session; a run left open by a training that raised in this process is finished first
    return [WandBTracker(study_run, dir=str(folder), mode="offline", name=arm, group=study_run,
                         reinit="finish_previous")]


def _hyperparameters(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """``recipe`` with every value a tracker can store as a hyperparameter: lists, dicts and None as JSON text."""
    return {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v) for k, v in recipe.items()}


class TrainingCurves:
    """The started trackers of one arm's training (none on a process other than the main one, or with
    ``REPORT_TO="none"``): :meth:`log_steps` for the checked losses, :meth:`log_preview` for the grids."""

    def __init__(self, accelerator, io_seconds: Callable[[], float]):
        self.accelerator, self.io_seconds = accelerator, io_seconds
        self.clock, self.io_at_clock = time.perf_counter(), io_seconds()

    def log_steps(self, rows: list[tuple[int, float, float]]) -> None:
        """Log ``(step, loss, lr)`` rows with ``step_seconds``: the mean wall time of the steps since the last
        call, checkpoints and previews excluded (on a GPU the losses are read in batches, and so timed)."""
        now, io = time.perf_counter(), self.io_seconds()
        seconds = (now - self.clock - (io - self.io_at_clock)) / max(1, len(rows))
        self.clock, self.io_at_clock = now, io
        if not self.accelerator.trackers:
            return
        for step, loss, lr in rows:
            self.accelerator.log({"loss": loss, "lr": lr, "step_seconds": seconds}, step=step)

    def log_preview(self, step: int, png: Path) -> None:
        """Log the preview grid ``png`` of ``step``: an image where the tracker keeps images, else the file."""
        for tracker in self.accelerator.trackers:
            if isinstance(tracker, TensorBoardTracker):
                tracker.log_images({"preview": np.asarray(Image.open(png).convert("RGB"))[None]}, step=step,
                                   dataformats="NHWC")
            elif isinstance(tracker, WandBTracker):
                tracker.log_images({"preview": [Image.open(png).convert("RGB")]}, step=step)
            elif isinstance(tracker, MLflowTracker):
                tracker.log_artifact(str(png), artifact_path="previews")


def start(accelerator, recipe: Mapping[str, Any], step: int, io_seconds: Callable[[], float],
          loss_log: LossLog) -> TrainingCurves:
    """Start the accelerator's trackers (main process only) at ``step`` with ``recipe`` as hyperparameters (the keys
    a resume checks, equal in every session of the run), and hand them every loss ``loss_log`` checks; returns
    their :class:`TrainingCurves`. ``io_seconds`` gives the training's checkpoint and preview time so far."""
    for tracker in accelerator.log_with:
        if isinstance(tracker, _FileStoreMLflow):
            tracker.continues = step > 0  # a resumed arm logs into the MLflow run it started
    if accelerator.log_with:
        accelerator.init_trackers("improve", config=_hyperparameters(recipe))  # the trackers are named already
    curves = TrainingCurves(accelerator, io_seconds)
    loss_log.on_checked = curves.log_steps
    return curves

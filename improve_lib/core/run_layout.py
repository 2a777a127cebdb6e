"""The run folder's layout: every path of a run, named once.

A run folder (``runs/<run_id>/``, or a sweep's grid point) holds what each notebook writes, in the
folder that notebook owns. Every module and notebook asks this module for a path instead of spelling
it, so the layout can be read (and changed) in one place::

    data/split.csv                 01: the split table (data/synthetic_cells/ for the embedded data)
    embeddings/{train,test}.npz    02
    prototypes/                    03: prototypes.safetensors, class_embeddings.safetensors, metrics.json
    models/<arm>/                  04: config.yaml, checkpoint-<step>/, loss.csv, samples/, final/
    trackers/<tracker>/            04: the training curves for TensorBoard, MLflow or W&B (REPORT_TO), offline
    samples/<arm>/<class>/         05: the generated PNGs; samples/<arm>/sampling.json
    metrics/metrics.json           06 (fidelity/: resized real images, like for like)
    tables/  figures/  review/     every notebook's tables and figures; 07's expert review
    notebooks/                     the executed notebooks
"""
from __future__ import annotations

import fnmatch
import os
import re
from pathlib import Path

DATA, EMBEDDINGS, PROTOTYPES, MODELS, SAMPLES = "data", "embeddings", "prototypes", "models", "samples"
TABLES, METRICS, FIDELITY, REVIEW, FIGURES, NOTEBOOKS = "tables", "metrics", "fidelity", "review", "figures", "notebooks"
TRACKERS = "trackers"
#: Every folder the pipeline writes into a run (the manifest hashes what they hold).
RUN_FOLDERS = (DATA, EMBEDDINGS, PROTOTYPES, MODELS, TRACKERS, SAMPLES, TABLES, METRICS, FIDELITY, REVIEW, FIGURES,
               NOTEBOOKS)
#: The folders a notebook owns: a rerun of that notebook clears them first (tables and figures are shared).
OWNED_FOLDERS = {"01": (DATA,), "02": (EMBEDDINGS,), "03": (PROTOTYPES,), "04": (MODELS, TRACKERS), "05": (SAMPLES,),
                 "06": (METRICS, FIDELITY)}
#: Files the pipeline writes that a killed notebook can leave before the manifest records them (checkpoints
#: of an interrupted training, a half-sampled arm, a table or figure): :func:`is_tool_file`. Anything else a
#: manifest has not recorded (a user's notes, an expert's ``review/<reviewer>.csv``) is not the tool's.
TOOL_FILES = (f"{DATA}/*", f"{EMBEDDINGS}/*", f"{PROTOTYPES}/*", f"{MODELS}/*", f"{TRACKERS}/*", f"{SAMPLES}/*",
              f"{METRICS}/*", f"{FIDELITY}/*", f"{TABLES}/*.csv", f"{TABLES}/*.md", f"{TABLES}/*.json", f"{FIGURES}/*.png",
              f"{NOTEBOOKS}/*.ipynb", f"{REVIEW}/tasks.csv", f"{REVIEW}/blinding.json", f"{REVIEW}/criteria.json",
              f"{REVIEW}/reviewers.json", f"{REVIEW}/label_studio/*")
#: ``data/split.csv`` relative to the run folder.
SPLIT_CSV = Path(DATA) / "split.csv"
FINAL = "final"  # a trained arm's diffusers pipeline folder


def natural_key(name: str) -> list:
    """Sort key that compares the numbers in a name as numbers: ``seed9`` before ``seed10``, ``9.png`` before
    ``10.png`` (sweeps name runs ``seed<N>``, notebook 05 names samples ``<N>.png``)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(name))]


def relative_to_run(path, run_dir) -> str:
    """``path`` as run folders store it: relative to ``run_dir`` (POSIX) when it lies inside, so a run folder
    can be moved and identical runs in two folders write identical files; a path elsewhere (a dataset's
    image) stays absolute."""
    p = Path(path)
    for base, target in ((os.path.abspath(run_dir), os.path.abspath(p)),
                         (os.path.realpath(run_dir), os.path.realpath(p))):
        try:
            return Path(target).relative_to(base).as_posix()
        except ValueError:
            continue
    return str(p)


def resolve_in_run(path, run_dir) -> Path:
    """A path as a run folder stores it (:func:`relative_to_run`), made absolute again inside ``run_dir``."""
    p = Path(path)
    return p if p.is_absolute() else Path(os.path.abspath(run_dir)) / p


def relative_paths(paths, run_dir) -> list[str]:
    """:func:`relative_to_run` of each of ``paths``: the column of paths a run folder's table stores."""
    return [relative_to_run(p, run_dir) for p in paths]


def resolved_paths(paths, run_dir) -> list[Path]:
    """:func:`resolve_in_run` of each of ``paths``: a stored column of paths made absolute again."""
    return [resolve_in_run(p, run_dir) for p in paths]


def is_tool_file(rel: str) -> bool:
    """Whether ``rel`` (a path relative to a run folder) is a file the pipeline writes (:data:`TOOL_FILES`)."""
    return any(fnmatch.fnmatchcase(rel, pattern) for pattern in TOOL_FILES)


def split_csv(run_dir) -> Path:
    """``RUN_DIR/data/split.csv``: the one table of every image of the run (notebook 01)."""
    return Path(run_dir) / SPLIT_CSV


def data_dir(run_dir) -> Path:
    """``RUN_DIR/data``: the split and, for generated datasets, their images (notebook 01)."""
    return Path(run_dir) / DATA


def embeddings_file(run_dir, split: str) -> Path:
    """``RUN_DIR/embeddings/<split>.npz`` (notebook 02; ``split`` is ``train`` or ``test``)."""
    return Path(run_dir) / EMBEDDINGS / f"{split}.npz"


def prototypes_dir(run_dir) -> Path:
    """``RUN_DIR/prototypes``: the folder notebook 03 writes and notebooks 04 and 06 read."""
    return Path(run_dir) / PROTOTYPES


def arm_dir(run_dir, arm_name: str) -> Path:
    """``RUN_DIR/models/<arm_name>``: where a training run writes everything (notebook 04)."""
    return Path(run_dir) / MODELS / arm_name


def final_dir(run_dir, arm_name: str) -> Path:
    """``RUN_DIR/models/<arm_name>/final``: the trained arm's diffusers pipeline folder."""
    return arm_dir(run_dir, arm_name) / FINAL


def trackers_dir(run_dir, tracker: str) -> Path:
    """``RUN_DIR/trackers/<tracker>``: the training curves of every arm for ``tracker`` (notebook 04's REPORT_TO)."""
    return Path(run_dir) / TRACKERS / tracker


def preview_png(arm_folder, step: int) -> Path:
    """``models/<arm>/samples/step-<step>.png``: a training run's fixed-seed preview grid."""
    return Path(arm_folder) / SAMPLES / f"step-{step}.png"


def preview_pngs(arm_folder) -> list[Path]:
    """A training run's preview grids, ``models/<arm>/samples/step-<n>.png``, in step order."""
    return sorted((Path(arm_folder) / SAMPLES).glob("step-*.png"), key=lambda p: int(p.stem.removeprefix("step-")))


def samples_dir(run_dir, arm: str | None = None) -> Path:
    """``RUN_DIR/samples`` or, with ``arm``, ``RUN_DIR/samples/<arm>`` (notebook 05)."""
    out = Path(run_dir) / SAMPLES
    return out / arm if arm is not None else out


def tables_dir(run_dir) -> Path:
    """``RUN_DIR/tables``: every notebook's tables (CSV and Markdown)."""
    return Path(run_dir) / TABLES


def figures_dir(run_dir) -> Path:
    """``RUN_DIR/figures``: every notebook's figures (PNG)."""
    return Path(run_dir) / FIGURES


def metrics_file(run_dir) -> Path:
    """``RUN_DIR/metrics/metrics.json``: notebook 06's numbers."""
    return Path(run_dir) / METRICS / "metrics.json"


def fidelity_dir(run_dir) -> Path:
    """``RUN_DIR/fidelity``: the real images resized like the samples, for like-for-like fidelity (06)."""
    return Path(run_dir) / FIDELITY


def review_dir(run_dir) -> Path:
    """``RUN_DIR/review``: the blinded review tasks and the reviewers' judgments (notebook 07)."""
    return Path(run_dir) / REVIEW


def notebooks_dir(run_dir) -> Path:
    """``RUN_DIR/notebooks``: the executed notebooks."""
    return Path(run_dir) / NOTEBOOKS

"""The data layer: every dataset becomes the same split table.

``build_split`` returns a table with columns ``path, label, class_name, split, group`` (plus
dataset extras), a per-class summary of what was available and taken, and the classes that were
excluded. ``load_image`` turns a path into an RGB tensor at the run's resolution (center crop).

Datasets (``DATASET``): ``synthetic`` (embedded default, generated into the run folder),
``ham10000``, ``bone_marrow``, ``dermamnist`` and ``bloodmnist`` (MedMNIST npz files).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from improve_lib.core import run_layout
from improve_lib.core.errors import StudyInputError
from improve_lib.core.files import atomic_path, spreadsheet_safe_frame
from improve_lib.data import bone_marrow, ham10000, medmnist, synthetic_cells
from improve_lib.data.external import ExternalTest, external_test
from improve_lib.data.images import (ImageTableDataset, center_crop_resize, load_image, load_images, open_rgb,
                                     verify_images)
from improve_lib.data.split import SPLIT_COLUMNS, finalise, per_class_group_split

DATASETS = ("synthetic", "ham10000", "bone_marrow", "dermamnist", "bloodmnist")

__all__ = [
    "DATASETS", "SplitResult", "build_split", "check_source", "check_validation", "write_split", "read_split",
    "class_names_of", "load_image", "load_images", "open_rgb", "center_crop_resize", "verify_images",
    "ImageTableDataset", "SPLIT_COLUMNS", "split_paths", "split_sha256", "training_images", "synthetic_cells",
    "ExternalTest", "external_test", "split_seed",
]


@dataclass
class SplitResult:
    """What :func:`build_split` returns: the split table and how it came about."""

    dataset: str
    table: pd.DataFrame
    class_names: list[str]
    summary: pd.DataFrame
    excluded: pd.DataFrame = field(default_factory=pd.DataFrame)
    input_files: list[Path] = field(default_factory=list)


def check_source(dataset: str, data_dir: str | Path | None) -> Path | None:
    """Validate ``DATASET`` and ``DATA_DIR`` before anything is written; return the resolved dir."""
    if dataset not in DATASETS:
        raise StudyInputError(f"unknown DATASET {dataset!r}; expected one of {list(DATASETS)}")
    if dataset == "synthetic":
        return None
    if data_dir in (None, ""):
        raise StudyInputError(f"DATASET={dataset} needs DATA_DIR (the folder that holds the dataset); see data/README.md")
    path = Path(data_dir).expanduser().resolve()
    if not path.is_dir():
        raise StudyInputError(f"DATA_DIR {path} does not exist or is not a folder (DATASET={dataset})")
    return path


def check_unique_images(pool: pd.DataFrame, dataset: str) -> None:
    """Every image file listed once: the same file (a path, or two paths to one file through a link)
    under two classes, or twice under one, would put one image on both sides of the split or teach it as
    two classes. Raises naming the file and its classes."""
    real = pool["path"].map(lambda p: os.path.realpath(p))
    repeated = real[real.duplicated(keep=False)]
    if len(repeated):
        first = repeated.iloc[0]
        rows = pool[real == first]
        raise StudyInputError(f"{dataset}: image {first} is listed {len(rows)} times, under class(es) "
                              f"{sorted(set(rows['class_name']))} (as {sorted(map(str, rows['path']))}); each image "
                              f"must belong to one class once")


def check_validation(n_train: int, n_validation: int) -> None:
    """``N_VALIDATION`` is carved from the ``N_TRAIN`` training images per class, so it must leave some."""
    if not 0 <= n_validation < n_train:
        raise StudyInputError(f"N_VALIDATION must be >= 0 and below N_TRAIN: it is carved from the training images "
                              f"(got N_VALIDATION={n_validation}, N_TRAIN={n_train})")


def build_split(dataset: str, data_dir: str | Path | None, run_dir: str | Path, n_train: int, n_test: int,
                seed: int, classes: list[str] | None, min_per_class: int, resolution: int,
                verify: bool = True, progress: bool = True, n_validation: int = 0) -> SplitResult:
    """Build the run's train/test split for ``dataset``.

    Per class, ``n_test`` test and ``n_train`` train images are drawn with ``seed`` (groups such as
    HAM10000 lesions never straddle the two sides); ``n_validation`` of the ``n_train`` become the
    validation side, where recipes are chosen (:func:`~improve_lib.data.split.per_class_group_split`). A class with fewer images gives what it has and
    is flagged ``short`` in the summary. ``verify`` opens every selected image completely so that a
    truncated file fails here, naming itself. Only the synthetic and MedMNIST datasets write files
    (generated or exported images under ``run_dir/data/``); nothing is written for the others.
    """
    if n_train < 1 or n_test < 0:
        raise StudyInputError(f"N_TRAIN must be >= 1 and N_TEST >= 0 (got N_TRAIN={n_train}, N_TEST={n_test})")
    check_validation(n_train, n_validation)
    if classes is not None and len(set(classes)) != len(classes):
        raise StudyInputError(f"CLASSES has duplicates: {classes}")
    src = check_source(dataset, data_dir)
    run_dir = Path(run_dir)
    excluded = pd.DataFrame(columns=["class_name", "images", "kept", "reason"])
    inputs: list[Path] = []
    if dataset == "synthetic":
        class_names = list(classes) if classes else list(synthetic_cells.CLASSES)
        unknown = sorted(set(class_names) - set(synthetic_cells.CLASSES))
        if unknown:
            raise StudyInputError(f"synthetic: unknown class(es) {unknown} in CLASSES; valid: {list(synthetic_cells.CLASSES)}")
        generated = synthetic_cells.generate(run_layout.data_dir(run_dir) / "synthetic_cells", n_per_class=n_train + n_test,
                                             seed=seed, resolution=resolution, classes=class_names, progress=progress)
        pool = generated.assign(group=generated["path"].map(lambda p: Path(p).stem))
        selected, summary = per_class_group_split(pool, n_train, n_test, seed, n_validation)
        verify = False  # freshly generated by us
    elif dataset == "ham10000":
        pool, class_names = ham10000.read_pool(src, classes)
        check_unique_images(pool, dataset)
        inputs.append(src / ham10000.METADATA)
        selected, summary = per_class_group_split(pool, n_train, n_test, seed, n_validation)
    elif dataset == "bone_marrow":
        pool, class_names, excluded = bone_marrow.read_pool(src, classes, min_per_class)
        check_unique_images(pool, dataset)
        selected, summary = per_class_group_split(pool, n_train, n_test, seed, n_validation)
    else:
        pool, class_names, npz = medmnist.read_pool(src, dataset, classes)
        inputs.append(medmnist.find_npz(src, dataset))
        tr, s_tr = per_class_group_split(pool[pool.source_split == "train"], n_train, 0, seed, n_validation)
        te, s_te = per_class_group_split(pool[pool.source_split == "test"], 0, n_test, seed)
        selected = medmnist.export_selected(pd.concat([tr, te], ignore_index=True), npz,
                                            run_layout.data_dir(run_dir) / dataset)
        summary = s_tr.drop(columns=["test"]).merge(s_te[["class_name", "test"]], on="class_name")
        summary["short"] = (summary["train"] < n_train - n_validation) | (summary["test"] < n_test)
        verify = False
    missing = sorted(set(class_names) - set(selected["class_name"]))
    if missing:
        raise StudyInputError(f"{dataset}: no images found for class(es) {missing} in {src}")
    no_train = summary.loc[summary["train"] < 1, ["class_name", "images", "test"]]
    if len(no_train):
        held = f" and N_VALIDATION={n_validation} validation" if n_validation else ""
        raise StudyInputError(f"{dataset}: class(es) {list(no_train['class_name'])} have no training image left after "
                              f"N_TEST={n_test} test{held} images ({no_train.to_dict('records')}); lower N_TEST"
                              f"{' or N_VALIDATION' if n_validation else ''} or leave the class out with CLASSES")
    table = finalise(selected, class_names)
    if verify:
        verify_images(table["path"])
    if dataset in ("ham10000", "bone_marrow"):
        inputs += [Path(p) for p in table["path"]]
    return SplitResult(dataset, table, class_names, summary, excluded, inputs)


def write_split(result: SplitResult, run_dir: str | Path) -> Path:
    """Write ``data/split.csv`` (and the per-class summary / exclusions beside it) atomically."""
    data_dir = run_layout.data_dir(run_dir)
    out = run_layout.split_csv(run_dir)
    # The dataset's own metadata (lesion ids as groups, extra columns) may hold formula-like text: escaped for
    # spreadsheets; the columns the study reads back by value (paths, labels, class names) stay as they are.
    with atomic_path(out) as tmp:
        table = result.table.assign(path=run_layout.relative_paths(result.table["path"], run_dir))
        spreadsheet_safe_frame(table, keep=("path", "label", "class_name", "split")).to_csv(tmp, index=False)
    with atomic_path(data_dir / "split_summary.csv") as tmp:
        result.summary.to_csv(tmp, index=False)
    if len(result.excluded):
        with atomic_path(data_dir / "classes.csv") as tmp:
            result.excluded.to_csv(tmp, index=False)
    return out


def read_split(run_dir: str | Path) -> pd.DataFrame:
    """Read ``RUN_DIR/data/split.csv``; a missing file or column is an error saying what to run."""
    path = run_layout.split_csv(run_dir)
    if not path.is_file():
        raise StudyInputError(f"{path} not found: run notebook 01_explore_data for this RUN_DIR first")
    table = pd.read_csv(path, dtype={"group": str})
    missing = [c for c in SPLIT_COLUMNS if c not in table.columns]
    if missing:
        raise StudyInputError(f"{path} lacks column(s) {missing}; expected {SPLIT_COLUMNS}")
    # stored relative to the run folder where the images lie inside it (generated data): absolute in memory
    return table.assign(path=[str(p) for p in run_layout.resolved_paths(table["path"], run_dir)])


def split_seed(seed: int, split_seed: int | None) -> int:
    """The seed that draws the train/test split: ``SPLIT_SEED`` when given, else the run's ``SEED``."""
    return seed if split_seed is None else split_seed


def class_names_of(table: pd.DataFrame) -> list[str]:
    """Class names in label order, checked to be one name per label 0..C-1."""
    pairs = table[["label", "class_name"]].drop_duplicates().sort_values("label")
    if list(pairs["label"]) != list(range(len(pairs))) or pairs["class_name"].duplicated().any():
        raise StudyInputError(f"split table (data/split.csv): labels and class names must map one-to-one onto "
                              f"0..C-1, found {pairs.values.tolist()}")
    return list(pairs["class_name"])


def split_paths(run_dir: str | Path, rows: pd.DataFrame) -> list[Path]:
    """The image files of split rows: absolute paths as they are, relative ones inside ``run_dir`` (the
    synthetic and MedMNIST images live in the run; :func:`read_split` already returns them absolute)."""
    return run_layout.resolved_paths(rows["path"], run_dir)


def split_sha256(table: pd.DataFrame) -> str:
    """sha256 of a split's rows (file name, class, side), wherever the dataset lies: the record of which
    images a measurement (``tools/``) used, without copying any."""
    rows = table[["path", "class_name", "split"]]
    return hashlib.sha256(rows.assign(path=[Path(q).name for q in rows["path"]]).to_csv(index=False).encode()).hexdigest()


def training_images(run_dir: str | Path, resolution: int) -> tuple[torch.Tensor, torch.Tensor, list[str], str]:
    """All training images of a run as one uint8 tensor ``[N, 3, R, R]`` (the datasets are small: 1600
    images at 64 px are 20 MB), their labels, the class names and a sha256 of the training rows."""
    run_dir = Path(run_dir)
    table = read_split(run_dir)
    class_names = class_names_of(table)
    train_rows = table[table["split"] == "train"]
    if train_rows.empty:
        raise StudyInputError(f"{run_layout.split_csv(run_dir)} has no rows with split == 'train'")
    missing = sorted(set(class_names) - set(train_rows["class_name"]))
    if missing:
        raise StudyInputError(f"{run_layout.split_csv(run_dir)}: class(es) {missing} have no training images")
    images, labels, digest = [], [], hashlib.sha256()
    for path, p, label in zip(train_rows["path"], split_paths(run_dir, train_rows), train_rows["label"]):
        images.append(load_image(p, resolution).mul(255).round().to(torch.uint8))
        labels.append(int(label))
        digest.update(f"{run_layout.relative_to_run(path, run_dir)},{label}\n".encode())  # the same in any folder
    return torch.stack(images), torch.tensor(labels, dtype=torch.long), class_names, digest.hexdigest()

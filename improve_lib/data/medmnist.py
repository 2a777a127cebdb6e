"""MedMNIST ``.npz`` files (DermaMNIST, BloodMNIST; any size variant such as ``dermamnist_64.npz``).

The arrays are exported once to PNG files inside the run folder so that every later stage works on
image paths (and the embedding cache can key on file hashes) exactly as for the other datasets.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from improve_lib.core.errors import StudyInputError
from improve_lib.core.files import atomic_path

CLASSES = {
    "dermamnist": ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"),
    "bloodmnist": ("basophil", "eosinophil", "erythroblast", "immature_granulocyte", "lymphocyte",
                   "monocyte", "neutrophil", "platelet"),
}
KEYS = ("train_images", "train_labels", "test_images", "test_labels")


def find_npz(data_dir: Path, flavour: str) -> Path:
    """The first ``<flavour>*.npz`` in ``data_dir`` (sorted), or an error naming what was looked for."""
    hits = sorted(data_dir.glob(f"{flavour}*.npz"))
    if not hits:
        raise StudyInputError(f"MedMNIST: no {flavour}*.npz in {data_dir}")
    return hits[0]


def read_pool(data_dir: Path, flavour: str, classes: list[str] | None) -> tuple[pd.DataFrame, list[str], np.lib.npyio.NpzFile]:
    """Return the pool (one row per npz image: class_name, group, source_split, npz_index), the
    class list and the open npz. MedMNIST's own test images stay test images."""
    path = find_npz(data_dir, flavour)
    try:
        npz = np.load(path)
    except Exception as exc:  # noqa: BLE001 - any numpy failure means a bad file
        raise StudyInputError(f"MedMNIST: {path} is not a readable npz ({exc})") from None
    missing = [k for k in KEYS if k not in npz.files]
    if missing:
        raise StudyInputError(f"MedMNIST: {path} lacks key(s) {missing}; expected {list(KEYS)}")
    names = CLASSES[flavour]
    class_names = list(classes) if classes else list(names)
    unknown = sorted(set(class_names) - set(names))
    if unknown:
        raise StudyInputError(f"MedMNIST {flavour}: unknown class(es) {unknown}; valid: {list(names)}")
    frames = []
    for split in ("train", "test"):
        labels = npz[f"{split}_labels"].reshape(-1).astype(int)
        if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
            raise StudyInputError(f"MedMNIST: {path} key {split}_labels has labels outside 0..{len(names) - 1}")
        frames.append(pd.DataFrame({
            "class_name": [names[i] for i in labels], "group": [f"{split}-{i}" for i in range(len(labels))],
            "source_split": split, "npz_index": np.arange(len(labels)),
        }))
    pool = pd.concat(frames, ignore_index=True)
    pool = pool[pool["class_name"].isin(class_names)].reset_index(drop=True)
    pool["path"] = ""
    return pool, class_names, npz


def export_selected(selected: pd.DataFrame, npz, export_dir: Path) -> pd.DataFrame:
    """Write the selected npz images as PNGs under ``export_dir/<class>/`` and fill ``path``."""
    paths = []
    for row in selected.itertuples():
        out = export_dir / row.class_name / f"{row.source_split}_{row.npz_index:06d}.png"
        if not out.exists():
            img = npz[f"{row.source_split}_images"][row.npz_index]
            arr = img if img.ndim == 3 else np.repeat(img[..., None], 3, axis=2)
            out.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(out) as tmp:
                Image.fromarray(arr.astype(np.uint8)).save(tmp, format="PNG")
        paths.append(str(out))
    return selected.assign(path=paths)

"""HAM10000 dermatoscopy (Tschandl et al. 2018, doi:10.7910/DVN/DBW86T).

Reads ``HAM10000_metadata.csv`` and finds each ``image_id`` in any of the folders users have after
downloading: ``images/``, ``HAM10000_images_part_1/``, ``HAM10000_images_part_2/``,
``images_600x450/`` (first match wins in that order). The group of an image is its ``lesion_id``:
HAM10000 holds several photographs of one lesion, and splitting by image would leak test lesions
into training.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

from improve_lib.core.errors import StudyInputError

CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
CLASS_DESCRIPTIONS = {
    "akiec": "actinic keratosis / intraepithelial carcinoma",
    "bcc": "basal cell carcinoma",
    "bkl": "benign keratosis-like lesion",
    "df": "dermatofibroma",
    "mel": "melanoma",
    "nv": "melanocytic nevus",
    "vasc": "vascular lesion",
}
IMAGE_FOLDERS = ("images", "HAM10000_images_part_1", "HAM10000_images_part_2", "images_600x450")
METADATA = "HAM10000_metadata.csv"
REQUIRED_COLUMNS = ("lesion_id", "image_id", "dx")


def read_pool(data_dir: Path, classes: list[str] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Return all usable images as a table (path, class_name, group, image_id) and the class list."""
    meta_path = data_dir / METADATA
    if not meta_path.is_file():
        raise StudyInputError(f"HAM10000: {meta_path} not found; expected the dataset's metadata CSV in DATA_DIR")
    meta = pd.read_csv(meta_path, dtype=str)
    missing = [c for c in REQUIRED_COLUMNS if c not in meta.columns]
    if missing:
        raise StudyInputError(
            f"HAM10000: {meta_path} lacks column(s) {missing}; expected columns {list(REQUIRED_COLUMNS)}"
        )
    class_names = list(classes) if classes else sorted(meta["dx"].dropna().unique())
    unknown = sorted(set(class_names) - set(CLASSES))
    if unknown:
        where = "CLASSES" if classes else f"the dx column of {meta_path}"
        raise StudyInputError(f"HAM10000: unknown class(es) {unknown} in {where}; valid: {list(CLASSES)}")
    folders = [data_dir / f for f in IMAGE_FOLDERS if (data_dir / f).is_dir()]
    if not folders:
        raise StudyInputError(
            f"HAM10000: no image folder in {data_dir}; expected one of {list(IMAGE_FOLDERS)}"
        )
    found: dict[str, Path] = {}
    for folder in reversed(folders):  # earlier folders in IMAGE_FOLDERS win
        for p in folder.glob("*.jpg"):
            found[p.stem] = p
    meta = meta[meta["dx"].isin(class_names)]
    blank = meta[meta["lesion_id"].isna() | (meta["lesion_id"].str.strip() == "")]
    if len(blank):  # a lesion's images must stay on one side of the split: an unknown lesion cannot
        raise StudyInputError(f"HAM10000: {len(blank)} row(s) of {meta_path} have no lesion_id (e.g. image_id "
                              f"{list(blank['image_id'][:3])}); fill it in or remove those rows")
    meta = meta.assign(path=meta["image_id"].map(lambda i: str(found[i]) if i in found else None))
    missing = int(meta["path"].isna().sum())
    if missing:
        warnings.warn(f"HAM10000: {missing} of {len(meta)} images in {meta_path.name} were not found in "
                      f"{[str(f) for f in folders]}; they are left out", stacklevel=2)
    meta = meta.dropna(subset=["path"])
    pool = pd.DataFrame({
        "path": meta["path"], "class_name": meta["dx"], "group": meta["lesion_id"],
        "image_id": meta["image_id"],
    }).reset_index(drop=True)
    return pool, class_names

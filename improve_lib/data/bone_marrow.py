"""Bone Marrow cytomorphology (Matek et al. 2021, TCIA doi:10.7937/TCIA.AXH3-T579).

Layout ``CLASS/CLASS_NNNNN.jpg`` with any folder depth below the class folder (the TCIA archive
nests images in numbered sub-folders). Each image is its own group: the dataset has one image per
cell.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from improve_lib.core.errors import StudyInputError

# The 21 classes of the Matek 2021 dataset, and the 16 that the paper's Table 1 uses.
ALL_CLASSES = ("ABE", "ART", "BAS", "BLA", "EBO", "EOS", "FGC", "HAC", "KSC", "LYI", "LYT", "MMZ",
               "MON", "MYB", "NGB", "NGS", "NIF", "OTH", "PEB", "PLM", "PMO")
PAPER_CLASSES = ("ART", "BAS", "BLA", "EBO", "EOS", "HAC", "LYT", "MMZ", "MON", "MYB", "NGB", "NGS",
                 "NIF", "PEB", "PLM", "PMO")
CLASS_DESCRIPTIONS = {
    "ABE": "abnormal eosinophil", "ART": "artefact", "BAS": "basophil", "BLA": "blast",
    "EBO": "erythroblast", "EOS": "eosinophil", "FGC": "faggot cell", "HAC": "hairy cell",
    "KSC": "smudge cell", "LYI": "immature lymphocyte", "LYT": "lymphocyte", "MMZ": "metamyelocyte",
    "MON": "monocyte", "MYB": "myelocyte", "NGB": "band neutrophil", "NGS": "segmented neutrophil",
    "NIF": "not identifiable", "OTH": "other cell", "PEB": "proerythroblast", "PLM": "plasma cell",
    "PMO": "promyelocyte",
}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


def read_pool(data_dir: Path, classes: list[str] | None, min_per_class: int) -> tuple[pd.DataFrame, list[str], pd.DataFrame]:
    """Return (pool of usable images, kept classes, table of every requested class and its fate).

    Classes with fewer than ``min_per_class`` images are excluded and listed in the returned table,
    never dropped silently; no usable class at all is an error.
    """
    requested = list(classes) if classes else list(PAPER_CLASSES)
    unknown = [c for c in requested if c not in ALL_CLASSES and not (data_dir / c).is_dir()]
    if unknown:
        raise StudyInputError(
            f"Bone Marrow: unknown class(es) {unknown} in CLASSES: no such folder in {data_dir} and not one "
            f"of the Matek 2021 classes {list(ALL_CLASSES)}"
        )
    rows, fates = [], []
    for c in requested:
        files = sorted(p for p in (data_dir / c).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if (data_dir / c).is_dir() else []
        keep = len(files) >= min_per_class
        fates.append({"class_name": c, "images": len(files), "kept": keep,
                      "reason": "" if keep else f"fewer than MIN_PER_CLASS={min_per_class}"})
        if keep:
            rows += [{"path": str(p), "class_name": c, "group": p.stem} for p in files]
    fate_table = pd.DataFrame(fates)
    kept = [f["class_name"] for f in fates if f["kept"]]
    if not kept:
        raise StudyInputError(
            f"Bone Marrow: no class in {data_dir} has at least MIN_PER_CLASS={min_per_class} images "
            f"(counts: {dict(zip(fate_table.class_name, fate_table.images))})"
        )
    return pd.DataFrame(rows), kept, fate_table

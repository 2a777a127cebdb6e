"""An external test set: real images from another source, to check that a verdict travels (notebook 06).

``EXTERNAL_TEST_DIR`` is a folder in the dataset's own layout (HAM10000: ``HAM10000_metadata.csv`` and an image
folder; Bone Marrow: one folder per class), read by the dataset's own reader. Every image is scored by every
classifier of the run beside the run's test split. Before any scoring, what would make it no test is refused:
an image whose bytes (sha256) are also an image of the run's split, or, for HAM10000, a lesion (``lesion_id``)
that the split holds. Classes of the run that the folder lacks are named (macro scores then run over the
classes present); classes the run does not have are left out and named.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from improve_lib.core.errors import StudyInputError
from improve_lib.core.files import sha256_file
from improve_lib.data import bone_marrow, ham10000
from improve_lib.data.images import verify_images

SUPPORTED = ("ham10000", "bone_marrow")


@dataclass
class ExternalTest:
    """The external images (``path``, ``label``, ``class_name``, ``group``) and what was left out."""

    table: pd.DataFrame
    missing_classes: list[str]  # classes of the run with no external image
    left_out: dict[str, int] = field(default_factory=dict)  # external class -> images, not a class of the run
    input_files: list[Path] = field(default_factory=list)


def read_folder(dataset: str, folder: Path) -> tuple[pd.DataFrame, list[Path]]:
    """Every image of ``folder`` in ``dataset``'s own layout, read by the dataset's reader (``path``,
    ``class_name``, ``group``: HAM10000's lesion_id, Bone Marrow's image), and the metadata files read."""
    if dataset == "ham10000":
        pool, _ = ham10000.read_pool(folder, None)
        return pool, [folder / ham10000.METADATA]
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise StudyInputError(f"Bone Marrow: {folder} has no class folder (the layout: one folder per class)")
    pool, _, _ = bone_marrow.read_pool(folder, classes, 1)
    return pool, []


def external_test(dataset: str, external_dir, split: pd.DataFrame, class_names: list[str],
                  verify: bool = True) -> ExternalTest:
    """Read ``external_dir`` for a run of ``dataset`` whose split table is ``split`` (as :func:`read_split` gives
    it) and whose classes are ``class_names``; raises naming the images or lesions it shares with the split."""
    if dataset not in SUPPORTED:
        raise StudyInputError(f"EXTERNAL_TEST_DIR is read for {list(SUPPORTED)}, not DATASET={dataset}")
    folder = Path(external_dir).expanduser().resolve()
    if not folder.is_dir():
        raise StudyInputError(f"EXTERNAL_TEST_DIR {folder} does not exist or is not a folder")
    pool, inputs = read_folder(dataset, folder)
    counts = pool["class_name"].value_counts()
    left_out = {str(c): int(n) for c, n in counts.items() if c not in class_names}
    pool = pool[pool["class_name"].isin(class_names)].reset_index(drop=True)
    if pool.empty:
        raise StudyInputError(f"EXTERNAL_TEST_DIR {folder}: no image of the run's classes {class_names} "
                              f"(it holds {sorted(counts.index)})")
    if dataset == "ham10000":
        shared = sorted(set(pool["group"]) & set(split["group"].astype(str)))
        if shared:
            raise StudyInputError(f"EXTERNAL_TEST_DIR {folder}: {len(shared)} lesion(s) are also in the run's split "
                                  f"(lesion_id {shared[:5]}); an external test holds other lesions only")
    run_hashes = {sha256_file(p): p for p in split["path"]}
    same = [(p, run_hashes[h]) for p in pool["path"] for h in [sha256_file(p)] if h in run_hashes]
    if same:
        raise StudyInputError(f"EXTERNAL_TEST_DIR {folder}: {len(same)} image(s) are byte for byte images of the run's "
                              f"split (e.g. {same[0][0]} = {same[0][1]}); an external test holds other images only")
    if verify:
        verify_images(pool["path"])
    table = pool.assign(label=pool["class_name"].map(class_names.index))[["path", "label", "class_name", "group"]]
    return ExternalTest(table.sort_values(["label", "path"]).reset_index(drop=True),
                        [c for c in class_names if c not in set(pool["class_name"])], left_out,
                        inputs + [Path(p) for p in table["path"]])

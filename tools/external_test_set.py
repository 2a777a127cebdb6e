"""Carve an external test set for notebook 06's ``EXTERNAL_TEST_DIR`` out of a larger copy of a dataset: images
of lesions (HAM10000) or cells (Bone Marrow) that the development data never holds, in the dataset's own layout.

    python tools/external_test_set.py --dataset ham10000 --source ~/data/HAM10000 \
        --exclude ../shared/data/ham10000 --per-class 50 --seed 0 --out ~/data/external-ham10000
    python tools/external_test_set.py --dataset bone_marrow --source ~/data/bone_marrow_cell_dataset \
        --exclude ../shared/data/bone_marrow --per-class 50 --seed 0 --out ~/data/external-bone_marrow

``--source``: the full dataset as downloaded (HAM10000: ``HAM10000_metadata.csv`` and its image folders; Bone
Marrow: one folder per class, any depth below it), read by the study's own readers. ``--exclude``: every data
folder whose images must stay out (the ``DATA_DIR`` the runs split; repeatable). Left out before drawing: an image
whose bytes (sha256) or file name are an excluded image's, and for HAM10000 every image of a lesion
(``lesion_id``) the excluded metadata names. Then, per class, ``--per-class`` images are drawn at random (seeded),
one per lesion for HAM10000; a class with fewer keeps what it has and the report says so.

Writes ``--out`` (refused when it exists): the images (copied, unchanged), HAM10000's metadata rows of the chosen
images, ``external_manifest.csv`` (class, file, source path, sha256) and ``SOURCE.md`` (the command, counts per
class, what was excluded). The same images of a different source are still the same source: a set carved this way
tests whether a verdict travels to other lesions or cells of one dataset, not to another hospital's images.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from improve_lib.core import folders  # noqa: E402
from improve_lib.core.errors import StudyInputError  # noqa: E402
from improve_lib.core.files import atomic_write_text, sha256_file  # noqa: E402
from improve_lib.data import external, ham10000  # noqa: E402

MANIFEST = "external_manifest.csv"


def read_all(dataset: str, folder: Path) -> pd.DataFrame:
    """Every image of ``folder`` with its class and group (HAM10000: lesion_id; Bone Marrow: the image), read as
    notebook 06 reads an ``EXTERNAL_TEST_DIR``."""
    if not folder.is_dir():
        raise StudyInputError(f"{folder} does not exist or is not a folder")
    return external.read_folder(dataset, folder)[0]


def candidates(dataset: str, source: pd.DataFrame, excluded: pd.DataFrame, progress: bool = True) -> pd.DataFrame:
    """``source``'s images with every excluded image (by sha256 or file name) and, for HAM10000, every excluded
    lesion left out; adds a ``sha256`` column."""
    hashes = {sha256_file(p) for p in tqdm(excluded["path"], desc="hashing excluded", disable=not progress)}
    names = {Path(p).name for p in excluded["path"]}
    out = source.assign(sha256=[sha256_file(p) for p in tqdm(source["path"], desc="hashing source",
                                                              disable=not progress)])
    keep = ~out["sha256"].isin(hashes) & ~out["path"].map(lambda p: Path(p).name).isin(names)
    if dataset == "ham10000":
        keep &= ~out["group"].astype(str).isin(set(excluded["group"].astype(str)))
    return out[keep].reset_index(drop=True)


def draw(pool: pd.DataFrame, per_class: int, seed: int) -> pd.DataFrame:
    """Per class, ``per_class`` groups drawn at random (``numpy.random.default_rng(seed)``), one image each (the
    group's image drawn at random too); a class with fewer groups keeps them all."""
    if per_class < 1:
        raise StudyInputError(f"--per-class must be at least 1; got {per_class}")
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in sorted(pool["class_name"].unique()):
        rows = pool[pool["class_name"] == cls].sort_values("path")
        groups = sorted(rows["group"].astype(str).unique())
        for g in sorted(rng.permutation(groups)[:per_class]):
            images = rows[rows["group"].astype(str) == g]
            chosen.append(images.iloc[int(rng.integers(len(images)))])
    return pd.DataFrame(chosen).reset_index(drop=True)


def write(dataset: str, chosen: pd.DataFrame, source_dir: Path, out: Path, command: str, report: pd.DataFrame) -> Path:
    """The chosen images in the dataset's layout under ``out`` (built beside it, then moved in)."""
    with folders.building(out, "tools/external_test_set.py") as tmp:
        rel = []
        for row in chosen.itertuples():
            dst = (Path("images") if dataset == "ham10000" else Path(row.class_name)) / Path(row.path).name
            (tmp / dst).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(row.path, tmp / dst)
            rel.append(str(dst))
        if dataset == "ham10000":
            meta = pd.read_csv(source_dir / ham10000.METADATA, dtype=str)
            meta[meta["image_id"].isin(set(chosen["image_id"]))].to_csv(tmp / ham10000.METADATA, index=False)
        pd.DataFrame({"class_name": chosen["class_name"], "group": chosen["group"], "file": rel,
                      "source_path": chosen["path"], "sha256": chosen["sha256"]}).to_csv(tmp / MANIFEST, index=False)
        atomic_write_text(tmp / "SOURCE.md", "\n".join([
            f"# An external test set for {dataset}", "", "Made by:", "", "```bash", command, "```", "",
            f"Images drawn from `{source_dir}` outside the excluded data folders (by sha256 and file name"
            + (", and every lesion their metadata names" if dataset == "ham10000" else "") + "); per class:", "",
            report.to_markdown(index=False), "",
            "Use it as notebook 06's `EXTERNAL_TEST_DIR`. It comes from the same dataset as the development data, so "
            "it tests whether a verdict travels to other lesions or cells, not to another site's images.", ""]))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", required=True, choices=external.SUPPORTED)
    ap.add_argument("--source", required=True, type=Path, help="the full dataset, in its own layout")
    ap.add_argument("--exclude", required=True, type=Path, action="append", help="a data folder to keep out (repeatable)")
    ap.add_argument("--per-class", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    try:
        if args.out.exists():
            raise StudyInputError(f"--out {args.out} exists; name a new folder")
        source = read_all(args.dataset, args.source.resolve())
        excluded = pd.concat([read_all(args.dataset, e.resolve()) for e in args.exclude], ignore_index=True)
        pool = candidates(args.dataset, source, excluded, progress=not args.no_progress)
        if pool.empty:
            raise StudyInputError(f"{args.source}: every image is also in the excluded folders; nothing is left to test on")
        chosen = draw(pool, args.per_class, args.seed)
        report = pd.DataFrame({"class": sorted(source["class_name"].unique())})
        report["in source"] = report["class"].map(source["class_name"].value_counts()).fillna(0).astype(int)
        report["left after exclusion"] = report["class"].map(pool["class_name"].value_counts()).fillna(0).astype(int)
        report["chosen"] = report["class"].map(chosen["class_name"].value_counts()).fillna(0).astype(int)
        command = "python tools/external_test_set.py " + " ".join(sys.argv[1:] if argv is None else argv)
        write(args.dataset, chosen, args.source.resolve(), args.out, command, report)
    except StudyInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.to_string(index=False))
    short = report[report["chosen"] < args.per_class]
    if len(short):
        print("fewer than --per-class:", ", ".join(f"{r['class']} ({r['chosen']})" for _, r in short.iterrows()))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

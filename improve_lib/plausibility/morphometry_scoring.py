"""The real datasets' instrument (HAM10000, Bone Marrow): morphometric features of the run's real training
images define each class's plausible region, its held-out real test images calibrate it, and only then are
the generated images judged against their class's region (classes whose region does not discriminate are
not scored). The features are :mod:`improve_lib.plausibility.morphometry`'s, the regions
:mod:`improve_lib.plausibility.plausible_regions`'."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image

from improve_lib import data
from improve_lib.core import run_layout
from improve_lib.core.errors import StudyInputError
from improve_lib.diffusion.sample import generated_files
from improve_lib.metrics import paper_tables
from improve_lib.plausibility import morphometry, plausible_regions


def morphometry_calibration(run_dir, dataset: str, resolution: int, coverage: float = 0.95, seed: int = 0,
                            progress: bool = False) -> dict:
    """Steps 1-2 of a real-data run's objective plausibility (HAM10000, Bone Marrow), before any
    generated image is looked at.

    1. The run's real **training** images (``data/split.csv``, at ``resolution`` as in training) define
       each class's plausible region by :mod:`improve_lib.plausibility.morphometry` (``coverage`` of them inside,
       out of fold).
    2. Its held-out real **test** images calibrate it: own-class and other-class pass rates and
       whether each region discriminates (:func:`~improve_lib.plausibility.plausible_regions.calibration_table`).

    Returns ``dataset``, ``resolution``, ``regions`` (:class:`~improve_lib.plausibility.plausible_regions.Regions`),
    ``calibration``, ``real_train`` (features, with a ``class_name`` column) and ``discriminates``
    (False when no class's region tells its real images from the others': then nothing may be scored).
    """
    run_dir = Path(run_dir)
    split = data.read_split(run_dir)
    train, test = split[split["split"] == "train"], split[split["split"] == "test"]
    if test.empty:
        raise StudyInputError(f"{run_layout.split_csv(run_dir)} has no test images: the morphometric regions cannot "
                              "be calibrated (N_TEST must be >= 1)")
    real_train = morphometry.measure_many(data.split_paths(run_dir, train), dataset, resolution=resolution,
                                          progress=progress)
    regions = plausible_regions.fit_regions(real_train, list(train["class_name"]), dataset, coverage=coverage, seed=seed)
    real_test = morphometry.measure_many(data.split_paths(run_dir, test), dataset, resolution=resolution,
                                         progress=progress)
    calibration = plausible_regions.calibration_table(regions, real_test, list(test["class_name"]))
    return {"dataset": dataset, "resolution": int(resolution), "regions": regions, "calibration": calibration,
            "real_train": real_train.assign(class_name=list(train["class_name"])),
            "discriminates": bool(calibration.drop(index="mean", errors="ignore")["discriminates"].any())}


def morphometry_score(run_dir, calibrated: dict, arms: Sequence[str], progress: bool = False) -> dict:
    """Step 3: generated images (``samples/<arm>/<class>/*.png``) judged against their intended class's
    region from :func:`morphometry_calibration`. Classes whose region does not discriminate (or that
    have none) are not scored: NaN in the table, with the reason; when no class discriminates, every
    row says so and the ``mean`` is NaN.

    Returns ``table`` (Tables 3/4 layout, with ``<arm> not found`` and ``reason``), ``checks`` (one row
    per image: arm, intended_class, path, ``scored`` (its class is scored), plausible, found, features)
    and ``distance`` (per arm, class and feature, Wasserstein distance to the real training images in
    units of their std).
    """
    run_dir = Path(run_dir)
    dataset, regions, real = calibrated["dataset"], calibrated["regions"], calibrated["real_train"]
    generated = generated_files(run_dir, arms)
    unknown = sorted(set(generated["intended_class"]) - set(real["class_name"]))
    if unknown:
        raise StudyInputError(f"objective plausibility: sample folders {unknown} under {run_layout.samples_dir(run_dir)} are not "
                              f"classes of this run's split ({sorted(set(real['class_name']))})")
    # The regions hold for images of the resolution they were fitted at (lengths and areas are fractions
    # of the side, but texture and thin structures are not): a sample of another size is an error.
    side = calibrated["resolution"]
    for path in generated["path"]:
        with Image.open(path) as im:
            if im.size != (side, side):
                raise StudyInputError(f"objective plausibility: {path} is {im.size[0]}x{im.size[1]} px but the "
                                      f"regions were fitted on {side}x{side} px real images (RESOLUTION={side})")
    feats = morphometry.measure_many(generated["path"], dataset, progress=progress).reset_index(drop=True)
    classes = list(generated["intended_class"])
    table = plausible_regions.region_plausibility_table(regions, feats, classes, list(generated["arm"]),
                                                 calibration=calibrated["calibration"])
    scored_classes = set(table.index[table["reason"] == ""]) - {"mean"}
    checks = pd.concat([generated.assign(path=generated["path"].astype(str),
                                         scored=generated["intended_class"].isin(scored_classes)).reset_index(drop=True),
                        pd.Series(regions.plausible(feats, classes), name="plausible"), feats], axis=1)
    real_feats = real.drop(columns="class_name")
    distance = pd.concat([
        plausible_regions.distribution_distance(real_feats, feats[(generated["arm"] == arm).to_numpy()],
                                          list(real["class_name"]),
                                          list(generated.loc[generated["arm"] == arm, "intended_class"]),
                                          dataset).assign(arm=arm)
        for arm in arms])
    return {"table": table, "checks": checks, "distance": distance}


def with_paper_plausibility(table: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """``table`` (Tables 3/4 layout) with the paper's expert percentages beside it, per class and for the
    mean, in columns named ``expert <arm> % (paper, Table N)``: a different instrument (one expert's
    judgment of the paper's GPU-scale images), shown for orientation, not as a target."""
    paper = paper_tables.plausibility(dataset)
    out = table.copy()
    if not paper:
        return out
    tag = paper["table"].split(" (")[0]
    for arm in ("baseline", "prototype"):
        col = f"expert {arm} % (paper, {tag})"
        out[col] = [paper[arm] if cls == "mean" else paper.get("per_class", {}).get(cls, {}).get(arm, np.nan)
                    for cls in out.index]
    return out

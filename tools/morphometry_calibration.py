"""Calibrate the real datasets' morphometric plausibility on real images alone: no model, no samples.

    python tools/morphometry_calibration.py --dataset bone_marrow --data-dir ../shared/data/bone_marrow \
        --resolution 32 64 --out results/morphometry

Per resolution, the study's own split (``data.build_split``: N_TRAIN train and N_TEST test images per
class, the run's seed, HAM10000 lesions never on both sides, Bone Marrow classes under MIN_PER_CLASS
excluded) is written to a scratch folder, and notebook 07's first two steps run on it
(``morphometry_scoring.morphometry_calibration``): each class's region is fitted on the training images and
judged on the held-out test images. Writes ``<dataset>_<R>px_calibration.csv/.md`` (own-class and
other-class pass rates, Fisher's test), ``<dataset>_<R>px_calibration.png``, ``<dataset>_<R>px_masks.png``
(the measured outlines on a few test images) and ``<dataset>.json``
(command, git commit, package versions, sha256 of the split's rows) to ``--out``. Nothing of the
dataset's images is copied.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from improve_lib import data  # noqa: E402
from improve_lib.core import manifest
from improve_lib.core.files import atomic_write_json, atomic_write_text  # noqa: E402
from improve_lib.plausibility import morphometry, morphometry_scoring


def calibration_figure(table, title: str):
    """Own-class and other-class pass rate per class with Wilson intervals; a star marks the classes
    whose region discriminates (Fisher, p < 0.05)."""
    import matplotlib.pyplot as plt
    import numpy as np

    rows = table.drop(index="mean", errors="ignore")
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(rows), 3.2))
    for offset, key, colour, label in ((-0.18, "own", "C0", "own class (held-out real)"),
                                       (0.18, "other", "C3", "other classes' real images")):
        vals = rows[f"{key} %"].to_numpy(float)
        err = np.stack([vals - rows[f"{key} CI low"].to_numpy(float), rows[f"{key} CI high"].to_numpy(float) - vals])
        ax.bar(x + offset, vals, width=0.36, color=colour, label=label, yerr=err, capsize=2)
    for i, ok in enumerate(rows["discriminates"].fillna(False)):
        if ok:
            ax.text(i, 102, "*", ha="center", fontsize=12)
    ax.set_xticks(x, rows.index, rotation=0)
    ax.set_ylim(0, 110)
    ax.set_ylabel("% inside the class's region")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def mask_figure(split_table, dataset: str, resolution: int, per_class: int = 3):
    """The first ``per_class`` test images of each class with the measured outlines (Bone Marrow: cell
    in yellow, nucleus in cyan; HAM10000: lesion in cyan), at the run's resolution, shown enlarged."""
    import matplotlib.pyplot as plt
    import numpy as np
    from skimage.segmentation import find_boundaries

    test = split_table[split_table["split"] == "test"]
    classes = list(dict.fromkeys(test["class_name"]))
    fig, axes = plt.subplots(per_class, len(classes), figsize=(1.3 * len(classes), 1.35 * per_class), squeeze=False)
    for j, cls in enumerate(classes):
        for i, path in enumerate(test.loc[test["class_name"] == cls, "path"].iloc[:per_class]):
            _, masks = morphometry.morphometric_features(path, dataset, resolution=resolution, return_masks=True)
            img = np.asarray(masks["image"], dtype=float).copy()
            for key, colour in (("cell", (1.0, 0.9, 0.0)), ("nucleus", (0.0, 1.0, 1.0)), ("lesion", (0.0, 1.0, 1.0))):
                if key in masks:
                    img[find_boundaries(masks[key], mode="inner")] = colour
            ax = axes[i][j]
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(cls, fontsize=9)
    fig.suptitle(f"{dataset}, {resolution} px: what the morphometry measures", fontsize=10)
    fig.tight_layout()
    return fig


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True, choices=morphometry.DATASETS)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--resolution", type=int, nargs="+", default=[32, 64])
    p.add_argument("--n-train", type=int, default=100)
    p.add_argument("--n-test", type=int, default=50)
    p.add_argument("--min-per-class", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    out = Path(args.out)
    record = {"command": "python tools/morphometry_calibration.py " + " ".join(sys.argv[1:] if argv is None else argv),
              **manifest.provenance(), "resolutions": {}}
    for res in args.resolution:
        with tempfile.TemporaryDirectory() as scratch:
            split = data.build_split(args.dataset, args.data_dir, scratch, args.n_train, args.n_test, args.seed,
                                     None, args.min_per_class, res, verify=False, progress=False)
            data.write_split(split, scratch)
            started = time.perf_counter()
            calibrated = morphometry_scoring.morphometry_calibration(scratch, args.dataset, res, seed=args.seed,
                                                              progress=True)
            seconds = time.perf_counter() - started
            digest = data.split_sha256(split.table)
        name = f"{args.dataset}_{res}px_calibration"
        table = calibrated["calibration"]
        atomic_write_text(out / f"{name}.csv", table.reset_index().to_csv(index=False, float_format="%.4g"))
        atomic_write_text(out / f"{name}.md", table.reset_index().to_markdown(index=False, floatfmt=".3g") + "\n")
        fig = calibration_figure(table, f"{args.dataset}, {res} px: held-out real test images")
        fig.savefig(out / f"{name}.png", dpi=110)
        n_disc = int(table.drop(index="mean")["discriminates"].sum())
        record["resolutions"][str(res)] = {
            "split_sha256": digest, "classes": list(split.class_names), "train_per_class": args.n_train,
            "test_per_class": args.n_test, "classes_discriminating": n_disc, "seconds": round(seconds, 1),
            "skipped": calibrated["regions"].skipped}
        mask_figure(split.table, args.dataset, res).savefig(out / f"{args.dataset}_{res}px_masks.png", dpi=110)
        print(f"{args.dataset} {res} px: {n_disc} of {len(table) - 1} classes discriminate ({seconds:.0f} s)")
        print(table.round(3).to_string())
    atomic_write_json(out / f"{args.dataset}.json", record)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Do generated images copy training images? The privacy check of synthetic medical images.

A generated image that reproduces a training image leaks the patient's data it was trained on. For
every generated image this module finds its nearest training image, in two spaces:

* **pixels**: the images at the run's resolution, as the model saw them, compared by the RMS difference
  of their pixels in [0, 1];
* **embedding**: the image encoder's vectors of the same images (the fidelity measures' space), compared
  by cosine distance.

The reference is what real, unseen images do: the nearest-training distance of every held-out real test
image. A generated image is flagged as a **near-copy** when it lies closer to a training image than any
real test image does (below the smallest test-to-training distance), in either space. The per-arm table
gives the share flagged and the median nearest-training distance of the samples beside that of the real
test images (samples much closer than real images are memorising even where none is flagged).
Nearest neighbours: scikit-learn's ``NearestNeighbors`` (exact, brute force).
"""
from __future__ import annotations

from typing import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.neighbors import NearestNeighbors

from improve_lib.core import input_checks

SPACES = {"pixels": "euclidean", "embedding": "cosine"}


def nearest(queries, references, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Distance to, and index of, each query's nearest reference (``metric``: euclidean or cosine)."""
    nn = NearestNeighbors(n_neighbors=1, metric=metric, algorithm="brute").fit(references)
    dist, idx = nn.kneighbors(queries)
    return dist[:, 0], idx[:, 0]


def _as_space(values, space: str, name: str) -> np.ndarray:
    if space == "pixels":  # images [N, 3, R, R] in [0, 1] -> RMS pixel difference = euclidean / sqrt(D)
        x = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
        return x / np.sqrt(x.shape[1])
    return input_checks.vectors(values, name)


def copy_check(train: Mapping[str, object], test: Mapping[str, object],
               generated: Mapping[str, Mapping[str, object]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Nearest-training distances of real test images and of each arm's generated images.

    ``train`` and ``test`` map a space (``pixels``: images ``[N, 3, R, R]`` in [0, 1]; ``embedding``:
    vectors ``[N, D]``) to the real training / held-out test set in that space; ``generated`` maps an arm
    to the same for its samples (rows in the same order in both spaces). Returns ``(table, per_image)``:
    ``table`` has one row per arm (``real test`` first) and space with ``n``, ``median_distance``,
    ``threshold`` (the smallest test-to-training distance), ``n_flagged`` and ``share_flagged``;
    ``per_image`` has per arm and image: the index, the nearest training image's index and the distance
    in each space, and ``near_copy`` (flagged in either space).
    """
    rows, per_image = [], {}
    for space, metric in SPACES.items():
        ref = _as_space(train[space], space, f"train {space}")
        real_d, _ = nearest(_as_space(test[space], space, f"test {space}"), ref, metric)
        threshold = float(real_d.min())
        rows.append({"arm": "real test", "space": space, "n": len(real_d), "median_distance": float(np.median(real_d)),
                     "threshold": threshold, "n_flagged": 0, "share_flagged": 0.0})
        for arm, spaces in generated.items():
            d, idx = nearest(_as_space(spaces[space], space, f"{arm} {space}"), ref, metric)
            flagged = d < threshold
            rows.append({"arm": arm, "space": space, "n": len(d), "median_distance": float(np.median(d)),
                         "threshold": threshold, "n_flagged": int(flagged.sum()), "share_flagged": float(flagged.mean())})
            frame = per_image.setdefault(arm, pd.DataFrame({"arm": arm, "index": np.arange(len(d))}))
            frame[f"nearest_train_{space}"], frame[f"distance_{space}"], frame[f"copy_{space}"] = idx, d, flagged
    images = pd.concat(per_image.values(), ignore_index=True) if per_image else pd.DataFrame()
    if len(images):
        images["near_copy"] = images[[f"copy_{s}" for s in SPACES]].any(axis=1)
    return pd.DataFrame(rows), images


def distance_figure(train: Mapping[str, object], test: Mapping[str, object],
                    generated: Mapping[str, Mapping[str, object]]):
    """Histograms of the nearest-training distance per space: real test images against each arm's
    samples, with the near-copy threshold as a dashed line."""
    fig, axes = plt.subplots(1, len(SPACES), figsize=(10, 3.2))
    for ax, (space, metric) in zip(axes, SPACES.items()):
        ref = _as_space(train[space], space, "train")
        real_d, _ = nearest(_as_space(test[space], space, "test"), ref, metric)
        bins = np.linspace(0, max(real_d.max(), 1e-9) * 1.5, 40)
        ax.hist(real_d, bins=bins, alpha=0.5, density=True, label="real test", color="black")
        for arm, spaces in generated.items():
            d, _ = nearest(_as_space(spaces[space], space, arm), ref, metric)
            ax.hist(d, bins=bins, alpha=0.45, density=True, label=arm)
        ax.axvline(real_d.min(), color="red", linestyle="--", linewidth=1, label="near-copy threshold")
        ax.set_title(f"nearest training image ({space}, {metric})")
        ax.set_xlabel("distance")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig

"""Plausible regions per class in morphometric feature space (:mod:`improve_lib.plausibility.morphometry`'s
features of the real datasets), their calibration on held-out real images, and the Tables 3/4 layout
with them as the judge.

Plausible region per class (:func:`fit_regions`): features are standardised by the mean and standard
deviation over all training images (shared units; a feature constant within one class, such as one
lobe for every lymphocyte, would make a per-class standardisation divide by zero), then each class
gets a shrunk covariance (Ledoit & Wolf 2004, J Multivar Anal 88:365; ``sklearn.covariance.
LedoitWolf``: 100 images in 8-11 dimensions make the sample covariance noisy, and shrinkage keeps it
invertible) and the Mahalanobis distance to the class mean. The threshold is the ``coverage``
quantile of the class's own training distances, taken out of fold by default (each training image
measured against a region fitted without it): in-sample distances are shrunk by over-fitting, so an
in-sample quantile passes fewer than ``coverage`` of new real images (measured: 86-91 % instead of
90-94 % of held-out images at coverage 0.95). LedoitWolf rather than MinCovDet: with 100 points in
11 dimensions the minimum-covariance determinant (support (n + p + 1) / 2 points) warned of
non-convergence and, in cross-validation on training images, its regions let more images of other
classes in (88 % vs 84 % for Bone Marrow at 64 px); images with no cell / lesion found are rare (1-4 %)
and are left out of the fit.

:func:`calibration_table` is the check that a class's region means anything: held-out real images of
the class should pass at about ``coverage`` and real images of other classes much less often (Fisher's
exact test, one-sided). :func:`region_plausibility_table` reports generated images in the layout of the
paper's Tables 3/4 (:func:`improve_lib.plausibility.review.tables.tabulate_plausibility`), leaving out (NaN, with
a reason) classes whose region does not discriminate. Images with no cell or lesion found are never
plausible and are counted apart.

Measured on the development subsets (``results/morphometry/``, made by
``tools/morphometry_calibration.py``; per class 100 train / 50 held-out test images, the study's own
split, seed 0, coverage 0.95, out of fold): own-class pass rates 82-98 %, other-class pass rates
65-92 %. Bone Marrow: 3 of 8 classes discriminate at 32 px and at 64 px; HAM10000: 6 of 7 at both
(not vasc, whose region is wide). The regions are a coarse filter (clearly wrong morphology), not a
classifier: read a generated class's pass rate against its real own-class and other-class rates.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import fisher_exact, wasserstein_distance
from sklearn.covariance import LedoitWolf
from sklearn.model_selection import KFold

from improve_lib.core.errors import StudyInputError
from improve_lib.plausibility.morphometry import FEATURES, check_dataset
from improve_lib.plausibility.review.tables import tabulate_plausibility, wilson_interval

MIN_TRAIN = 10  # found training images per class: a covariance in up to 11 dimensions needs at least that



def _feature_matrix(features: pd.DataFrame, names: Sequence[str], what: str) -> tuple[np.ndarray, np.ndarray]:
    """(values [n, p], usable [n]): usable rows are found and finite in every feature."""
    if not isinstance(features, pd.DataFrame):
        raise StudyInputError(f"morphometry: {what} must be a pandas DataFrame as measure_many returns")
    missing = [f for f in names if f not in features.columns]
    if missing:
        raise StudyInputError(f"morphometry: {what} lacks feature column(s) {', '.join(missing)}")
    values = features.loc[:, list(names)].to_numpy(dtype=np.float64)
    usable = np.isfinite(values).all(axis=1)
    if "found" in features.columns:
        usable &= features["found"].fillna(False).to_numpy(dtype=bool)
    return values, usable


def _labels(labels: Any, n: int, what: str) -> np.ndarray:
    if isinstance(labels, str):
        return np.array([labels] * n, dtype=object)
    out = np.asarray(list(labels), dtype=object)
    if len(out) != n:
        raise StudyInputError(f"morphometry: {n} feature rows but {len(out)} {what}")
    return np.array([str(x) for x in out], dtype=object)


@dataclass
class Regions:
    """Per-class plausible regions in feature space (see :func:`fit_regions`).

    ``center`` / ``scale`` standardise features (shared by all classes); per class ``mean`` and
    ``precision`` (inverse Ledoit-Wolf covariance) of the standardised features, and the Mahalanobis
    ``threshold`` below which an image of that class is plausible. ``skipped``: classes that got no
    region, with the reason (too few training images with a cell / lesion found).
    """

    dataset: str
    features: tuple[str, ...]
    coverage: float
    center: np.ndarray
    scale: np.ndarray
    classes: dict[str, dict] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def _class(self, cls: str) -> dict:
        if cls in self.skipped:
            raise StudyInputError(f"morphometry: class {cls!r} of {self.dataset} has no region: {self.skipped[cls]}")
        if cls not in self.classes:
            raise StudyInputError(f"morphometry: no plausible region for class {cls!r} of {self.dataset}; "
                                  f"fitted classes are {', '.join(self.classes)}")
        return self.classes[cls]

    def distance(self, features: pd.DataFrame, cls: str) -> np.ndarray:
        """Mahalanobis distance of every row to class ``cls``'s region (NaN where not found)."""
        region = self._class(cls)
        values, usable = _feature_matrix(features, self.features, "features")
        out = np.full(len(values), np.nan)
        if usable.any():
            out[usable] = _mahalanobis((values[usable] - self.center) / self.scale, region["mean"], region["precision"])
        return out

    def plausible(self, features: pd.DataFrame, classes: str | Sequence[str]) -> np.ndarray:
        """Bool per row: inside the region of its class (one class for all rows, or one per row).
        Rows whose cell / lesion was not found, and rows of a class without a region (``skipped``),
        are never plausible."""
        labels = _labels(classes, len(features), "classes")
        out = np.zeros(len(features), dtype=bool)
        for cls in pd.unique(labels):
            if cls in self.skipped:
                continue
            rows = labels == cls
            d = self.distance(features.iloc[np.flatnonzero(rows)], cls)
            out[rows] = np.nan_to_num(d, nan=np.inf) <= self.classes[cls]["threshold"]
        return out

    def to_dict(self) -> dict:
        """Plain, JSON-serialisable form (floats as Python floats, arrays as nested lists)."""
        return {
            "dataset": self.dataset, "features": list(self.features), "coverage": float(self.coverage),
            "center": self.center.tolist(), "scale": self.scale.tolist(),
            "classes": {c: {"n": int(r["n"]), "n_not_found": int(r["n_not_found"]),
                            "mean": np.asarray(r["mean"]).tolist(), "precision": np.asarray(r["precision"]).tolist(),
                            "threshold": float(r["threshold"])} for c, r in self.classes.items()},
            "skipped": dict(self.skipped),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> "Regions":
        """Inverse of :meth:`to_dict`."""
        try:
            dataset = check_dataset(data["dataset"])
            classes = {str(c): {"n": int(r["n"]), "n_not_found": int(r.get("n_not_found", 0)),
                                "mean": np.asarray(r["mean"], dtype=np.float64),
                                "precision": np.asarray(r["precision"], dtype=np.float64),
                                "threshold": float(r["threshold"])} for c, r in data["classes"].items()}
            return cls(dataset=dataset, features=tuple(data["features"]), coverage=float(data["coverage"]),
                       center=np.asarray(data["center"], dtype=np.float64),
                       scale=np.asarray(data["scale"], dtype=np.float64), classes=classes,
                       skipped={str(c): str(r) for c, r in data.get("skipped", {}).items()})
        except KeyError as exc:
            raise StudyInputError(f"morphometry: saved regions lack the key {exc}") from None


def _fit_class(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    model = LedoitWolf().fit(z)
    return model.location_, model.precision_


def _mahalanobis(z: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    d = z - mean
    return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, precision, d), 0.0))


def fit_regions(features: pd.DataFrame, labels: Sequence[str], dataset: str, coverage: float = 0.95,
                folds: int = 5, seed: int = 0) -> Regions:
    """Fit a plausible region per class from real training images' features.

    ``features``: :func:`measure_many`'s table; ``labels``: the class of each row. Rows not found
    are left out (and counted). Per class: Ledoit-Wolf covariance of the standardised features and
    the Mahalanobis threshold = the ``coverage`` quantile of the class's training distances, out of
    fold with ``folds`` folds (``folds <= 1``: in-sample), so that about ``coverage`` of new real
    images of the class pass. A class with fewer than :data:`MIN_TRAIN` found images gets no region
    (``Regions.skipped`` says why; its images are then not scored); none fitted at all is an error.
    """
    check_dataset(dataset)
    names = FEATURES[dataset]
    if not 0.0 < float(coverage) < 1.0:
        raise StudyInputError(f"morphometry: coverage must lie in (0, 1); got {coverage}")
    values, usable = _feature_matrix(features, names, "training features")
    labels = _labels(labels, len(values), "training labels")
    if not usable.any():
        raise StudyInputError(f"morphometry: no training image of {dataset} had a cell / lesion found")
    center = values[usable].mean(axis=0)
    scale = values[usable].std(axis=0)
    scale[~(scale > 0)] = 1.0  # a feature constant over all training images carries no scale
    regions = Regions(dataset=dataset, features=names, coverage=float(coverage), center=center, scale=scale)
    for cls in pd.unique(labels):
        rows = labels == cls
        z = (values[rows & usable] - center) / scale
        if len(z) < MIN_TRAIN:
            regions.skipped[str(cls)] = (f"{len(z)} training image(s) with a "
                                         f"{'cell' if dataset == 'bone_marrow' else 'lesion'} found (of "
                                         f"{int(rows.sum())}); at least {MIN_TRAIN} are needed to fit a region")
            continue
        if folds and folds > 1:
            k = min(int(folds), len(z))
            held = np.empty(len(z))
            for train, test in KFold(n_splits=k, shuffle=True, random_state=seed).split(z):
                held[test] = _mahalanobis(z[test], *_fit_class(z[train]))
            distances = held
        else:
            distances = None
        mean, precision = _fit_class(z)
        if distances is None:
            distances = _mahalanobis(z, mean, precision)
        regions.classes[str(cls)] = {"n": int(len(z)), "n_not_found": int((rows & ~usable).sum()),
                                     "mean": mean, "precision": precision,
                                     "threshold": float(np.quantile(distances, coverage))}
    if not regions.classes:
        raise StudyInputError(f"morphometry: no class of {dataset} has the {MIN_TRAIN} training images with a "
                              f"{'cell' if dataset == 'bone_marrow' else 'lesion'} found that a region needs: "
                              + "; ".join(f"{c}: {r}" for c, r in regions.skipped.items()))
    return regions


# ---------------------------------------------------------------------------------------------------
# tables


def _rate(k: int, n: int) -> tuple[float, float, float]:
    low, high = wilson_interval(k, n)
    return (100.0 * k / n if n else float("nan")), 100.0 * low, 100.0 * high


def calibration_table(regions: Regions, features: pd.DataFrame, labels: Sequence[str]) -> pd.DataFrame:
    """Does each class's region discriminate? Judged on held-out real images (never the training ones).

    Per class: ``n`` test images, ``not found``, ``own %`` passing their own class's region (95 %
    Wilson ``own CI low``/``high``), ``other n`` / ``other %`` (+ CI): real images of every other
    class judged against this class's region, ``p`` of Fisher's exact test that own > other
    (one-sided) and ``discriminates`` (p < 0.05 and own > other). Row ``mean``: the mean of the class
    percentages; its intervals and test pool all judgments (each image is judged against every
    region, so the pooled "other" judgments are not independent and that p is optimistic).
    """
    labels = _labels(labels, len(features), "test labels")
    found = (features["found"].fillna(False).to_numpy(dtype=bool) if "found" in features.columns
             else np.ones(len(labels), dtype=bool))
    rows, own_k, own_n, oth_k, oth_n = {}, 0, 0, 0, 0
    for cls in regions.classes:
        own = labels == cls
        if not own.any():
            continue
        passed = regions.plausible(features, cls)
        k, n = int(passed[own].sum()), int(own.sum())
        ko, no = int(passed[~own].sum()), int((~own).sum())
        p = fisher_exact([[k, n - k], [ko, no - ko]], alternative="greater").pvalue if no else float("nan")
        pct, lo, hi = _rate(k, n)
        opct, olo, ohi = _rate(ko, no)
        rows[cls] = {"n": n, "not found": int((own & ~found).sum()), "own %": pct, "own CI low": lo,
                     "own CI high": hi, "other n": no, "other %": opct, "other CI low": olo,
                     "other CI high": ohi, "p": float(p),
                     "discriminates": bool(no and p < 0.05 and k / n > ko / no)}
        own_k, own_n, oth_k, oth_n = own_k + k, own_n + n, oth_k + ko, oth_n + no
    if not rows:
        raise StudyInputError(f"morphometry: no test image belongs to a fitted class ({', '.join(regions.classes)})")
    _, lo, hi = _rate(own_k, own_n)
    _, olo, ohi = _rate(oth_k, oth_n)
    p = (fisher_exact([[own_k, own_n - own_k], [oth_k, oth_n - oth_k]], alternative="greater").pvalue
         if oth_n else float("nan"))
    rows["mean"] = {"n": own_n, "not found": sum(r["not found"] for r in rows.values()),
                    "own %": float(np.mean([r["own %"] for r in rows.values()])), "own CI low": lo, "own CI high": hi,
                    "other n": oth_n, "other %": float(np.mean([r["other %"] for r in rows.values()])),
                    "other CI low": olo, "other CI high": ohi, "p": float(p), "discriminates": pd.NA}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table["discriminates"] = table["discriminates"].astype("boolean")
    for c in ("n", "not found", "other n"):
        table[c] = table[c].astype(int)
    table.index.name = "class"
    return table


def region_plausibility_table(regions: Regions, features: pd.DataFrame, intended_classes: str | Sequence[str],
                       arms: str | Sequence[str], calibration: pd.DataFrame | None = None) -> pd.DataFrame:
    """Tables 3/4 with the morphometric regions as the judge: per intended class and arm, % of
    generated images inside the class's region.

    ``features``: :func:`measure_many` of the generated images; ``intended_classes`` and ``arms``:
    one per row (or one for all). Layout of :func:`improve_lib.plausibility.review.tables.tabulate_plausibility`
    (``<arm> %``, ``CI low``, ``CI high``, ``n``; a ``mean`` row) plus ``<arm> not found`` (images with
    no cell / lesion found: counted in ``n`` as implausible, reported apart) and ``reason``. Classes
    that ``calibration`` (:func:`calibration_table`) says do not discriminate get NaN percentages
    and the reason; the ``mean`` row covers the other classes only.
    """
    classes = _labels(intended_classes, len(features), "intended classes")
    arm_of = _labels(arms, len(features), "arms")
    unknown = sorted(set(classes) - set(regions.classes) - set(regions.skipped))
    if unknown:
        raise StudyInputError(f"morphometry: no plausible region for intended class(es) {', '.join(unknown)}; "
                              f"fitted classes are {', '.join(regions.classes)}")
    found = (features["found"].fillna(False).to_numpy(dtype=bool) if "found" in features.columns
             else np.isfinite(features.loc[:, list(regions.features)].to_numpy(float)).all(axis=1))
    frame = pd.DataFrame({"intended_class": classes, "arm": arm_of,
                          "plausible": regions.plausible(features, classes), "found": found})
    present = [c for c in [*regions.classes, *regions.skipped] if c in set(classes)]
    reasons = {c: f"no region: {regions.skipped[c]}" if c in regions.skipped else "" for c in present}
    if calibration is not None:
        for c in present:
            if reasons[c]:
                continue
            if c not in calibration.index:
                reasons[c] = "not calibrated: no held-out real images of this class"
            elif not bool(calibration.loc[c, "discriminates"]):
                r = calibration.loc[c]
                reasons[c] = (f"region does not discriminate on real test images: own {r['own %']:.0f} % vs "
                              f"other classes {r['other %']:.0f} % (p = {r['p']:.2g})")
    valid = [c for c in present if not reasons[c]]
    arm_list = list(pd.unique(arm_of))
    table = tabulate_plausibility(frame[frame["intended_class"].isin(valid)], arm_list, valid)
    table = table.reindex(present + ["mean"])
    table.index.name = "class"
    columns = []
    for arm in arm_list:
        sub = frame[frame["arm"] == arm]
        n = sub.groupby("intended_class").size()
        missing = sub[~sub["found"]].groupby("intended_class").size()
        table[f"{arm} n"] = [int(n.get(c, 0)) for c in present] + [int(n.reindex(valid).fillna(0).sum())]
        table[f"{arm} not found"] = ([int(missing.get(c, 0)) for c in present]
                                     + [int(missing.reindex(valid).fillna(0).sum())])
        columns += [f"{arm} %", f"{arm} CI low", f"{arm} CI high", f"{arm} n", f"{arm} not found"]
    table = table[columns]
    table["reason"] = [reasons[c] for c in present] + ["" if valid else "no class discriminates"]
    return table


def distribution_distance(real_features: pd.DataFrame, generated_features: pd.DataFrame,
                          real_labels: Sequence[str], generated_labels: Sequence[str],
                          dataset: str) -> pd.DataFrame:
    """Per class and feature: 1-D Wasserstein distance between real and generated values
    (``scipy.stats.wasserstein_distance``, found images only) divided by the real values' standard
    deviation, so it is unitless (0 = same distribution; 1 = shifted by about one real std).
    Columns: the features, ``mean`` over them, ``n real`` and ``n generated``; classes present in both.
    """
    check_dataset(dataset)
    names = FEATURES[dataset]
    rv, ru = _feature_matrix(real_features, names, "real features")
    gv, gu = _feature_matrix(generated_features, names, "generated features")
    rl = _labels(real_labels, len(rv), "real labels")
    gl = _labels(generated_labels, len(gv), "generated labels")
    rows = {}
    for cls in [c for c in pd.unique(rl) if c in set(gl)]:
        r, g = rv[(rl == cls) & ru], gv[(gl == cls) & gu]
        row = {}
        for j, name in enumerate(names):
            sd = float(np.std(r[:, j], ddof=1)) if len(r) > 1 else float("nan")
            row[name] = (wasserstein_distance(r[:, j], g[:, j]) / sd) if len(g) and sd > 0 else float("nan")
        finite = [row[n] for n in names if np.isfinite(row[n])]
        row["mean"] = float(np.mean(finite)) if finite else float("nan")
        row["n real"], row["n generated"] = len(r), len(g)
        rows[cls] = row
    table = pd.DataFrame.from_dict(rows, orient="index", columns=[*names, "mean", "n real", "n generated"])
    table.index.name = "class"
    return table

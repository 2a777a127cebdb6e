"""The registration's two checks on its replicates (``results/PREREGISTRATION.md``): split and training variance
apart, and the training precision. Both read check runs kept beside the replicates in their results folder
(``checks/<sweep>/runs/``, :func:`improve_lib.report.results_folder.write_results`'s ``checks``), each paired
with a replicate by its parameters, never by a folder name:

* **Split and training variance**: a run with ``SPLIT_SEED = s`` and another ``SEED`` trains on the split that
  replicate ``s`` drew (checked by the sha256 of ``data/split.csv``), with everything else drawn anew. Each
  replicate's difference Δ is a split's effect plus training noise; two trainings on one split differ by
  training noise only, so half the squared difference of their Δ estimates the training variance, and the
  variance of Δ over the replicates minus it estimates the split's (the registered estimator: a method-of-
  moments split of the variance, as in a one-way random-effects model; with two pairs an estimate, no test).
* **Training precision**: a run with a replicate's seed and split but another training precision (fp32 where
  the replicate trained in bf16); the change of Δ between precisions beside the sd of Δ over the replicates.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from improve_lib.core.errors import StudyInputError
from improve_lib.report.comparison import t_interval

COLUMNS = ["seed", "diff", "precision", "split_seed", "split"]
PRECISION_NAMES = {"no": "fp32"}  # the manifest records accelerate's mixed_precision setting; "no" trains in fp32


def pair_checks(replicates: pd.DataFrame, checks: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame,
                                                                         pd.DataFrame]:
    """Pair each check run with its replicate. Both frames hold :data:`COLUMNS` (``diff`` in points,
    ``split_seed`` NaN when unset, ``split`` the sha256 of the run's ``data/split.csv``).

    Returns ``(splits, precisions, repeats, unpaired)``: per split, the replicate's Δ (``diff``) and the second
    training seed's (``second_seed``, ``diff_second``); per precision check, the replicate's Δ and precision
    and the check's (``other_precision``, ``diff_other``); per rerun of a replicate as it was (same seed, split
    and precision, e.g. notebook 06 again with an external test set), both Δ (``diff``, ``diff_repeat``); check
    runs that pair with no replicate. A run that claims a replicate's split but holds another split is an error
    (the decomposition would be wrong)."""
    by_seed = replicates.set_index("seed")
    splits, precisions, repeats, unpaired = [], [], [], []
    for row in checks.itertuples(index=False):
        split_seed = None if pd.isna(row.split_seed) else int(row.split_seed)
        own = split_seed if split_seed is not None else int(row.seed)
        if own not in by_seed.index:
            unpaired.append(row._asdict())
            continue
        rep = by_seed.loc[own]
        if row.split != rep["split"]:
            raise StudyInputError(f"check run with SEED={row.seed}, SPLIT_SEED={split_seed}: its data/split.csv differs "
                                  f"from replicate {own}'s (sha256 {str(row.split)[:12]} vs {str(rep['split'])[:12]}), "
                                  "so it is not that replicate's split")
        if int(row.seed) != own:
            splits.append({"split_seed": own, "diff": rep["diff"], "second_seed": int(row.seed),
                           "diff_second": row.diff})
        elif row.precision != rep["precision"]:
            precisions.append({"seed": own, "precision": rep["precision"], "diff": rep["diff"],
                               "other_precision": row.precision, "diff_other": row.diff})
        else:
            repeats.append({"seed": own, "diff": rep["diff"], "diff_repeat": row.diff})
    return (pd.DataFrame(splits, columns=["split_seed", "diff", "second_seed", "diff_second"]),
            pd.DataFrame(precisions, columns=["seed", "precision", "diff", "other_precision", "diff_other"]),
            pd.DataFrame(repeats, columns=["seed", "diff", "diff_repeat"]), pd.DataFrame(unpaired, columns=COLUMNS))


def variance_components(differences, splits: pd.DataFrame) -> dict:
    """Variance of Δ over the replicates (``total``, ddof 1), the training variance from the split pairs
    (``training`` = mean over pairs of half the squared difference) and the split's (``split`` = total -
    training, which an estimate from few pairs can make negative), in points²; ``pairs`` = number of pairs."""
    x = np.asarray([v for v in differences if not math.isnan(v)], dtype=float)
    total = float(x.var(ddof=1)) if len(x) >= 2 else math.nan
    within = (splits["diff"] - splits["diff_second"]).to_numpy(dtype=float)
    training = float(np.mean(within ** 2 / 2)) if len(within) else math.nan
    return {"total": total, "training": training, "split": total - training, "pairs": int(len(within))}


def _sd(variance: float) -> str:
    return "-" if math.isnan(variance) else f"{math.sqrt(variance):.2f}"


def summary_lines(replicates: pd.DataFrame, checks: pd.DataFrame) -> list[str]:
    """SUMMARY.md's paragraphs on the two registered checks (empty when the folder has no check runs)."""
    if checks.empty:
        return []
    splits, precisions, repeats, unpaired = pair_checks(replicates, checks)
    f = "{:+.1f}".format
    lines = []
    if len(splits):
        v = variance_components(replicates["diff"].tolist(), splits)
        pairs = "; ".join(f"split {int(s.split_seed)}: {f(s.diff)} (seed {int(s.split_seed)}) and {f(s.diff_second)} "
                          f"(seed {int(s.second_seed)})" for s in splits.itertuples())
        lines += [f"**Split and training variance apart** (registered; {v['pairs']} pair(s) of trainings on one split: "
                  f"estimates, no test): {pairs}. Of the sd of Δ over the {len(replicates)} replicates, {_sd(v['total'])} "
                  f"points, training accounts for an sd of {_sd(v['training'])} (half the squared difference within a "
                  f"split) and the split for " + (f"none: the rest of the variance is negative ({v['split']:.2f} "
                                                  "points²), so training noise alone accounts for the spread seen, "
                                                  "within what so few pairs can tell." if v["split"] < 0 else
                                                  f"{_sd(v['split'])} (the rest of the variance; variances add)."), ""]
    if len(precisions):
        change = (precisions["diff_other"] - precisions["diff"]).tolist()
        mean, low, high = t_interval(change)
        sd = float(replicates["diff"].std(ddof=1)) if len(replicates) >= 2 else math.nan
        name = lambda p: PRECISION_NAMES.get(p, p)  # noqa: E731
        per = "; ".join(f"seed {int(p.seed)}: {name(p.precision)} {f(p.diff)}, {name(p.other_precision)} {f(p.diff_other)}"
                        for p in precisions.itertuples())
        interval = f" [{f(low)}, {f(high)}]" if not math.isnan(low) else ""
        lines += [f"**Training precision** (registered check): {per}. Change of Δ {f(mean)}{interval} points "
                  f"(largest {max(abs(c) for c in change):.1f}) against an sd of Δ over the replicates of {sd:.2f}.", ""]
    if len(repeats):
        change = (repeats["diff_repeat"] - repeats["diff"]).abs()
        lines += [f"**Replicates rerun as they were** (same seed, split and precision, e.g. notebook 06 again with an "
                  f"external test set): Δ reproduced to 0.01 points in {int((change < 0.01).sum())} of {len(repeats)} "
                  f"(largest change {change.max():.2f}).", ""]
    if len(unpaired):
        lines += ["Check runs that pair with no replicate (not used): " + ", ".join(
            f"SEED={int(u.seed)}" + ("" if pd.isna(u.split_seed) else f" SPLIT_SEED={int(u.split_seed)}")
            for u in unpaired.itertuples()) + ".", ""]
    return lines

"""The pre-registered verdict (``results/PREREGISTRATION.md``), computed from the replicates of a results folder.

The registration fixes, before the replicates ran: the endpoint (prototype minus baseline TSTR macro F1 per
replicate, in points), the paired t-test (two-sided, :data:`ALPHA`), the equivalence test (TOST against
:data:`MARGIN`), the number of replicates (:data:`PLANNED_REPLICATES`, seeds :data:`PREREGISTERED_SEEDS`) and
the words each outcome is called (:func:`verdict`). This module is the one source of those numbers in code;
``tests/report/test_verdict.py`` checks that the registration's text says the same.

TOST is two one-sided t-tests (``scipy.stats.ttest_1samp`` with ``alternative``): statsmodels' ``ttost_paired``
computes the same two tests, but would be a new dependency for two lines of scipy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import stats

from improve_lib.report.comparison import t_interval

PREREGISTRATION = "results/PREREGISTRATION.md"
MARGIN = 2.0  # points of macro F1: half of the paper's smallest reported gain (+3.98, HAM10000)
ALPHA = 0.05
PLANNED_REPLICATES = 8
PREREGISTERED_SEEDS = tuple(range(3, 11))
PILOT_SEEDS = (0, 1, 2)


def registered(seeds) -> bool:
    """Whether replicates with these seeds are the registered ones (the folder then gets the registered analysis)."""
    return all(s in PREREGISTERED_SEEDS for s in seeds)

#: (difference shown, equivalent within the margin) -> the registered words; the sign decides the first two
WORDS = {"prototype": "the prototype arm is better", "baseline": "the baseline arm is better",
         "small": "a difference smaller than the margin: the arms differ by less than 2 points",
         "equivalent": "the arms are equivalent within ±2 points",
         "inconclusive": "inconclusive: neither a difference nor equivalence within ±2 points is shown"}


@dataclass(frozen=True)
class Verdict:
    """The registered analysis of one dataset's per-replicate differences (points)."""

    n: int
    mean: float
    low: float  # 95 % Student-t interval of the mean difference
    high: float
    p: float  # paired t-test, two-sided
    tost_p: float  # the larger of the two one-sided p values against -MARGIN and +MARGIN
    low90: float  # 90 % t-interval: inside (-MARGIN, +MARGIN) exactly when TOST rejects at ALPHA
    high90: float
    outcome: str  # a key of WORDS, or "incomplete"
    words: str

    @property
    def complete(self) -> bool:
        return self.outcome != "incomplete"


def tost_p(differences: Sequence[float], margin: float = MARGIN) -> float:
    """p of the two one-sided tests of equivalence (TOST) of the mean difference within ``(-margin, +margin)``:
    the larger of ``H0: mean <= -margin`` and ``H0: mean >= +margin``, each a one-sided one-sample t-test."""
    x = np.asarray(differences, dtype=float)
    above = stats.ttest_1samp(x, -margin, alternative="greater").pvalue
    below = stats.ttest_1samp(x, margin, alternative="less").pvalue
    return float(max(above, below))


def verdict(differences: Sequence[float], planned: int = PLANNED_REPLICATES, margin: float = MARGIN,
            alpha: float = ALPHA) -> Verdict:
    """The registered test and words for per-replicate differences (prototype - baseline, points). With fewer
    than ``planned`` replicates the numbers are computed but the outcome is ``incomplete`` (no interim verdict)."""
    x = [float(v) for v in differences if v is not None and not math.isnan(v)]
    mean, low, high = t_interval(x, 1 - alpha)
    _, low90, high90 = t_interval(x, 1 - 2 * alpha)
    p = float(stats.ttest_1samp(x, 0.0).pvalue) if len(x) >= 2 else math.nan
    pt = tost_p(x, margin) if len(x) >= 2 else math.nan
    if len(x) < planned:
        return Verdict(len(x), mean, low, high, p, pt, low90, high90, "incomplete",
                       f"incomplete, n = {len(x)} of {planned}: no verdict until all registered replicates are in")
    differ, equivalent = p < alpha, pt < alpha
    outcome = ("small" if differ and equivalent else ("prototype" if mean > 0 else "baseline") if differ
               else "equivalent" if equivalent else "inconclusive")
    return Verdict(len(x), mean, low, high, p, pt, low90, high90, outcome, WORDS[outcome])


def per_class_differences(tables: Sequence[pd.DataFrame], level: float = 0.95) -> pd.DataFrame:
    """Per class, prototype minus baseline F1 (points) over replicates: mean, Student-t interval and n, from each
    replicate's ``tstr_per_class_f1.csv`` (columns class_name, baseline, prototype)."""
    long = pd.concat([t.assign(diff=t["prototype"] - t["baseline"]) for t in tables if len(t)], ignore_index=True)
    rows = []
    for cls, g in long.groupby("class_name", sort=False):
        mean, low, high = t_interval(g["diff"].tolist(), level)
        rows.append({"class": cls, "difference": mean, "low": low, "high": high, "n": len(g)})
    return pd.DataFrame(rows)


def forest_figure(replicates: pd.DataFrame, pooled: Verdict, title: str, margin: float = MARGIN):
    """Each replicate's difference with its within-run interval (``seed``, ``diff``, ``low``, ``high`` in
    points: the run's paired bootstrap over test images and classifier seeds) and the pooled mean with its
    95 % t-interval over replicates, against 0 and the equivalence margin."""
    n = len(replicates)
    fig, ax = plt.subplots(figsize=(6.4, 0.45 * (n + 2) + 1.2))
    y = np.arange(n, 0, -1)
    ax.errorbar(replicates["diff"], y, xerr=[replicates["diff"] - replicates["low"],
                                           replicates["high"] - replicates["diff"]],
                fmt="o", color="tab:blue", capsize=3, label="replicate (within-run bootstrap 95 %)")
    if not math.isnan(pooled.low):
        ax.errorbar([pooled.mean], [-0.2], xerr=[[pooled.mean - pooled.low], [pooled.high - pooled.mean]],
                    fmt="D", color="black", capsize=4, label=f"mean over {pooled.n} replicates (t 95 %)")
    ax.axvline(0, color="grey", lw=1)
    for edge in (-margin, margin):
        ax.axvline(edge, color="tab:red", lw=1, ls="--")
    ax.set_yticks([*y, -0.2], [f"seed {s}" for s in replicates["seed"]] + ["pooled"])
    ax.set_xlabel("prototype − baseline, TSTR macro F1 (points); dashed: equivalence margin")
    ax.set_title(title)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.08), fontsize=8, ncol=1, frameon=False)
    fig.tight_layout()
    return fig


def power(sd: float, effect: float, n: int = PLANNED_REPLICATES, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t-test over ``n`` replicates to find a true mean difference ``effect``
    when the differences' sd is ``sd`` (noncentral t)."""
    df, nc = n - 1, effect / (sd / math.sqrt(n))
    crit = stats.t.ppf(1 - alpha / 2, df)
    # scipy's noncentral t gives nan for the far tail of a large effect (its mass there is 0 to machine precision)
    tails = [float(stats.nct.sf(crit, df, nc)), float(stats.nct.cdf(-crit, df, nc))]
    return float(sum(0.0 if math.isnan(t) else t for t in tails))

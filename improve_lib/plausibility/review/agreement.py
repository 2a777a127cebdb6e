"""Agreement between reviewers: Cohen's kappa of their plausible / implausible calls (scikit-learn)."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import cohen_kappa_score

from improve_lib.plausibility.review.tasks import read_judgments


def cohen_kappa(run_dir, reviewer_a: str, reviewer_b: str) -> dict:
    """Cohen's kappa of two reviewers' latest plausible / implausible calls on the tasks both judged.

    Returns ``{"kappa", "n_common", "agreement"}``; ``kappa`` is NaN when there is no common task or
    when chance agreement is 1 (both reviewers gave one and the same label throughout), where
    ``sklearn.metrics.cohen_kappa_score`` is undefined.
    """
    a = read_judgments(run_dir, reviewer_a).set_index("task_id")["plausible"]
    b = read_judgments(run_dir, reviewer_b).set_index("task_id")["plausible"]
    common = a.index.intersection(b.index)
    n = len(common)
    if n == 0:
        return {"kappa": float("nan"), "n_common": 0, "agreement": float("nan")}
    x = a.loc[common].astype(bool).to_numpy()
    y = b.loc[common].astype(bool).to_numpy()
    agreement = float(np.mean(x == y))
    if len(set(x) | set(y)) < 2:  # one label throughout: chance agreement 1, kappa undefined
        return {"kappa": float("nan"), "n_common": int(n), "agreement": agreement}
    return {"kappa": float(cohen_kappa_score(x, y)), "n_common": int(n), "agreement": agreement}

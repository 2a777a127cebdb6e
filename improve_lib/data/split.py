"""Group-aware per-class train/test sampling shared by the datasets."""
from __future__ import annotations

import numpy as np
import pandas as pd

SPLIT_COLUMNS = ["path", "label", "class_name", "split", "group"]


def per_class_group_split(pool: pd.DataFrame, n_train: int, n_test: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``pool`` (columns include class_name, group) into train and test per class.

    Whole groups (lesions) go to one side only, so no group is in both. The test side is filled
    first, group by group in seeded random order, up to ``n_test`` images without overshooting;
    the remaining groups form the train pool, from which ``n_train`` images are drawn.
    Returns ``(selected, summary)``: the selected rows with a ``split`` column and a per-class table
    of what was available and taken.
    """
    rng = np.random.default_rng(seed)
    chosen, rows = [], []
    for class_name in sorted(pool["class_name"].unique()):
        sub = pool[pool["class_name"] == class_name]
        groups = sub.groupby("group", sort=True).indices
        order = list(groups)
        rng.shuffle(order)
        test_idx, train_pool = [], []
        for g in order:
            idx = list(groups[g])
            if len(test_idx) + len(idx) <= n_test:
                test_idx += idx
            else:
                train_pool += idx
        train_pool = sorted(train_pool)
        take = min(n_train, len(train_pool))
        train_idx = sorted(rng.choice(train_pool, size=take, replace=False).tolist()) if take else []
        chosen.append(sub.iloc[test_idx].assign(split="test"))
        chosen.append(sub.iloc[train_idx].assign(split="train"))
        rows.append({
            "class_name": class_name, "images": len(sub), "groups": len(groups),
            "train": take, "test": len(test_idx), "train_wanted": n_train, "test_wanted": n_test,
            "short": (take < n_train) or (len(test_idx) < n_test),
        })
    selected = pd.concat(chosen, ignore_index=True) if chosen else pool.iloc[:0].assign(split=[])
    return selected, pd.DataFrame(rows)


def finalise(selected: pd.DataFrame, class_names: list[str]) -> pd.DataFrame:
    """Attach integer labels in ``class_names`` order and order columns/rows deterministically."""
    label_of = {c: i for i, c in enumerate(class_names)}
    out = selected.copy()
    out["label"] = out["class_name"].map(label_of).astype(int)
    extra = [c for c in out.columns if c not in SPLIT_COLUMNS]
    out = out[SPLIT_COLUMNS + extra]
    out["_split_order"] = out["split"].map({"train": 0, "test": 1})
    out = out.sort_values(["_split_order", "label", "path"]).drop(columns="_split_order")
    return out.reset_index(drop=True)

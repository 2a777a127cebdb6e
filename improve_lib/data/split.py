"""Group-aware per-class train/validation/test sampling shared by the datasets."""
from __future__ import annotations

import numpy as np
import pandas as pd

SPLIT_COLUMNS = ["path", "label", "class_name", "split", "group"]


def per_class_group_split(pool: pd.DataFrame, n_train: int, n_test: int, seed: int,
                          n_validation: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``pool`` (columns include class_name, group) into train, validation and test per class.

    Whole groups (lesions) go to one side only, so no group is on two. The test side is filled
    first, group by group in seeded random order, up to ``n_test`` images without overshooting;
    the remaining groups form the train pool, from which ``n_train`` images are drawn. With
    ``n_validation`` > 0, that many of the drawn training images (whole groups again, in seeded order,
    without overshooting) become the validation side: the test side and the drawn images are those of
    ``n_validation=0`` (the carve draws from a stream of its own, so today's splits are unchanged), and the recipe chosen
    on the validation images never saw the test split.
    Returns ``(selected, summary)``: the selected rows with a ``split`` column and a per-class table
    of what was available and taken.
    """
    rng = np.random.default_rng(seed)
    carve_rng = np.random.default_rng([seed, 1])  # a stream of its own: the test and train draws stay those of n_validation=0
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
        val_idx = _carve(sub, train_idx, n_validation, carve_rng) if n_validation > 0 else []
        held = set(val_idx)
        train_idx = [i for i in train_idx if i not in held]
        chosen.append(sub.iloc[test_idx].assign(split="test"))
        chosen.append(sub.iloc[train_idx].assign(split="train"))
        chosen.append(sub.iloc[val_idx].assign(split="validation"))
        row = {"class_name": class_name, "images": len(sub), "groups": len(groups),
               "train": len(train_idx), "test": len(test_idx), "train_wanted": n_train - n_validation, "test_wanted": n_test,
               "short": (take < n_train) or (len(test_idx) < n_test)}
        if n_validation > 0:
            row.update(validation=len(val_idx), validation_wanted=n_validation)
            row["short"] = row["short"] or len(val_idx) < n_validation
        rows.append(row)
    selected = pd.concat(chosen, ignore_index=True) if chosen else pool.iloc[:0].assign(split=[])
    return selected, pd.DataFrame(rows)


def _carve(sub: pd.DataFrame, train_idx: list[int], n: int, rng: np.random.Generator) -> list[int]:
    """Up to ``n`` of the drawn training rows ``train_idx`` (positions in ``sub``), whole groups in seeded order."""
    by_group: dict[str, list[int]] = {}
    for i in train_idx:
        by_group.setdefault(str(sub["group"].iloc[i]), []).append(i)
    order = sorted(by_group)
    rng.shuffle(order)
    out: list[int] = []
    for g in order:
        if len(out) + len(by_group[g]) <= n:
            out += by_group[g]
    return sorted(out)


def finalise(selected: pd.DataFrame, class_names: list[str]) -> pd.DataFrame:
    """Attach integer labels in ``class_names`` order and order columns/rows deterministically."""
    label_of = {c: i for i, c in enumerate(class_names)}
    out = selected.copy()
    out["label"] = out["class_name"].map(label_of).astype(int)
    extra = [c for c in out.columns if c not in SPLIT_COLUMNS]
    out = out[SPLIT_COLUMNS + extra]
    out["_split_order"] = out["split"].map({"train": 0, "validation": 1, "test": 2})
    out = out.sort_values(["_split_order", "label", "path"]).drop(columns="_split_order")
    return out.reset_index(drop=True)

"""The paper's Tables 3 and 4 from judgments: per class and arm, the share judged plausible, with 95 %
Wilson intervals; saved as CSV and Markdown and drawn as a bar chart. Shared by the experts' judgments
(:func:`expert_plausibility_table`) and the pixel checker (:func:`tabulate_plausibility`)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from scipy.stats import binomtest

from improve_lib.core.files import atomic_path, atomic_write_text
from improve_lib.plausibility.review.tasks import ARMS, load_tasks, read_judgments, reviewers_with_files


def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k / n`` (``scipy.stats.binomtest``), as fractions in
    [0, 1]; (NaN, NaN) for n = 0."""
    if n <= 0:
        return float("nan"), float("nan")
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def tabulate_plausibility(frame: pd.DataFrame, arms: Sequence[str], classes: Sequence[str]) -> pd.DataFrame:
    """Per-class plausibility table from one row per judgment (columns intended_class, arm, plausible).

    Rows: ``classes`` then ``mean``; columns per arm: ``<arm> %``, ``<arm> CI low``, ``<arm> CI high``
    (95 % Wilson, in %) and ``<arm> n``. Shared by the expert table and the pixel checker's table.
    """
    columns, rows = {}, list(classes) + ["mean"]
    for arm in arms:
        sub = frame[frame["arm"] == arm]
        pct, lo, hi, ns = [], [], [], []
        for c in classes:
            flags = sub.loc[sub["intended_class"] == c, "plausible"].astype(bool)
            k, n = int(flags.sum()), int(len(flags))
            low, high = wilson_interval(k, n)
            pct.append(100.0 * k / n if n else float("nan"))
            lo.append(100.0 * low)
            hi.append(100.0 * high)
            ns.append(n)
        # The paper's "average rate" is the mean of the class percentages; its interval pools all the
        # arm's judgments (the same proportion when every class has as many judgments).
        k_all, n_all = int(sub["plausible"].astype(bool).sum()), int(len(sub))
        low, high = wilson_interval(k_all, n_all)
        pct.append(float(np.nanmean(pct)) if n_all else float("nan"))
        lo.append(100.0 * low)
        hi.append(100.0 * high)
        ns.append(n_all)
        columns.update({f"{arm} %": pct, f"{arm} CI low": lo, f"{arm} CI high": hi, f"{arm} n": ns})
    return pd.DataFrame(columns, index=pd.Index(rows, name="class"))


def expert_plausibility_table(run_dir, reviewers: Sequence[str] | None = None) -> pd.DataFrame:
    """The paper's Table 3 / 4: per intended class and arm, % of images judged plausible.

    Unblinds through ``review/tasks.csv``. Judgments are pooled over ``reviewers`` (default: every
    reviewer with a file): each reviewer's latest judgment of a task is one observation, so with one
    reviewer (the paper's set-up) this is that reviewer's percentage. Columns ``<arm> %``,
    ``<arm> CI low`` / ``CI high`` (95 % Wilson, in %; with several reviewers the judgments of one
    image are not independent, so the interval is optimistic) and ``<arm> n``; a last row ``mean``.
    """
    run_dir = Path(run_dir)
    tasks = load_tasks(run_dir, check_images=False)
    reviewers = list(reviewers) if reviewers is not None else reviewers_with_files(run_dir)
    frames = []
    for r in reviewers:
        j = read_judgments(run_dir, r)
        if len(j):
            frames.append(j[["task_id", "plausible"]])
    judged = (pd.concat(frames, ignore_index=True) if frames
              else pd.DataFrame({"task_id": pd.Series(dtype=str), "plausible": pd.Series(dtype=bool)}))
    merged = judged.merge(tasks[["task_id", "intended_class", "arm"]], on="task_id", how="inner")
    arms = [a for a in ARMS if a in set(tasks["arm"])] + sorted(set(tasks["arm"]) - set(ARMS))
    return tabulate_plausibility(merged, arms, sorted(tasks["intended_class"].unique()))


def _arms_of(df: pd.DataFrame) -> list[str]:
    return [c[:-2] for c in df.columns if c.endswith(" %")]


def save_plausibility_table(df: pd.DataFrame, out_dir, name: str) -> dict:
    """Write ``out_dir/<name>.csv`` (numbers) and ``<name>.md`` (the paper's layout: %, [CI]); return the paths."""
    out_dir = Path(out_dir)
    csv_path, md_path = out_dir / f"{name}.csv", out_dir / f"{name}.md"
    with atomic_path(csv_path) as tmp:
        df.to_csv(tmp, float_format="%.2f")
    arms = _arms_of(df)
    # Measures that leave a class unscored (the morphometry's non-discriminating regions) say why.
    reasons = "reason" in df.columns and df["reason"].fillna("").astype(str).str.len().gt(0).any()
    paper = [c for c in df.columns if str(c).startswith("expert ")]  # literature values, a different instrument
    header = (["class"] + [h for a in arms for h in (f"{a} (%)", f"{a} 95 % CI", f"{a} n")] + paper
              + (["not scored"] if reasons else []))
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for cls, row in df.iterrows():
        cells = [str(cls)]
        for a in arms:
            pct, lo, hi = row[f"{a} %"], row[f"{a} CI low"], row[f"{a} CI high"]
            cells += ["-" if pd.isna(pct) else f"{pct:.1f}",
                      "-" if pd.isna(lo) else f"[{lo:.1f}, {hi:.1f}]", str(int(row[f"{a} n"]))]
        cells += ["-" if pd.isna(row[c]) else f"{row[c]:g}" for c in paper]
        if reasons:
            cells.append(str(row["reason"] or "") if pd.notna(row["reason"]) else "")
        lines.append("| " + " | ".join(cells) + " |")
    atomic_write_text(md_path, "\n".join(lines) + "\n")
    return {"csv": csv_path, "markdown": md_path}


def plausibility_figure(df: pd.DataFrame, title: str = "Plausibility per class (95 % Wilson CI)"):
    """Grouped bar plot (seaborn) of a plausibility table: bars per class and arm, CI error bars."""
    arms = _arms_of(df)
    long = pd.concat([pd.DataFrame({"class": df.index, "arm": a, "pct": df[f"{a} %"].to_numpy(),
                                    "lo": df[f"{a} CI low"].to_numpy(), "hi": df[f"{a} CI high"].to_numpy()})
                      for a in arms], ignore_index=True)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(df) + 2), 3.8))
    sns.barplot(data=long, x="class", y="pct", hue="arm", hue_order=arms, errorbar=None, ax=ax)
    # seaborn draws bars per hue level in order; put each CI on its bar's centre.
    for container, arm in zip(ax.containers, arms):
        sub = long[long["arm"] == arm]
        for bar, (_, r) in zip(container, sub.iterrows()):
            if pd.notna(r["pct"]):
                x = bar.get_x() + bar.get_width() / 2
                # Clipped at 0: the mean row's point is the class mean, its interval the pooled one.
                err = [[max(r["pct"] - r["lo"], 0.0)], [max(r["hi"] - r["pct"], 0.0)]]
                ax.errorbar(x, r["pct"], yerr=err, fmt="none", ecolor="black", capsize=3, lw=1)
    ax.set_ylim(0, 100)
    ax.set_ylabel("plausible (%)")
    ax.set_xlabel("")
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    return fig

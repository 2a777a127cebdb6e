"""TSTR as the paper shows it (Tables 5 and 6): the paper's F1 beside the run's, a figure of both arms'
scores with their intervals, and the verdict in words (notebook 06). The TSTR sets and scores themselves
are :mod:`improve_lib.metrics.tstr`'s."""
from __future__ import annotations

from typing import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from improve_lib.metrics import paper_tables


def with_paper(tstr: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Add the paper's F1 (literature value, labelled) beside this run's, where the paper has one."""
    out = tstr.reset_index() if tstr.index.name == "training_set" else tstr.copy()
    paper = paper_tables.tstr(dataset)
    col = f"paper F1 % ({paper['table']})" if paper else "paper F1 %"
    out[col] = [paper["f1"].get(n, np.nan) if paper else np.nan for n in out["training_set"]]
    return out


def tstr_figure(tstr: pd.DataFrame, dataset: str):
    """Bar chart of macro precision/recall/F1 per training set with bootstrap intervals; the paper's
    F1 as black ticks where it exists."""
    rows = []
    for r in tstr.itertuples():
        for m in ("precision", "recall", "f1"):
            rows.append({"training set": r.training_set, "metric": m, "value": getattr(r, f"{m}_mean"),
                         "low": getattr(r, f"{m}_low"), "high": getattr(r, f"{m}_high")})
    df = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(7, 3.8))
    sns.barplot(data=df, x="metric", y="value", hue="training set", ax=ax, errorbar=None)
    for patch_group, (_, sub) in zip(ax.containers, df.groupby("training set", sort=False)):
        for patch, row in zip(patch_group, sub.itertuples()):
            x = patch.get_x() + patch.get_width() / 2
            ax.errorbar(x, row.value, yerr=[[row.value - row.low], [row.high - row.value]], color="black",
                        capsize=3, linewidth=1)
    paper = paper_tables.tstr(dataset)
    if paper:
        for patch_group, (name, _) in zip(ax.containers, df.groupby("training set", sort=False)):
            if name in paper["f1"]:
                patch = patch_group[2]
                ax.hlines(paper["f1"][name], patch.get_x(), patch.get_x() + patch.get_width(), color="black",
                          linestyles="--", linewidth=2)
        ax.set_title(f"Train on synthetic, test on real (dashed: paper, {paper['table']})")
    else:
        ax.set_title("Train on synthetic, test on real (95 % bootstrap intervals)")
    ax.set_ylabel("macro score, %")
    ax.set_ylim(0, 100)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def verdict(result: Mapping, fidelity: pd.DataFrame | None = None) -> str:
    """A markdown paragraph of what this run's numbers say about the two arms on TSTR macro F1, and what
    they cannot say: one run trains one diffusion model per arm, so its interval (test images and
    classifier seeds) does not cover training variation, and no winner is declared from it."""
    sets, comp = result["sets"], result.get("comparison")
    if not comp:
        return "Only one arm was evaluated: no comparison."
    f1 = {k: 100 * v["ci"]["f1"][0] for k, v in sets.items()}
    diff, low, high = (100 * comp["diff"], 100 * comp["low"], 100 * comp["high"])
    text = (f"On this run, train-on-synthetic / test-on-real macro F1 is prototype {f1['prototype']:.1f} % vs "
            f"baseline {f1['baseline']:.1f} % (difference {diff:+.1f} points, 95 % paired-bootstrap interval "
            f"[{low:+.1f}, {high:+.1f}] over the {result['n_test']} real test images and "
            f"{len(result['budget']['seeds'])} classifier seeds).")
    if "real" in f1:
        text += f" A classifier trained on the real training images reaches {f1['real']:.1f} %."
    text += (" **No winner is declared from one run:** each arm here is one diffusion model, trained from one "
             "seed, and this interval does not cover how much a second training seed would move it (in this "
             "project's guidance sweep, TSTR F1 ranged from 11 % to 48 % between training seeds at one setting). "
             "Run the study over 3 or more values of `SEED` (`python -m improve_lib sweep ... --seeds 0,1,2`) and "
             "read the difference over seeds in notebook 08.")
    if fidelity is not None and len(fidelity):
        allrows = fidelity[fidelity.class_name == "all"].set_index("arm")
        if {"prototype", "baseline"} <= set(allrows.index):
            pc = allrows["prototype_consistency"]
            text += (f" Prototype consistency (share of generated images nearest to their own class prototype): "
                     f"prototype {100 * pc['prototype']:.1f} % vs baseline {100 * pc['baseline']:.1f} %"
                     + (f", real training images {100 * pc['real train']:.1f} %." if "real train" in pc else "."))
    return text

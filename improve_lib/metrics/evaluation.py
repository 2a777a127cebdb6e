"""Notebook 06's glue: gather a run's real and generated images, lay the results out like the
paper's tables, save them, and say in words what the numbers say."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from improve_lib import data
from improve_lib.core.errors import StudyInputError
from improve_lib.core import run_layout
from improve_lib.core.files import atomic_path
from improve_lib.diffusion import sample
from improve_lib.metrics import paper_tables


def train_sets(run_dir: str | Path, arms: Sequence[str], class_names: Sequence[str], n_per_class: int,
               resolution: int) -> tuple[dict, tuple]:
    """``({name: (images, labels)} for each arm and "real", (test_images, test_labels))``.

    Generated images come from ``samples/<arm>/`` (checked: every class, at least ``n_per_class``);
    the real training and test images from the run's split, at the run's resolution.
    """
    table = data.read_split(run_dir)
    test = table[table.split == "test"]
    if test.empty:
        raise StudyInputError(f"{run_layout.split_csv(run_dir)} has no test images: set N_TEST >= 1 in notebook 01")
    sets = {}
    for arm in arms:
        t = sample.read_samples(run_dir, arm, class_names, n_per_class)
        sets[arm] = (data.load_images(t.path, resolution), t.label.to_numpy())
    real = table[table.split == "train"]
    sets["real"] = (data.load_images(real.path, resolution), real.label.to_numpy())
    return sets, (data.load_images(test.path, resolution), test.label.to_numpy())


def resized_real(run_dir: str | Path, split: str, resolution: int) -> pd.DataFrame:
    """The run's real ``split`` images as the generated ones are: center-cropped, resized to ``resolution``
    and written as 8-bit PNGs by the samples' own writer, into ``fidelity/real_<split>_<R>px/<class>/``.

    Fidelity measures embed these rather than the originals, so that real and generated images differ
    in what they show, not in their size (a 200x150 photograph and a 32 px sample are embedded from
    different pixels). Existing copies are kept. Returns ``path, label, class_name`` per image.
    """
    table = data.read_split(run_dir)
    rows = table[table.split == split]
    if rows.empty:
        raise StudyInputError(f"{run_layout.split_csv(run_dir)} has no {split} images")
    out = run_layout.fidelity_dir(run_dir) / f"real_{split}_{int(resolution)}px"
    records = []
    for i, r in enumerate(rows.itertuples()):
        path = out / str(r.class_name) / f"{i:05d}.png"
        if not path.is_file():
            sample.save_png(data.load_image(r.path, int(resolution)), path)
        records.append({"path": str(path), "label": int(r.label), "class_name": r.class_name})
    return pd.DataFrame(records)


def with_paper(tstr: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Add the paper's F1 (literature value, labelled) beside this run's, where the paper has one."""
    out = tstr.reset_index() if tstr.index.name == "training_set" else tstr.copy()
    paper = paper_tables.tstr(dataset)
    col = f"paper F1 % ({paper['table']})" if paper else "paper F1 %"
    out[col] = [paper["f1"].get(n, np.nan) if paper else np.nan for n in out["training_set"]]
    return out


def save_table(df: pd.DataFrame, run_dir: str | Path, name: str) -> dict[str, Path]:
    """Write ``tables/<name>.csv`` and ``tables/<name>.md`` atomically."""
    out = run_layout.tables_dir(run_dir)
    paths = {"csv": out / f"{name}.csv", "md": out / f"{name}.md"}
    with atomic_path(paths["csv"]) as tmp:
        df.to_csv(tmp, index=False)
    with atomic_path(paths["md"]) as tmp:
        tmp.write_text(df.to_markdown(index=False, floatfmt=".2f") + "\n")
    return paths


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

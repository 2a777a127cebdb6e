"""Figures shared by the notebooks; each returns the matplotlib Figure and can save it in a run."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use(matplotlib.get_backend() if "inline" in matplotlib.get_backend() else "Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402

from improve_lib.core.files import atomic_path  # noqa: E402
from improve_lib.core import run_layout  # noqa: E402
from improve_lib.data import center_crop_resize, open_rgb  # noqa: E402


def save_figure(fig, run_dir: str | Path, name: str, dpi: int = 120) -> Path:
    """Save ``fig`` as ``RUN_DIR/figures/<name>.png`` atomically and return the path."""
    out = run_layout.figures_dir(run_dir) / f"{name}.png"
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    return out


def class_counts(table: pd.DataFrame, title: str = "Images per class and split"):
    """Bar chart of images per class, coloured by split (seaborn)."""
    counts = table.groupby(["class_name", "split"]).size().rename("images").reset_index()
    fig, ax = plt.subplots(figsize=(max(5, 0.7 * table["class_name"].nunique() + 2), 3.5))
    sns.barplot(data=counts, x="class_name", y="images", hue="split", ax=ax,
                order=list(dict.fromkeys(table.sort_values("label")["class_name"])))
    ax.set_xlabel("class")
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    return fig


def image_grid(images_by_row: Sequence[Sequence], row_labels: Sequence[str], resolution: int | None = None,
               title: str | None = None, cell_inches: float = 1.1):
    """Grid of images, one row per label. Items are paths, PIL images or arrays/tensors in [0, 1]."""
    n_rows = len(images_by_row)
    n_cols = max((len(r) for r in images_by_row), default=1)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(cell_inches * n_cols + 1.2, cell_inches * n_rows + 0.3),
                             squeeze=False)
    for r, row in enumerate(images_by_row):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([]), ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if c < len(row):
                ax.imshow(_as_array(row[c], resolution), interpolation="nearest")
        axes[r][0].set_ylabel(row_labels[r], rotation=0, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _as_array(item, resolution: int | None) -> np.ndarray:
    if isinstance(item, (str, Path)):
        im = open_rgb(item)
        if resolution:
            im = center_crop_resize(im, resolution)
        return np.asarray(im)
    if hasattr(item, "detach"):  # torch tensor [3,H,W] in [0,1]
        return item.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
    return np.asarray(item)


def split_image_grid(table: pd.DataFrame, n_per_class: int = 8, resolution: int | None = None, seed: int = 0,
                     title: str | None = None):
    """A grid of ``n_per_class`` training images per class, drawn with ``seed``."""
    rows, labels = [], []
    train = table[table["split"] == "train"]
    for name in dict.fromkeys(table.sort_values("label")["class_name"]):
        sub = train[train["class_name"] == name]
        pick = sub.sample(n=min(n_per_class, len(sub)), random_state=seed)
        rows.append(list(pick["path"]))
        labels.append(name)
    return image_grid(rows, labels, resolution=resolution, title=title)


def image_size_table(table: pd.DataFrame) -> pd.DataFrame:
    """Original width/height and mode of every image in the split table (reads headers only)."""
    recs = []
    for row in table.itertuples():
        with Image.open(row.path) as im:
            recs.append({"class_name": row.class_name, "split": row.split, "width": im.size[0],
                         "height": im.size[1], "mode": im.mode})
    return pd.DataFrame(recs)


def embedding_maps(vectors, labels, class_names: Sequence[str], seed: int = 0, prototypes=None,
                   title: str = "Embeddings", tsne: bool = True):
    """PCA and t-SNE maps of ``vectors`` coloured by class; ``prototypes`` [C, K, D] drawn as stars.

    Prototypes are embedded together with the images (t-SNE cannot place new points afterwards),
    so both panels show them in the same map as the data.
    """
    x = np.asarray(vectors, dtype=np.float32)
    y = np.asarray(labels)
    protos = None if prototypes is None else np.asarray(prototypes, dtype=np.float32)
    pts = x if protos is None else np.concatenate([x, protos.reshape(-1, protos.shape[-1])])
    maps = {"PCA": PCA(n_components=2, random_state=seed).fit_transform(pts)}
    if tsne and len(pts) > 5:
        perplexity = float(min(30, max(2, (len(pts) - 1) // 3)))
        maps["t-SNE"] = TSNE(n_components=2, random_state=seed, perplexity=perplexity, init="pca").fit_transform(pts)
    palette = sns.color_palette("tab10" if len(class_names) <= 10 else "tab20", len(class_names))
    fig, axes = plt.subplots(1, len(maps), figsize=(5.2 * len(maps) + 1.5, 4.6), squeeze=False)
    for ax, (name, z) in zip(axes[0], maps.items()):
        for i, c in enumerate(class_names):
            m = y == i
            ax.scatter(z[: len(x)][m, 0], z[: len(x)][m, 1], s=9, alpha=0.6, color=palette[i], label=c)
        if protos is not None:
            owner = np.repeat(np.arange(protos.shape[0]), protos.shape[1])
            zp = z[len(x):]
            ax.scatter(zp[:, 0], zp[:, 1], s=260, marker="*", c=[palette[o] for o in owner],
                       edgecolors="black", linewidths=1.2, label="prototype")
        ax.set_title(f"{title}: {name}")
        ax.set_xticks([]), ax.set_yticks([])
    axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, markerscale=1.2)
    fig.tight_layout()
    return fig


def training_curve(history: Sequence[dict], keys: Sequence[str] = ("loss", "dce", "pl"), x: str = "epoch",
                   secondary: str | None = "train_acc", title: str = "Training curve"):
    """Line plot of ``history`` records (one dict per epoch/step); ``secondary`` on a right axis."""
    df = pd.DataFrame(history)
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for k in keys:
        if k in df:
            ax.plot(df[x], df[k], label=k)
    ax.set_xlabel(x)
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    lines, labels = ax.get_legend_handles_labels()
    if secondary and secondary in df:
        ax2 = ax.twinx()
        ax2.plot(df[x], df[secondary], color="black", linestyle="--", label=secondary)
        ax2.set_ylabel(secondary)
        ax2.set_ylim(0, 1.02)
        l2, lab2 = ax2.get_legend_handles_labels()
        lines, labels = lines + l2, labels + lab2
    ax.legend(lines, labels, loc="center right")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def cpl_training(history: Sequence[dict], title: str = "Prototype learning"):
    """CPL's per-epoch record in two panels: the losses (log scale) with the training accuracy, and the
    prototypes' mean norm, which must level off for the class table to stop moving."""
    df = pd.DataFrame(history)
    fig, (ax, ax_n) = plt.subplots(1, 2, figsize=(10, 3.4))
    for k in ("loss", "dce", "pl"):
        ax.plot(df["epoch"], df[k], label=k)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    ax2.plot(df["epoch"], df["train_acc"], color="black", linestyle="--", label="train_acc")
    ax2.set_ylim(0, 1.02)
    lines, labels = [sum(v, []) for v in zip(ax.get_legend_handles_labels(), ax2.get_legend_handles_labels())]
    ax.legend(lines, labels, loc="center right", fontsize=8)
    ax.set_title(title)
    ax_n.plot(df["epoch"], df["prototype_norm"], color="tab:purple")
    ax_n.set_xlabel("epoch")
    ax_n.set_ylabel("mean prototype norm")
    ax_n.set_ylim(0, max(1.1, float(df["prototype_norm"].max()) * 1.1))
    ax_n.set_title("Prototype norm (features have norm 1)")
    fig.tight_layout()
    return fig


def distance_heatmap(prototypes, class_names: Sequence[str], title: str = "Distance between class prototypes"):
    """Heatmap of Euclidean distances between the classes' prototypes (nearest pair for K>1)."""
    p = torch.as_tensor(np.asarray(prototypes, dtype=np.float32))
    c, k, d = p.shape
    dist = torch.cdist(p.reshape(-1, d), p.reshape(-1, d)).reshape(c, k, c, k).amin(dim=(1, 3)).numpy()
    fig, ax = plt.subplots(figsize=(0.55 * c + 2.5, 0.5 * c + 1.8))
    sns.heatmap(dist, annot=c <= 12, fmt=".2f", xticklabels=class_names, yticklabels=class_names,
                cmap="viridis", ax=ax, cbar_kws={"label": "distance"})
    ax.set_title(title)
    fig.tight_layout()
    return fig


def confusion_matrix(cm, class_names: Sequence[str], title: str = "Confusion matrix", normalize: bool = True):
    """Heatmap of a confusion matrix (rows true, columns predicted), row-normalised by default."""
    m = np.asarray(cm, dtype=float)
    if normalize:
        m = m / np.clip(m.sum(1, keepdims=True), 1, None)
    fig, ax = plt.subplots(figsize=(0.55 * len(class_names) + 2.5, 0.5 * len(class_names) + 1.8))
    sns.heatmap(m, annot=len(class_names) <= 12, fmt=".2f" if normalize else "g", cmap="Blues",
                xticklabels=class_names, yticklabels=class_names, ax=ax, vmin=0, vmax=1 if normalize else None)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def fidelity_bars(fidelity: pd.DataFrame, metrics: Sequence[str] = ("precision", "recall", "density", "coverage",
                                                                    "prototype_consistency")):
    """Per-class fidelity/diversity of each arm, one panel per metric (rows of ``metrics.fidelity_table``)."""
    df = fidelity[fidelity["class_name"] != "all"].melt(id_vars=["arm", "class_name"], value_vars=list(metrics),
                                                       var_name="metric", value_name="value")
    g = sns.catplot(data=df, x="class_name", y="value", hue="arm", col="metric", kind="bar", col_wrap=3,
                    height=2.8, aspect=1.3, sharey=False, palette="Set1")
    g.set_xticklabels(rotation=45)
    g.set_axis_labels("", "")
    space = fidelity["feature_space"].iloc[0] if "feature_space" in fidelity else "embedding space of notebook 02"
    g.fig.suptitle(f"Fidelity and diversity per class\n{space}", y=1.05, fontsize=9)
    return g.fig



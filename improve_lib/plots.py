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

from .data import center_crop_resize, open_rgb  # noqa: E402
from .io import atomic_path  # noqa: E402


def save_figure(fig, run_dir: str | Path, name: str, dpi: int = 120) -> Path:
    """Save ``fig`` as ``RUN_DIR/figures/<name>.png`` atomically and return the path."""
    out = Path(run_dir) / "figures" / f"{name}.png"
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
    from PIL import Image

    recs = []
    for row in table.itertuples():
        with Image.open(row.path) as im:
            recs.append({"class_name": row.class_name, "split": row.split, "width": im.size[0],
                         "height": im.size[1], "mode": im.mode})
    return pd.DataFrame(recs)

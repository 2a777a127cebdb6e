"""Do the generated images have the real images' tones? Per-channel statistics of samples against the
training images, under variants of the sampler.

A diffusion model that gets the brightness or contrast of its images wrong fails every downstream
measure for that reason alone (a classifier trained on darkened cells does not recognise real ones), so
notebook 05 shows these numbers before anything else is measured. Values are on the [-1, 1] scale the
diffusion model works on: per channel the mean, the standard deviation over all pixels, and the 98th
percentile (the bright background of cytology and dermoscopy images sits there). :func:`likeness` adds
two numbers the recipe screening compares against the real images: fine detail and the spread of tone.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from skimage import filters

from improve_lib import data
from improve_lib.diffusion import sample

CHANNELS = ("R", "G", "B")


def channel_statistics(images: torch.Tensor) -> pd.DataFrame:
    """Per channel of ``images`` (``[N, 3, R, R]`` in [0, 1]): ``mean``, ``std`` and ``p98`` on the [-1, 1]
    scale, and ``spread_of_image_means`` (std over images of each image's mean: the diversity of tone)."""
    x = torch.as_tensor(images).double().mul(2).sub(1)
    flat = x.transpose(0, 1).reshape(3, -1)
    return pd.DataFrame({"channel": CHANNELS, "mean": flat.mean(1).numpy(), "std": flat.std(1).numpy(),
                         "p98": torch.quantile(flat.float(), 0.98, dim=1).double().numpy(),
                         "spread_of_image_means": x.mean(dim=(2, 3)).std(0).numpy()})


def tone_table(real: torch.Tensor, generated: Mapping[str, torch.Tensor]) -> pd.DataFrame:
    """One row per image set and channel: the statistics of :func:`channel_statistics`, plus
    ``mean_gap`` (generated minus real) and ``std_ratio`` (generated / real); ``real`` first."""
    ref = channel_statistics(real)
    rows = [ref.assign(images="real", mean_gap=0.0, std_ratio=1.0)]
    for name, images in generated.items():
        st = channel_statistics(images)
        rows.append(st.assign(images=name, mean_gap=st["mean"] - ref["mean"], std_ratio=st["std"] / ref["std"]))
    cols = ["images", "channel", "mean", "std", "p98", "spread_of_image_means", "mean_gap", "std_ratio"]
    return pd.concat(rows, ignore_index=True)[cols]


def tone_summary(real: torch.Tensor, generated: torch.Tensor) -> dict[str, Any]:
    """The numbers a sweep compares: per channel ``mean_gap`` and ``std_ratio``, the largest
    ``|mean_gap|`` and the ``std_ratio`` farthest from 1."""
    t = tone_table(real, {"generated": generated})
    g = t[t.images == "generated"]
    worst = g["std_ratio"].iloc[int(np.argmax(np.abs(np.log(g["std_ratio"].to_numpy()))))]
    return {"mean_gap": [float(v) for v in g["mean_gap"]], "std_ratio": [float(v) for v in g["std_ratio"]],
            "max_abs_mean_gap": float(np.abs(g["mean_gap"]).max()), "worst_std_ratio": float(worst)}


def detail(images: torch.Tensor) -> float:
    """Median over ``images`` (``[N, 3, R, R]`` in [0, 1]) of the variance of the Laplacian of each image's grey
    level: how much fine structure (edges, chromatin, texture) an image holds. Blur lowers it; so does a sampler
    that averages modes. Only comparable between images of the same resolution."""
    grey = torch.as_tensor(images).double().mean(1).numpy()
    return float(np.median([filters.laplace(g).var() for g in grey]))


def likeness(real: torch.Tensor, generated: Mapping[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """Each set of ``generated`` against ``real`` (all ``[N, 3, R, R]`` in [0, 1], one R), 1 meaning as the real
    images: ``detail_ratio`` (:func:`detail`) and ``tone_spread_ratio`` (the mean over channels of
    ``spread_of_image_means`` of :func:`tone_table`, how much images differ in tone from one another)."""
    spread = tone_table(real, generated).groupby("images", sort=False)["spread_of_image_means"].mean()
    ref = detail(real)
    return {name: {"detail_ratio": detail(images) / ref, "tone_spread_ratio": float(spread[name] / spread["real"])}
            for name, images in generated.items()}


def sampler_variants(settings: Mapping[str, Any]) -> dict[str, tuple[dict[str, Any], bool]]:
    """The sampler as set (EMA weights), and each with one thing changed: x0 clipping switched (off when
    it is on, on when off), no guidance (w = 0), and the raw weights instead of the EMA."""
    base = dict(settings)
    other_clip = "none" if base["SAMPLE_CLIPPING"] != "none" else "clip"
    return {"as set": (base, True),
            f"clipping {other_clip}": ({**base, "SAMPLE_CLIPPING": other_clip}, True),
            "w = 0": ({**base, "GUIDANCE_SCALE": 0.0}, True),
            "raw weights": (base, False)}


def diagnose(run_dir: str | Path, arm: str, settings: Mapping[str, Any], n_per_class: int,
             seed: int) -> tuple[pd.DataFrame, dict[str, torch.Tensor]]:
    """Sample ``n_per_class`` images per class with each of :func:`sampler_variants` (same seeds for all)
    and tabulate their tones against the run's training images (at the model's resolution). Returns
    ``(tone_table, images by variant)``; nothing is written."""
    images, real = {}, None
    for name, (variant, ema) in sampler_variants(sample.sampler_settings(settings)).items():
        model, class_names, cfg, sched_cfg, norm = sample.trained(run_dir, arm, ema)
        if real is None:
            real = data.training_images(run_dir, int(cfg["RESOLUTION"]))[0].float().div(255)
        labels = [c for c in range(len(class_names)) for _ in range(int(n_per_class))]
        seeds = [sample.image_seed(seed, c, i) for c in range(len(class_names)) for i in range(int(n_per_class))]
        images[name] = sample.ddim_sample(model, labels, scheduler_config=sched_cfg, seeds=seeds, settings=variant,
                                          normalization=norm)
    return tone_table(real, images), images


def tone_figure(table: pd.DataFrame, title: str = "Tone of the samples against the real training images"):
    """Per channel, mean (bar) and std (error bar) of every image set; the real images' values dashed."""
    sets = list(dict.fromkeys(table["images"]))
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    width = 0.8 / len(sets)
    for k, name in enumerate(sets):
        sub = table[table.images == name]
        xs = np.arange(3) + (k - (len(sets) - 1) / 2) * width
        ax.bar(xs, sub["mean"], width, yerr=sub["std"], capsize=3, label=name, alpha=0.85)
    real = table[table.images == "real"]
    for c, (m, sd) in enumerate(zip(real["mean"], real["std"])):
        ax.hlines([m, m - sd, m + sd], c - 0.45, c + 0.45, colors="black", linestyles=["--", ":", ":"], linewidth=1)
    ax.set_xticks(range(3), CHANNELS)
    ax.set_ylabel("pixel value ([-1, 1] scale)")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=min(len(sets), 5), loc="lower center")
    fig.tight_layout()
    return fig

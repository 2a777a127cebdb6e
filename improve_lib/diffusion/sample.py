"""Class-conditional DDIM sampling with classifier-free guidance (paper section 4.2: DDIM, 50 steps).

diffusers' ``DDIMPipeline`` calls the UNet without class labels, so the study has its own guided loop over
``DDIMScheduler`` (built from the training ``DDPMScheduler`` config, so the noise schedule and the
prediction type are the ones the model was trained on): :mod:`improve_lib.diffusion.guided_pipeline`, the same code
that every trained model folder ships as its diffusers pipeline. This module checks the study's
settings, seeds every image and writes a run's samples.

Guidance follows the reference code: ``out = (1 + w) * out_cond - w * out_uncond`` on the model's output
(``w = 0`` is purely conditional), with the conditional and unconditional passes batched into one forward.

The sampler's settings are notebook 05's parameters (:data:`SAMPLER_KEYS`, checked by
:func:`sampler_settings`): ``STEPS``, ``ETA``, ``GUIDANCE_SCALE``; ``GUIDANCE_INTERVAL`` ``[lo, hi]``, the
noise levels ``t / (T - 1)`` at which guidance is applied (Kynkaenniemi et al. 2024: guidance only over a
middle range; ``[0, 1]`` is every step, the paper); ``TIMESTEP_SPACING`` ``leading`` (diffusers' DDIM
default, the paper's code: the first step is t = T - T/STEPS) or ``trailing`` (the first step is
t = T - 1, pure noise under a zero-terminal-SNR schedule; Lin et al. 2024); ``SAMPLE_CLIPPING`` of the
predicted x0 at each step: ``clip`` to the data's range (diffusers' default), ``dynamic`` thresholding
(Imagen; images in [-1, 1] only) or ``none``. A model trained on standardised inputs
(``INPUT_NORMALIZATION``) is sampled in that space and its output mapped back to [-1, 1].

Reproducibility per image: each image's initial noise (and, for ``eta > 0``, its per-step noise) comes
from its own generator seeded by that image's seed, so regenerating one image alone gives the same
pixels as its slot in a batch, up to the rounding of batch-size-dependent kernels (below 1e-5 on a
CPU; up to 2e-3 of the [0, 1] range on an H200, where convolutions may use TF32).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from diffusers import DDIMScheduler
from PIL import Image
from torchvision.utils import make_grid
from tqdm.auto import tqdm

from improve_lib.core import run_layout
from improve_lib.core.errors import StudyInputError
from improve_lib.core.files import atomic_path, atomic_write_json
from improve_lib.core.values import as_float, as_int, one_of, require
from improve_lib.diffusion import guided_pipeline, trained_arm, training_objective, unet

SAMPLER_KEYS = ("STEPS", "ETA", "GUIDANCE_SCALE", "GUIDANCE_INTERVAL", "TIMESTEP_SPACING", "SAMPLE_CLIPPING")
TIMESTEP_SPACINGS, CLIPPINGS = guided_pipeline.TIMESTEP_SPACINGS, guided_pipeline.CLIPPINGS
guided_epsilon = guided_pipeline.guided_output  # the guided model output, one batched forward


def sampler_settings(params: Mapping[str, Any]) -> dict[str, Any]:
    """The sampler keys of ``params`` (notebook 05's parameters), checked; errors name the key."""
    require(params, SAMPLER_KEYS, "the sampler settings", "05_sample")
    interval = params["GUIDANCE_INTERVAL"]
    if not isinstance(interval, (list, tuple)) or len(interval) != 2:
        raise StudyInputError(f"GUIDANCE_INTERVAL must be [lo, hi] with 0 <= lo <= hi <= 1, got {interval!r}")
    lo, hi = (as_float(v, "GUIDANCE_INTERVAL", 0.0, 1.0) for v in interval)
    if lo > hi:
        raise StudyInputError(f"GUIDANCE_INTERVAL must be [lo, hi] with lo <= hi, got {interval!r}")
    return {"STEPS": as_int(params["STEPS"], "STEPS", 1), "ETA": as_float(params["ETA"], "ETA", 0.0, 1.0),
            "GUIDANCE_SCALE": as_float(params["GUIDANCE_SCALE"], "GUIDANCE_SCALE", 0.0),
            "GUIDANCE_INTERVAL": [lo, hi],
            "TIMESTEP_SPACING": one_of(params["TIMESTEP_SPACING"], "TIMESTEP_SPACING", TIMESTEP_SPACINGS),
            "SAMPLE_CLIPPING": one_of(params["SAMPLE_CLIPPING"], "SAMPLE_CLIPPING", CLIPPINGS)}


def preview_settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The sampler of the preview grids during training: deterministic DDIM with ``SAMPLE_STEPS`` steps and
    ``PREVIEW_GUIDANCE_SCALE`` at every step, trailing timesteps (they start at the last, noisiest step
    whatever the schedule) and x0 clipped to the data's range."""
    return {"STEPS": int(cfg["SAMPLE_STEPS"]), "ETA": 0.0, "GUIDANCE_SCALE": float(cfg["PREVIEW_GUIDANCE_SCALE"]),
            "GUIDANCE_INTERVAL": [0.0, 1.0], "TIMESTEP_SPACING": "trailing", "SAMPLE_CLIPPING": "clip"}


def ddim_scheduler(scheduler_config: Mapping[str, Any], settings: Mapping[str, Any], data_range: float = 1.0):
    """A ``DDIMScheduler`` with the training schedule of ``scheduler_config`` and the sampler's spacing
    and x0 clipping (``data_range``: the largest |value| of an image in the model's space), set to
    ``settings["STEPS"]`` steps."""
    try:
        return guided_pipeline.ddim_scheduler(scheduler_config, int(settings["STEPS"]), settings["TIMESTEP_SPACING"],
                                              settings["SAMPLE_CLIPPING"], data_range)
    except ValueError as exc:  # the pipeline speaks in its arguments' names; name the study's parameters
        raise StudyInputError(f"SAMPLE_CLIPPING / TIMESTEP_SPACING: {exc}") from None


def _generators(seeds: Sequence[int] | torch.Generator, n: int) -> list[torch.Generator] | torch.Generator:
    if isinstance(seeds, torch.Generator):
        return seeds
    seeds = list(seeds)
    if len(seeds) != n:
        raise StudyInputError(f"got {len(seeds)} seeds for {n} images; give one seed per image")
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


@torch.no_grad()
def ddim_sample(model, class_labels: torch.Tensor | Sequence[int], *, scheduler_config: Mapping[str, Any],
                seeds: Sequence[int] | torch.Generator, settings: Mapping[str, Any],
                normalization: tuple[Sequence[float], Sequence[float]] | None = None, null_label: int | None = None,
                resolution: int | None = None, progress: bool = False) -> torch.Tensor:
    """Generate one image per entry of ``class_labels`` with guided DDIM.

    Args:
        model: the trained ``UNet2DConditionModel`` (put in eval mode here).
        class_labels: ``[B]`` class indices 0..C-1.
        scheduler_config: the training ``DDPMScheduler`` config (``training_objective.noise_scheduler(cfg).config``).
        seeds: one int seed per image (per-image generators: image i is independent of the batch), or a
            single ``torch.Generator`` shared by the batch.
        settings: the sampler's settings (:func:`sampler_settings`).
        normalization: the model's input ``(mean, std)`` per channel (``INPUT_MEAN``, ``INPUT_STD`` of its
            training config); None for images in [-1, 1].
        null_label: the null-condition index (default: the table's last row).
        resolution: image side (default: ``model.config.sample_size``).

    Returns ``[B, 3, R, R]`` float32 on the CPU with values in [0, 1].
    """
    labels = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1)
    if null_label is None:
        null_label = unet.null_label(model)
    if len(labels) and (labels.min() < 0 or labels.max() >= null_label):
        raise StudyInputError(f"class_labels must be in 0..{null_label - 1}, got {labels.tolist()}")
    mean, std = normalization or ([0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
    sched = ddim_scheduler(scheduler_config, settings, training_objective.data_range(mean, std))
    bar = (lambda steps: tqdm(steps, desc="DDIM", leave=False)) if progress else None
    return guided_pipeline.denoise(model, labels, _generators(seeds, len(labels)), sched,
                                   guidance_scale=settings["GUIDANCE_SCALE"], guidance_interval=settings["GUIDANCE_INTERVAL"],
                                   eta=float(settings["ETA"]), null_label=null_label, input_mean=mean, input_std=std,
                                   resolution=int(resolution or model.config.sample_size), progress=bar)


def sample_grid(model, num_classes: int, *, scheduler_config: Mapping[str, Any], settings: Mapping[str, Any],
                per_class: int, seed: int, normalization=None, resolution: int | None = None) -> torch.Tensor:
    """A preview grid ``[3, H, W]`` in [0, 1]: one row per class, ``per_class`` images per row.

    Image ``k`` (row-major) uses seed ``seed + k``, so grids from different steps of a run are comparable.
    """
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    images = ddim_sample(model, labels, scheduler_config=scheduler_config, settings=settings,
                         seeds=[seed + k for k in range(len(labels))], normalization=normalization,
                         resolution=resolution)
    return make_grid(images, nrow=per_class, padding=2, pad_value=1.0)


def save_png(image: torch.Tensor, path: str | Path) -> Path:
    """Write a ``[3, H, W]`` image in [0, 1] as an 8-bit PNG, atomically."""
    arr = guided_pipeline.to_uint8(image).numpy()
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(arr)).save(tmp, format="PNG")
    return Path(path)


# ------------------------------------------------------------------------------ a run's samples

def image_seed(seed: int, class_index: int, index: int) -> int:
    """The seed of image ``index`` of class ``class_index``: a pure function of the three numbers."""
    return int(np.random.SeedSequence([int(seed), int(class_index), int(index)]).generate_state(1)[0])


def trained(run_dir: str | Path, arm: str, ema: bool, device: str | None = None):
    """An arm's trained model ready to sample: ``(model on device, class names, training config, the
    scheduler config, the input normalization (mean, std))``."""
    model, class_names, cfg = trained_arm.load_trained(run_dir, arm, ema=ema)
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    normalization = (cfg.get("INPUT_MEAN") or [0.0] * 3, cfg.get("INPUT_STD") or [1.0] * 3)
    return model, class_names, cfg, training_objective.noise_scheduler(cfg).config, normalization


def sample_arm(run_dir: str | Path, arm: str, n_per_class: int, *, settings: Mapping[str, Any], seed: int,
               batch_size: int, ema: bool, device: str | None = None, progress: bool = True) -> pd.DataFrame:
    """Generate ``n_per_class`` images per class with ``arm``'s trained model into
    ``RUN_DIR/samples/<arm>/<class>/<index>.png`` and return the index table.

    Image ``(class c, index i)`` starts from noise seeded by :func:`image_seed` ``(seed, c, i)``, so any
    image can be regenerated alone. Existing PNGs are kept (a rerun fills in what is missing), which is
    safe because their bytes depend only on (model, seed, class, index, sampler settings); the settings
    and the model's weight hash are recorded in ``samples/<arm>/sampling.json`` and a change of either is
    refused.
    """
    if int(n_per_class) < 1:
        raise StudyInputError(f"N_PER_CLASS must be >= 1, got {n_per_class}")
    settings = sampler_settings(settings)
    model, class_names, cfg, sched_cfg, normalization = trained(run_dir, arm, ema, device)
    out_dir = run_layout.samples_dir(run_dir, arm)
    record = {"arm": arm, **settings, "seed": int(seed), "ema": bool(ema),
              "guidance_formula": "(1+w)*out_cond - w*out_uncond at t/(T-1) in GUIDANCE_INTERVAL, else out_cond",
              "model_sha256": unet.state_dict_sha256(model)}  # a retrained model must not reuse old PNGs
    path = out_dir / "sampling.json"
    if path.is_file():
        old = json.loads(path.read_text())
        changed = sorted(k for k in record if old.get(k) != record[k])
        if changed:
            raise StudyInputError(f"{out_dir} holds samples made with other settings {changed} "
                                  f"(was { {k: old.get(k) for k in changed} }); delete it to sample again")
    atomic_write_json(path, record)
    jobs = [(c, i) for c in range(len(class_names)) for i in range(int(n_per_class))]
    rows = [{"arm": arm, "class_name": class_names[c], "label": c, "index": i,
             "seed": image_seed(seed, c, i), "path": str(out_dir / class_names[c] / f"{i:04d}.png")} for c, i in jobs]
    todo = [r for r in rows if not Path(r["path"]).is_file()]
    bar = tqdm(total=len(rows), initial=len(rows) - len(todo), desc=f"sampling {arm}", unit="img",
               disable=not progress)
    for start in range(0, len(todo), int(batch_size)):
        chunk = todo[start:start + int(batch_size)]
        images = ddim_sample(model, [r["label"] for r in chunk], scheduler_config=sched_cfg, settings=settings,
                             seeds=[r["seed"] for r in chunk], normalization=normalization)
        for r, img in zip(chunk, images):
            save_png(img, r["path"])
        bar.update(len(chunk))
    bar.close()
    table = pd.DataFrame(rows)
    with atomic_path(out_dir / "index.csv") as tmp:  # paths relative to the run folder: it can be moved
        table.assign(path=run_layout.relative_paths(table["path"], run_dir)).to_csv(tmp, index=False)
    return table


def regenerate(run_dir: str | Path, arm: str, class_name: str, index: int) -> torch.Tensor:
    """Regenerate one image of a run's samples alone, from its (seed, class, index), as ``[3, R, R]``, with
    the settings (sampler, EMA or raw weights) recorded in ``samples/<arm>/sampling.json``."""
    out_dir = run_layout.samples_dir(run_dir, arm)
    if not (out_dir / "sampling.json").is_file():
        raise StudyInputError(f"no samples for arm {arm!r} in {out_dir}: run notebook 05_sample first")
    s = json.loads((out_dir / "sampling.json").read_text())
    model, class_names, cfg, sched_cfg, normalization = trained(run_dir, arm, s["ema"])
    if class_name not in class_names:
        raise StudyInputError(f"class {class_name!r} is not one of {class_names}")
    c = class_names.index(class_name)
    return ddim_sample(model, [c], scheduler_config=sched_cfg, seeds=[image_seed(s["seed"], c, index)],
                       settings=sampler_settings(s), normalization=normalization)[0]


def read_samples(run_dir: str | Path, arm: str, class_names: Sequence[str], n_per_class: int):
    """The sample table of ``arm``, checked: every class present with at least ``n_per_class`` images.

    Errors name the missing class or the class that has too few images, and which notebook to run.
    """
    out_dir = run_layout.samples_dir(run_dir, arm)
    if not out_dir.is_dir():
        raise StudyInputError(f"no samples for arm {arm!r} in {out_dir}: run notebook 05_sample first")
    rows = []
    for c, name in enumerate(class_names):
        files = sorted((out_dir / name).glob("*.png")) if (out_dir / name).is_dir() else []
        if not files:
            raise StudyInputError(f"{out_dir}: class {name!r} has no samples (expected {n_per_class})")
        if len(files) < int(n_per_class):
            raise StudyInputError(f"{out_dir / name}: {len(files)} images, fewer than N_PER_CLASS={n_per_class}")
        rows += [{"arm": arm, "class_name": name, "label": c, "path": str(p)} for p in files[: int(n_per_class)]]
    return pd.DataFrame(rows)


def generated_files(run_dir, arms: Sequence[str]) -> pd.DataFrame:
    """Every generated image of ``arms``: ``samples/<arm>/<class>/*.png`` as rows ``arm, intended_class,
    path`` (class folders in name order; empty ones skipped). A missing arm folder, or no image at all,
    is an error naming the folder."""
    run_dir = Path(run_dir)
    rows = []
    for arm in arms:
        arm_dir = run_layout.samples_dir(run_dir, arm)
        if not arm_dir.is_dir():
            raise StudyInputError(f"objective plausibility: no samples for arm {arm!r}: {arm_dir} does not exist "
                                  "(run notebook 05_sample first)")
        found = [{"arm": arm, "intended_class": class_dir.name, "path": f}
                 for class_dir in sorted(p for p in arm_dir.iterdir() if p.is_dir()) for f in sorted(class_dir.glob("*.png"))]
        if not found:
            raise StudyInputError(f"objective plausibility: no PNG samples under {arm_dir} (arm {arm!r}; "
                                  "run notebook 05_sample first)")
        rows += found
    return pd.DataFrame(rows)

"""Training entry point for both arms: ``train(config)``, ``python -m improve_lib.train --config ...``.

One function serves a notebook (``launch(config_path, num_processes)``, which uses
``accelerate.notebook_launcher``), a terminal and a cluster (``accelerate launch -m improve_lib.train
--config params.yaml``). Everything it writes lives under ``RUN_DIR/models/<ARM_NAME>/``::

    checkpoint-<step>/     accelerator.save_state + training_state.json (written last = complete)
    loss.csv               step, loss, lr (one row per optimizer step)
    loss.png               the loss curve
    samples/step-<n>.png   fixed-seed preview grids (EMA weights; one row per class)
    class_table.safetensors  the table the run started from (rows 0..C-1), for the record
    final/                 save_pretrained (raw weights), ema/ (EMA weights), scheduler/,
                           class_names.json, train_config.yaml, training_summary.json

Objective (paper section 3, DDPM): epsilon-prediction MSE at a uniformly drawn timestep, with the class
label replaced by the null row ``C`` with probability ``P_UNCOND`` (classifier-free guidance).

Exact kill-and-resume: nothing random depends on a dataloader or on the global RNG state. Each step's
timesteps, noise, condition-dropout mask, flips and dropout seed are drawn from generators seeded by
hashing ``(SEED, rank, step)`` with numpy's ``SeedSequence`` (no collisions between ranks and steps, as a
linear formula like ``seed*K + rank*M + step`` would have), and the batch indices come from per-epoch
permutations seeded by ``(SEED, epoch)``, shared by all ranks, each rank taking its slice of the global
batch (``BATCH_SIZE`` x world size). A run resumed from ``checkpoint-k`` therefore replays steps
``k+1..N`` exactly as an uninterrupted run would.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import re
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from .errors import StudyInputError
from .io import atomic_path, atomic_write_json, atomic_write_text
from .models import (CLASS_EMBEDDING_MAPS, MODEL_DEFAULTS, MODEL_KEYS, build_unet, freeze_class_table, model_config,
                     noise_scheduler, prototype_class_table, state_dict_sha256)

ARMS = ("prototype", "baseline")
STATE_FILE = "training_state.json"
STATE_FORMAT = 1
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")

TRAIN_DEFAULTS: dict[str, Any] = {
    "RUN_DIR": None,              # required: the run folder (data/split.csv, prototypes/, embeddings/)
    "ARM": None,                  # required: "prototype" | "baseline"
    "ARM_NAME": None,             # output folder under models/; default ARM (ablations use their own RUN_DIR)
    "CLASS_EMBEDDING_MAP": "none",  # "none" (COND_DIM = prototype dim, paper) | "pca" (fixed whitened PCA)
    "FREEZE_PROTOTYPES": True,    # prototype arm: freeze the table (the paper); False = ablation
    "P_UNCOND": 0.1,              # condition dropout for classifier-free guidance
    "LR": 1e-4,
    "WEIGHT_DECAY": 0.01,         # torch's AdamW default (the paper names AdamW without a value)
    "WARMUP_STEPS": 0,
    "LR_SCHEDULE": "constant",    # "constant" | "cosine" (to 0 at the last step)
    "GRAD_CLIP": 1.0,             # max grad norm; 0 disables
    "EMA_DECAY": 0.999,           # 0 disables EMA
    "MIXED_PRECISION": "auto",    # "auto" (bf16 on CUDA if supported, else no) | "no" | "bf16" | "fp16"
    "MAX_STEPS": None,            # give MAX_STEPS or EPOCHS
    "EPOCHS": None,
    "BATCH_SIZE": 16,             # per process
    "NUM_TRAIN_TIMESTEPS": 1000,
    "BETA_SCHEDULE": "linear",    # "linear" (DDPM) | "squaredcos_cap_v2"
    "CHECKPOINT_EVERY": 500,
    "KEEP_CHECKPOINTS": 2,
    "SAMPLE_EVERY": 0,            # preview grid every n steps (0: only at the end)
    "SAMPLE_STEPS": 25,           # DDIM steps of the preview grid
    "SAMPLE_PER_CLASS": 4,
    "PREVIEW_GUIDANCE_SCALE": 1.8,  # preview grids only; w of the reference code's (1+w)*cond - w*uncond
    "FLIP": False,                # random horizontal + vertical flips
    "CPU": "auto",                # True forces Accelerator(cpu=True); "auto": True when CUDA is absent
    "PROGRESS": True,
}
# Keys whose change makes a resumed run differ from the one its checkpoint belongs to.
RESUME_KEYS = MODEL_KEYS + ("ARM", "CLASS_EMBEDDING_MAP", "FREEZE_PROTOTYPES", "P_UNCOND", "LR", "WEIGHT_DECAY",
                            "WARMUP_STEPS", "LR_SCHEDULE", "GRAD_CLIP", "EMA_DECAY", "MIXED_PRECISION",
                            "BATCH_SIZE", "NUM_TRAIN_TIMESTEPS", "BETA_SCHEDULE", "FLIP", "WORLD_SIZE",
                            "CLASS_NAMES", "TRAIN_SET_SHA256", "CLASS_TABLE_SHA256")


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last checkpoint."""


# --------------------------------------------------------------------------------------------- config

def resolve_config(config: Mapping[str, Any] | str | os.PathLike) -> dict[str, Any]:
    """Read ``config`` (a dict or a YAML path), fill defaults and check every training key.

    Keys this module does not know (other notebooks' parameters) are kept and ignored, so a run's whole
    ``params.yaml`` can be passed. Raises :class:`StudyInputError` naming the key on a bad value.
    """
    import yaml

    if isinstance(config, (str, os.PathLike)):
        path = Path(config)
        if not path.is_file():
            raise StudyInputError(f"training config {path} does not exist")
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise StudyInputError(f"training config {path} must be a YAML mapping of KEY: value")
    else:
        raw = dict(config)
    cfg = {**TRAIN_DEFAULTS, **{k: v for k, v in raw.items() if v is not None or k not in TRAIN_DEFAULTS}}
    if cfg["RUN_DIR"] in (None, ""):
        raise StudyInputError("RUN_DIR is not set in the training config")
    cfg["RUN_DIR"] = str(Path(cfg["RUN_DIR"]).expanduser().resolve())
    if cfg["ARM"] not in ARMS:
        raise StudyInputError(f"ARM must be one of {list(ARMS)}, got {cfg['ARM']!r}")
    if cfg["CLASS_EMBEDDING_MAP"] not in CLASS_EMBEDDING_MAPS:
        raise StudyInputError(f"CLASS_EMBEDDING_MAP must be one of {list(CLASS_EMBEDDING_MAPS)}, "
                              f"got {cfg['CLASS_EMBEDDING_MAP']!r}")
    for key in ("P_UNCOND", "LR", "WEIGHT_DECAY", "GRAD_CLIP", "EMA_DECAY", "PREVIEW_GUIDANCE_SCALE"):
        cfg[key] = _number(cfg[key], key, float)  # YAML reads "1e-4" as a string
    for key in ("WARMUP_STEPS", "BATCH_SIZE", "NUM_TRAIN_TIMESTEPS", "CHECKPOINT_EVERY", "SAMPLE_EVERY",
                "SAMPLE_STEPS", "SAMPLE_PER_CLASS", "KEEP_CHECKPOINTS"):
        cfg[key] = _number(cfg[key], key, int)
    for key in ("FREEZE_PROTOTYPES", "FLIP", "PROGRESS"):
        cfg[key] = _boolean(cfg[key], key)
    if not 0.0 <= cfg["P_UNCOND"] < 1.0:
        raise StudyInputError(f"P_UNCOND must be in [0, 1), got {cfg['P_UNCOND']}")
    if cfg["LR"] <= 0:
        raise StudyInputError(f"LR must be > 0, got {cfg['LR']}")
    if not 0.0 <= cfg["EMA_DECAY"] < 1.0:
        raise StudyInputError(f"EMA_DECAY must be in [0, 1) (0 disables EMA), got {cfg['EMA_DECAY']}")
    for key in ("BATCH_SIZE", "CHECKPOINT_EVERY", "KEEP_CHECKPOINTS", "SAMPLE_STEPS", "SAMPLE_PER_CLASS"):
        if cfg[key] < 1:
            raise StudyInputError(f"{key} must be >= 1, got {cfg[key]}")
    for key in ("WARMUP_STEPS", "SAMPLE_EVERY"):
        if cfg[key] < 0:
            raise StudyInputError(f"{key} must be >= 0, got {cfg[key]}")
    if cfg["LR_SCHEDULE"] not in ("constant", "cosine"):
        raise StudyInputError(f"LR_SCHEDULE must be 'constant' or 'cosine', got {cfg['LR_SCHEDULE']!r}")
    if cfg["MIXED_PRECISION"] not in ("auto", "no", "bf16", "fp16"):
        raise StudyInputError(f"MIXED_PRECISION must be auto, no, bf16 or fp16, got {cfg['MIXED_PRECISION']!r}")
    if cfg["CPU"] != "auto":
        cfg["CPU"] = _boolean(cfg["CPU"], "CPU")
    if (cfg["MAX_STEPS"] is None) == (cfg["EPOCHS"] is None):
        raise StudyInputError("give exactly one of MAX_STEPS and EPOCHS in the training config "
                              f"(got MAX_STEPS={cfg['MAX_STEPS']!r}, EPOCHS={cfg['EPOCHS']!r})")
    if cfg["MAX_STEPS"] is not None:
        cfg["MAX_STEPS"] = _number(cfg["MAX_STEPS"], "MAX_STEPS", int)
        if cfg["MAX_STEPS"] < 1:
            raise StudyInputError(f"MAX_STEPS must be >= 1, got {cfg['MAX_STEPS']}")
    else:
        cfg["EPOCHS"] = _number(cfg["EPOCHS"], "EPOCHS", float)
        if cfg["EPOCHS"] <= 0:
            raise StudyInputError(f"EPOCHS must be > 0, got {cfg['EPOCHS']}")
    if cfg["ARM_NAME"] in (None, ""):
        cfg["ARM_NAME"] = cfg["ARM"]
    noise_scheduler(cfg)  # validates NUM_TRAIN_TIMESTEPS and BETA_SCHEDULE
    model_config({**cfg, "COND_DIM": cfg.get("COND_DIM") or 1})  # validates the model keys early
    return cfg


def _number(value: Any, key: str, kind: type) -> int | float:
    try:
        if isinstance(value, bool):
            raise ValueError
        out = kind(float(value)) if kind is int else kind(value)
        if kind is int and float(value) != out:
            raise ValueError
        return out
    except (TypeError, ValueError):
        raise StudyInputError(f"{key} must be a{'n integer' if kind is int else ' number'}, got {value!r}") from None


def _boolean(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.lower() in ("true", "yes", "1")
    raise StudyInputError(f"{key} must be true or false, got {value!r}")


def arm_dir(run_dir: str | os.PathLike, arm_name: str) -> Path:
    """``RUN_DIR/models/<arm_name>``: where a training run writes everything."""
    return Path(run_dir) / "models" / arm_name


# ----------------------------------------------------------------------------------------------- data

def _load_train_images(run_dir: Path, resolution: int) -> tuple[torch.Tensor, torch.Tensor, list[str], str]:
    """All training images as one uint8 tensor ``[N, 3, R, R]`` (datasets are small: 1600 images at
    64 px are 20 MB), their labels, the class names and a sha256 of the training rows."""
    import hashlib

    from .data import class_names_of, load_image, read_split

    table = read_split(run_dir)
    class_names = class_names_of(table)
    train_rows = table[table["split"] == "train"]
    if train_rows.empty:
        raise StudyInputError(f"{run_dir / 'data' / 'split.csv'} has no rows with split == 'train'")
    missing = sorted(set(class_names) - set(train_rows["class_name"]))
    if missing:
        raise StudyInputError(f"{run_dir / 'data' / 'split.csv'}: class(es) {missing} have no training images")
    images, labels, digest = [], [], hashlib.sha256()
    for path, label in zip(train_rows["path"], train_rows["label"]):
        p = Path(path)
        if not p.is_absolute() and not p.exists():
            p = run_dir / p  # paths inside the run folder may be stored relative to it
        images.append(load_image(p, resolution).mul(255).round().to(torch.uint8))
        labels.append(int(label))
        digest.update(f"{path},{label}\n".encode())
    return torch.stack(images), torch.tensor(labels, dtype=torch.long), class_names, digest.hexdigest()


def _read_class_embeddings(run_dir: Path) -> tuple[torch.Tensor, list[str], Path]:
    """The run's ``prototypes/class_embeddings.safetensors`` (checked by the prototypes module's reader),
    with a missing file pointed at notebook 03."""
    from .prototypes import load_class_embeddings

    path = run_dir / "prototypes" / "class_embeddings.safetensors"
    if not path.is_file():
        raise StudyInputError(f"{path} not found: run notebook 03_prototypes for this RUN_DIR first")
    emb, names, _ = load_class_embeddings(path)
    return emb, names, path


def class_table_for(cfg: Mapping[str, Any], class_names: list[str]) -> tuple[torch.Tensor | None, int]:
    """The arm's initial table rows ``[C, COND_DIM]`` (None for the baseline) and the resolved COND_DIM.

    Prototype arm: ``prototypes/class_embeddings.safetensors`` (class names must match the split, in
    order) through :func:`~improve_lib.models.prototype_class_table`; with ``CLASS_EMBEDDING_MAP="pca"``
    the map is fitted on ``embeddings/train.npz`` ``vectors``. Baseline arm: None, with COND_DIM from the
    config, or (map "none", COND_DIM unset) the prototypes' dimension, so that both arms match.
    """
    run_dir = Path(cfg["RUN_DIR"])
    mode, cond_dim = cfg["CLASS_EMBEDDING_MAP"], cfg.get("COND_DIM")
    proto_file = run_dir / "prototypes" / "class_embeddings.safetensors"
    if cfg["ARM"] == "baseline":
        if mode == "none" and proto_file.is_file():
            emb, _, _ = _read_class_embeddings(run_dir)
            if cond_dim is not None and int(cond_dim) != emb.shape[1]:
                raise StudyInputError(f"CLASS_EMBEDDING_MAP='none' ties COND_DIM to the prototype dimension "
                                      f"{emb.shape[1]} ({proto_file}), got COND_DIM={cond_dim}")
            return None, int(emb.shape[1])
        if cond_dim is None:
            raise StudyInputError(f"COND_DIM is not set and {proto_file} (whose dimension would set it) is "
                                  f"missing: set COND_DIM or run notebook 03_prototypes first")
        return None, int(cond_dim)
    emb, names, path = _read_class_embeddings(run_dir)
    if names != list(class_names):
        raise StudyInputError(f"{path}: class_names {names} differ from the split's classes {list(class_names)} "
                              f"(same names in the same order expected); rerun notebook 03_prototypes")
    vectors = None
    if mode == "pca":
        npz = run_dir / "embeddings" / "train.npz"
        if not npz.is_file():
            raise StudyInputError(f"{npz} not found: CLASS_EMBEDDING_MAP='pca' fits its map on the training "
                                  f"embeddings; run notebook 02_embeddings first")
        with np.load(npz, allow_pickle=False) as data:
            if "vectors" not in data:
                raise StudyInputError(f"{npz} has no array 'vectors'")
            vectors = data["vectors"]
        # The prototypes live in CPL's feature space (L2-normalised, maybe projected): fit the map there.
        from .prototypes import prototype_space

        vectors = prototype_space(vectors, run_dir / "prototypes")
    table = prototype_class_table(emb, mode, cond_dim, vectors, seed=int(cfg.get("SEED") or 0))
    return table, int(table.shape[1])


# ------------------------------------------------------------------------------------------ randomness

def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0])


class _BatchIndices:
    """Index stream = concatenated per-epoch permutations of range(N) seeded by (SEED, epoch)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.cache = n, seed, {}

    def perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self.cache:
            if len(self.cache) > 4:
                self.cache.clear()
            g = torch.Generator().manual_seed(_seed(self.seed, epoch, 2))
            self.cache[epoch] = torch.randperm(self.n, generator=g)
        return self.cache[epoch]

    def __call__(self, step: int, rank: int, batch: int, world: int) -> torch.Tensor:
        pos = step * batch * world + rank * batch + torch.arange(batch)
        epochs, offsets = pos // self.n, pos % self.n
        return torch.stack([self.perm(int(e))[int(o)] for e, o in zip(epochs, offsets)])


def lr_at(cfg: Mapping[str, Any], step: int, total: int) -> float:
    """Learning rate of update ``step`` (0-based): linear warmup, then constant or cosine to 0.

    A pure function of the step (no scheduler state), so a resumed run uses exactly the same rates."""
    base, warm = cfg["LR"], cfg["WARMUP_STEPS"]
    if step < warm:
        return base * (step + 1) / warm
    if cfg["LR_SCHEDULE"] == "cosine":
        progress = (step - warm) / max(1, total - warm)
        return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return base


def _diffusion_loss(pred: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Epsilon-prediction MSE (DDPM's simple loss), in float32 whatever the autocast dtype."""
    return F.mse_loss(pred.float(), noise.float())


# --------------------------------------------------------------------------------------- checkpoints

def list_checkpoints(directory: str | os.PathLike) -> list[tuple[int, Path, bool]]:
    """``(step, folder, complete)`` for each ``checkpoint-<step>`` under ``directory``, by step.

    A checkpoint is complete when its ``training_state.json`` exists: that file is written last."""
    out = []
    d = Path(directory)
    if d.is_dir():
        for p in d.iterdir():
            m = CHECKPOINT_RE.match(p.name)
            if m and p.is_dir():
                out.append((int(m.group(1)), p, (p / STATE_FILE).is_file()))
    return sorted(out)


def _check_resume(state_path: Path, new: dict[str, Any]) -> dict[str, Any]:
    try:
        state = json.loads(state_path.read_text())
        old = state["resume_config"]
        int(state["step"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StudyInputError(f"checkpoint {state_path.parent} is corrupt: {state_path.name} is unreadable "
                              f"({exc}); delete that folder to resume from an earlier checkpoint") from None
    new = json.loads(json.dumps(new))  # compare as stored (tuples -> lists)
    # a key added to the library since the checkpoint was written counts as its default value there
    old = {**{k: v for k, v in json.loads(json.dumps(MODEL_DEFAULTS)).items() if k in new and k not in old}, **old}
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            raise StudyInputError(
                f"cannot resume from {state_path.parent}: {key} changed from {old.get(key)!r} to {new.get(key)!r}. "
                f"Restore {key}, or train into a fresh folder (new RUN_DIR or ARM_NAME, or delete "
                f"{state_path.parent.parent})")
    return state


# -------------------------------------------------------------------------------------------- training

def train(config: Mapping[str, Any] | str | os.PathLike) -> dict[str, Any]:
    """Train one arm to completion (resuming from its latest complete checkpoint) and export it.

    ``config`` is a dict or a YAML path; keys and defaults are in :data:`TRAIN_DEFAULTS` and
    :data:`~improve_lib.models.MODEL_DEFAULTS`. Prints ``world_size=<n>`` first. Returns the training
    summary (also written to ``final/training_summary.json``): steps, world size, seconds, steps/s and
    the sha256 of the final weights on every rank (they must be identical).
    """
    from accelerate.state import AcceleratorState, GradientState, PartialState

    cfg = resolve_config(config)
    try:
        return _train(cfg)
    finally:
        # A finished single-process run must not leave accelerate's singletons behind: a later train()
        # with other CPU/precision settings, or a notebook_launcher call, would refuse to start.
        if not (PartialState._shared_state and PartialState().num_processes > 1):
            AcceleratorState._reset_state(reset_partial_state=True)
            GradientState._reset_state()


def _train(cfg: dict[str, Any]) -> dict[str, Any]:
    from accelerate import Accelerator
    from accelerate.utils import gather_object
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    run_dir = Path(cfg["RUN_DIR"])
    out_dir = arm_dir(run_dir, cfg["ARM_NAME"])
    use_cpu = (not torch.cuda.is_available()) if cfg["CPU"] == "auto" else cfg["CPU"]
    precision = cfg["MIXED_PRECISION"]
    if precision == "auto":
        precision = "bf16" if not use_cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    accelerator = Accelerator(cpu=use_cpu, mixed_precision=precision, project_dir=str(out_dir))
    rank, world, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    if main:
        print(f"world_size={world}", flush=True)
    if use_cpu and world > 1:
        if multiprocessing.parent_process() is not None:
            # notebook_launcher forks its workers from a process whose OpenMP pool has run; GNU OpenMP is
            # not fork-safe and a forked worker with >1 thread hangs in its first parallel op (seen on a
            # 16-core machine). torch's DataLoader workers use 1 thread for the same reason. Workers of
            # `accelerate launch` are fresh interpreters (no multiprocessing parent) and share the cores.
            torch.set_num_threads(1)
        else:
            torch.set_num_threads(max(1, _usable_cpus() // world))  # processes share the cores
    device = accelerator.device
    started = time.time()

    resolution = int(cfg.get("RESOLUTION") or MODEL_DEFAULTS["RESOLUTION"])
    images, labels, class_names, train_sha = _load_train_images(run_dir, resolution)
    num_classes, n_images = len(class_names), len(images)
    table, cond_dim = class_table_for(cfg, class_names)
    mcfg = model_config(cfg, cond_dim)
    frozen = cfg["ARM"] == "prototype" and cfg["FREEZE_PROTOTYPES"]
    model = build_unet(mcfg, num_classes, table, freeze=frozen)
    init_table = model.class_embedding.weight.detach()[:num_classes].clone()
    global_batch = cfg["BATCH_SIZE"] * world
    total = cfg["MAX_STEPS"] if cfg["MAX_STEPS"] is not None else math.ceil(cfg["EPOCHS"] * n_images / global_batch)
    cfg = {**cfg, **mcfg, "MIXED_PRECISION": precision, "CPU": use_cpu, "WORLD_SIZE": world,
           "TOTAL_STEPS": total, "NUM_CLASSES": num_classes, "NUM_TRAIN_IMAGES": n_images,
           "CLASS_NAMES": class_names, "TRAIN_SET_SHA256": train_sha,
           "CLASS_TABLE_SHA256": _tensor_sha(init_table)}
    resume_cfg = {k: cfg[k] for k in RESUME_KEYS}
    if cfg["LR_SCHEDULE"] == "cosine":
        resume_cfg["TOTAL_STEPS"] = total  # the cosine curve depends on the run length

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg["LR"], weight_decay=cfg["WEIGHT_DECAY"])
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    ema = None
    if cfg["EMA_DECAY"] > 0:
        # diffusers' EMA warms up as min(EMA_DECAY, (1+n)/(10+n)); frozen parameters are copied as they are
        ema = EMAModel(unwrapped.parameters(), decay=cfg["EMA_DECAY"], foreach=True)
        accelerator.register_for_checkpointing(ema)
    scheduler = noise_scheduler(cfg)

    # ------------------------------------------------------------------ resume
    step, resumed_from, last_ckpt = 0, None, None
    ckpts = list_checkpoints(out_dir)
    for s, p, complete in ckpts:
        if not complete and main:
            print(f"ignoring incomplete checkpoint {p} (no {STATE_FILE}: the run stopped while saving it)",
                  flush=True)
    complete = [(s, p) for s, p, c in ckpts if c]
    if complete:
        s, p = complete[-1]
        state = _check_resume(p / STATE_FILE, resume_cfg)
        try:
            accelerator.load_state(str(p))
        except Exception as exc:  # torch/safetensors/pickle errors on a damaged folder
            raise StudyInputError(f"checkpoint {p} is corrupt or unreadable ({type(exc).__name__}: {exc}); "
                                  f"delete that folder to resume from an earlier checkpoint") from None
        if ema is not None:
            ema.to(device=device)  # accelerate loads custom state onto the CPU
        freeze_class_table(unwrapped, frozen=frozen)  # the null row and requires_grad survive, re-assert them
        step, resumed_from, last_ckpt = int(state["step"]), str(p), p
        if main:
            print(f"resumed from {p} (step {step} of {total})", flush=True)

    loss_csv = out_dir / "loss.csv"
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        _truncate_loss_csv(loss_csv, step)
        _save_table(out_dir / "class_table.safetensors", init_table, class_names)
    rows: list[str] = []          # loss.csv lines not yet appended (main process)
    unchecked: list[tuple[int, torch.Tensor, float]] = []  # (step, loss on device, lr) not yet synced
    # Reading a loss on the host waits for the GPU; doing it every step stops the CPU from queueing the
    # next step's kernels (measured: 0.55x the speed of a bare loop on an H200). So losses are checked
    # for NaN/inf in batches, always before a checkpoint or preview is written; on a CPU there is no queue.
    sync_every = 1 if device.type == "cpu" else 25
    last_loss = [float("nan")]

    def check_losses():
        if not unchecked:
            return
        values = torch.stack([v for _, v, _ in unchecked]).float().cpu().tolist()  # one host sync
        for (at, _, lr), value in zip(unchecked, values):
            if not math.isfinite(value):
                unchecked.clear()
                flush_losses()
                raise TrainingDivergedError(
                    f"training diverged: loss is {value} at step {at} (arm {cfg['ARM_NAME']}); last complete "
                    f"checkpoint: {last_ckpt or 'none'} (checkpoints kept). Lower LR or check the data.")
            if main:
                rows.append(f"{at},{value:.6g},{lr:.6g}\n")
        last_loss[0] = values[-1]
        unchecked.clear()

    def flush_losses():
        if main and rows:
            with open(loss_csv, "a", encoding="utf-8") as fh:
                fh.writelines(rows)
            rows.clear()

    io_seconds = [0.0]  # time spent on checkpoints and previews, reported apart from the step rate

    def save_checkpoint(at: int) -> Path:
        check_losses()  # never save weights that a NaN step has touched
        started_io = time.time()
        path = out_dir / f"checkpoint-{at}"
        if main and (path / STATE_FILE).exists():
            (path / STATE_FILE).unlink()  # a folder being overwritten is incomplete until we finish
        accelerator.wait_for_everyone()
        accelerator.save_state(str(path))
        accelerator.wait_for_everyone()
        if main:
            flush_losses()
            atomic_write_json(path / STATE_FILE, {"format": STATE_FORMAT, "step": at, "resume_config": resume_cfg,
                                                  "model_config": mcfg, "saved": time.strftime("%Y-%m-%dT%H:%M:%S")})
            _prune(out_dir, cfg["KEEP_CHECKPOINTS"], at)
        accelerator.wait_for_everyone()
        io_seconds[0] += time.time() - started_io
        return path

    def preview(at: int):
        check_losses()
        started_io = time.time()
        if main:
            _with_ema(ema, unwrapped, lambda: _preview(unwrapped, cfg, num_classes,
                                                       out_dir / "samples" / f"step-{at}.png", scheduler))
        accelerator.wait_for_everyone()
        io_seconds[0] += time.time() - started_io

    # ------------------------------------------------------------------ loop
    batch_indices = _BatchIndices(n_images, cfg["SEED"])
    images = images.to(device)
    labels = labels.to(device)
    bsz, res, T = cfg["BATCH_SIZE"], mcfg["RESOLUTION"], scheduler.config.num_train_timesteps
    bar = tqdm(total=total, initial=step, desc=f"train {cfg['ARM_NAME']}", disable=not (main and cfg["PROGRESS"]),
               dynamic_ncols=True)
    first_step, t0 = step, time.time()
    model.train()
    while step < total:
        g = torch.Generator().manual_seed(_seed(cfg["SEED"], rank, step, 0))
        torch.manual_seed(_seed(cfg["SEED"], rank, step, 1))  # dropout masks, also a function of the step
        idx = batch_indices(step, rank, bsz, world).to(device)
        t = torch.randint(0, T, (bsz,), generator=g).to(device)
        noise = torch.randn((bsz, 3, res, res), generator=g).to(device)
        drop = (torch.rand(bsz, generator=g) < cfg["P_UNCOND"]).to(device)
        flips = (torch.rand(bsz, 2, generator=g) < 0.5).to(device)
        x0 = images[idx].float().div(127.5).sub(1.0)
        if cfg["FLIP"]:
            x0 = torch.where(flips[:, 0, None, None, None], x0.flip(-1), x0)
            x0 = torch.where(flips[:, 1, None, None, None], x0.flip(-2), x0)
        y = torch.where(drop, torch.full_like(idx, num_classes), labels[idx])
        xt = scheduler.add_noise(x0, noise, t)
        lr = lr_at(cfg, step, total)
        for group in optimizer.param_groups:
            group["lr"] = lr
        pred = model(xt, t, encoder_hidden_states=None, class_labels=y).sample
        loss = _diffusion_loss(pred, noise)
        # the mean over ranks, so that every rank sees a NaN at the same step and stops together
        unchecked.append((step + 1, accelerator.reduce(loss.detach().clone(), reduction="mean"), lr))
        accelerator.backward(loss)
        if cfg["GRAD_CLIP"] > 0:
            accelerator.clip_grad_norm_(trainable, cfg["GRAD_CLIP"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(unwrapped.parameters())
        step += 1
        if len(unchecked) >= sync_every:
            check_losses()
            if len(rows) >= 100:
                flush_losses()
        bar.update(1)
        if step % 10 == 0 or step == total:
            bar.set_postfix(loss=f"{last_loss[0]:.4f}")
        if step % cfg["CHECKPOINT_EVERY"] == 0 or step == total:
            last_ckpt = save_checkpoint(step)
        if cfg["SAMPLE_EVERY"] and step % cfg["SAMPLE_EVERY"] == 0 and step != total:
            preview(step)
    check_losses()
    bar.close()
    seconds = time.time() - t0
    step_seconds = seconds - io_seconds[0]
    flush_losses()

    # ------------------------------------------------------------------ export
    preview(step)
    hashes = gather_object([state_dict_sha256(unwrapped)])
    summary = {"steps": step, "total_steps": total, "world_size": world, "resumed_from": resumed_from,
               "steps_this_session": step - first_step, "seconds_this_session": round(seconds, 3),
               "checkpoint_and_preview_seconds": round(io_seconds[0], 3),
               # optimizer steps per second, checkpoints and previews excluded
               "steps_per_second": (round((step - first_step) / step_seconds, 4)
                                    if step_seconds > 0 and step > first_step else None),
               "rank_weight_sha256": hashes, "wall_seconds": round(time.time() - started, 3)}
    if len(set(hashes)) != 1:
        raise RuntimeError(f"final weights differ across ranks: {hashes}")
    if main:
        _export(out_dir, unwrapped, ema, scheduler, cfg, class_names, summary)
        _plot_loss(loss_csv, out_dir / "loss.png", cfg["ARM_NAME"])
        print(f"trained {cfg['ARM_NAME']}: {step} steps -> {out_dir / 'final'}", flush=True)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


def _tensor_sha(t: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(t.detach().cpu().float().contiguous().numpy().tobytes()).hexdigest()


def _with_ema(ema, model, fn):
    """Run ``fn`` with the EMA weights swapped into ``model`` (then swapped back exactly)."""
    if ema is None:
        return fn()
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    try:
        return fn()
    finally:
        ema.restore(model.parameters())


def _preview(model, cfg, num_classes, path, scheduler):
    from .sample import sample_grid, save_png

    grid = sample_grid(model, num_classes, scheduler_config=scheduler.config, per_class=cfg["SAMPLE_PER_CLASS"],
                       guidance_scale=cfg["PREVIEW_GUIDANCE_SCALE"], steps=cfg["SAMPLE_STEPS"], seed=cfg["SEED"])
    save_png(grid, path)


def _prune(out_dir: Path, keep: int, current: int) -> None:
    """Keep the newest ``keep`` complete checkpoints; drop older ones and stale incomplete ones."""
    ckpts = list_checkpoints(out_dir)
    complete = [p for s, p, c in ckpts if c]
    for p in complete[:-keep]:
        shutil.rmtree(p, ignore_errors=True)
    for s, p, c in ckpts:
        if not c and s < current:
            shutil.rmtree(p, ignore_errors=True)


def _truncate_loss_csv(path: Path, step: int) -> None:
    """Keep the header and rows up to ``step`` (rows after a checkpoint are replayed on resume)."""
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines()[1:]:
            try:
                if int(line.split(",", 1)[0]) <= step:
                    rows.append(line + "\n")
            except ValueError:
                break  # a line cut by a kill: everything after it is replayed anyway
    atomic_write_text(path, "step,loss,lr\n" + "".join(rows))


def _save_table(path: Path, table: torch.Tensor, class_names: list[str]) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({"class_table": table.contiguous()}, str(tmp), metadata={"class_names": json.dumps(class_names)})


def _export(out_dir: Path, model, ema, scheduler, cfg, class_names, summary) -> None:
    """Write ``final/`` into a side folder, then swap it in, so a kill never leaves half a final model."""
    import yaml

    final, partial = out_dir / "final", out_dir / "final.partial"
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(str(partial), safe_serialization=True)
    if ema is not None:
        _with_ema(ema, model, lambda: model.save_pretrained(str(partial / "ema"), safe_serialization=True))
    scheduler.save_pretrained(str(partial / "scheduler"))
    atomic_write_json(partial / "class_names.json", class_names)
    atomic_write_text(partial / "train_config.yaml", yaml.safe_dump(cfg, sort_keys=True))
    atomic_write_json(partial / "training_summary.json", summary)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)


def _plot_loss(loss_csv: Path, path: Path, name: str) -> None:
    import matplotlib.pyplot as plt
    import pandas as pd

    from .plots import loss_curves

    fig = loss_curves(pd.read_csv(loss_csv).assign(arm=name), title=f"training loss: {name}")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


# ----------------------------------------------------------------------------------- launch and load

def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use (containers, taskset)
    except AttributeError:
        return os.cpu_count() or 1


def _gpu_count() -> int:
    """Visible NVIDIA GPUs, counted with nvidia-smi (as accelerate does): asking torch would initialise
    CUDA in this process, and workers forked from it could then not use the GPU."""
    from accelerate.utils import get_gpu_info

    try:
        n = get_gpu_info()[1]
    except Exception:  # no nvidia-smi: no NVIDIA GPU
        return 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        n = min(n, len([v for v in visible.split(",") if v.strip()]))
    return n


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(config_path: str | os.PathLike, num_processes: int = 1, port: int | None = None) -> None:
    """Train from a notebook with ``num_processes`` processes (``accelerate.notebook_launcher``).

    One process calls :func:`train` directly. More are forked by notebook_launcher, so call this from a
    process that has not used CUDA or run a backward pass on a CUDA machine yet (a fresh notebook kernel;
    forked workers cannot use a parent's CUDA context or autograd threads); otherwise use
    ``accelerate launch -m improve_lib.train --config ...``. Forked CPU workers run one thread each (see
    ``_train``), so several CPU processes check the distributed path rather than speed training up.

    More processes than the machine offers (CPU runs: the usable cores; CUDA runs: the GPUs nvidia-smi
    sees) raise :class:`StudyInputError`. ``port`` defaults to a free local port, so concurrent launches
    do not collide on accelerate's fixed default 29500.
    """
    from accelerate import notebook_launcher

    cfg = resolve_config(config_path)
    n = _number(num_processes, "NUM_PROCESSES", int)
    gpus = _gpu_count()
    use_cpu = gpus == 0 if cfg["CPU"] == "auto" else cfg["CPU"]
    limit, what = (_usable_cpus(), "usable CPU cores") if use_cpu else (gpus, "CUDA devices")
    if not 1 <= n <= limit:
        raise StudyInputError(f"NUM_PROCESSES={n} must be between 1 and the {limit} {what} of this machine")
    if n == 1:
        train(str(config_path))
        return
    notebook_launcher(train, args=(str(config_path),), num_processes=n, use_port=str(port or _free_port()))


def load_trained(run_dir: str | os.PathLike, arm: str, ema: bool = True):
    """Load a trained arm: ``(model, class_names, cfg)``.

    ``arm`` is the folder name under ``models/`` (``prototype``, ``baseline`` or an ``ARM_NAME``). With
    ``ema`` the EMA weights (``final/ema``) are loaded, else the raw ones; a run trained with EMA off has
    only the raw ones, which are then its result. The class table's null row and freezing are restored
    (``from_pretrained`` forgets both). The model is returned in eval mode on the CPU.
    """
    import yaml
    from diffusers import UNet2DConditionModel

    final = arm_dir(run_dir, arm) / "final"
    if not (final / "config.json").is_file() or not (final / "train_config.yaml").is_file():
        raise StudyInputError(f"no trained model for arm {arm!r} in {final}: run notebook 04_train_diffusion first")
    cfg = yaml.safe_load((final / "train_config.yaml").read_text())
    class_names = json.loads((final / "class_names.json").read_text())
    path = final / "ema" if ema and (final / "ema" / "config.json").is_file() else final
    if ema and path == final and float(cfg.get("EMA_DECAY") or 0) > 0:
        raise StudyInputError(f"{final / 'ema'} is missing although the run used EMA; "
                              f"rerun notebook 04_train_diffusion")
    model = UNet2DConditionModel.from_pretrained(str(path), use_safetensors=True)
    freeze_class_table(model, frozen=cfg.get("ARM") == "prototype" and bool(cfg.get("FREEZE_PROTOTYPES", True)))
    return model.eval(), class_names, cfg


def main(argv: list[str] | None = None) -> int:
    """``python -m improve_lib.train --config params.yaml`` (also under ``accelerate launch -m``)."""
    parser = argparse.ArgumentParser(prog="python -m improve_lib.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML file with RUN_DIR, ARM and the training keys")
    args = parser.parse_args(argv)
    try:
        train(args.config)
    except StudyInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

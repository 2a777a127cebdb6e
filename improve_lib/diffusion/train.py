"""Training entry point for both arms: ``train(config)``, ``python -m improve_lib.diffusion.train --config ...``.

One function serves a notebook (:func:`improve_lib.diffusion.launch.launch`), a terminal and a cluster (``accelerate
launch -m improve_lib.diffusion.train --config config.yaml``). The config is complete: notebook 04 writes it from its
parameters cell into ``RUN_DIR/models/<ARM>/config.yaml``; a missing key is an error naming it.
Everything a run writes lives under ``RUN_DIR/models/<ARM_NAME>/``::

    checkpoint-<step>/     accelerator.save_state + training_state.json (written last = complete)
    loss.csv, loss.png     step, loss, lr (one row per optimizer step); the loss curve
    training_time.json     this session's wall time and steps/s (a record: differs on every execution)
    samples/step-<n>.png   fixed-seed preview grids (EMA weights; one row per class)
    class_table.safetensors  the table the run started from (rows 0..C-1), for the record
    final/                 the diffusers pipeline folder (see improve_lib.diffusion.model_folder), training_summary.json

The objective is :mod:`improve_lib.diffusion.training_objective`'s; the label becomes the null row ``C``
with probability ``P_UNCOND``.

Exact kill-and-resume, and the same draws whatever the process count: every random draw of a step is a function
of ``(SEED, shard, step)`` (:mod:`improve_lib.diffusion.step_draws`), so a run resumed from ``checkpoint-k``
replays steps ``k+1..N`` as an uninterrupted run would, and one process computing ``DATA_SHARDS`` shards replays a
``DATA_SHARDS``-process run.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import gather_object
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from improve_lib import data
from improve_lib.conditioning import class_table
from improve_lib.core import machine, parameter_domains, run_layout
from improve_lib.core.errors import StudyInputError
from improve_lib.core.files import atomic_write_json, save_safetensors
from improve_lib.core.values import as_bool, as_float, as_int, one_of, require
from improve_lib.diffusion import (checkpoints, fast_path, loss_log, model_folder, sample, step_draws, trackers,
                                   training_objective, unet)
from improve_lib.diffusion.loss_log import LossLog, TrainingDivergedError

__all__ = ["ARMS", "TRAIN_KEYS", "RESUME_KEYS", "TrainingDivergedError", "TrainingRun", "main", "resolve_config", "train"]

ARMS = ("prototype", "baseline")
# The training keys of notebook 04's parameters cell, beside the model keys (unet.MODEL_KEYS).
TRAIN_KEYS = ("CLASS_EMBEDDING_MAP", "FREEZE_PROTOTYPES", "P_UNCOND", "LR", "WEIGHT_DECAY", "WARMUP_STEPS",
              "LR_SCHEDULE", "GRAD_CLIP", "EMA_DECAY", "MIXED_PRECISION", "MAX_STEPS", "EPOCHS", "BATCH_SIZE",
              "NUM_TRAIN_TIMESTEPS", "BETA_SCHEDULE", "PREDICTION_TYPE", "SNR_GAMMA", "ZERO_TERMINAL_SNR",
              "INPUT_NORMALIZATION", "FLIP", "ROT90", "CHECKPOINT_EVERY", "KEEP_CHECKPOINTS", "SAMPLE_EVERY", "SAMPLE_STEPS",
              "SAMPLE_PER_CLASS", "PREVIEW_GUIDANCE_SCALE")
# How to run, not what is computed: optional, with these values when absent.
# DATA_SHARDS: the optimizer step's batch is DATA_SHARDS shards of BATCH_SIZE images, each drawn as one rank of a
# DATA_SHARDS-process run would draw it (None: one shard per process); a process computes DATA_SHARDS / processes
# shards, so one process can replay a multi-process run's batches and noise (same numbers up to float rounding).
# CPU_THREADS: torch threads of a CPU process (None: the usable cores shared among the processes).
# REPORT_TO: the tracker that also gets the training curves, in RUN_DIR/trackers/<tracker>/ (diffusion.trackers).
RUN_OPTIONS: dict[str, Any] = {"ARM_NAME": None, "CPU": "auto", "PROGRESS": True, "COMPILE": "none",  # fast_path
                               "DATA_SHARDS": None, "CPU_THREADS": None, "REPORT_TO": "none"}
# Keys whose change makes a resumed run differ from the one its checkpoint belongs to: the model, the recipe
# and the data (not the run length nor the checkpoint and preview cadence).
_CADENCE = {"MAX_STEPS", "EPOCHS", "CHECKPOINT_EVERY", "KEEP_CHECKPOINTS", "SAMPLE_EVERY", "SAMPLE_STEPS",
            "SAMPLE_PER_CLASS", "PREVIEW_GUIDANCE_SCALE"}
RESUME_KEYS = unet.MODEL_KEYS + ("ARM",) + tuple(k for k in TRAIN_KEYS if k not in _CADENCE) + (
    "WORLD_SIZE", "CLASS_NAMES", "TRAIN_SET_SHA256", "CLASS_TABLE_SHA256")
# the float and int keys; their ranges are the one table of core.parameter_domains (the run's preflight checks it too)
_FLOATS = ("P_UNCOND", "LR", "WEIGHT_DECAY", "GRAD_CLIP", "EMA_DECAY", "PREVIEW_GUIDANCE_SCALE")
_INTS = ("WARMUP_STEPS", "BATCH_SIZE", "NUM_TRAIN_TIMESTEPS", "CHECKPOINT_EVERY", "SAMPLE_EVERY", "SAMPLE_STEPS",
         "SAMPLE_PER_CLASS", "KEEP_CHECKPOINTS")
_OPTIONAL_INTS = ("DATA_SHARDS", "CPU_THREADS")  # None: the rule of RUN_OPTIONS' comment
_CHOICES = {"ARM": ARMS, "CLASS_EMBEDDING_MAP": class_table.CLASS_EMBEDDING_MAPS,
            "LR_SCHEDULE": ("constant", "cosine"), "MIXED_PRECISION": ("auto", "no", "bf16", "fp16"),
            "BETA_SCHEDULE": training_objective.BETA_SCHEDULES, "COMPILE": fast_path.COMPILE_MODES,
            "REPORT_TO": trackers.REPORT_TO}


# --------------------------------------------------------------------------------------------- config

def resolve_config(config: Mapping[str, Any] | str | os.PathLike) -> dict[str, Any]:
    """Read ``config`` (a dict or a YAML path) and check every training key; returns the checked config.

    Every key of :data:`TRAIN_KEYS` and :data:`~improve_lib.diffusion.unet.MODEL_KEYS` must be present (notebook
    04 writes them all); :data:`RUN_OPTIONS` may be left out. Keys of other notebooks are kept and ignored,
    so a run's whole ``params.yaml`` can be passed. Raises :class:`StudyInputError` naming the key.
    """
    base = None  # a relative RUN_DIR is relative to the config file that holds it (notebook 04 writes "../..")
    if isinstance(config, (str, os.PathLike)):
        path = Path(config)
        base = path.parent
        if not path.is_file():
            raise StudyInputError(f"training config {path} does not exist")
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise StudyInputError(f"training config {path} must be a YAML mapping of KEY: value")
    else:
        raw = dict(config)
    require(raw, ("RUN_DIR", "ARM") + TRAIN_KEYS + unet.MODEL_KEYS, "the training config", "04_train_diffusion")
    cfg = {**RUN_OPTIONS, **raw}
    if cfg["RUN_DIR"] in (None, ""):
        raise StudyInputError("RUN_DIR is not set in the training config")
    run = Path(cfg["RUN_DIR"]).expanduser()
    cfg["RUN_DIR"] = str((base / run if base is not None and not run.is_absolute() else run).resolve())
    for key, choices in _CHOICES.items():
        one_of(cfg[key], key, choices)
    trackers.check_installed(cfg["REPORT_TO"])  # before any training: accelerate would drop the tracker silently
    for key in _FLOATS:
        cfg[key] = as_float(cfg[key], key)  # YAML reads "1e-4" as a string
    for key in _INTS:
        cfg[key] = as_int(cfg[key], key)
    for key in _OPTIONAL_INTS:
        cfg[key] = None if cfg[key] is None else as_int(cfg[key], key)
    parameter_domains.check_domains({k: cfg[k] for k in _FLOATS + _INTS + _OPTIONAL_INTS}, "training config: ")
    for key in ("FREEZE_PROTOTYPES", "FLIP", "ROT90", "PROGRESS"):
        cfg[key] = as_bool(cfg[key], key)
    if cfg["CPU"] != "auto":
        cfg["CPU"] = as_bool(cfg["CPU"], "CPU")
    if (cfg["MAX_STEPS"] is None) == (cfg["EPOCHS"] is None):
        raise StudyInputError("give exactly one of MAX_STEPS and EPOCHS in the training config "
                              f"(got MAX_STEPS={cfg['MAX_STEPS']!r}, EPOCHS={cfg['EPOCHS']!r})")
    if cfg["MAX_STEPS"] is not None:
        cfg["MAX_STEPS"] = as_int(cfg["MAX_STEPS"], "MAX_STEPS", 1)
    else:
        cfg["EPOCHS"] = as_float(cfg["EPOCHS"], "EPOCHS", 0.0, low_open=True)
    if cfg["ARM_NAME"] in (None, ""):
        cfg["ARM_NAME"] = cfg["ARM"]
    cfg.update(training_objective.check_recipe(cfg))
    unet.model_config(cfg, cond_dim=1)  # the model keys, checked before any work
    return cfg


def _tensor_sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().float().contiguous().numpy().tobytes()).hexdigest()


# ------------------------------------------------------------------------------------- one training run

class TrainingRun:
    """One arm's training session: the accelerator, the model and its optimizer and EMA, the training
    images, the loss log. :func:`train` drives it: :meth:`resume`, :meth:`step` until the total,
    :meth:`save_checkpoint` and :meth:`preview` along the way, :meth:`finish` at the end."""

    def __init__(self, cfg: dict[str, Any]):
        self.started = time.time()
        self.out_dir = run_layout.arm_dir(cfg["RUN_DIR"], cfg["ARM_NAME"])
        use_cpu = (not torch.cuda.is_available()) if cfg["CPU"] == "auto" else cfg["CPU"]
        precision = machine.mixed_precision(cfg["MIXED_PRECISION"], use_cpu)
        self.accelerator = acc = Accelerator(cpu=use_cpu, mixed_precision=precision, project_dir=str(self.out_dir),
                                             log_with=trackers.log_with(cfg))
        self.rank, processes, self.main = acc.process_index, acc.num_processes, acc.is_main_process
        # the data-parallel width that defines the batches: DATA_SHARDS shards, DATA_SHARDS / processes per process
        self.world = cfg["DATA_SHARDS"] or processes
        if self.world % processes:
            raise StudyInputError(f"DATA_SHARDS={self.world} must be a multiple of the {processes} training processes")
        per_process = self.world // processes
        self.shards = range(self.rank * per_process, (self.rank + 1) * per_process)
        if self.main:
            print(f"world_size={self.world}" + (f" ({processes} processes)" if processes != self.world else ""), flush=True)
        if use_cpu:
            machine.set_cpu_threads(processes, cfg["CPU_THREADS"])
        self.processes = processes
        self.device = acc.device
        self._build(cfg, precision, use_cpu)
        self.log = LossLog(self.out_dir / "loss.csv", self.main, 1 if self.device.type == "cpu" else 25,
                           self.cfg["ARM_NAME"])
        self.io_seconds = 0.0  # checkpoints and previews, reported apart from the step rate

    def _build(self, cfg: dict[str, Any], precision: str, use_cpu: bool) -> None:
        images, labels, self.class_names, train_sha = data.training_images(cfg["RUN_DIR"], cfg["RESOLUTION"])
        self.num_classes, n_images = len(self.class_names), len(images)
        table, cond_dim = class_table.arm_class_table(cfg["RUN_DIR"], cfg["ARM"], self.class_names,
                                                     cfg["CLASS_EMBEDDING_MAP"], cfg["COND_DIM"], seed=int(cfg["SEED"]))
        self.mcfg = unet.model_config(cfg, cond_dim)
        self.frozen = cfg["ARM"] == "prototype" and cfg["FREEZE_PROTOTYPES"]
        model = fast_path.prepare_model(unet.build_unet(self.mcfg, self.num_classes, table, freeze=self.frozen),
                                        self.device, cfg["COMPILE"])
        self.init_table = model.class_embedding.weight.detach()[:self.num_classes].clone()
        global_batch = cfg["BATCH_SIZE"] * self.world
        self.total = (cfg["MAX_STEPS"] if cfg["MAX_STEPS"] is not None
                      else math.ceil(cfg["EPOCHS"] * n_images / global_batch))
        self.cfg = {**cfg, **self.mcfg, "MIXED_PRECISION": precision, "CPU": use_cpu, "WORLD_SIZE": self.world,
                    "PROCESSES": self.processes, "CPU_CAPABILITY": machine.cpu_capability(),
                    "CPU_THREADS": torch.get_num_threads() if use_cpu else None,
                    "TOTAL_STEPS": self.total, "NUM_CLASSES": self.num_classes, "NUM_TRAIN_IMAGES": n_images,
                    "CLASS_NAMES": self.class_names, "TRAIN_SET_SHA256": train_sha,
                    "CLASS_TABLE_SHA256": _tensor_sha(self.init_table)}
        self.input_mean, self.input_std = training_objective.input_statistics(images, cfg["INPUT_NORMALIZATION"])
        self.cfg.update(INPUT_MEAN=self.input_mean, INPUT_STD=self.input_std)  # the sampler undoes them
        self.resume_cfg = {k: self.cfg[k] for k in RESUME_KEYS}
        if cfg["LR_SCHEDULE"] == "cosine":
            self.resume_cfg["TOTAL_STEPS"] = self.total  # the cosine curve depends on the run length
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = fast_path.adamw(self.trainable, cfg["LR"], cfg["WEIGHT_DECAY"], self.device)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.unwrapped, self.forward = self.accelerator.unwrap_model(self.model), fast_path.compiled(self.model, cfg["COMPILE"])
        self.ema = None
        if cfg["EMA_DECAY"] > 0:
            # diffusers' EMA warms up as min(EMA_DECAY, (1+n)/(10+n)); frozen parameters are copied as they are
            self.ema = EMAModel(self.unwrapped.parameters(), decay=cfg["EMA_DECAY"], foreach=True)
        self.scheduler = training_objective.noise_scheduler(cfg)
        self.images, self.labels = images.to(self.device), labels.to(self.device)
        self.batches = step_draws.BatchIndices(n_images, cfg["SEED"])

    def resume(self) -> int:
        """Load the latest complete checkpoint (checked against the config); returns the step to start at."""
        for _, p, complete in checkpoints.list_checkpoints(self.out_dir):
            if not complete and self.main:
                print(f"ignoring incomplete checkpoint {p} (no {checkpoints.STATE_FILE}: the run stopped while "
                      f"saving it)", flush=True)
        self.resumed_from, step, path = None, 0, checkpoints.latest_complete(self.out_dir)
        if path is not None:
            state = self.load_checkpoint(path)
            step, self.resumed_from, self.log.last_checkpoint = int(state["step"]), str(path), path
            if self.main:
                print(f"resumed from {path} (step {step} of {self.total})", flush=True)
        if self.main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_safetensors({"class_table": self.init_table}, self.out_dir / "class_table.safetensors",
                             metadata={"class_names": json.dumps(self.class_names)})
        self.log.start(step)
        self.curves = trackers.start(self.accelerator, self.resume_cfg, step, lambda: self.io_seconds, self.log)
        self.first_step = step
        return step

    def load_checkpoint(self, path: Path, ignore: tuple[str, ...] = ()) -> dict[str, Any]:
        """Load checkpoint ``path``, checked against this run's config but for ``ignore``; returns its stored state."""
        state = checkpoints.check_resume(path / checkpoints.STATE_FILE, self.resume_cfg, ignore)
        checkpoints.refuse_pickled_state(path)
        try:  # accelerate reads its torch files with weights_only=True; the EMA is in safetensors
            self.accelerator.load_state(str(path))
        except Exception as exc:  # torch/safetensors errors on a damaged or tampered folder
            raise StudyInputError(f"checkpoint {path} is corrupt or unreadable ({type(exc).__name__}: {exc}); "
                                  f"delete that folder to resume from an earlier checkpoint") from None
        if self.ema is not None:
            checkpoints.load_ema(self.ema, path, self.device)
        unet.freeze_class_table(self.unwrapped, frozen=self.frozen)  # re-assert the null row and freeze
        return state

    def step(self, step: int) -> None:
        """Optimizer update ``step`` (0-based): every random draw a function of (SEED, shard, step) (step_draws); this
        process's shards are concatenated into one batch (its mean loss is the mean over the shards' means)."""
        cfg = self.cfg
        step_draws.seed_globals(cfg["SEED"], self.shards[0], step)
        shards = [step_draws.shard_draws(self.batches, cfg["SEED"], step, shard, self.world, cfg["BATCH_SIZE"],
                                         self.mcfg["RESOLUTION"], self.scheduler.config.num_train_timesteps,
                                         cfg["P_UNCOND"]) for shard in self.shards]
        idx, t, noise, drop, flips = (fast_path.to_device(torch.cat(parts) if len(parts) > 1 else parts[0], self.device)
                                      for parts in zip(*shards))  # no host wait on a GPU
        x0 = training_objective.to_model(self.images[idx].float().div(127.5).sub(1.0), self.input_mean, self.input_std)
        turns = (torch.cat([step_draws.quarter_turns(cfg["SEED"], step, s, cfg["BATCH_SIZE"]) for s in self.shards])
                 .to(self.device) if cfg["ROT90"] else None)  # each shard's own turns, so one process replays several
        x0 = step_draws.orient(x0, flips if cfg["FLIP"] else None, turns)
        y = torch.where(drop, torch.full_like(idx, self.num_classes), self.labels[idx])
        xt = self.scheduler.add_noise(x0, noise, t)
        lr = training_objective.lr_at(cfg, step, self.total)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        pred = self.forward(xt, t, encoder_hidden_states=None, class_labels=y).sample
        target = training_objective.training_target(self.scheduler, x0, noise, t)
        loss = training_objective.diffusion_loss(pred, target, training_objective.loss_weights(self.scheduler, t, cfg["SNR_GAMMA"]))
        # the mean over ranks, so that every rank sees a NaN at the same step and stops together
        self.log.add(step + 1, self.accelerator.reduce(loss.detach().clone(), reduction="mean"), lr)
        self.accelerator.backward(loss)
        if cfg["GRAD_CLIP"] > 0:
            self.accelerator.clip_grad_norm_(self.trainable, cfg["GRAD_CLIP"])
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.step(self.unwrapped.parameters())

    def save_checkpoint(self, at: int) -> Path:
        """``checkpoint-<at>/``: accelerator state, then ``training_state.json`` (complete), then pruning."""
        self.log.check()  # never save weights that a NaN step has touched
        started, acc = time.time(), self.accelerator
        path = self.out_dir / f"checkpoint-{at}"
        if self.main:
            checkpoints.mark_incomplete(path)  # a folder being overwritten is incomplete until we finish
        acc.wait_for_everyone()
        with checkpoints.disk_errors(path, self.log.last_checkpoint):
            acc.save_state(str(path))
            acc.wait_for_everyone()
            if self.main:
                if self.ema is not None:
                    checkpoints.save_ema(self.ema, path)
                self.log.flush()
                checkpoints.mark_complete(path, at, self.resume_cfg, self.mcfg)
                checkpoints.prune(self.out_dir, self.cfg["KEEP_CHECKPOINTS"], at)
        acc.wait_for_everyone()
        self.io_seconds += time.time() - started
        self.log.last_checkpoint = path
        return path

    def preview(self, at: int) -> None:
        """``samples/step-<at>.png``: a fixed-seed guided grid with the EMA weights, one row per class."""
        self.log.check()
        started = time.time()
        if self.main:
            with model_folder.ema_weights(self.ema, self.unwrapped):
                grid = sample.sample_grid(self.unwrapped, self.num_classes, scheduler_config=self.scheduler.config,
                                          settings=sample.preview_settings(self.cfg), per_class=self.cfg["SAMPLE_PER_CLASS"],
                                          seed=self.cfg["SEED"], normalization=(self.input_mean, self.input_std))
            self.curves.log_preview(at, sample.save_png(grid, run_layout.preview_png(self.out_dir, at)))
        self.accelerator.wait_for_everyone()
        self.io_seconds += time.time() - started

    def finish(self, step: int, seconds: float) -> dict[str, Any]:
        """Last preview, the ``final/`` export and the loss plot; returns the training summary."""
        self.preview(step)
        hashes = gather_object([unet.state_dict_sha256(self.unwrapped)])
        step_seconds = seconds - self.io_seconds
        summary = {"steps": step, "total_steps": self.total, "world_size": self.world, "processes": self.processes,
                   "rank_weight_sha256": hashes}
        # This session's facts (a resume, wall times): a record beside final/, whose files a rerun reproduces.
        timing = {"resumed_from": self.resumed_from, "steps_this_session": step - self.first_step,
                  "seconds_this_session": round(seconds, 3), "checkpoint_and_preview_seconds": round(self.io_seconds, 3),
                  "steps_per_second": (round((step - self.first_step) / step_seconds, 4)  # checkpoints excluded
                                       if step_seconds > 0 and step > self.first_step else None),
                  "wall_seconds": round(time.time() - self.started, 3)}
        if len(set(hashes)) != 1:
            raise RuntimeError(f"final weights differ across ranks: {hashes}")
        if self.main:
            model_folder.write_final(self.out_dir / run_layout.FINAL, self.unwrapped, self.ema, self.scheduler, self.cfg,
                               self.class_names, summary, self.out_dir / "class_table.safetensors")
            atomic_write_json(self.out_dir / "training_time.json", timing)
            loss_log.save_loss_curve(self.log.path, self.out_dir / "loss.png", self.cfg["ARM_NAME"])
            print(f"trained {self.cfg['ARM_NAME']}: {step} steps -> {self.out_dir / run_layout.FINAL}", flush=True)
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()
        return {**summary, **timing}


# -------------------------------------------------------------------------------------------- training

def train(config: Mapping[str, Any] | str | os.PathLike) -> dict[str, Any]:
    """Train one arm to completion (resuming from its latest complete checkpoint) and export it.

    ``config`` is a complete training config (a dict or a YAML path; see :func:`resolve_config`). Prints
    ``world_size=<n>`` first. Returns the training summary (``final/training_summary.json``: steps, world
    size, sha256 of the final weights on every rank, which must agree) and ``training_time.json``'s times.
    """
    cfg = resolve_config(config)
    try:
        return _train(cfg)
    finally:
        machine.reset_accelerate()


def _train(cfg: dict[str, Any]) -> dict[str, Any]:
    run = TrainingRun(cfg)
    step = run.resume()
    every, total = run.cfg["SAMPLE_EVERY"], run.total
    bar = tqdm(total=total, initial=step, desc=f"train {cfg['ARM_NAME']}", dynamic_ncols=True,
               disable=not (run.main and cfg["PROGRESS"]))
    t0 = time.time()
    run.model.train()
    while step < total:
        run.step(step)
        step += 1
        bar.update(1)
        if step % 10 == 0 or step == total:
            bar.set_postfix(loss=f"{run.log.last:.4f}")
        if step % cfg["CHECKPOINT_EVERY"] == 0 or step == total:
            run.save_checkpoint(step)
        if every and step % every == 0 and step != total:
            run.preview(step)
    run.log.check()
    bar.close()
    seconds = time.time() - t0
    run.log.flush()
    return run.finish(step, seconds)


def main(argv: list[str] | None = None) -> int:
    """``python -m improve_lib.diffusion.train --config config.yaml`` (also under ``accelerate launch -m``)."""
    parser = argparse.ArgumentParser(prog="python -m improve_lib.diffusion.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML file with RUN_DIR, ARM and the training keys")
    parser.add_argument("--data-shards", type=int, help="override the config's DATA_SHARDS (see RUN_OPTIONS)")
    parser.add_argument("--cpu-threads", type=int, help="override the config's CPU_THREADS")
    parser.add_argument("--parent-pid", type=int, help="stop when this process ends (a notebook launching the arms)")
    args = parser.parse_args(argv)
    if args.parent_pid:
        machine.end_with_parent(args.parent_pid)
    try:
        overrides = {k: v for k, v in (("DATA_SHARDS", args.data_shards), ("CPU_THREADS", args.cpu_threads)) if v is not None}
        train({**resolve_config(args.config), **overrides} if overrides else args.config)
    except StudyInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

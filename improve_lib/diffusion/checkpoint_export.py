"""A training checkpoint as a pipeline folder: ``python -m improve_lib export RUN --arm A --step N``.

``final/`` is written when an arm finishes (:mod:`improve_lib.diffusion.model_folder`); an intermediate
``checkpoint-<step>/`` holds accelerate's training state instead. This module rebuilds the arm as notebook
04 trained it, loads the checkpoint (checked against its stored configuration) and writes the same
pipeline folder from it, so an early model loads like the final one.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from improve_lib.core import machine, run_layout
from improve_lib.core.errors import StudyInputError
from improve_lib.diffusion import checkpoints, model_folder, train

EXPORTS_DIR = "exports"  # models/<arm>/exports/step-<N>/: checkpoints exported as pipeline folders


def export_checkpoint(run_dir, arm: str, step: int | None = None, out=None) -> Path:
    """Export a complete training checkpoint of ``models/<arm>/`` as a pipeline folder with ``final/``'s
    layout (EMA weights by default, raw ones as the variant, model card, class table provenance), so an
    intermediate model loads like the final one. ``step``: which ``checkpoint-<step>`` (default: the
    latest complete one); ``out``: the folder (default ``models/<arm>/exports/step-<step>/``). The arm's
    training config is rebuilt from ``models/<arm>/config.yaml`` and the run's data, and checked against
    the checkpoint's stored configuration (world size aside: one process reads any checkpoint).
    Returns the folder written."""
    arm_dir = run_layout.arm_dir(run_dir, arm)
    complete = {s: p for s, p, done in checkpoints.list_checkpoints(arm_dir) if done}
    if not complete:
        raise StudyInputError(f"{arm_dir} has no complete checkpoint-<step> folder to export")
    step = max(complete) if step is None else int(step)
    if step not in complete:
        raise StudyInputError(f"{arm_dir}: no complete checkpoint-{step}; complete ones: steps {sorted(complete)}")
    path = complete[step]
    config = arm_dir / "config.yaml"
    if not config.is_file():
        raise StudyInputError(f"training config {config} does not exist")
    # an export logs no training curves: REPORT_TO's tracker need not be installed where a checkpoint is exported
    cfg = train.resolve_config({**(yaml.safe_load(config.read_text()) or {}), "RUN_DIR": str(Path(run_dir).resolve()),
                                "REPORT_TO": "none"})
    cfg.update(CPU=True, PROGRESS=False, ARM_NAME=arm)
    try:
        run = train.TrainingRun(cfg)
        stored = run.load_checkpoint(path, ignore=("WORLD_SIZE",))  # one process reads any world size's
        run.cfg["WORLD_SIZE"] = stored["resume_config"].get("WORLD_SIZE")
        summary = {"steps": step, "total_steps": run.total, "exported_from": path.name}
        out = Path(out) if out is not None else arm_dir / EXPORTS_DIR / f"step-{step}"
        return model_folder.write_final(out, run.unwrapped, run.ema, run.scheduler, run.cfg, run.class_names, summary,
                                  arm_dir / "class_table.safetensors")
    finally:
        machine.reset_accelerate()

"""The training objective shared by both arms: the noise schedule, the loss and the learning-rate schedule.

Paper section 3 (DDPM): epsilon-prediction MSE at a uniformly drawn timestep of a linear beta
schedule with T = 1000 steps. The schedule's config also builds the DDIM sampler
(:func:`improve_lib.sample.ddim_scheduler`), so sampling walks the schedule the model was trained on.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from .parameters import as_int, one_of, require

BETA_SCHEDULES = ("linear", "squaredcos_cap_v2")


def noise_scheduler(cfg: Mapping[str, Any]) -> DDPMScheduler:
    """The training noise schedule: diffusers ``DDPMScheduler`` for epsilon prediction.

    Keys: NUM_TRAIN_TIMESTEPS (the paper: 1000) and BETA_SCHEDULE ("linear" = DDPM's 1e-4..0.02, or
    "squaredcos_cap_v2" = cosine).
    """
    require(cfg, ("NUM_TRAIN_TIMESTEPS", "BETA_SCHEDULE"), "the noise schedule", "04_train_diffusion")
    schedule = one_of(cfg["BETA_SCHEDULE"], "BETA_SCHEDULE", BETA_SCHEDULES)
    steps = as_int(cfg["NUM_TRAIN_TIMESTEPS"], "NUM_TRAIN_TIMESTEPS", minimum=2)
    return DDPMScheduler(num_train_timesteps=steps, beta_schedule=schedule, prediction_type="epsilon")


def diffusion_loss(pred: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Epsilon-prediction MSE (DDPM's simple loss), in float32 whatever the autocast dtype."""
    return F.mse_loss(pred.float(), noise.float())


def lr_at(cfg: Mapping[str, Any], step: int, total: int) -> float:
    """Learning rate of update ``step`` (0-based): linear warmup over WARMUP_STEPS, then LR constant or
    (LR_SCHEDULE "cosine") cosine to 0 at ``total``. A pure function of the step (no scheduler state),
    so a resumed run uses exactly the same rates."""
    base, warm = cfg["LR"], cfg["WARMUP_STEPS"]
    if step < warm:
        return base * (step + 1) / warm
    if cfg["LR_SCHEDULE"] == "cosine":
        progress = (step - warm) / max(1, total - warm)
        return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return base

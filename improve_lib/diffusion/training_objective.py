"""The training objective shared by both arms: noise schedule, input scaling, prediction target, loss
weighting and the learning-rate schedule.

The paper (section 3, DDPM) trains epsilon-prediction with a plain MSE at a uniformly drawn timestep of
a linear beta schedule with T = 1000 steps, on images scaled to [-1, 1]. That recipe is one setting of
the options below (notebook 04's parameters; the paper profile keeps it):

* ``INPUT_NORMALIZATION``: ``none`` (images in [-1, 1]) or ``standardize`` (per-channel mean and std of
  the run's training images, so that the model generates zero-mean, unit-variance channels and the
  bright background is not a large offset it must build from noise). The statistics travel with the
  trained model (``INPUT_MEAN``, ``INPUT_STD`` in ``final/train_config.yaml``); the sampler undoes them.
* ``PREDICTION_TYPE``: ``epsilon`` (the paper), ``v_prediction`` (Salimans & Ho 2022) or ``sample``
  (x0). diffusers' schedulers compute the targets (``get_velocity``) and the DDIM update for each.
* ``SNR_GAMMA``: min-SNR-gamma loss weighting (Hang et al. 2023), weights ``min(SNR, gamma) / SNR``
  (epsilon), ``/ (SNR + 1)`` (v) or ``min(SNR, gamma)`` (x0), with SNR from diffusers' ``compute_snr``;
  None is the plain MSE.
* ``ZERO_TERMINAL_SNR``: rescale the betas so that the last timestep is pure noise (Lin et al. 2024,
  diffusers' ``rescale_betas_zero_snr``); needs ``v_prediction`` or ``sample`` (epsilon is undefined at
  SNR 0), and pairs with trailing DDIM timesteps at sampling (:mod:`improve_lib.diffusion.sample`).

The schedule's config also builds the DDIM sampler, so sampling walks the schedule the model was
trained on.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr

from improve_lib.core.errors import StudyInputError
from improve_lib.core.values import as_bool, as_float, as_int, one_of, require
from improve_lib.diffusion import guided_pipeline

BETA_SCHEDULES = ("linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
INPUT_NORMALIZATIONS = ("none", "standardize")
SCHEDULE_KEYS = ("NUM_TRAIN_TIMESTEPS", "BETA_SCHEDULE", "PREDICTION_TYPE", "ZERO_TERMINAL_SNR")
# What a model trained before a key existed did (its saved config lacks the key).
LEGACY_VALUES: dict[str, Any] = {"PREDICTION_TYPE": "epsilon", "ZERO_TERMINAL_SNR": False, "SNR_GAMMA": None,
                                 "INPUT_NORMALIZATION": "none"}


def noise_scheduler(cfg: Mapping[str, Any]) -> DDPMScheduler:
    """The training noise schedule: diffusers ``DDPMScheduler`` with the config's NUM_TRAIN_TIMESTEPS (the
    paper: 1000), BETA_SCHEDULE ("linear" = DDPM's 1e-4..0.02, or "squaredcos_cap_v2" = cosine),
    PREDICTION_TYPE and ZERO_TERMINAL_SNR (a config saved before these existed counts as epsilon without
    rescaling)."""
    cfg = {**{k: v for k, v in LEGACY_VALUES.items() if k not in cfg}, **cfg}
    require(cfg, SCHEDULE_KEYS, "the noise schedule", "04_train_diffusion")
    schedule = one_of(cfg["BETA_SCHEDULE"], "BETA_SCHEDULE", BETA_SCHEDULES)
    steps = as_int(cfg["NUM_TRAIN_TIMESTEPS"], "NUM_TRAIN_TIMESTEPS", minimum=2)
    prediction = one_of(cfg["PREDICTION_TYPE"], "PREDICTION_TYPE", PREDICTION_TYPES)
    zero_snr = as_bool(cfg["ZERO_TERMINAL_SNR"], "ZERO_TERMINAL_SNR")
    if zero_snr and prediction == "epsilon":
        raise StudyInputError("ZERO_TERMINAL_SNR=True needs PREDICTION_TYPE v_prediction or sample: at the last "
                              "timestep the input is pure noise, so epsilon-prediction cannot recover x0 (Lin et al.)")
    return DDPMScheduler(num_train_timesteps=steps, beta_schedule=schedule, prediction_type=prediction,
                         rescale_betas_zero_snr=zero_snr)


def check_recipe(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The checked recipe keys (``INPUT_NORMALIZATION``, ``SNR_GAMMA`` and the schedule's)."""
    noise_scheduler(cfg)
    gamma = cfg["SNR_GAMMA"]
    return {"INPUT_NORMALIZATION": one_of(cfg["INPUT_NORMALIZATION"], "INPUT_NORMALIZATION", INPUT_NORMALIZATIONS),
            "SNR_GAMMA": None if gamma is None else as_float(gamma, "SNR_GAMMA", 0.0, low_open=True)}


# ----------------------------------------------------------------------------------- input scaling

def input_statistics(images: torch.Tensor, mode: str) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of ``images`` (uint8 ``[N, 3, R, R]``) on the [-1, 1] scale for
    ``mode="standardize"``; ``([0, 0, 0], [1, 1, 1])`` for ``"none"`` (no change)."""
    if mode == "none":
        return [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    x = images.double().div(127.5).sub(1.0)
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return [float(v) for v in x.mean(dim=(0, 2, 3))], [float(v) for v in std]


def to_model(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Images on the [-1, 1] scale to the model's input space."""
    return (x - guided_pipeline.channel_view(mean, x)) / guided_pipeline.channel_view(std, x)


# The sampler undoes the scaling; its code ships in model folders, so these live in guided_pipeline.
from_model = guided_pipeline.from_model  # the model's space back to the [-1, 1] image scale
data_range = guided_pipeline.data_range  # the largest |value| of an image in [-1, 1] in the model's space


# ------------------------------------------------------------------------------------------ the loss

def training_target(scheduler: DDPMScheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the network predicts at ``t``: the noise, the velocity ``sqrt(a) eps - sqrt(1-a) x0`` or x0."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, t)
    return x0


def loss_weights(scheduler: DDPMScheduler, t: torch.Tensor, snr_gamma: float | None) -> torch.Tensor | None:
    """Per-sample min-SNR-gamma weights for timesteps ``t`` (None: every sample weighs 1)."""
    if snr_gamma is None:
        return None
    snr = compute_snr(scheduler, t)
    clipped = snr.clamp(max=float(snr_gamma))
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return clipped / snr
    if kind == "v_prediction":
        return clipped / (snr + 1.0)
    return clipped


def diffusion_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """MSE between prediction and target (DDPM's simple loss), optionally weighted per sample, in float32
    whatever the autocast dtype."""
    if weights is None:
        return F.mse_loss(pred.float(), target.float())
    per_sample = (pred.float() - target.float()).pow(2).mean(dim=(1, 2, 3))
    return (per_sample * weights.float()).mean()


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

"""The training step's speed settings: compilation, memory layout, the fused optimizer, host-to-device copies.

None of these changes the recipe. On a CPU without ``COMPILE`` the step is computed exactly as before (the
committed results stay reproducible); on a GPU the layout and the fused AdamW change float rounding only.

- ``COMPILE`` (a run option of :mod:`improve_lib.diffusion.train`): ``torch.compile`` mode for the training step's
  UNet call, or ``none``. ``reduce-overhead`` (and ``max-autotune``, which also tunes kernels for minutes)
  adds CUDA graphs (static shapes: the batch size is fixed), which
  removes the kernel launches that leave a GPU idle at the paper's batch 16 and 64 px. Only the training
  call is compiled: checkpoints, exports and the preview sampler use the plain module (its parameter
  names unchanged, and no second compilation for the sampler's batch).
- ``channels_last`` on CUDA and whenever the UNet is compiled: cuDNN's and inductor's fast convolutions.
- AdamW with ``fused=True`` on CUDA: one kernel for the whole update instead of one per tensor group.
- Per-step random draws are made on the CPU (seeded by step, the exact-resume rule) and copied to the GPU
  from pinned memory without waiting: a copy from pageable memory makes the host wait for the GPU.
"""
from __future__ import annotations

from typing import Iterable

import torch

__all__ = ["COMPILE_MODES", "adamw", "compiled", "prepare_model", "to_device"]

COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")


def prepare_model(model: torch.nn.Module, device: torch.device, compile_mode: str) -> torch.nn.Module:
    """``model`` in the fast memory layout for ``device`` (channels_last on CUDA or when compiled)."""
    if compile_mode not in COMPILE_MODES:
        raise ValueError(f"COMPILE must be one of {COMPILE_MODES}, got {compile_mode!r}")
    if device.type == "cuda" or compile_mode != "none":
        model = model.to(memory_format=torch.channels_last)
    return model


def compiled(model: torch.nn.Module, compile_mode: str):
    """The callable the training step runs: ``torch.compile(model)`` sharing its parameters, or ``model``."""
    if compile_mode == "none":
        return model
    # dynamic=False: one graph for the one training batch shape
    fn = torch.compile(model, mode=None if compile_mode == "default" else compile_mode, dynamic=False)
    if compile_mode not in ("reduce-overhead", "max-autotune"):  # the modes that add CUDA graphs
        return fn

    def new_step(*args, **kwargs):
        # each call starts a training step: CUDA-graph outputs of the previous step may be overwritten
        torch.compiler.cudagraph_mark_step_begin()
        return fn(*args, **kwargs)

    return new_step


def adamw(params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW, fused into one kernel on CUDA; torch's default implementation elsewhere (bit-for-bit as before)."""
    if device.type == "cuda":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` (on the CPU) on ``device``; to a GPU through pinned memory without a host wait.

    torch's pinned-memory pool keeps each buffer until its copy has run, so the host may go on at once."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)

"""The machine a training runs on: usable CPU cores, visible GPUs, threads per process, a free port."""
from __future__ import annotations

import multiprocessing
import os
import socket

import torch
from accelerate.utils import get_gpu_info


def usable_cpus() -> int:
    """The cores this process may use (containers and taskset restrict them)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def gpu_count() -> int:
    """Visible NVIDIA GPUs, counted with nvidia-smi (as accelerate does): asking torch would initialise
    CUDA in this process, and workers forked from it could then not use the GPU."""
    try:
        n = get_gpu_info()[1]
    except Exception:  # no nvidia-smi: no NVIDIA GPU
        return 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        n = min(n, len([v for v in visible.split(",") if v.strip()]))
    return n


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_cpu_threads(world: int) -> None:
    """Torch threads for one of ``world`` CPU training processes (nothing to do for one process)."""
    if world <= 1:
        return
    if multiprocessing.parent_process() is not None:
        # notebook_launcher forks its workers from a process whose OpenMP pool has run; GNU OpenMP is
        # not fork-safe and a forked worker with >1 thread hangs in its first parallel op (seen on a
        # 16-core machine). torch's DataLoader workers use 1 thread for the same reason. Workers of
        # `accelerate launch` are fresh interpreters (no multiprocessing parent) and share the cores.
        torch.set_num_threads(1)
    else:
        torch.set_num_threads(max(1, usable_cpus() // world))  # processes share the cores

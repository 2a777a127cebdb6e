"""The machine a training runs on: usable CPU cores, visible GPUs, threads per process, the precision
its matrix units make fast, a free port."""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import socket
import sys

import torch
from accelerate.state import AcceleratorState, GradientState, PartialState
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


def set_cpu_threads(world: int, threads: int | None = None) -> None:
    """Torch threads for one of ``world`` CPU training processes: ``threads`` when given (e.g. arms training
    side by side, each a process of its own), else the usable cores shared among the processes (one
    process: torch's own default)."""
    if multiprocessing.parent_process() is not None and world > 1:
        # notebook_launcher forks its workers from a process whose OpenMP pool has run; GNU OpenMP is
        # not fork-safe and a forked worker with >1 thread hangs in its first parallel op (seen on a
        # 16-core machine). torch's DataLoader workers use 1 thread for the same reason. Workers of
        # `accelerate launch` are fresh interpreters (no multiprocessing parent) and share the cores.
        torch.set_num_threads(1)
    elif threads is not None:
        torch.set_num_threads(threads)
    elif world > 1:
        torch.set_num_threads(max(1, usable_cpus() // world))  # processes share the cores


def end_with_parent(parent_pid: int) -> None:
    """Ask Linux to send this process SIGTERM when its parent ends (``prctl(PR_SET_PDEATHSIG)``), and end now if
    ``parent_pid`` is already gone: an arm training in a process of its own must not outlive the notebook kernel
    that started it. Elsewhere nothing to do (the parent terminates its children when it is interrupted)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:
        raise SystemExit(f"the process that started this training ({parent_pid}) has ended")


def cpu_capability() -> str:
    """What torch's CPU kernels use here, plus the bf16 units: e.g. ``"AVX512+AMX"``, ``"AVX2"``."""
    extras = [name for name, has in (("AMX", torch.cpu._is_amx_tile_supported()),
                                     ("AVX512_BF16", torch.cpu._is_avx512_bf16_supported())) if has]
    return "+".join([torch.backends.cpu.get_cpu_capability(), *extras])


def mixed_precision(setting: str, use_cpu: bool) -> str:
    """``MIXED_PRECISION`` resolved: ``auto`` is bf16 autocast where the hardware computes bf16 natively (a
    CUDA GPU with bf16, or a CPU with AMX or AVX-512 BF16) and fp32 ("no") elsewhere. Measured with
    benchmarks/bench_cpu_step.py: on an AVX2-only CPU bf16 runs about 10x slower than fp32 (emulated), on
    CPUs with AMX it ran 1.4-1.9x faster."""
    if setting != "auto":
        return setting
    if not use_cpu:
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    native = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    return "bf16" if native else "no"


def reset_accelerate() -> None:
    """Forget accelerate's process-wide singletons after a single-process use (training, an export): a
    later Accelerator with other CPU/precision settings, or a notebook_launcher call, would refuse to start.
    Inside a multi-process launch they stay (the launcher owns them)."""
    if not (PartialState._shared_state and PartialState().num_processes > 1):
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()

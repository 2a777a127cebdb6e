"""Start training from a notebook on several processes: ``launch(config_path, num_processes)``.

Notebook 04 calls :func:`launch`, which runs :func:`improve_lib.diffusion.train.train` in this process (one
process) or in processes forked by ``accelerate.notebook_launcher``. Outside a notebook the same
training runs under ``accelerate launch -m improve_lib.diffusion.train --config ...``.
"""
from __future__ import annotations

import os

from accelerate import notebook_launcher

from improve_lib.core import machine
from improve_lib.core.errors import StudyInputError
from improve_lib.core.values import as_int
from improve_lib.diffusion import train


def launch(config_path: str | os.PathLike, num_processes: int = 1, port: int | None = None) -> None:
    """Train from a notebook with ``num_processes`` processes (``accelerate.notebook_launcher``).

    One process calls :func:`~improve_lib.diffusion.train.train` directly. More are forked by notebook_launcher, so
    call this from a process that has not used CUDA or run a backward pass on a CUDA machine yet (a fresh
    notebook kernel; forked workers cannot use a parent's CUDA context or autograd threads); otherwise use
    ``accelerate launch -m improve_lib.diffusion.train --config ...``. Forked CPU workers run one thread each (see
    :mod:`improve_lib.diffusion.train`), so several CPU processes check the distributed path rather than speed
    training up.

    More processes than the machine offers (CPU runs: the usable cores; CUDA runs: the GPUs nvidia-smi
    sees) raise :class:`StudyInputError`. ``port`` defaults to a free local port, so concurrent launches
    do not collide on accelerate's fixed default 29500.
    """
    cfg = train.resolve_config(config_path)
    n = as_int(num_processes, "NUM_PROCESSES")
    gpus = machine.gpu_count()
    use_cpu = gpus == 0 if cfg["CPU"] == "auto" else cfg["CPU"]
    limit, what = (machine.usable_cpus(), "usable CPU cores") if use_cpu else (gpus, "CUDA devices")
    if not 1 <= n <= limit:
        raise StudyInputError(f"NUM_PROCESSES={n} must be between 1 and the {limit} {what} of this machine")
    if n == 1:
        train.train(str(config_path))
        return
    notebook_launcher(train.train, args=(str(config_path),), num_processes=n, use_port=str(port or machine.free_port()))

"""Start training from a notebook: :func:`train_arms` trains the arms in turn or side by side.

In turn, :func:`launch` runs :func:`improve_lib.diffusion.train.train` for one arm in this process (one
process) or in ``NUM_PROCESSES`` processes forked by ``accelerate.notebook_launcher``, then the next arm.
Side by side (:func:`launch_concurrently`), every arm trains at the same time in a fresh interpreter of its
own (``python -m improve_lib.diffusion.train``) that computes all ``NUM_PROCESSES`` data shards itself: the same
batches and noise as in turn, without exchanging gradients. The arms are independent, so on a CPU with as
many cores as arms nothing waits for anything. Outside a notebook the same training runs under
``accelerate launch -m improve_lib.diffusion.train --config ...``.
"""
from __future__ import annotations

import os
import re
import selectors
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from accelerate import notebook_launcher
from tqdm.auto import tqdm

from improve_lib.core import machine
from improve_lib.core.errors import StudyInputError
from improve_lib.core.values import as_int, one_of
from improve_lib.diffusion import train

#: notebook 04's ARM_SCHEDULE: one arm after the other (each on NUM_PROCESSES processes), or all at once
ARM_SCHEDULES = ("in_turn", "concurrent")
# notebook 04's parameters that say how the arms are launched, not what an arm trains: not in an arm's config
LAUNCH_KEYS = ("ARMS", "NUM_PROCESSES", "ARM_SCHEDULE")
_BAR = re.compile(r"^train (\S+?):.*?(\d+)/(\d+)")  # a tqdm update of train._train's bar


def arm_settings(params: Mapping[str, Any]) -> dict[str, Any]:
    """What every arm's training config takes of ``params`` (notebook 04's globals, or a run's params.yaml): the
    upper-case keys but :data:`LAUNCH_KEYS` (keys of other notebooks are ignored by the training)."""
    return {k: v for k, v in params.items() if k.isupper() and k not in LAUNCH_KEYS}


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
    use_cpu = _on_cpu(cfg, gpus)
    limit, what = (machine.usable_cpus(), "usable CPU cores") if use_cpu else (gpus, "CUDA devices")
    if not 1 <= n <= limit:
        raise StudyInputError(f"NUM_PROCESSES={n} must be between 1 and the {limit} {what} of this machine")
    if n == 1:
        train.train(str(config_path))
        return
    notebook_launcher(train.train, args=(str(config_path),), num_processes=n, use_port=str(port or machine.free_port()))


def _on_cpu(cfg: Mapping, gpus: int) -> bool:
    """Whether a training config runs on the CPU here: its ``CPU`` setting, or ``auto`` and no GPU counted."""
    return gpus == 0 if cfg["CPU"] == "auto" else cfg["CPU"]


def train_arms(configs: Mapping[str, str | os.PathLike], num_processes: int = 1, schedule: str = "in_turn") -> dict[str, float]:
    """Train every arm of ``configs`` (arm -> training config path) by ``schedule`` (:data:`ARM_SCHEDULES`);
    returns each arm's wall seconds. ``in_turn``: :func:`launch` with ``num_processes``, arm after arm.
    ``concurrent``: :func:`launch_concurrently`, each arm one process computing ``num_processes`` shards."""
    one_of(schedule, "ARM_SCHEDULE", ARM_SCHEDULES)
    n = as_int(num_processes, "NUM_PROCESSES", 1)
    if schedule == "concurrent":
        return launch_concurrently(configs, data_shards=n)
    seconds = {}
    for arm, path in configs.items():
        t0 = time.time()
        launch(path, n)
        seconds[arm] = time.time() - t0
        print(f"{arm}: {seconds[arm] / 60:.1f} min", flush=True)
    return seconds


def launch_concurrently(configs: Mapping[str, str | os.PathLike], data_shards: int = 1) -> dict[str, float]:
    """Train the arms of ``configs`` (arm -> config path) at the same time, one fresh process each, each step's
    batch made of ``data_shards`` shards (the draws of a ``data_shards``-process run); returns each arm's wall
    seconds.

    On a CPU the usable cores are split among the arms (``CPU_THREADS``); with GPUs, arm ``i`` gets GPU
    ``i mod count``. Every line an arm prints streams here with its name; its progress bar becomes one bar
    per arm. An arm that fails does not stop the others (their checkpoints are theirs to keep); the error,
    raised once all have ended, names the arm and ends with its last output. Interrupting this call (or the
    kernel dying) stops every arm; each resumes from its latest checkpoint on the next call.
    """
    paths = {arm: Path(p) for arm, p in configs.items()}
    cfgs = {arm: train.resolve_config(p) for arm, p in paths.items()}  # a bad key fails before any process starts
    gpus = machine.gpu_count()
    threads = max(1, machine.usable_cpus() // len(paths))
    procs, bars, tails, started, seconds = {}, {}, {}, {}, {}
    selector = selectors.DefaultSelector()
    try:
        for i, (arm, path) in enumerate(paths.items()):
            use_cpu = _on_cpu(cfgs[arm], gpus)
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            if not use_cpu and gpus:
                visible = [v for v in os.environ.get("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(gpus)))).split(",") if v]
                env["CUDA_VISIBLE_DEVICES"] = visible[i % len(visible)]
            cmd = [sys.executable, "-m", "improve_lib.diffusion.train", "--config", str(path),
                   "--data-shards", str(int(data_shards)), "--parent-pid", str(os.getpid())]
            if use_cpu:
                cmd += ["--cpu-threads", str(threads)]
            started[arm] = time.time()
            procs[arm] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
            selector.register(procs[arm].stdout, selectors.EVENT_READ, arm)
            tails[arm] = [b""]
        print(f"training {', '.join(paths)} side by side: {data_shards} shard(s) each"
              + (f", {threads} CPU thread(s) each" if gpus == 0 else ""), flush=True)
        _stream(selector, procs, tails, bars, started, seconds)
    finally:
        for proc in procs.values():  # interrupted (or an error here): no arm keeps training unseen
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
        for bar in bars.values():
            bar.close()
    failed = {arm: proc.returncode for arm, proc in procs.items() if proc.returncode}
    if failed:
        report = "\n".join(f"--- {arm} (exit code {code}), last lines:\n" + _tail_text(tails[arm]) for arm, code in failed.items())
        raise RuntimeError(f"training failed for {', '.join(failed)}\n{report}")
    return seconds


def _stream(selector: selectors.BaseSelector, procs: dict, tails: dict, bars: dict, started: dict, seconds: dict) -> None:
    """Forward every arm's output until all have ended: lines with the arm's name, tqdm updates to a bar per arm."""
    open_pipes = len(procs)
    while open_pipes:
        for key, _ in selector.select():
            arm = key.data
            chunk = os.read(key.fd, 65536)
            if not chunk:
                selector.unregister(key.fileobj)
                open_pipes -= 1
                procs[arm].wait()
                seconds[arm] = time.time() - started[arm]
                if tails[arm][-1]:
                    _show(arm, tails[arm][-1], bars)
                print(f"{arm}: {seconds[arm] / 60:.1f} min (exit code {procs[arm].returncode})", flush=True)
                continue
            parts = re.split(rb"[\r\n]", tails[arm].pop() + chunk)
            for line in parts[:-1]:
                if line.strip():
                    _show(arm, line, bars)
                    tails[arm] = (tails[arm] + [line])[-40:]
            tails[arm].append(parts[-1])  # an unfinished line waits for its end


def _show(arm: str, raw: bytes, bars: dict) -> None:
    text = raw.decode("utf-8", "replace").rstrip()
    match = _BAR.match(text)
    if match:
        done, total = int(match.group(2)), int(match.group(3))
        if arm not in bars:
            bars[arm] = tqdm(total=total, desc=f"train {arm}", dynamic_ncols=True)
        bars[arm].update(done - bars[arm].n)
        return
    print(f"[{arm}] {text}", flush=True)


def _tail_text(tail: list[bytes]) -> str:
    lines = [b.decode("utf-8", "replace") for b in tail if b.strip() and not _BAR.match(b.decode("utf-8", "replace"))]
    return "\n".join(lines[-15:])

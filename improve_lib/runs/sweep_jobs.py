"""Running a sweep's grid points: one after another, several at once on this machine, or as cluster jobs.

``sweep --jobs N`` runs up to N grid points at a time, each in its own process (on a GPU machine they
share the card: the README's "Paper scale on a GPU" measures what that gains). ``--executor slurm``
submits each grid point as a Slurm job through submitit, at most N queued or running at a time;
``--executor submitit-local`` is submitit's local executor, the same path on one machine (tests use it).

Whatever runs them, a grid point starts only after the earlier grid points whose finished stages it would
reuse (:func:`waits_for`), so shared upstream stages are computed once, exactly as in a sequential sweep;
the skip / resume decisions, the copying of shared stages and ``runs.csv`` stay as they are: each job runs
the same function a sequential sweep calls, and the calling process records the outcomes.
"""
from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import submitit
import yaml

from improve_lib.core.errors import StudyInputError
from improve_lib.runs import sharing

__all__ = ["EXECUTORS", "check_options", "make_executor", "parse_settings", "run_all", "waits_for"]

EXECUTORS = ("processes", "slurm", "submitit-local")


def waits_for(keys: Sequence[Mapping[str, str]], books: Sequence[Path],
              available: Sequence[int] | None = None) -> dict[int, list[int]]:
    """For run ``i`` (its stage keys ``keys[i]``), the earlier runs whose stages it will reuse once they are
    done: those sharing more leading notebooks with it than ``available[i]``, the number it can already
    take from a finished run folder (its own or another's)."""
    have = available or [0] * len(keys)
    return {i: [j for j in range(i) if len(sharing.planned_prefix(keys[j], own, books)) > have[i]]
            for i, own in enumerate(keys)}


class _Processes:
    """``jobs`` worker processes on this machine (spawned: a forked CUDA or OpenMP state is not safe)."""

    def __init__(self, jobs: int):
        self.pool = ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"))

    def submit(self, fn: Callable, *args: Any):
        return self.pool.submit(fn, *args)

    def shutdown(self, stop: bool) -> None:
        """Release the workers; with ``stop`` (the sweep was interrupted) end the running ones now."""
        processes = list((getattr(self.pool, "_processes", None) or {}).values()) if stop else []
        self.pool.shutdown(wait=not stop, cancel_futures=True)
        for proc in processes:  # ProcessPoolExecutor has no public way to stop a running task (before 3.14)
            proc.terminate()


class _Submitit:
    """Each grid point a submitit job (Slurm, or submitit's local executor); logs in ``folder``."""

    def __init__(self, kind: str, folder: Path, parameters: Mapping[str, Any]):
        folder.mkdir(parents=True, exist_ok=True)
        if kind == "slurm":
            self.executor = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
        else:
            self.executor = submitit.LocalExecutor(folder=str(folder))
        self.executor.update_parameters(**{"timeout_min": 24 * 60, **parameters})
        self.jobs: list = []

    def submit(self, fn: Callable, *args: Any):
        job = self.executor.submit(fn, *args)
        self.jobs.append(job)
        return job

    def shutdown(self, stop: bool) -> None:
        """With ``stop`` (the sweep was interrupted), cancel the jobs still queued or running."""
        for job in self.jobs if stop else []:
            if not job.done():
                job.cancel(check=False)


def parse_settings(items: Sequence[str]) -> dict[str, Any]:
    """``--slurm KEY=VALUE`` strings to submitit's parameters (values read as YAML: ``240`` is a number)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise StudyInputError(f"--slurm {item!r}: expected KEY=VALUE, e.g. slurm_partition=gpu")
        out[key.strip()] = yaml.safe_load(value)
    return out


def check_options(kind: str, jobs: int, parameters: Mapping[str, Any] | None = None) -> None:
    """Refuse a bad ``--executor`` / ``--jobs`` / ``--slurm`` combination before anything runs."""
    if kind not in EXECUTORS:
        raise StudyInputError(f"--executor must be one of {', '.join(EXECUTORS)}, got {kind!r}")
    if jobs < 1:
        raise StudyInputError(f"--jobs must be at least 1, got {jobs}")
    if parameters and kind == "processes":
        raise StudyInputError("--slurm settings need --executor slurm (or submitit-local)")


def make_executor(kind: str, jobs: int, folder: Path, parameters: Mapping[str, Any] | None = None):
    """The executor ``sweep --executor kind --jobs jobs`` uses (``parameters``: submitit's, e.g. ``slurm_partition``)."""
    check_options(kind, jobs, parameters)
    return _Processes(jobs) if kind == "processes" else _Submitit(kind, folder, parameters or {})


def run_all(tasks: Sequence[int], args: Callable[[int], tuple], fn: Callable, waits: Mapping[int, list[int]],
            jobs: int, executor, on_start: Callable[[int], None], on_done: Callable[[int, Any], None],
            on_error: Callable[[int, BaseException], Any], poll_s: float = 0.5) -> None:
    """Run ``fn(*args(i))`` for every ``i`` of ``tasks`` on ``executor``, at most ``jobs`` at once, each after
    the tasks in ``waits[i]`` that are in ``tasks`` have finished (in order of ``i`` where free to choose);
    ``args(i)`` is called when ``i`` is submitted.
    ``on_done(i, result)`` is called in this process as each finishes; a job that could not be submitted or
    died without a result is passed to ``on_error(i, exception)``, whose return value is its result. An
    interruption (Ctrl-C) stops the running jobs and is raised again."""
    pending, running, finished = sorted(tasks), {}, set()

    def finish(i: int, result: Any) -> None:
        finished.add(i)
        on_done(i, result)

    try:
        while pending or running:
            for i in list(pending):
                if len(running) >= jobs:
                    break
                if all(j in finished or j not in tasks for j in waits.get(i, [])):
                    pending.remove(i)
                    try:
                        running[i] = executor.submit(fn, *args(i))
                        on_start(i)
                    except Exception as exc:  # noqa: BLE001 - a broken pool or a refused sbatch fails this point only
                        finish(i, on_error(i, exc))
            done = [i for i, job in running.items() if job.done()]
            if not done:
                time.sleep(poll_s)
                continue
            for i in done:
                try:
                    result = running.pop(i).result()
                except Exception as exc:  # noqa: BLE001 - a crashed worker or job is a failed grid point
                    result = on_error(i, exc)
                finish(i, result)
    except BaseException:
        executor.shutdown(stop=True)
        raise
    executor.shutdown(stop=False)

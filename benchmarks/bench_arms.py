"""Notebook 04's two arms trained in turn (each on NUM_PROCESSES processes) against side by side (one process
each, computing the NUM_PROCESSES batch shards itself), on a real run folder, per precision.

    python benchmarks/bench_arms.py RUN_DIR                       # RUN_DIR: a run whose notebooks 01-03 ran
    python benchmarks/bench_arms.py RUN_DIR --steps 300 --precision no auto --repeats 2

Both schedules train the run's own recipe (its ``params.yaml``: UNet, batch, NUM_PROCESSES) on its own
training images, embeddings and prototypes (copied to a temporary folder, the run is not touched), for
``--steps`` optimizer steps per arm with no checkpoint or preview before the last step. The time is the
wall time of :func:`improve_lib.diffusion.launch.train_arms`, process start, final preview and export included,
as notebook 04 spends it. Schedules alternate ``--repeats`` times and the fastest of each is kept (other
processes on a shared CPU slow either at random). Prints one JSON line per precision with the seconds of each
schedule and ``in_turn_over_concurrent`` (> 1: side by side is faster). Not a test.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from improve_lib.core import machine  # noqa: E402
from improve_lib.core.notebook_parameters import notebook_defaults  # noqa: E402
from improve_lib.diffusion.launch import ARM_SCHEDULES, arm_settings, train_arms  # noqa: E402

COPIED = ("data", "embeddings", "prototypes", "params.yaml")  # what notebook 04 reads of a run


def arm_configs(run_dir: Path, params: dict, folder: Path, steps: int, precision: str) -> dict[str, Path]:
    """Notebook 04's config of each arm for ``run_dir``: the run's parameters, ``steps`` steps, no checkpoints."""
    keys = set(notebook_defaults("04"))  # of the run's parameters, notebook 04's
    base = {k: v for k, v in arm_settings(params).items() if k in keys}
    base.update(RUN_DIR=str(run_dir), MAX_STEPS=steps, EPOCHS=None, CHECKPOINT_EVERY=10 ** 8, SAMPLE_EVERY=0,
                PROGRESS=False, MIXED_PRECISION=precision)
    paths = {}
    for arm in params.get("ARMS", ["baseline", "prototype"]):
        paths[arm] = folder / f"{arm}.yaml"
        paths[arm].write_text(yaml.safe_dump({**base, "ARM": arm}))
    return paths


def timed(source: Path, params: dict, steps: int, precision: str, schedule: str) -> float:
    """Wall seconds of training every arm of a fresh copy of ``source`` by ``schedule``."""
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        run.mkdir()
        for name in COPIED:
            (shutil.copytree if (source / name).is_dir() else shutil.copy2)(source / name, run / name)
        configs = arm_configs(run, params, Path(tmp), steps, precision)
        t0 = time.perf_counter()
        train_arms(configs, params.get("NUM_PROCESSES", 2), schedule)
        return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path, help="a run folder whose notebooks 01-03 ran (data/, embeddings/, prototypes/)")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps per arm")
    p.add_argument("--precision", nargs="+", default=["no", "auto"], help="MIXED_PRECISION values to compare")
    p.add_argument("--repeats", type=int, default=2, help="alternating timed runs of each schedule; fastest kept")
    args = p.parse_args()
    missing = [name for name in COPIED if not (args.run_dir / name).exists()]
    if missing:
        raise SystemExit(f"{args.run_dir} lacks {missing}: run its notebooks 01-03 first")
    params = yaml.safe_load((args.run_dir / "params.yaml").read_text())
    for precision in args.precision:
        times = {s: [] for s in ARM_SCHEDULES}
        for _ in range(args.repeats):
            for schedule in ARM_SCHEDULES:
                times[schedule].append(round(timed(args.run_dir, params, args.steps, precision, schedule), 2))
        best = {s: min(v) for s, v in times.items()}
        print(json.dumps({"precision": precision, "resolved": machine.mixed_precision(precision, True),
                          "cpu_capability": machine.cpu_capability(), "usable_cpus": machine.usable_cpus(),
                          "steps_per_arm": args.steps, "num_processes": params.get("NUM_PROCESSES", 2),
                          "seconds": best, "all_seconds": times,
                          "in_turn_over_concurrent": round(best["in_turn"] / best["concurrent"], 3)}), flush=True)


if __name__ == "__main__":
    main()

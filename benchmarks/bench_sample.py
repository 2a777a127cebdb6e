"""Notebook 05's sampling of both arms one after the other (one process, all cores) against side by side (a
process per arm, the cores shared), on a run folder whose notebook 04 ran: seconds, ratio, pixel agreement.

    python benchmarks/bench_sample.py RUN_DIR                  # RUN_DIR: a run whose notebook 04 ran
    python benchmarks/bench_sample.py RUN_DIR --per-class 40 --repeats 2

Both sample the run's trained arms with its own sampler settings (its ``params.yaml``: STEPS, guidance,
SAMPLE_BATCH_SIZE), ``--per-class`` images per class and arm, into temporary copies of the run (the run is not
touched). Prints one JSON line: the seconds of each, ``in_turn_over_side_by_side`` (> 1: side by side is faster)
and the largest difference between the two paths' PNGs in grey levels. Not a test.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from improve_lib.core import machine  # noqa: E402
from improve_lib.diffusion import sample  # noqa: E402

COPIED = ("data", "models", "params.yaml")  # what notebook 05 reads of a run (checkpoints left out)


def copy_run(source: Path, dest: Path) -> Path:
    dest.mkdir()
    for name in COPIED:
        if (source / name).is_dir():
            shutil.copytree(source / name, dest / name, ignore=shutil.ignore_patterns("checkpoint-*"))
        else:
            shutil.copy2(source / name, dest / name)
    return dest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path, help="a run folder whose notebook 04 ran (models/<arm>/final)")
    p.add_argument("--per-class", type=int, default=40, help="images per class and arm")
    p.add_argument("--repeats", type=int, default=1, help="alternating timed runs of each path; fastest kept")
    args = p.parse_args()
    params = yaml.safe_load((args.run_dir / "params.yaml").read_text())
    settings = sample.sampler_settings(params)
    seconds, folders = {"in_turn": [], "side_by_side": []}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for path, workers in (("in_turn", 1), ("side_by_side", 2)):
                run = copy_run(args.run_dir, Path(tmp) / f"{path}{r}")
                t0 = time.perf_counter()
                sample.sample_arms(run, params["ARMS"], args.per_class, settings=settings, seed=params["SEED"],
                                   batch_size=params["SAMPLE_BATCH_SIZE"], ema=params["USE_EMA"], workers=workers,
                                   progress=False)
                seconds[path].append(round(time.perf_counter() - t0, 2))
                folders[path] = run / "samples"
        worst = max(int(np.abs(np.asarray(Image.open(a), dtype=int)
                               - np.asarray(Image.open(folders["side_by_side"] / a.relative_to(folders["in_turn"])),
                                            dtype=int)).max())
                    for a in folders["in_turn"].rglob("*.png"))
    best = {k: min(v) for k, v in seconds.items()}
    print(json.dumps({"cpu_capability": machine.cpu_capability(), "usable_cpus": machine.usable_cpus(),
                      "arms": params["ARMS"], "images_per_arm": args.per_class, "steps": settings["STEPS"],
                      "seconds": best, "all_seconds": seconds,
                      "in_turn_over_side_by_side": round(best["in_turn"] / best["side_by_side"], 3),
                      "max_pixel_difference_grey_levels": worst}), flush=True)


if __name__ == "__main__":
    main()

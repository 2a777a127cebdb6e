"""Notebook 06's TSTR classifiers trained one at a time (one process, all cores) against ``--workers`` at a time
(a process each, the cores shared), on a real run folder: seconds, ratio and the scores of both.

    python benchmarks/bench_tstr.py RUN_DIR                  # RUN_DIR: a run whose notebook 05 ran
    python benchmarks/bench_tstr.py RUN_DIR --workers 2 --epochs 30 --repeats 1

Both train the run's own TSTR budget (its ``params.yaml``: classifier, epochs, batch size, learning rate,
seeds) on the run's generated and real training images and score them on its test split, as notebook 06
does. Prints one JSON line: the seconds of each, ``one_over_parallel`` (> 1: the pool is faster), and each
training set's macro F1 (mean over classifier seeds, percent) for both, so that a change of numbers shows.
Not a test.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from improve_lib import data  # noqa: E402
from improve_lib.core import machine  # noqa: E402
from improve_lib.metrics import tstr  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path, help="a run folder whose notebook 05 ran (samples/)")
    p.add_argument("--workers", type=int, default=2, help="classifiers trained at a time in the parallel path")
    p.add_argument("--epochs", type=int, default=None, help="classifier epochs (default: the run's EVAL_EPOCHS)")
    p.add_argument("--repeats", type=int, default=1, help="alternating timed runs of each path; fastest kept")
    args = p.parse_args()
    params = yaml.safe_load((args.run_dir / "params.yaml").read_text())
    class_names = list(data.read_split(args.run_dir).drop_duplicates("label").sort_values("label").class_name)
    sets, (test_x, test_y) = tstr.train_sets(args.run_dir, params["ARMS"], class_names, params["N_PER_CLASS"],
                                             params["RESOLUTION"])
    budget = dict(arch=params["CLASSIFIER"], seeds=params["EVAL_SEEDS"], epochs=args.epochs or params["EVAL_EPOCHS"],
                  batch_size=params["EVAL_BATCH_SIZE"], lr=params["EVAL_LR"], n_boot=100, progress=False)
    seconds, f1 = {"one": [], "parallel": []}, {}
    for _ in range(args.repeats):
        for path, workers in (("one", 1), ("parallel", args.workers)):
            t0 = time.perf_counter()
            result = tstr.tstr_scores(sets, test_x, test_y, class_names, workers=workers, **budget)
            seconds[path].append(round(time.perf_counter() - t0, 2))
            f1[path] = {name: round(100 * s["mean"]["f1"], 2) for name, s in result["sets"].items()}
    best = {k: min(v) for k, v in seconds.items()}
    print(json.dumps({"cpu_capability": machine.cpu_capability(), "usable_cpus": machine.usable_cpus(),
                      "classifier": budget["arch"], "epochs": budget["epochs"], "classifiers": len(sets) * len(budget["seeds"]),
                      "workers": args.workers, "seconds": best, "all_seconds": seconds,
                      "one_over_parallel": round(best["one"] / best["parallel"], 3), "macro_f1_percent": f1}), flush=True)


if __name__ == "__main__":
    main()

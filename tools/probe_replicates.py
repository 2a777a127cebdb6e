"""The registered second instrument (improve_lib.metrics.probe) for every evaluated run of a sweep folder.

    python tools/probe_replicates.py SWEEP_DIR results/ham10000/probe.csv

Runs that predate notebook 06's probe cell (the registered replicates ran at an earlier commit) get the same
probe here, from the files their notebook 06 left: the resized real images under ``fidelity/`` and the samples,
embedded through the embedding cache (hits for every image 06 embedded). Nothing in the run folders is written.
Writes one row per run and training set (``run``, ``seed``, ``training_set``, ``macro_f1``, ``n_train``) and,
beside it, ``<name>.json`` with the command, git commit and package versions.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from improve_lib import data  # noqa: E402
from improve_lib.conditioning import encoders  # noqa: E402
from improve_lib.core import manifest, run_layout  # noqa: E402
from improve_lib.core.errors import StudyInputError  # noqa: E402
from improve_lib.core.files import atomic_path, atomic_write_json  # noqa: E402
from improve_lib.metrics import probe  # noqa: E402


def probe_run(run_dir: Path, progress: bool = False) -> pd.DataFrame:
    """The probe table of one evaluated run, with the settings its ``params.yaml`` recorded."""
    p = yaml.safe_load((run_dir / "params.yaml").read_text()) or {}
    class_names = data.class_names_of(data.read_split(run_dir))
    encoder = encoders.load_encoder(p["ENCODER"])
    vectors, labels = probe.embedded_sets(run_dir, p["ARMS"], class_names, p["N_PER_CLASS"], p["RESOLUTION"],
                                         encoder, p.get("CACHE_DIR"), batch_size=p["EMBED_BATCH_SIZE"],
                                         progress=progress)
    return probe.probe_table(vectors, labels)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep_dir")
    ap.add_argument("out_csv")
    args = ap.parse_args(argv)
    sweep_dir = Path(args.sweep_dir)
    if not (sweep_dir / "runs.csv").is_file():
        raise SystemExit(f"{sweep_dir}: no runs.csv (not a sweep folder)")
    tables = []
    for name in pd.read_csv(sweep_dir / "runs.csv", dtype=str)["run"]:
        run = sweep_dir / name
        if not run_layout.metrics_file(run).is_file():
            print(f"{name}: not evaluated (no notebook 06 metrics), skipped")
            continue
        try:
            t = probe_run(run)
        except StudyInputError as exc:
            raise SystemExit(f"{name}: {exc}") from exc
        seed = (manifest.load(run).get("sweep") or {}).get("seed")
        tables.append(t.assign(run=name, seed=seed))
        print(name, {r.training_set: round(r.macro_f1, 1) for r in t.itertuples()})
    if not tables:
        raise SystemExit(f"{sweep_dir}: no evaluated run")
    out = Path(args.out_csv)
    table = pd.concat(tables, ignore_index=True)[["run", "seed", "training_set", "macro_f1", "n_train"]]
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False)
    atomic_write_json(out.with_suffix(".json"), {"command": f"python tools/probe_replicates.py {args.sweep_dir} {args.out_csv}",
                                                 **manifest.provenance()})
    return 0


if __name__ == "__main__":
    sys.exit(main())

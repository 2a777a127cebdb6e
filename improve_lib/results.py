"""Commit the results, not the runs: a sweep folder condensed into ``results/<name>/`` for the repository.

A reader checks a claim from these files without rerunning anything: the comparison of notebook 08
(table, verdict, figure, summary), ``runs.csv``, and per run its ``metrics.json`` (TSTR, fidelity, tone,
copy check), the tables of TSTR, fidelity and objective plausibility, ``prototypes_metrics.json``, ``manifest.json`` (git commit, package versions, parameters,
input and output hashes, notebook times), ``params.yaml``, and the sample grids of notebook 05. No
checkpoint and no image of a dataset is copied. ``COMMAND.md`` holds the command that made the sweep.

:func:`verify` is the check a test runs on every committed folder: every run has its files, and every
copied output still hashes to what its run's manifest recorded (so no number was edited by hand).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from . import manifest
from .errors import StudyInputError
from .io import atomic_write_text, sha256_file

# per run: (file in the run folder, name in the results folder); outputs the manifest hashed
RUN_FILES = (("metrics/metrics.json", "metrics.json"), ("prototypes/metrics.json", "prototypes_metrics.json"),
             ("params.yaml", "params.yaml"))
# per run, when the run has them: the tables behind the per-seed numbers (TSTR, fidelity, objective plausibility)
RUN_TABLES = (("tables/tstr.csv", "tstr.csv"), ("tables/fidelity.csv", "fidelity.csv"),
              ("tables/objective_plausibility.csv", "objective_plausibility.csv"))
RUN_FIGURES = ("figures/05_samples_prototype.png", "figures/05_samples_baseline.png", "figures/05_tone_prototype.png",
               "figures/05_tone_baseline.png")
SWEEP_FILES = ("runs.csv", "sweep.yaml", "comparison/table.md", "comparison/summary.csv", "comparison/verdict.md",
               "comparison/comparison.png")


def export(sweep_dir: str | Path, out_dir: str | Path, command: str) -> Path:
    """Copy a finished sweep's evidence into ``out_dir`` (created; refused when it holds other files).
    Only the sweep's runs (``runs.csv``) that reached notebook 06 are taken; ``command`` is written to ``COMMAND.md``. Returns ``out_dir``."""
    sweep_dir, out_dir = Path(sweep_dir), Path(out_dir)
    missing = [f for f in SWEEP_FILES if not (sweep_dir / f).is_file()]
    if missing:
        raise StudyInputError(f"{sweep_dir}: {missing} missing; render notebook 08 (python -m improve_lib compare DIR)")
    # the sweep's own runs (runs.csv), not a run folder that only lent its upstream notebooks to them
    names = pd.read_csv(sweep_dir / "runs.csv", dtype=str)["run"].tolist()
    outputs = {n: manifest.load(sweep_dir / n).get("outputs", {}) for n in sorted(names)
               if (sweep_dir / n / manifest.MANIFEST).is_file()}
    runs = [sweep_dir / n for n, recorded in outputs.items() if all(src in recorded for src, _ in RUN_FILES)]
    if not runs:
        raise StudyInputError(f"{sweep_dir}: no run has evaluated its samples (notebook 06) yet")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    for rel in SWEEP_FILES:
        _copy(sweep_dir / rel, out_dir / rel)
    for run in runs:
        for src, dst in RUN_FILES:
            _copy(run / src, out_dir / "runs" / run.name / dst)
        for src, dst in RUN_TABLES:
            if (run / src).is_file() and src in outputs[run.name]:
                _copy(run / src, out_dir / "runs" / run.name / dst)
        _copy(run / manifest.MANIFEST, out_dir / "runs" / run.name / manifest.MANIFEST)
        for fig in RUN_FIGURES:
            if (run / fig).is_file():
                _copy(run / fig, out_dir / "runs" / run.name / Path(fig).name)
    atomic_write_text(out_dir / "COMMAND.md", f"# How these results were made\n\n```bash\n{command}\n```\n")
    verify(out_dir)
    return out_dir


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)


def verify(out_dir: str | Path) -> list[str]:
    """Check a results folder: the sweep files and ``COMMAND.md`` exist, every run holds its files, and
    each copied output hashes to the sha256 its run's manifest recorded. Returns the run names; raises
    :class:`StudyInputError` naming the first problem."""
    out_dir = Path(out_dir)
    missing = [f for f in (*SWEEP_FILES, "COMMAND.md") if not (out_dir / f).is_file()]
    if missing:
        raise StudyInputError(f"{out_dir}: missing {missing}")
    runs = sorted(p for p in (out_dir / "runs").iterdir() if p.is_dir()) if (out_dir / "runs").is_dir() else []
    if not runs:
        raise StudyInputError(f"{out_dir}: no runs/")
    for run in runs:
        recorded = manifest.load(run).get("outputs", {})
        for (src, dst), required in [(f, True) for f in RUN_FILES] + [(f, False) for f in RUN_TABLES]:
            path = run / dst
            if not path.is_file():
                if required:
                    raise StudyInputError(f"{run}: {dst} missing")
                continue
            if src != "params.yaml" and recorded.get(src) != sha256_file(path):
                raise StudyInputError(f"{path}: sha256 differs from its manifest's record of {src}: edited after the run?")
    return [r.name for r in runs]

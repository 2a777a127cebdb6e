"""Sharing finished notebooks between run folders: a run copies what another run computed with equal keys.

Every notebook of a run has a stage key (:func:`improve_lib.runs.pipeline.stage_keys`). The manifest records
which notebook wrote which file (``output_stages``), so the files of a chain of finished notebooks can
be copied into a new run folder, their paths rewritten to it, and those notebooks marked done there
(``reused_from`` names the donor). A donor whose files a later notebook rewrote is not used.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from improve_lib.core import manifest
from improve_lib.core.files import atomic_path, atomic_write_text

_NOT_COPIED = {"params.yaml", manifest.MANIFEST}  # the runner writes these for each run


def done_prefix(stages: dict[str, Any], keys: dict[str, str], books: list[Path]) -> list[str]:
    """Names of the leading notebooks that are done with exactly these keys."""
    out = []
    for nb in books:
        st = stages.get(nb.name, {})
        if st.get("status") != "done" or st.get("key") != keys[nb.name]:
            break
        out.append(nb.name)
    return out


def own_prefix(run, sweep_dir: Path, books: list[Path]) -> list[str]:
    """The leading notebooks ``run``'s own folder in ``sweep_dir`` has done with its current stage keys."""
    return done_prefix(manifest.load(sweep_dir / run.name).get("stages", {}), run.keys, books)


def planned_prefix(donor_keys: dict[str, str], keys: dict[str, str], books: list[Path]) -> list[str]:
    """The leading notebooks a run with stage ``keys`` will reuse from a run with ``donor_keys`` once that
    run has finished them all."""
    return done_prefix({nb: {"status": "done", "key": k} for nb, k in donor_keys.items()}, keys, books)


def find_donor(run, sweep_dir: Path, books: list[Path], busy: Sequence[str] = ()) -> tuple[Path | None, list[str]]:
    """The run folder in ``sweep_dir`` that shares the longest chain of finished notebooks with ``run`` (a
    :class:`~improve_lib.runs.sweep.SweepRun`: its ``name`` and stage ``keys``), and that chain; ``(None, [])``
    when none shares the first notebook. Folders named in ``busy`` (runs of a parallel sweep still being
    written) are not considered."""
    best: tuple[Path | None, list[str]] = (None, [])
    skip = {run.name, *busy}
    for cand in sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name not in skip) if sweep_dir.is_dir() else []:
        m = manifest.load(cand)
        shared = done_prefix(m.get("stages", {}), run.keys, books)
        while shared and not _copyable(m, shared):
            shared = shared[:-1]
        if len(shared) > len(best[1]):
            best = (cand, shared)
    return best


def _stage_files(m: dict[str, Any], stages: Sequence[str]) -> list[str]:
    written = m.get("output_stages", {})
    return sorted(k for k, by in written.items() if by and by[0] in stages and k not in _NOT_COPIED)


def _copyable(m: dict[str, Any], stages: Sequence[str]) -> bool:
    """The donor's files of these stages were not rewritten by a later stage (their content is theirs)."""
    written = m.get("output_stages", {})
    if not written:
        return False
    return all(set(written[k]) <= set(stages) for k in _stage_files(m, stages))


def adopt_stages(run_dir: Path, donor_dir: Path, stages: Sequence[str]) -> int:
    """Copy the files that ``stages`` wrote in ``donor_dir`` into the new run folder and mark those
    stages done there (``reused_from`` names the donor). Returns the number of files copied."""
    dm = manifest.load(donor_dir)
    files = _stage_files(dm, stages)
    run_dir.mkdir(parents=True, exist_ok=True)
    for rel in files:
        dst = run_dir / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(donor_dir / rel, dst)  # a copy, not a link: later stages may append to files
    _relocate(run_dir, donor_dir, files)
    stems = {Path(s).stem for s in stages}
    m = manifest.load(run_dir)
    m["written_by"] = manifest.WRITTEN_BY  # a run folder made from a donor's files
    m["stages"] = {s: {**dm["stages"][s], "reused_from": donor_dir.name} for s in stages}
    m["facts"] = {k: v for k, v in dm.get("facts", {}).items() if k in stems}
    m["inputs"] = {k: v for k, v in dm.get("inputs", {}).items()
                   if Path(k).is_absolute() or k in set(files)}
    m["output_stages"] = {k: dm["output_stages"][k] for k in files}
    manifest.save(run_dir, m)
    manifest.refresh_outputs(run_dir)
    return len(files)


_TEXT_SUFFIXES = (".csv", ".yaml", ".yml", ".json", ".md", ".txt")


def _relocate(run_dir: Path, donor_dir: Path, files: Sequence[str]) -> None:
    """Point copied files at this run's folder instead of the donor's: absolute paths inside the run
    folder (the split's image paths, a training config's RUN_DIR, the embeddings' image paths) are
    rewritten, so the run stands alone and the donor may be deleted. Executed notebooks are left as
    the record of what ran (the manifest names the donor)."""
    old, new = str(donor_dir.resolve()), str(run_dir.resolve())
    for rel in files:
        path = run_dir / rel
        if path.suffix in _TEXT_SUFFIXES:
            text = path.read_text(encoding="utf-8")
            if old in text:
                atomic_write_text(path, text.replace(old, new))
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
            moved = {k: np.char.replace(v, old, new) for k, v in arrays.items()
                     if v.dtype.kind == "U" and np.char.find(v, old).max(initial=-1) >= 0}
            if moved:
                with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                    np.savez(fh, **{**arrays, **moved})

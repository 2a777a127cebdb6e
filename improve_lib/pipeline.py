"""The papermill runner: execute the numbered notebooks in order into one run folder.

Parameters come from ``params/<PROFILE>.yaml`` (flat UPPER_CASE keys, plus an optional
``datasets: {name: {...}}`` block of per-dataset values), then the command-line flags. Each
notebook receives only the parameters its ``parameters`` cell declares.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

import yaml

from . import manifest
from .errors import StudyInputError
from .io import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = Path(os.environ.get("IMPROVE_NOTEBOOKS", REPO / "notebooks"))
PARAMS_DIR = Path(os.environ.get("IMPROVE_PARAMS", REPO / "params"))
KERNEL = "python3"
# Notebooks that read a sweep folder, not a run folder: not part of a run's pipeline.
SWEEP_NOTEBOOKS = ("08_compare_runs.ipynb",)
PATH_KEYS = ("DATA_DIR", "CACHE_DIR", "CLASSIFIER_WEIGHTS")
# Where a run lives or caches does not change what it computes: left out of the stage keys.
KEY_EXCLUDE = ("RUN_DIR", "CACHE_DIR")


class StudyRunError(RuntimeError):
    """A notebook of the pipeline failed; the message names the notebook and the cell."""


def list_notebooks(only: Iterable[str] | None = None, notebook_dir: Path = NOTEBOOK_DIR) -> list[Path]:
    """The pipeline's notebooks in order (``NN_name.ipynb``), optionally only the given numbers."""
    books = sorted(p for p in notebook_dir.glob("[0-9][0-9]_*.ipynb") if p.name not in SWEEP_NOTEBOOKS)
    if only:
        wanted = {str(o).zfill(2) for o in only}
        unknown = wanted - {p.name[:2] for p in books}
        if unknown:
            raise StudyInputError(f"--only names notebook(s) {sorted(unknown)} that do not exist in {notebook_dir}; "
                                  f"available: {[p.name[:2] for p in books]}")
        books = [p for p in books if p.name[:2] in wanted]
    return books


def declared_parameters(notebook: Path) -> dict[str, Any]:
    """Names and defaults of the notebook's ``parameters`` cell (papermill's own parser)."""
    st = Path(notebook).stat()
    return dict(_declared(str(notebook), st.st_mtime_ns, st.st_size))


@functools.lru_cache(maxsize=256)
def _declared(path: str, mtime_ns: int, size: int) -> tuple[tuple[str, Any], ...]:
    # cached per file version: a sweep asks for every notebook's parameters once per run
    import papermill

    return tuple((k, v["default"]) for k, v in papermill.inspect_notebook(path).items())


def read_yaml_mapping(path: Path, what: str, name: str, holds: str) -> dict[str, Any]:
    """Read a YAML mapping from ``path``; a missing file names the ``what`` files available beside it,
    anything but a mapping says what it must hold."""
    if not path.is_file():
        avail = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise StudyInputError(f"unknown {what} {name!r}: {path} does not exist; available: {avail}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise StudyInputError(f"{path} must hold a mapping of {holds}")
    return data


def load_profile(profile: str, params_dir: Path = PARAMS_DIR) -> dict[str, Any]:
    """Read ``params/<profile>.yaml``; an unknown profile lists the available ones."""
    return read_yaml_mapping(params_dir / f"{profile}.yaml", "profile", profile, "UPPER_CASE keys")


def as_number(value: Any) -> Any:
    """A string that reads as a float becomes one (YAML 1.1 reads ``1e-3`` as a string); others unchanged."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def parse_sets(items: Iterable[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings to a dict; values are parsed as YAML (``3`` -> int, ``[a,b]`` -> list)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise StudyInputError(f"--set {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        key = key.strip()
        if not key.isupper():
            raise StudyInputError(f"--set {item!r}: parameter names are UPPER_CASE")
        out[key] = as_number(yaml.safe_load(value)) if value.strip() else None
    return out


def resolve_params(profile: str, dataset: str | None = None, data_dir: str | None = None,
                   sets: dict[str, Any] | None = None, notebooks: list[Path] | None = None) -> dict[str, Any]:
    """Profile values, then per-dataset values, then flags. Unknown ``--set`` keys are errors."""
    raw = load_profile(profile)
    per_dataset = raw.pop("datasets", {}) or {}
    params = dict(raw)
    params["DATASET"] = dataset or params.get("DATASET", "synthetic")
    params.update(per_dataset.get(params["DATASET"], {}) or {})
    if data_dir is not None:
        params["DATA_DIR"] = str(Path(data_dir).expanduser().resolve())
    sets = sets or {}
    declared = set()
    for nb in notebooks if notebooks is not None else list_notebooks():
        declared |= set(declared_parameters(nb))
    unknown = sorted(k for k in sets if k not in declared and k not in params)
    if unknown:
        raise StudyInputError(f"--set key(s) {unknown} are not parameters of any notebook nor of profile {profile!r}")
    params.update(sets)
    # Notebooks run with the notebooks folder as working directory: make user paths absolute here.
    for key in PATH_KEYS:
        if isinstance(params.get(key), str) and params[key]:
            params[key] = str(Path(params[key]).expanduser().resolve())
    params["PROFILE"] = profile
    return params


def default_run_dir(params: dict[str, Any]) -> Path:
    """``runs/<profile>-<dataset>-seed<SEED>-<timestamp>`` under the current directory."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{params['PROFILE']}-{params['DATASET']}-seed{params.get('SEED', 0)}-{stamp}"


def preflight(params: dict[str, Any]) -> None:
    """Check the data source before the run folder is touched, so bad input leaves nothing behind."""
    from . import data

    src = data.check_source(params["DATASET"], params.get("DATA_DIR"))
    if params["DATASET"] == "synthetic" and params.get("CLASSES"):
        from .data import synthetic_cells

        unknown = sorted(set(params["CLASSES"]) - set(synthetic_cells.CLASSES))
        if unknown:
            raise StudyInputError(f"synthetic: unknown class(es) {unknown} in CLASSES; valid: {list(synthetic_cells.CLASSES)}")
    if params["DATASET"] in ("dermamnist", "bloodmnist"):
        data.medmnist.read_pool(src, params["DATASET"], params.get("CLASSES"))
    if params["DATASET"] in ("ham10000", "bone_marrow"):
        data.build_split(params["DATASET"], src, "/nonexistent-preflight", int(params["N_TRAIN"]),
                         int(params["N_TEST"]), int(params["SEED"]), params.get("CLASSES"),
                         int(params.get("MIN_PER_CLASS", 1)), int(params.get("RESOLUTION", 64)), verify=True)


def code_fingerprint(package_dir: Path = REPO / "improve_lib") -> str:
    """sha256 over the library's source files: a stage computed by other code is never reused."""
    files = sorted(p for p in package_dir.rglob("*")
                   if p.is_file() and p.suffix in (".py", ".yaml") and "__pycache__" not in p.parts)
    return _hash_files(tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files), str(package_dir))


@functools.lru_cache(maxsize=64)
def _hash_files(signature: tuple, root: str) -> str:
    # keyed by every file's (path, mtime, size): an edited file is hashed again
    h = hashlib.sha256()
    for path, _, _ in signature:
        h.update(str(Path(path).relative_to(root)).encode() + b"\0" + Path(path).read_bytes() + b"\0")
    return h.hexdigest()


def notebook_fingerprint(notebook: Path) -> str:
    """sha256 of the notebook's code cells (outputs and markdown do not change what it computes)."""
    st = Path(notebook).stat()
    return _notebook_hash(str(notebook), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=256)
def _notebook_hash(path: str, mtime_ns: int, size: int) -> str:
    import nbformat

    nb = nbformat.read(path, as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    return hashlib.sha256(json.dumps(code).encode()).hexdigest()


def stage_keys(params: dict[str, Any], notebooks: list[Path]) -> dict[str, str]:
    """One key per notebook: a hash of its code, the library's code, the values of the parameters it
    declares (all but :data:`KEY_EXCLUDE`) and the key of the notebook before it.

    Two runs whose keys agree up to notebook NN computed the same outputs up to NN, so a sweep may copy
    them instead of recomputing. SEED and DATASET/DATA_DIR are parameters of every chain (01 declares
    the data, every notebook declares SEED), so a change of seed or data changes every key.
    """
    library = code_fingerprint()
    keys, upstream = {}, ""
    for nb in notebooks:
        declared = sorted(k for k in declared_parameters(nb) if k not in KEY_EXCLUDE)
        blob = json.dumps({"notebook": nb.name, "code": notebook_fingerprint(nb), "library": library,
                           "params": {k: params.get(k) for k in declared}, "upstream": upstream},
                          sort_keys=True, default=str)
        upstream = keys[nb.name] = hashlib.sha256(blob.encode()).hexdigest()[:20]
    return keys


def _cell_in(executed: Path, failed: bool) -> str:
    """'cell N (first line)' of a cell of the executed copy, numbered as in the source notebook
    (1-based): with ``failed`` the first code cell with an error output, else the last cell papermill
    records as started (the one running when the time ran out or the kernel died; papermill marks even
    that one completed)."""
    import nbformat

    try:
        nb = nbformat.read(executed, as_version=4)
    except (OSError, ValueError):
        return "an unknown cell"
    added = {"injected-parameters", "papermill-error-cell-tag"}  # cells papermill adds
    cells = list(enumerate((c for c in nb.cells if not added & set(c.metadata.get("tags", []))), start=1))
    if failed:
        hits = [(i, c) for i, c in cells
                if c.cell_type == "code" and any(o.get("output_type") == "error" for o in c.get("outputs", []))][:1]
    else:
        hits = [(i, c) for i, c in cells if c.metadata.get("papermill", {}).get("start_time")][-1:]
    if not hits:
        return "an unknown cell"
    i, c = hits[0]
    first = next((line for line in c.source.splitlines() if line.strip()), "")
    return f"cell {i} ({first[:60]!r})"


def cell_timeout() -> float | None:
    """Seconds one cell may run (``$IMPROVE_CELL_TIMEOUT``; unset, empty or 0: no limit). The tests set
    it so that a hung kernel fails its test with the cell named instead of stalling the suite; a study
    run leaves it unset, since a paper-scale training cell runs for hours."""
    raw = os.environ.get("IMPROVE_CELL_TIMEOUT", "").strip()
    try:
        value = float(raw) if raw else 0.0
    except ValueError:
        raise StudyInputError(f"IMPROVE_CELL_TIMEOUT={raw!r} must be a number of seconds") from None
    return value if value > 0 else None


def execute_notebook(notebook: Path, out: Path, parameters: dict[str, Any], progress: bool = True) -> Path:
    """Run ``notebook`` with papermill into ``out`` (working directory: the notebook's folder). A failure,
    a cell running past :func:`cell_timeout` or a kernel that died raises :class:`StudyRunError` naming
    the notebook, the cell and the executed copy."""
    import papermill
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    limit = cell_timeout()
    try:
        papermill.execute_notebook(str(notebook), str(out), parameters=parameters, kernel_name=KERNEL,
                                   cwd=str(notebook.parent), progress_bar=progress, log_output=False,
                                   execution_timeout=limit)
    except papermill.PapermillExecutionError as exc:
        raise StudyRunError(
            f"notebook {notebook.name} failed in {_cell_in(out, failed=True)} with {exc.ename}: {exc.evalue}\n"
            f"executed copy with the traceback: {out}"
        ) from None
    except CellTimeoutError:
        raise StudyRunError(
            f"notebook {notebook.name}: {_cell_in(out, failed=False)} ran longer than IMPROVE_CELL_TIMEOUT={limit:g} s; "
            f"executed copy up to that cell: {out}"
        ) from None
    except DeadKernelError as exc:
        raise StudyRunError(f"notebook {notebook.name}: the kernel died in {_cell_in(out, failed=False)} ({exc}); "
                            f"executed copy up to that cell: {out}") from None
    return out


def _discard_outputs(run_dir: Path, notebooks: list[str]) -> None:
    """Delete the files the manifest credits to ``notebooks`` (their first writer) and forget their records."""
    m = manifest.load(run_dir)
    written = m.get("output_stages", {})
    keep = {run_dir, run_dir / "notebooks", run_dir / "figures"}
    for rel, by in written.items():
        if by and by[0] in notebooks and rel not in ("params.yaml", manifest.MANIFEST):
            path = run_dir / rel
            path.unlink(missing_ok=True)
            for parent in path.parents:  # folders left empty (an old checkpoint-N/) go too
                if parent in keep or not parent.is_relative_to(run_dir) or any(parent.iterdir()):
                    break
                parent.rmdir()
    for nb in notebooks:
        m.get("stages", {}).pop(nb, None)
        m.get("facts", {}).pop(Path(nb).stem, None)
    manifest.save(run_dir, m)
    manifest.refresh_outputs(run_dir)


def _changed(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Keys whose value differs; keys the old run did not have (a stage added since) are not changes."""
    return sorted(k for k in old if k != "RUN_DIR" and old.get(k) != new.get(k))


def run_pipeline(profile: str, dataset: str | None = None, data_dir: str | None = None,
                 run_dir: str | Path | None = None, only: Iterable[str] | None = None,
                 sets: dict[str, Any] | None = None, resume: bool = False, force: bool = False,
                 progress: bool = True, notebook_dir: Path = NOTEBOOK_DIR) -> Path:
    """Execute the notebooks into ``run_dir`` and return it. See the module docstring."""
    from tqdm.auto import tqdm

    books = list_notebooks(only, notebook_dir)
    all_books = list_notebooks(None, notebook_dir)
    params = resolve_params(profile, dataset, data_dir, sets, all_books)
    run_dir = Path(run_dir) if run_dir else default_run_dir(params)
    run_dir = run_dir.expanduser().resolve()
    params["RUN_DIR"] = str(run_dir)
    preflight(params)

    existing = run_dir.exists() and any(run_dir.iterdir())
    if existing and not (resume or force):
        raise StudyInputError(f"run folder {run_dir} is not empty: pass --resume to continue it or --force to start it over")
    if existing and force and not resume:
        if not ((run_dir / "manifest.json").is_file() or (run_dir / "params.yaml").is_file()):
            raise StudyInputError(f"--force deletes a run folder and {run_dir} is not one (no manifest.json or "
                                  f"params.yaml): choose another --run-dir")
        shutil.rmtree(run_dir)
    if resume and (run_dir / "params.yaml").is_file():
        old = yaml.safe_load((run_dir / "params.yaml").read_text()) or {}
        changed = _changed(old, params)
        if changed and not force:
            raise StudyInputError(f"--resume with changed parameter(s) {changed} (was "
                                  f"{ {k: old.get(k) for k in changed} }); use a new RUN_DIR or --force")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "notebooks").mkdir(exist_ok=True)
    (run_dir / "figures").mkdir(exist_ok=True)
    atomic_write_text(run_dir / "params.yaml", yaml.safe_dump(params, sort_keys=True))
    run_id = run_dir.name
    m = manifest.start(run_dir, run_id, profile, params)
    keys = stage_keys(params, all_books)
    m["stage_keys"] = keys
    manifest.save(run_dir, m)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub lookup without network hangs for a minute
    bar = tqdm(books, desc=f"run {run_id}", unit="notebook", disable=not progress)
    rerun = False  # once a notebook runs, every later one runs too (its inputs may have changed)
    for nb in bar:
        bar.set_postfix_str(nb.name)
        done = m.get("stages", {}).get(nb.name, {})
        if resume and not rerun and done.get("status") == "done" and done.get("key") == keys[nb.name]:
            continue
        if not rerun and m.get("stages"):
            # outputs of notebooks computed with other parameters or code must not survive (a training
            # would resume from an old checkpoint; an arm no longer trained would keep its samples);
            # an interrupted notebook with the same key keeps its files, so training resumes
            same = done.get("key") == keys[nb.name]
            names = [b.name for b in all_books]
            start = names.index(nb.name) + (1 if same else 0)
            _discard_outputs(run_dir, names[start:])
        rerun = True
        declared = declared_parameters(nb)
        nb_params = {k: params[k] for k in declared if k in params}
        t0 = time.time()
        try:
            execute_notebook(nb, run_dir / "notebooks" / nb.name, nb_params, progress)
        except StudyRunError:
            manifest.record_stage(run_dir, nb.name, "failed", time.time() - t0, nb_params, keys[nb.name])
            manifest.refresh_outputs(run_dir, nb.name)
            raise
        manifest.record_stage(run_dir, nb.name, "done", time.time() - t0, nb_params, keys[nb.name])
        manifest.refresh_outputs(run_dir, nb.name)
        m = manifest.load(run_dir)
    m = manifest.load(run_dir)
    m["finished"] = datetime.now().astimezone().isoformat(timespec="seconds")
    m["complete"] = all(m["stages"].get(p.name, {}).get("status") == "done"
                        and m["stages"][p.name].get("key") == keys[p.name] for p in all_books)
    manifest.save(run_dir, m)
    return run_dir

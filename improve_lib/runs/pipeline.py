"""The papermill runner: execute the numbered notebooks in order into one run folder.

Parameters are resolved by :mod:`improve_lib.runs.profiles` (the notebooks' defaults, then
``params/<PROFILE>.yaml``, then the command-line flags) and written to ``RUN_DIR/params.yaml``. Each
notebook receives the parameters its ``parameters`` cell declares.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

import nbformat
import papermill
import yaml
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from tqdm.auto import tqdm
from traitlets.config import Config

from improve_lib import data
from improve_lib.conditioning import encoders, prototypes
from improve_lib.core import manifest, notebook_parameters, parameter_domains, run_layout
from improve_lib.core.errors import StudyInputError
from improve_lib.core.files import atomic_write_text
from improve_lib.core.notebook_parameters import NOTEBOOK_DIR, REPO, declared_parameters, list_notebooks
from improve_lib.data import external
from improve_lib.diffusion import sample, train
from improve_lib.metrics import tstr
from improve_lib.runs.profiles import resolve_params

KERNEL = "python3"
# Where a run lives or caches does not change what it computes: left out of the stage keys.
KEY_EXCLUDE = ("RUN_DIR", "CACHE_DIR")


class StudyRunError(RuntimeError):
    """A notebook of the pipeline failed; the message names the notebook and the cell."""


def default_run_dir(params: dict[str, Any]) -> Path:
    """``runs/<profile>-<dataset>-seed<SEED>-<timestamp>`` under the current directory."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{params['PROFILE']}-{params['DATASET']}-seed{params.get('SEED', 0)}-{stamp}"


def check_parameters(params: dict[str, Any]) -> dict[str, Any]:
    """Every value of a run checked before its folder is created, so that a typo fails in seconds and not
    after hours of training: its type against its notebook's default (:func:`notebook_parameters.check_types`),
    its range (:func:`parameter_domains.check_domains`: finite numbers, counts, lists), then each stage's own rules (CPL, the training config, the sampler, the TSTR budget, the arms), and an
    open_clip checkpoint path made absolute and checked. Returns the params with those coercions."""
    p = parameter_domains.check_domains(notebook_parameters.check_types(params))
    if isinstance(p.get("ENCODER"), str):
        p["ENCODER"] = encoders.resolve_encoder_path(p["ENCODER"])
    prototypes.check_settings(p["K"], p["GAMMA"], p["LAMBDA"], p["PROJECTION"], p["PROTO_EPOCHS"], p["PROTO_LR"],
                              p["PROTO_BATCH_SIZE"], p["PROTOTYPES_ON_SPHERE"])
    train.resolve_config({**p, "RUN_DIR": str(REPO), "ARM": train.ARMS[0]})
    sample.sampler_settings(p)
    tstr.check_budget(p["CLASSIFIER"], p["EVAL_EPOCHS"], p["EVAL_BATCH_SIZE"], p["EVAL_LR"], p["N_BOOT"], p["EVAL_SEEDS"])
    data.check_validation(p["N_TRAIN"], p.get("N_VALIDATION") or 0)
    tstr.check_eval_split(p.get("EVAL_SPLIT", "test"), p.get("N_VALIDATION") or 0)
    arms = p.get("ARMS")
    if not arms or not set(arms) <= set(train.ARMS) or len(set(arms)) != len(arms):
        raise StudyInputError(f"ARMS={arms!r}: expected one or both of {list(train.ARMS)}, each once")
    return p


def preflight(params: dict[str, Any]) -> None:
    """Check the data source before the run folder is touched, so bad input leaves nothing behind."""
    src = data.check_source(params["DATASET"], params.get("DATA_DIR"))
    if params["DATASET"] == "synthetic" and params.get("CLASSES"):
        unknown = sorted(set(params["CLASSES"]) - set(data.synthetic_cells.CLASSES))
        if unknown:
            raise StudyInputError(f"synthetic: unknown class(es) {unknown} in CLASSES; "
                                  f"valid: {list(data.synthetic_cells.CLASSES)}")
    if params["DATASET"] in ("dermamnist", "bloodmnist"):
        data.medmnist.read_pool(src, params["DATASET"], params.get("CLASSES"))
    split = None
    if params["DATASET"] in ("ham10000", "bone_marrow"):
        split = data.build_split(params["DATASET"], src, "/nonexistent-preflight", int(params["N_TRAIN"]),
                                 int(params["N_TEST"]), int(data.split_seed(params["SEED"], params.get("SPLIT_SEED"))),
                                 params.get("CLASSES"),
                                 int(params.get("MIN_PER_CLASS", 1)), int(params.get("RESOLUTION", 64)), verify=True,
                                 n_validation=int(params.get("N_VALIDATION") or 0))
    if params.get("EXTERNAL_TEST_DIR"):  # notebook 06's external test: refused now if it overlaps the split
        if split is None:
            raise StudyInputError(f"EXTERNAL_TEST_DIR is read for {list(external.SUPPORTED)}, not DATASET={params['DATASET']}")
        external.external_test(params["DATASET"], params["EXTERNAL_TEST_DIR"], split.table, split.class_names,
                               verify=False)


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


def kernel_config(socket_dir: str | Path | None = None) -> Config:
    """Kernels talk to the runner over local Unix sockets (IPC) where the system has them: the kernel is on
    this machine, so TCP only opened ports and made every kernel warn that its traffic is unencrypted.

    The sockets go into ``socket_dir`` (one folder per kernel): by default jupyter_client names them
    ``kernel-ipc-1``, ``-2``, ... in the working folder, and two runs started at once from the same
    notebooks folder took the same names and read each other's messages ("Invalid Signature")."""
    if os.name != "posix":
        return Config()
    settings = {"transport": "ipc"}
    if socket_dir is not None:
        settings["ip"] = str(Path(socket_dir) / "kernel")
    return Config({"KernelManager": settings})


def execute_notebook(notebook: Path, out: Path, parameters: dict[str, Any], progress: bool = True) -> Path:
    """Run ``notebook`` with papermill into ``out`` (working directory: the notebook's folder). A failure,
    a cell running past :func:`cell_timeout` or a kernel that died raises :class:`StudyRunError` naming
    the notebook, the cell and the executed copy."""
    limit = cell_timeout()
    # A short path of its own for this kernel's sockets (Unix socket paths are limited to about 100 bytes).
    sockets = tempfile.TemporaryDirectory(prefix="improve-kernel-", dir="/tmp" if os.path.isdir("/tmp") else None)
    try:
        papermill.execute_notebook(str(notebook), str(out), parameters=parameters, kernel_name=KERNEL,
                                   cwd=str(notebook.parent), progress_bar=progress, log_output=False,
                                   execution_timeout=limit, config=kernel_config(sockets.name))
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
    except OSError as exc:  # the runner could not write (a full disk, a folder made read-only): a stage that failed
        try:
            nbformat.read(str(out), as_version=4)
            kept = f"executed copy up to there: {out}"
        except Exception:  # noqa: BLE001 - a half-written executed notebook is no record: it goes
            Path(out).unlink(missing_ok=True)
            kept = f"its half-written executed copy was removed ({out})"
        raise StudyRunError(f"notebook {notebook.name}: could not write ({exc.strerror or exc}: "
                            f"{exc.filename or out}); {kept}") from None
    finally:
        sockets.cleanup()
    return out


# The folders a notebook owns: rerun with other inputs, it starts them afresh, files the manifest never
# recorded included (a training killed mid-way leaves checkpoints that no refresh saw). review/ is never
# among them: it holds experts' judgments.


def _discard_outputs(run_dir: Path, notebooks: list[str]) -> None:
    """Delete the files the manifest credits to ``notebooks`` (their first writer) and the folders they
    own (:data:`run_layout.OWNED_FOLDERS`), and forget their records."""
    for nb in notebooks:
        for folder in run_layout.OWNED_FOLDERS.get(nb[:2], ()):
            shutil.rmtree(run_dir / folder, ignore_errors=True)
    m = manifest.load(run_dir)
    written = m.get("output_stages", {})
    keep = {run_dir, run_layout.notebooks_dir(run_dir), run_layout.figures_dir(run_dir)}
    for rel, by in written.items():
        if by and by[0] in notebooks and rel not in ("params.yaml", manifest.MANIFEST):
            path = run_dir / rel
            path.unlink(missing_ok=True)
            for parent in path.parents:  # folders left empty (an old checkpoint-N/) go too
                if not parent.exists():
                    continue
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


def _claim_folder(run_dir: Path, resume: bool, force: bool) -> bool:
    """Whether ``run_dir`` holds an earlier run to continue. A non-empty folder needs ``--resume`` (only a run
    folder of this project) or ``--force`` (start over: deleted, unless it holds files this project did not
    write, in any subfolder)."""
    existing = run_dir.exists() and any(run_dir.iterdir())
    if existing and not (resume or force):
        raise StudyInputError(f"run folder {run_dir} is not empty: pass --resume to continue it or --force to start it over")
    if existing and resume:
        manifest.check_run_folder(run_dir, "--resume")  # never adopt a folder this project did not make
    if existing and force and not resume:
        foreign = manifest.foreign_files(run_dir)
        if foreign:
            raise StudyInputError(f"--force would delete {run_dir}, which holds {len(foreign)} file(s) this project did "
                                  f"not write: {foreign[:8]}; move them out or choose another --run-dir")
        shutil.rmtree(run_dir)
        return False
    return existing


def run_pipeline(profile: str, dataset: str | None = None, data_dir: str | None = None,
                 run_dir: str | Path | None = None, only: Iterable[str] | None = None,
                 sets: dict[str, Any] | None = None, resume: bool = False, force: bool = False,
                 progress: bool = True, notebook_dir: Path = NOTEBOOK_DIR) -> Path:
    """Execute the notebooks into ``run_dir`` and return it. See the module docstring."""
    books = list_notebooks(only, notebook_dir)
    all_books = list_notebooks(None, notebook_dir)
    params = resolve_params(profile, dataset, data_dir, sets, all_books)
    run_dir = Path(run_dir) if run_dir else default_run_dir(params)
    run_dir = run_dir.expanduser().resolve()
    if run_dir.exists() and not run_dir.is_dir():
        raise StudyInputError(f"--run-dir {run_dir} is a file, not a folder: choose a folder for the run")
    params["RUN_DIR"] = str(run_dir)
    params = check_parameters(params)
    preflight(params)

    existing = _claim_folder(run_dir, resume, force)
    if resume and (run_dir / "params.yaml").is_file():
        old = yaml.safe_load((run_dir / "params.yaml").read_text()) or {}
        changed = _changed(old, params)
        if changed and not force:
            raise StudyInputError(f"--resume with changed parameter(s) {changed} (was "
                                  f"{ {k: old.get(k) for k in changed} }); use a new RUN_DIR or --force")
    run_dir.mkdir(parents=True, exist_ok=True)
    run_layout.notebooks_dir(run_dir).mkdir(exist_ok=True)
    run_layout.figures_dir(run_dir).mkdir(exist_ok=True)
    # RUN_DIR is the folder that holds the file: "." keeps identical runs in two folders byte-identical
    atomic_write_text(run_dir / "params.yaml", yaml.safe_dump({**params, "RUN_DIR": "."}, sort_keys=True))
    run_id = run_dir.name
    m = manifest.start(run_dir, run_id, profile, params)
    if existing:  # files put into the folder since its last notebook are not the run's: listed as unclaimed
        manifest.refresh_outputs(run_dir)
        m = manifest.load(run_dir)
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
            execute_notebook(nb, run_layout.notebooks_dir(run_dir) / nb.name, nb_params, progress)
        except StudyRunError:
            try:
                manifest.record_stage(run_dir, nb.name, "failed", time.time() - t0, nb_params, keys[nb.name])
                manifest.refresh_outputs(run_dir, nb.name)
            except OSError:  # still no room to write: the manifest stays as it was (atomic writes), the error says why
                pass
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

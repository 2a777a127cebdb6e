"""Blinded review tasks and the judgments made on them: criteria, ``tasks.csv``, reviewers, ``<reviewer>.csv``.

Files, all under ``RUN_DIR/review/``::

    tasks.csv          task_id, image_path, intended_class, arm, position   (the unblinding key)
    blinding.json      seed, n, arms, n_per_class, classes
    criteria.json      dataset and criterion ids per criteria version used in this review
    reviewers.json     reviewer name -> created, display_name
    <reviewer>.csv     task_id, reviewer, plausible, failed_criteria, comment, timestamp, criteria_version

A judgment is appended (never rewritten) and fsync'd the moment it is made; the latest row of a task
wins when reading. ``arm`` lives only in ``tasks.csv``: the review app never shows it, and task ids are
hashes that do not encode it.
"""
from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import io
import json
import os
import re
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import yaml
from PIL import Image

from improve_lib.core.errors import StudyInputError
from improve_lib.core import run_layout
from improve_lib.core.files import atomic_path, atomic_write_json, spreadsheet_safe

ARMS: tuple[str, ...] = ("baseline", "prototype")
TASK_COLUMNS = ["task_id", "image_path", "intended_class", "arm", "position"]
JUDGMENT_COLUMNS = ["task_id", "reviewer", "plausible", "failed_criteria", "comment", "timestamp", "criteria_version"]
CRITERIA_DIR = Path(__file__).resolve().parent / "criteria"
_REVIEWER_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TASK_ID_RE = re.compile(r"[0-9a-f]{12}")
_ID_RE = re.compile(r"[a-z][a-z0-9_]*")
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


# ---- criteria -----------------------------------------------------------------------------------

CRITERIA_ALIASES = {"dermamnist": "ham10000", "bloodmnist": "bone_marrow"}


def load_criteria(dataset: str) -> dict:
    """Load and validate ``criteria/<dataset>.yaml``.

    Returns the YAML as a dict (``dataset``, ``version``, ``source``, ``note``, ``criteria``: a list
    of ``{id, name, question}``). Raises :class:`StudyInputError` for an unknown dataset, a missing
    field, a badly formed or duplicate criterion id.
    """
    # MedMNIST's DermaMNIST / BloodMNIST hold the same kinds of images as HAM10000 / Bone Marrow.
    dataset = CRITERIA_ALIASES.get(dataset, dataset)
    path = CRITERIA_DIR / f"{dataset}.yaml"
    if not re.fullmatch(r"[A-Za-z0-9_]+", str(dataset)) or not path.is_file():
        known = sorted(p.stem for p in CRITERIA_DIR.glob("*.yaml"))
        raise StudyInputError(f"review: no criteria file for dataset {dataset!r}; known: {', '.join(known)}")
    return _validate_criteria(yaml.safe_load(path.read_text(encoding="utf-8")), path)


def _validate_criteria(doc, path) -> dict:
    if not isinstance(doc, dict):
        raise StudyInputError(f"{path}: expected a mapping with dataset, version, source, note, criteria")
    for field in ("dataset", "version", "source", "note", "criteria"):
        if field not in doc or doc[field] in (None, "", []):
            raise StudyInputError(f"{path}: missing field {field!r}")
    doc["version"] = str(doc["version"])
    if not isinstance(doc["criteria"], list):
        raise StudyInputError(f"{path}: 'criteria' must be a list of {{id, name, question}}")
    seen = set()
    for k, item in enumerate(doc["criteria"], start=1):
        if not isinstance(item, dict):
            raise StudyInputError(f"{path}: criterion #{k} must be a mapping with id, name, question")
        for field in ("id", "name", "question"):
            if not isinstance(item.get(field), str) or not item[field].strip():
                raise StudyInputError(f"{path}: criterion #{k} ({item.get('id', '?')}) is missing field {field!r}")
        if not _ID_RE.fullmatch(item["id"]):
            raise StudyInputError(f"{path}: criterion id {item['id']!r} must be snake_case ([a-z][a-z0-9_]*)")
        if item["id"] in seen:
            raise StudyInputError(f"{path}: duplicate criterion id {item['id']!r}")
        seen.add(item["id"])
    return doc


def criteria_ids(criteria: dict) -> list[str]:
    return [c["id"] for c in criteria["criteria"]]


def record_criteria(run_dir: Path, criteria: dict) -> None:
    """Keep, beside the judgments, which dataset and criterion ids each criteria version had."""
    path = run_layout.review_dir(run_dir) / "criteria.json"
    record = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    if record and record.get("dataset") != criteria["dataset"]:
        raise StudyInputError(
            f"{path}: this review uses criteria of dataset {record.get('dataset')!r}, not {criteria['dataset']!r}; "
            "one review folder holds one dataset")
    versions = record.setdefault("versions", {})
    ids = criteria_ids(criteria)
    if versions.get(criteria["version"]) == ids:
        return
    if criteria["version"] in versions:
        raise StudyInputError(
            f"{path}: criteria version {criteria['version']} already used with ids {versions[criteria['version']]}, "
            f"now {ids}; bump the version in criteria/{criteria['dataset']}.yaml when the list changes")
    record["dataset"] = criteria["dataset"]
    versions[criteria["version"]] = ids
    atomic_write_json(path, record)


def recorded_criteria(run_dir: Path) -> dict | None:
    path = run_layout.review_dir(run_dir) / "criteria.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


# ---- tasks --------------------------------------------------------------------------------------

def _task_id(seed: int, arm: str, rel_path: str) -> str:
    # A hash of (seed, arm, path): stable for a seed, and it cannot be read back into the arm.
    return hashlib.sha256(f"{seed}\x00{arm}\x00{rel_path}".encode()).hexdigest()[:12]


def build_review_tasks(run_dir, arms: Sequence[str], seed: int, n_per_class: int | None) -> pd.DataFrame:
    """Collect ``samples/<arm>/<class>/*.png`` into blinded, shuffled review tasks.

    Writes ``review/tasks.csv`` (:data:`TASK_COLUMNS`; ``image_path`` relative to ``run_dir``) and
    ``review/blinding.json`` and returns the tasks in review order. ``n_per_class`` takes that many
    images per arm and class (a seeded sample); ``None`` takes all. The same seed gives the same
    ids and order. If ``tasks.csv`` already exists it is reused as it is (never reshuffled mid-review;
    a warning says so when the arguments differ from those recorded) after checking that every
    image is still there.
    """
    run_dir = Path(run_dir)
    tasks_path = run_layout.review_dir(run_dir) / "tasks.csv"
    if tasks_path.exists():
        tasks = load_tasks(run_dir)
        blinding_path = run_layout.review_dir(run_dir) / "blinding.json"
        blinding = json.loads(blinding_path.read_text(encoding="utf-8")) if blinding_path.exists() else {}
        asked = {"seed": int(seed), "arms": list(arms), "n_per_class": n_per_class}
        recorded = {k: blinding.get(k) for k in asked}
        if asked != recorded:
            warnings.warn(f"{tasks_path} exists (made with {recorded}); reusing it unchanged rather than "
                          f"reshuffling with {asked}. Delete the review folder to start a new review.", stacklevel=2)
        return tasks
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise StudyInputError(f"review: seed must be an integer, got {seed!r}")
    if n_per_class is not None and (isinstance(n_per_class, bool) or not isinstance(n_per_class, (int, np.integer))
                                    or n_per_class < 1):
        raise StudyInputError(f"review: n_per_class must be an integer >= 1 or None, got {n_per_class!r}")
    rng = np.random.default_rng(int(seed))
    rows = []
    for arm in arms:
        arm_dir = run_layout.samples_dir(run_dir, arm)
        if not arm_dir.is_dir():
            raise StudyInputError(f"review: no samples for arm {arm!r}: {arm_dir} does not exist")
        class_dirs = sorted(p for p in arm_dir.iterdir() if p.is_dir())
        if not class_dirs:
            raise StudyInputError(f"review: {arm_dir} has no class folders (expected samples/<arm>/<class>/*.png)")
        for class_dir in class_dirs:
            files = sorted(class_dir.glob("*.png"), key=lambda p: run_layout.natural_key(p.stem))
            if n_per_class is not None and len(files) > n_per_class:
                pick = np.sort(rng.choice(len(files), size=int(n_per_class), replace=False))
                files = [files[i] for i in pick]
            for f in files:
                rel = f.relative_to(run_dir).as_posix()
                rows.append({"task_id": _task_id(int(seed), arm, rel), "image_path": rel,
                             "intended_class": class_dir.name, "arm": arm})
    if not rows:
        raise StudyInputError(f"review: no PNG images under {run_layout.samples_dir(run_dir)} for arms {list(arms)}")
    tasks = pd.DataFrame(rows)
    if tasks["task_id"].duplicated().any():
        raise StudyInputError("review: two images hash to the same task id; choose another seed")
    tasks = tasks.iloc[rng.permutation(len(tasks))].reset_index(drop=True)
    tasks["position"] = np.arange(len(tasks))
    tasks = tasks[TASK_COLUMNS]
    with atomic_path(tasks_path) as tmp:
        tasks.to_csv(tmp, index=False)
    atomic_write_json(run_layout.review_dir(run_dir) / "blinding.json", {
        "seed": int(seed), "n": len(tasks), "arms": list(arms), "n_per_class": n_per_class,
        "classes": sorted(tasks["intended_class"].unique()),
    })
    return tasks


def blinded_png(path: Path, size: int | None = None) -> bytes:
    """PNG bytes re-encoded from pixels only (no metadata chunks: nothing of the file can reveal the arm),
    optionally upscaled (nearest)."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        if size and im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.NEAREST)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
    return buf.getvalue()


def load_tasks(run_dir, check_images: bool = True) -> pd.DataFrame:
    """Read ``review/tasks.csv`` (validated); with ``check_images``, fail naming any image now missing."""
    run_dir = Path(run_dir)
    path = run_layout.review_dir(run_dir) / "tasks.csv"
    if not path.exists():
        raise StudyInputError(f"review: {path} does not exist; run build_review_tasks first")
    tasks = pd.read_csv(path, dtype={"task_id": str, "image_path": str, "intended_class": str, "arm": str},
                        keep_default_na=False)
    missing = [c for c in TASK_COLUMNS if c not in tasks.columns]
    if missing:
        raise StudyInputError(f"{path}: missing columns {missing}; expected {TASK_COLUMNS}")
    if tasks["task_id"].duplicated().any():
        dup = tasks.loc[tasks["task_id"].duplicated(), "task_id"].iloc[0]
        raise StudyInputError(f"{path}: task id {dup!r} appears twice")
    bad_ids = [t for t in tasks["task_id"] if not _TASK_ID_RE.fullmatch(t)]
    if bad_ids:  # task ids name files (Label Studio copies): never a path
        raise StudyInputError(f"{path}: task_id {bad_ids[0]!r} is not a task id (12 hex digits, as build_review_tasks writes)")
    root = run_dir.resolve()
    outside = [p for p in tasks["image_path"] if not (root / p).resolve().is_relative_to(root)]
    if outside:
        raise StudyInputError(f"{path}: image_path {outside[0]!r} points outside the run folder {root}")
    if check_images:
        gone = [p for p in tasks["image_path"] if not (run_dir / p).is_file()]
        if gone:
            shown = ", ".join(gone[:5]) + (f" and {len(gone) - 5} more" if len(gone) > 5 else "")
            raise StudyInputError(f"review: {len(gone)} image(s) listed in {path} are missing: {shown}. "
                                  "Restore them (judgments refer to them) or start a new review folder.")
    return tasks.sort_values("position").reset_index(drop=True)


# ---- reviewers and judgments --------------------------------------------------------------------

def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def parse_time(text: str) -> _dt.datetime:
    # Label Studio writes "...Z"; datetime.fromisoformat accepts that only from Python 3.11.
    return _dt.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)


def check_reviewer(reviewer: str) -> str:
    if not isinstance(reviewer, str) or not _REVIEWER_RE.fullmatch(reviewer):
        raise StudyInputError(f"review: reviewer name {reviewer!r} must be 1-64 of A-Z a-z 0-9 _ - (it names a file)")
    if reviewer == "tasks":
        raise StudyInputError("review: 'tasks' cannot be a reviewer name (review/tasks.csv is the task list)")
    return reviewer


def register_reviewer(run_dir, reviewer: str, display_name: str | None = None) -> dict:
    """Register ``reviewer`` in ``review/reviewers.json`` (or confirm an existing registration).

    ``display_name`` (default: the name) tells two people apart: registering an existing name with a
    different display name raises :class:`StudyInputError`, so two experts cannot share one file.
    Reopening with the same (or no) display name is fine. Returns the reviewer's record.
    """
    check_reviewer(reviewer)
    path = run_layout.review_dir(run_dir) / "reviewers.json"
    registry = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    if reviewer in registry:
        known = registry[reviewer].get("display_name")
        if display_name is not None and display_name != known:
            raise StudyInputError(
                f"review: reviewer name {reviewer!r} is already registered in {path} to {known!r}, not "
                f"{display_name!r}; choose another name (e.g. {reviewer}_2) so two people never share a file")
        return registry[reviewer]
    registry[reviewer] = {"created": now(), "display_name": display_name or reviewer}
    atomic_write_json(path, registry)
    return registry[reviewer]


def _judgment_path(run_dir, reviewer) -> Path:
    return run_layout.review_dir(run_dir) / f"{check_reviewer(reviewer)}.csv"


def append_judgment(run_dir, reviewer: str, task_id: str, plausible: bool, failed_criteria: Iterable[str] = (),
                    comment: str = "", criteria_version: str = "", timestamp: str | None = None) -> dict:
    """Append one judgment to ``review/<reviewer>.csv`` and fsync it; return the row written.

    Nothing is ever rewritten: a new judgment of the same task is a new row (the latest wins when
    read). A plausible judgment cannot list failed criteria (an image failing any is implausible).
    """
    failed = [str(c) for c in failed_criteria]
    if plausible and failed:
        raise StudyInputError(f"review: task {task_id}: plausible, yet criteria {failed} are marked failed")
    row = {"task_id": task_id, "reviewer": reviewer, "plausible": "true" if plausible else "false",
           "failed_criteria": ";".join(failed), "comment": spreadsheet_safe(comment),
           "timestamp": timestamp or now(), "criteria_version": str(criteria_version)}
    path = _judgment_path(run_dir, reviewer)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        # A row cut short by a crash mid-write must not swallow the next one: start on a new line.
        fh.seek(0, os.SEEK_END)
        if fh.tell() > 0:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                fh.write(b"\n")
    with open(path, "a", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=JUDGMENT_COLUMNS)
        if fh.tell() == 0:
            writer.writeheader()
        writer.writerow(row)
        # flush + fsync: a judgment survives a closed browser, a dead kernel or a power cut.
        fh.flush()
        os.fsync(fh.fileno())
    return row


def read_judgments(run_dir, reviewer: str, latest: bool = True) -> pd.DataFrame:
    """Read and validate ``review/<reviewer>.csv``.

    Returns :data:`JUDGMENT_COLUMNS` with ``plausible`` as bool, ``failed_criteria`` as a
    ``;``-separated string and a ``line`` column (the file line). ``latest=True`` keeps the last row
    per task (the reviewer's current judgment); ``False`` returns the full history. Raises
    :class:`StudyInputError`, naming file and line, for missing columns, an unknown task id, a bad
    boolean, a reviewer other than the file's, an unknown criterion id, or a plausible row with
    failed criteria. A missing file is an empty table.
    """
    run_dir = Path(run_dir)
    path = _judgment_path(run_dir, reviewer)
    empty = pd.DataFrame(columns=JUDGMENT_COLUMNS + ["line"])
    if not path.exists():
        return empty
    tasks = set(load_tasks(run_dir, check_images=False)["task_id"])
    record = recorded_criteria(run_dir) or {}
    versions = record.get("versions", {})
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            return empty
        missing = [c for c in JUDGMENT_COLUMNS if c not in header]
        if missing:
            raise StudyInputError(f"{path}, line 1: missing columns {missing}; expected {JUDGMENT_COLUMNS}")
        idx = {c: header.index(c) for c in JUDGMENT_COLUMNS}
        for values in reader:
            line = reader.line_num
            if not values or all(not v.strip() for v in values):
                continue
            if len(values) != len(header):
                raise StudyInputError(f"{path}, line {line}: {len(values)} fields, expected {len(header)}")
            row = {c: values[i] for c, i in idx.items()}
            if row["task_id"] not in tasks:
                raise StudyInputError(f"{path}, line {line}: unknown task_id {row['task_id']!r} (not in tasks.csv)")
            if row["reviewer"] != reviewer:
                raise StudyInputError(f"{path}, line {line}: reviewer {row['reviewer']!r} in the file of {reviewer!r}")
            flag = row["plausible"].strip().lower()
            if flag not in _TRUE | _FALSE:
                raise StudyInputError(f"{path}, line {line}: plausible must be true or false, got {row['plausible']!r}")
            failed = [c for c in row["failed_criteria"].split(";") if c.strip()]
            if flag in _TRUE and failed:
                raise StudyInputError(f"{path}, line {line}: plausible, yet failed criteria {failed} are listed")
            known = versions.get(row["criteria_version"])
            if known is not None:
                bad = [c for c in failed if c not in known]
                if bad:
                    raise StudyInputError(f"{path}, line {line}: unknown criterion id(s) {bad} for criteria "
                                          f"version {row['criteria_version']} ({', '.join(known)})")
            try:
                parse_time(row["timestamp"])
            except ValueError:
                raise StudyInputError(f"{path}, line {line}: timestamp {row['timestamp']!r} is not ISO 8601") from None
            row["plausible"] = flag in _TRUE
            row["failed_criteria"] = ";".join(failed)
            row["line"] = line
            rows.append(row)
    table = pd.DataFrame(rows, columns=JUDGMENT_COLUMNS + ["line"])
    if latest and len(table):
        table = table.drop_duplicates("task_id", keep="last").reset_index(drop=True)
    return table


def reviewers_with_files(run_dir) -> list[str]:
    """Names of the reviewers who have a judgment file in ``RUN_DIR/review/``."""
    names = []
    for p in sorted(run_layout.review_dir(Path(run_dir)).glob("*.csv")):
        if p.stem != "tasks" and _REVIEWER_RE.fullmatch(p.stem):
            names.append(p.stem)
    return names

"""Blinded expert review of generated images: criteria, tasks, a Jupyter review app, agreement, tables.

The paper's Tables 3 and 4 are per-class plausibility percentages judged by one expert (Label Studio,
written criteria; an image failing any criterion is implausible). This module gives experts the same
procedure, blinded to the arm, in JupyterLab or in Label Studio, and turns their judgments into the
paper's tables with 95 % Wilson intervals.

Files, all under ``RUN_DIR/review/``::

    tasks.csv          task_id, image_path, intended_class, arm, position   (the unblinding key)
    blinding.json      seed, created, n, arms, n_per_class, classes
    criteria.json      dataset and criterion ids per criteria version used in this review
    reviewers.json     reviewer name -> created, display_name
    <reviewer>.csv     task_id, reviewer, plausible, failed_criteria, comment, timestamp, criteria_version

A judgment is appended (never rewritten) and fsync'd the moment it is made; the latest row of a task
wins when reading. ``arm`` lives only in ``tasks.csv``: the app never shows it, and task ids are
hashes that do not encode it.
"""
from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import html
import io
import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Iterable, Sequence
from xml.sax.saxutils import quoteattr

import numpy as np
import pandas as pd
import yaml
from PIL import Image

from improve_lib.errors import StudyInputError
from improve_lib.io import atomic_path, atomic_write_json, atomic_write_text

__all__ = [
    "ARMS",
    "TASK_COLUMNS",
    "JUDGMENT_COLUMNS",
    "load_criteria",
    "build_review_tasks",
    "load_tasks",
    "register_reviewer",
    "append_judgment",
    "read_judgments",
    "cohen_kappa",
    "wilson_interval",
    "tabulate_plausibility",
    "plausibility_table",
    "save_plausibility_table",
    "plausibility_figure",
    "export_label_studio",
    "import_label_studio",
    "labeling_config",
    "ReviewApp",
]

ARMS: tuple[str, ...] = ("baseline", "prototype")
TASK_COLUMNS = ["task_id", "image_path", "intended_class", "arm", "position"]
JUDGMENT_COLUMNS = ["task_id", "reviewer", "plausible", "failed_criteria", "comment", "timestamp", "criteria_version"]
CRITERIA_DIR = Path(__file__).parent / "criteria"
_REVIEWER_RE = re.compile(r"[A-Za-z0-9_-]+")
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


def _criteria_ids(criteria: dict) -> list[str]:
    return [c["id"] for c in criteria["criteria"]]


def _record_criteria(run_dir: Path, criteria: dict) -> None:
    """Keep, beside the judgments, which dataset and criterion ids each criteria version had."""
    path = run_dir / "review" / "criteria.json"
    record = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    if record and record.get("dataset") != criteria["dataset"]:
        raise StudyInputError(
            f"{path}: this review uses criteria of dataset {record.get('dataset')!r}, not {criteria['dataset']!r}; "
            "one review folder holds one dataset")
    versions = record.setdefault("versions", {})
    ids = _criteria_ids(criteria)
    if versions.get(criteria["version"]) == ids:
        return
    if criteria["version"] in versions:
        raise StudyInputError(
            f"{path}: criteria version {criteria['version']} already used with ids {versions[criteria['version']]}, "
            f"now {ids}; bump the version in criteria/{criteria['dataset']}.yaml when the list changes")
    record["dataset"] = criteria["dataset"]
    versions[criteria["version"]] = ids
    atomic_write_json(path, record)


def _recorded_criteria(run_dir: Path) -> dict | None:
    path = run_dir / "review" / "criteria.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


# ---- tasks --------------------------------------------------------------------------------------

def _review_dir(run_dir) -> Path:
    return Path(run_dir) / "review"


def _natural_key(path: Path):
    return (0, int(path.stem), "") if path.stem.isdigit() else (1, 0, path.stem)


def _task_id(seed: int, arm: str, rel_path: str) -> str:
    # A hash of (seed, arm, path): stable for a seed, and it cannot be read back into the arm.
    return hashlib.sha256(f"{seed}\x00{arm}\x00{rel_path}".encode()).hexdigest()[:12]


def build_review_tasks(run_dir, arms: Sequence[str] = ARMS, seed: int = 0,
                       n_per_class: int | None = None) -> pd.DataFrame:
    """Collect ``samples/<arm>/<class>/*.png`` into blinded, shuffled review tasks.

    Writes ``review/tasks.csv`` (:data:`TASK_COLUMNS`; ``image_path`` relative to ``run_dir``) and
    ``review/blinding.json`` and returns the tasks in review order. ``n_per_class`` takes that many
    images per arm and class (a seeded sample); ``None`` takes all. The same seed gives the same
    ids and order. If ``tasks.csv`` already exists it is reused as it is (never reshuffled mid-review;
    a warning says so when the arguments differ from those recorded) after checking that every
    image is still there.
    """
    run_dir = Path(run_dir)
    tasks_path = _review_dir(run_dir) / "tasks.csv"
    if tasks_path.exists():
        tasks = load_tasks(run_dir)
        blinding_path = _review_dir(run_dir) / "blinding.json"
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
        arm_dir = run_dir / "samples" / arm
        if not arm_dir.is_dir():
            raise StudyInputError(f"review: no samples for arm {arm!r}: {arm_dir} does not exist")
        class_dirs = sorted(p for p in arm_dir.iterdir() if p.is_dir())
        if not class_dirs:
            raise StudyInputError(f"review: {arm_dir} has no class folders (expected samples/<arm>/<class>/*.png)")
        for class_dir in class_dirs:
            files = sorted(class_dir.glob("*.png"), key=_natural_key)
            if n_per_class is not None and len(files) > n_per_class:
                pick = np.sort(rng.choice(len(files), size=int(n_per_class), replace=False))
                files = [files[i] for i in pick]
            for f in files:
                rel = f.relative_to(run_dir).as_posix()
                rows.append({"task_id": _task_id(int(seed), arm, rel), "image_path": rel,
                             "intended_class": class_dir.name, "arm": arm})
    if not rows:
        raise StudyInputError(f"review: no PNG images under {run_dir / 'samples'} for arms {list(arms)}")
    tasks = pd.DataFrame(rows)
    if tasks["task_id"].duplicated().any():
        raise StudyInputError("review: two images hash to the same task id; choose another seed")
    tasks = tasks.iloc[rng.permutation(len(tasks))].reset_index(drop=True)
    tasks["position"] = np.arange(len(tasks))
    tasks = tasks[TASK_COLUMNS]
    with atomic_path(tasks_path) as tmp:
        tasks.to_csv(tmp, index=False)
    atomic_write_json(_review_dir(run_dir) / "blinding.json", {
        "seed": int(seed), "created": _now(), "n": len(tasks), "arms": list(arms), "n_per_class": n_per_class,
        "classes": sorted(tasks["intended_class"].unique()),
    })
    return tasks


def load_tasks(run_dir, check_images: bool = True) -> pd.DataFrame:
    """Read ``review/tasks.csv`` (validated); with ``check_images``, fail naming any image now missing."""
    run_dir = Path(run_dir)
    path = _review_dir(run_dir) / "tasks.csv"
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
    if check_images:
        gone = [p for p in tasks["image_path"] if not (run_dir / p).is_file()]
        if gone:
            shown = ", ".join(gone[:5]) + (f" and {len(gone) - 5} more" if len(gone) > 5 else "")
            raise StudyInputError(f"review: {len(gone)} image(s) listed in {path} are missing: {shown}. "
                                  "Restore them (judgments refer to them) or start a new review folder.")
    return tasks.sort_values("position").reset_index(drop=True)


# ---- reviewers and judgments --------------------------------------------------------------------

def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def _parse_time(text: str) -> _dt.datetime:
    # Label Studio writes "...Z"; datetime.fromisoformat accepts that only from Python 3.11.
    return _dt.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)


def _check_reviewer(reviewer: str) -> str:
    if not isinstance(reviewer, str) or not _REVIEWER_RE.fullmatch(reviewer):
        raise StudyInputError(f"review: reviewer name {reviewer!r} must match [A-Za-z0-9_-]+ (it names a file)")
    if reviewer == "tasks":
        raise StudyInputError("review: 'tasks' cannot be a reviewer name (review/tasks.csv is the task list)")
    return reviewer


def register_reviewer(run_dir, reviewer: str, display_name: str | None = None) -> dict:
    """Register ``reviewer`` in ``review/reviewers.json`` (or confirm an existing registration).

    ``display_name`` (default: the name) tells two people apart: registering an existing name with a
    different display name raises :class:`StudyInputError`, so two experts cannot share one file.
    Reopening with the same (or no) display name is fine. Returns the reviewer's record.
    """
    _check_reviewer(reviewer)
    path = _review_dir(run_dir) / "reviewers.json"
    registry = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    if reviewer in registry:
        known = registry[reviewer].get("display_name")
        if display_name is not None and display_name != known:
            raise StudyInputError(
                f"review: reviewer name {reviewer!r} is already registered in {path} to {known!r}, not "
                f"{display_name!r}; choose another name (e.g. {reviewer}_2) so two people never share a file")
        return registry[reviewer]
    registry[reviewer] = {"created": _now(), "display_name": display_name or reviewer}
    atomic_write_json(path, registry)
    return registry[reviewer]


def _judgment_path(run_dir, reviewer) -> Path:
    return _review_dir(run_dir) / f"{_check_reviewer(reviewer)}.csv"


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
           "failed_criteria": ";".join(failed), "comment": str(comment or "").replace("\r", " ").replace("\n", " "),
           "timestamp": timestamp or _now(), "criteria_version": str(criteria_version)}
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
    record = _recorded_criteria(run_dir) or {}
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
                _parse_time(row["timestamp"])
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
    for p in sorted(_review_dir(Path(run_dir)).glob("*.csv")):
        if p.stem != "tasks" and _REVIEWER_RE.fullmatch(p.stem):
            names.append(p.stem)
    return names


# ---- agreement and tables -----------------------------------------------------------------------

def cohen_kappa(run_dir, reviewer_a: str, reviewer_b: str) -> dict:
    """Cohen's kappa of two reviewers' latest plausible / implausible calls on the tasks both judged.

    Returns ``{"kappa", "n_common", "agreement"}``; ``kappa`` is NaN when there is no common task or
    when chance agreement is 1 (both reviewers gave one and the same label throughout).
    """
    a = read_judgments(run_dir, reviewer_a).set_index("task_id")["plausible"]
    b = read_judgments(run_dir, reviewer_b).set_index("task_id")["plausible"]
    common = a.index.intersection(b.index)
    n = len(common)
    if n == 0:
        return {"kappa": float("nan"), "n_common": 0, "agreement": float("nan")}
    x = a.loc[common].astype(bool).to_numpy()
    y = b.loc[common].astype(bool).to_numpy()
    po = float(np.mean(x == y))
    pe = float(x.mean() * y.mean() + (1 - x.mean()) * (1 - y.mean()))
    kappa = float("nan") if pe >= 1.0 else (po - pe) / (1.0 - pe)
    return {"kappa": kappa, "n_common": int(n), "agreement": po}


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k / n``, as fractions in [0, 1]; (NaN, NaN) for n = 0."""
    if n <= 0:
        return float("nan"), float("nan")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def tabulate_plausibility(frame: pd.DataFrame, arms: Sequence[str], classes: Sequence[str]) -> pd.DataFrame:
    """Per-class plausibility table from one row per judgment (columns intended_class, arm, plausible).

    Rows: ``classes`` then ``mean``; columns per arm: ``<arm> %``, ``<arm> CI low``, ``<arm> CI high``
    (95 % Wilson, in %) and ``<arm> n``. Shared by the expert table and the pixel checker's table.
    """
    columns, rows = {}, list(classes) + ["mean"]
    for arm in arms:
        sub = frame[frame["arm"] == arm]
        pct, lo, hi, ns = [], [], [], []
        for c in classes:
            flags = sub.loc[sub["intended_class"] == c, "plausible"].astype(bool)
            k, n = int(flags.sum()), int(len(flags))
            low, high = wilson_interval(k, n)
            pct.append(100.0 * k / n if n else float("nan"))
            lo.append(100.0 * low)
            hi.append(100.0 * high)
            ns.append(n)
        # The paper's "average rate" is the mean of the class percentages; its interval pools all the
        # arm's judgments (the same proportion when every class has as many judgments).
        k_all, n_all = int(sub["plausible"].astype(bool).sum()), int(len(sub))
        low, high = wilson_interval(k_all, n_all)
        pct.append(float(np.nanmean(pct)) if n_all else float("nan"))
        lo.append(100.0 * low)
        hi.append(100.0 * high)
        ns.append(n_all)
        columns.update({f"{arm} %": pct, f"{arm} CI low": lo, f"{arm} CI high": hi, f"{arm} n": ns})
    return pd.DataFrame(columns, index=pd.Index(rows, name="class"))


def plausibility_table(run_dir, reviewers: Sequence[str] | None = None) -> pd.DataFrame:
    """The paper's Table 3 / 4: per intended class and arm, % of images judged plausible.

    Unblinds through ``review/tasks.csv``. Judgments are pooled over ``reviewers`` (default: every
    reviewer with a file): each reviewer's latest judgment of a task is one observation, so with one
    reviewer (the paper's set-up) this is that reviewer's percentage. Columns ``<arm> %``,
    ``<arm> CI low`` / ``CI high`` (95 % Wilson, in %; with several reviewers the judgments of one
    image are not independent, so the interval is optimistic) and ``<arm> n``; a last row ``mean``.
    """
    run_dir = Path(run_dir)
    tasks = load_tasks(run_dir, check_images=False)
    reviewers = list(reviewers) if reviewers is not None else reviewers_with_files(run_dir)
    frames = []
    for r in reviewers:
        j = read_judgments(run_dir, r)
        if len(j):
            frames.append(j[["task_id", "plausible"]])
    judged = (pd.concat(frames, ignore_index=True) if frames
              else pd.DataFrame({"task_id": pd.Series(dtype=str), "plausible": pd.Series(dtype=bool)}))
    merged = judged.merge(tasks[["task_id", "intended_class", "arm"]], on="task_id", how="inner")
    arms = [a for a in ARMS if a in set(tasks["arm"])] + sorted(set(tasks["arm"]) - set(ARMS))
    return tabulate_plausibility(merged, arms, sorted(tasks["intended_class"].unique()))


def _arms_of(df: pd.DataFrame) -> list[str]:
    return [c[:-2] for c in df.columns if c.endswith(" %")]


def save_plausibility_table(df: pd.DataFrame, out_dir, name: str) -> dict:
    """Write ``out_dir/<name>.csv`` (numbers) and ``<name>.md`` (the paper's layout: %, [CI]); return the paths."""
    out_dir = Path(out_dir)
    csv_path, md_path = out_dir / f"{name}.csv", out_dir / f"{name}.md"
    with atomic_path(csv_path) as tmp:
        df.to_csv(tmp, float_format="%.2f")
    arms = _arms_of(df)
    header = ["class"] + [h for a in arms for h in (f"{a} (%)", f"{a} 95 % CI", f"{a} n")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for cls, row in df.iterrows():
        cells = [str(cls)]
        for a in arms:
            pct, lo, hi = row[f"{a} %"], row[f"{a} CI low"], row[f"{a} CI high"]
            cells += ["-" if pd.isna(pct) else f"{pct:.1f}",
                      "-" if pd.isna(lo) else f"[{lo:.1f}, {hi:.1f}]", str(int(row[f"{a} n"]))]
        lines.append("| " + " | ".join(cells) + " |")
    atomic_write_text(md_path, "\n".join(lines) + "\n")
    return {"csv": csv_path, "markdown": md_path}


def plausibility_figure(df: pd.DataFrame, title: str = "Plausibility per class (95 % Wilson CI)"):
    """Grouped bar plot (seaborn) of a plausibility table: bars per class and arm, CI error bars."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    arms = _arms_of(df)
    long = pd.concat([pd.DataFrame({"class": df.index, "arm": a, "pct": df[f"{a} %"].to_numpy(),
                                    "lo": df[f"{a} CI low"].to_numpy(), "hi": df[f"{a} CI high"].to_numpy()})
                      for a in arms], ignore_index=True)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(df) + 2), 3.8))
    sns.barplot(data=long, x="class", y="pct", hue="arm", hue_order=arms, errorbar=None, ax=ax)
    # seaborn draws bars per hue level in order; put each CI on its bar's centre.
    for container, arm in zip(ax.containers, arms):
        sub = long[long["arm"] == arm]
        for bar, (_, r) in zip(container, sub.iterrows()):
            if pd.notna(r["pct"]):
                x = bar.get_x() + bar.get_width() / 2
                # Clipped at 0: the mean row's point is the class mean, its interval the pooled one.
                err = [[max(r["pct"] - r["lo"], 0.0)], [max(r["hi"] - r["pct"], 0.0)]]
                ax.errorbar(x, r["pct"], yerr=err, fmt="none", ecolor="black", capsize=3, lw=1)
    ax.set_ylim(0, 100)
    ax.set_ylabel("plausible (%)")
    ax.set_xlabel("")
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    return fig


# ---- Label Studio -------------------------------------------------------------------------------

def _clean_png(path: Path, size: int | None = None) -> bytes:
    """PNG bytes re-encoded from pixels only (no metadata chunks), optionally upscaled (nearest)."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        if size and im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.NEAREST)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
    return buf.getvalue()


def labeling_config(criteria: dict) -> str:
    """Label Studio labeling config (XML) for ``criteria``: plausible / implausible, failed criteria, comment."""
    failed_title = f"Criteria the image fails ({criteria['dataset']} v{criteria['version']})"
    choices = "\n".join(
        f"    <Choice value={quoteattr(c['name'])} alias={quoteattr(c['id'])} hint={quoteattr(c['question'])}/>"
        for c in criteria["criteria"])
    return (
        "<View>\n"
        '  <Header value="Intended class"/>\n'
        '  <Text name="intended_class" value="$intended_class"/>\n'
        '  <Image name="image" value="$image" zoom="true"/>\n'
        '  <Choices name="plausible" toName="image" choice="single" required="true">\n'
        '    <Choice value="plausible" hotkey="p"/>\n'
        '    <Choice value="implausible" hotkey="i"/>\n'
        "  </Choices>\n"
        f"  <Header value={quoteattr(failed_title)}/>\n"
        '  <Choices name="failed" toName="image" choice="multiple">\n'
        f"{choices}\n"
        "  </Choices>\n"
        '  <TextArea name="comment" toName="image" rows="2"/>\n'
        "</View>\n"
    )


def export_label_studio(run_dir, dataset: str, out_path, url_prefix: str = "/data/local-files/?d=",
                        document_root=None) -> dict:
    """Export the blinded tasks for Label Studio.

    Writes ``out_path`` (a JSON list ``[{"id", "data": {"image", "intended_class", "task_id"}}]``),
    the labeling config beside it (``<stem>.xml``) and blinded image copies ``images/<task_id>.png``
    beside it (re-encoded, so neither file names nor metadata carry the arm). Image URLs are
    ``url_prefix`` + the copy's path relative to ``document_root`` (default: the folder of
    ``out_path``): serve that folder as Label Studio's ``LOCAL_FILES_DOCUMENT_ROOT``, or pass another
    prefix (e.g. an http URL). Records the criteria used in ``review/criteria.json``. Returns the paths.
    """
    run_dir = Path(run_dir)
    criteria = load_criteria(dataset)
    tasks = load_tasks(run_dir)
    _record_criteria(run_dir, criteria)
    out_path = Path(out_path)
    image_dir = out_path.parent / "images"
    root = Path(document_root) if document_root is not None else out_path.parent
    items = []
    for t in tasks.itertuples():
        copy = image_dir / f"{t.task_id}.png"
        with atomic_path(copy) as tmp:
            tmp.write_bytes(_clean_png(run_dir / t.image_path))
        try:
            rel = copy.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            raise StudyInputError(f"review: {copy} is not under document_root {root}") from None
        items.append({"id": int(t.position) + 1, "data": {"image": f"{url_prefix}{rel}",
                                                          "intended_class": t.intended_class, "task_id": t.task_id}})
    atomic_write_json(out_path, items)
    config_path = out_path.with_suffix(".xml")
    atomic_write_text(config_path, labeling_config(criteria))
    return {"tasks": out_path, "config": config_path, "images": image_dir}


def _annotator(annotation: dict) -> str:
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        who = who.get("email") or who.get("id")
    return "" if who is None else str(who)


def import_label_studio(export_json_path, run_dir, reviewer: str, completed_by=None) -> pd.DataFrame:
    """Append the judgments of a Label Studio JSON export to ``review/<reviewer>.csv``.

    Reads Label Studio's export (a list of tasks, each with ``data.task_id`` and ``annotations``, each
    with ``result`` regions: ``choices`` from ``plausible`` and ``failed``, ``textarea`` from
    ``comment``). Cancelled annotations are skipped. If the export holds annotations from several
    annotators, pass ``completed_by`` (Label Studio user id or email) to pick one: one reviewer file
    is one person. The annotation's ``updated_at`` (else ``created_at``) becomes the timestamp, and a
    judgment already imported (same task and timestamp) is not appended twice. Returns the rows
    appended. Raises :class:`StudyInputError` naming the task for anything it cannot read.
    """
    run_dir = Path(run_dir)
    export_json_path = Path(export_json_path)
    register_reviewer(run_dir, reviewer)
    record = _recorded_criteria(run_dir)
    if not record:
        raise StudyInputError(f"review: {run_dir / 'review' / 'criteria.json'} is missing; export with "
                              "export_label_studio first so the criteria version is known")
    dataset = record["dataset"]
    criteria = load_criteria(dataset)
    if criteria["version"] not in record["versions"]:
        _record_criteria(run_dir, criteria)
    ids = _criteria_ids(criteria)
    by_name = {c["name"]: c["id"] for c in criteria["criteria"]}
    try:
        export = json.loads(export_json_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise StudyInputError(f"{export_json_path}: not a readable Label Studio JSON export ({exc})") from exc
    if not isinstance(export, list):
        raise StudyInputError(f"{export_json_path}: expected a JSON list of tasks (Label Studio 'JSON' export)")
    tasks = set(load_tasks(run_dir, check_images=False)["task_id"])
    annotations = []
    for k, task in enumerate(export):
        data = task.get("data", {}) if isinstance(task, dict) else {}
        task_id = data.get("task_id")
        if task_id not in tasks:
            ls_id = task.get("id") if isinstance(task, dict) else "?"
            raise StudyInputError(f"{export_json_path}: task #{k} (Label Studio id {ls_id}) has task_id "
                                  f"{task_id!r}, which is not in tasks.csv")
        for ann in task.get("annotations") or []:
            if ann.get("was_cancelled"):
                continue
            annotations.append((task_id, ann))
    annotators = sorted({_annotator(a) for _, a in annotations})
    if completed_by is not None:
        annotations = [(t, a) for t, a in annotations if _annotator(a) == str(completed_by)]
    elif len(annotators) > 1:
        raise StudyInputError(f"{export_json_path}: annotations by several annotators {annotators}; pass "
                              "completed_by=... to import one of them as reviewer " + repr(reviewer))
    existing = read_judgments(run_dir, reviewer, latest=False)
    seen = set(zip(existing["task_id"], existing["timestamp"]))
    parsed = []
    # Oldest first, so the latest annotation of a task is also the last row appended (and wins).
    annotations.sort(key=lambda ta: str(ta[1].get("updated_at") or ta[1].get("created_at") or ""))
    for task_id, ann in annotations:
        verdict, failed, comment = None, [], ""
        for region in ann.get("result") or []:
            name, value = region.get("from_name"), region.get("value") or {}
            if name == "plausible":
                picked = value.get("choices") or []
                if len(picked) != 1 or picked[0] not in ("plausible", "implausible"):
                    raise StudyInputError(f"{export_json_path}: task {task_id}: plausible must be one of "
                                          f"plausible / implausible, got {picked}")
                verdict = picked[0] == "plausible"
            elif name == "failed":
                for choice in value.get("choices") or []:
                    cid = by_name.get(choice, choice)
                    if cid not in ids:
                        raise StudyInputError(f"{export_json_path}: task {task_id}: unknown criterion {choice!r} "
                                              f"(criteria {dataset} v{criteria['version']}: {', '.join(ids)})")
                    failed.append(cid)
            elif name == "comment":
                comment = " ".join(str(t) for t in value.get("text") or [])
        if verdict is None:
            raise StudyInputError(f"{export_json_path}: task {task_id}: annotation {ann.get('id')} has no "
                                  "plausible / implausible choice")
        if verdict and failed:
            raise StudyInputError(f"{export_json_path}: task {task_id}: marked plausible but fails {failed}")
        stamp = str(ann.get("updated_at") or ann.get("created_at") or _now())
        try:
            _parse_time(stamp)
        except ValueError:
            raise StudyInputError(f"{export_json_path}: task {task_id}: timestamp {stamp!r} is not ISO 8601") from None
        if (task_id, stamp) not in seen:
            parsed.append((task_id, verdict, failed, comment, stamp))
            seen.add((task_id, stamp))
    # Everything is read and checked before the first row is written: a bad export appends nothing.
    appended = [append_judgment(run_dir, reviewer, task_id, verdict, failed, comment, criteria["version"],
                                timestamp=stamp) for task_id, verdict, failed, comment, stamp in parsed]
    return pd.DataFrame(appended, columns=JUDGMENT_COLUMNS)


# ---- the review app -----------------------------------------------------------------------------

class ReviewApp:
    """A blinded review app for JupyterLab (ipywidgets): show ``app.widget`` (or just ``app``).

    One image at a time, shown large (nearest-neighbour upscaling to ``image_size`` px), with its
    intended class and the dataset's criteria as checkboxes ("meets"). **Plausible** is accepted only
    when every criterion is ticked; **Implausible** records the unticked criteria (at least one).
    Each judgment is appended and fsync'd at once; reopening resumes at the first unjudged task.

    Keyboard: ipywidgets alone cannot listen to key presses, so the app has a small *shortcut box*
    (a Text field): with the cursor in it, type ``p`` (plausible), ``i`` (implausible), ``n`` (next),
    ``b`` (back) or a digit ``1``-``9`` (toggle that criterion); each key acts at once and the box
    clears itself. :meth:`on_key` is the same handler for scripts and tests.

    Blinding: the app keeps only task id, image path, intended class and position; the image path
    (which names the arm) is never put in a widget, and images are re-encoded from pixels so no
    file metadata reaches the page.
    """

    def __init__(self, run_dir, reviewer: str, dataset: str, display_name: str | None = None,
                 image_size: int = 256):
        import ipywidgets as w

        self.run_dir = Path(run_dir)
        self.reviewer = _check_reviewer(reviewer)
        self.criteria = load_criteria(dataset)
        self.image_size = int(image_size)
        tasks = load_tasks(self.run_dir)  # fails naming any image deleted since the review began
        register_reviewer(self.run_dir, reviewer, display_name)
        _record_criteria(self.run_dir, self.criteria)
        # Drop the unblinding key: nothing the app holds needs it.
        self._tasks = tasks[["task_id", "image_path", "intended_class", "position"]].reset_index(drop=True)
        self._ids = _criteria_ids(self.criteria)
        self._latest = {r.task_id: {"plausible": bool(r.plausible), "failed_criteria": r.failed_criteria,
                                    "comment": r.comment} for r in read_judgments(self.run_dir, reviewer).itertuples()}
        n = len(self._tasks)

        self.title = w.HTML()
        self.image = w.Image(format="png", width=self.image_size, height=self.image_size)
        self.intended = w.HTML()
        self.checkboxes = [w.Checkbox(value=False, description=f"{k + 1}. {c['name']}", tooltip=c["question"],
                                      indent=False, layout=w.Layout(width="auto"))
                           for k, c in enumerate(self.criteria["criteria"])]
        self.questions = w.HTML("<br>".join(f"<b>{k + 1}. {html.escape(c['name'])}</b>: {html.escape(c['question'])}"
                                            for k, c in enumerate(self.criteria["criteria"])))
        self.comment = w.Text(placeholder="comment (optional)", description="Comment", layout=w.Layout(width="95%"))
        self.plausible_button = w.Button(description="Plausible (p)", button_style="success")
        self.implausible_button = w.Button(description="Implausible (i)", button_style="danger")
        self.back_button = w.Button(description="Back (b)")
        self.next_button = w.Button(description="Next (n)")
        self.shortcuts = w.Text(placeholder="shortcut box: click here, then p / i / n / b / 1-9",
                                description="Keys", continuous_update=True, layout=w.Layout(width="60%"))
        self.progress = w.IntProgress(value=0, min=0, max=max(n, 1), description="Judged")
        self.progress_label = w.Label()
        self.message = w.HTML()
        self.plausible_button.on_click(lambda _b: self.judge(True))
        self.implausible_button.on_click(lambda _b: self.judge(False))
        self.back_button.on_click(lambda _b: self.back())
        self.next_button.on_click(lambda _b: self.next())
        self.shortcuts.observe(self._on_shortcut_text, names="value")

        left = w.VBox([self.image, self.intended])
        right = w.VBox([w.HTML("<b>Tick each criterion the image meets</b>"), *self.checkboxes, self.comment,
                        w.HBox([self.plausible_button, self.implausible_button]),
                        w.HBox([self.back_button, self.next_button]), self.message])
        self.widget = w.VBox([self.title, w.HBox([left, right]), w.HBox([self.progress, self.progress_label]),
                              self.shortcuts, w.Accordion(children=[self.questions], titles=("Criteria",))])
        self.title.value = (f"<b>Blinded review</b> &mdash; reviewer {self.reviewer} &mdash; criteria "
                            f"{html.escape(self.criteria['dataset'])} v{html.escape(self.criteria['version'])}")
        self.index = self.first_unjudged()
        self._show()

    # -- state --
    @property
    def n_tasks(self) -> int:
        return len(self._tasks)

    @property
    def n_judged(self) -> int:
        return len(self._latest)

    @property
    def current_task_id(self) -> str | None:
        return None if self.index >= self.n_tasks else self._tasks.at[self.index, "task_id"]

    def first_unjudged(self, start: int = 0) -> int:
        """Position of the first task at or after ``start`` without a judgment (wrapping); n if none."""
        for offset in range(self.n_tasks):
            k = (start + offset) % self.n_tasks
            if self._tasks.at[k, "task_id"] not in self._latest:
                return k
        return self.n_tasks

    def _show(self) -> None:
        self.progress.value = self.n_judged
        self.progress_label.value = f"{self.n_judged} / {self.n_tasks} judged"
        if self.index >= self.n_tasks:
            self.intended.value = "<b>All tasks judged.</b> Use Back to revisit any of them."
            self.image.value = b""
            return
        task = self._tasks.iloc[self.index]
        self.image.value = _clean_png(self.run_dir / task["image_path"], self.image_size)
        self.intended.value = (f"Task {self.index + 1} of {self.n_tasks}<br>Intended class: "
                               f"<b>{html.escape(str(task['intended_class']))}</b>")
        previous = self._latest.get(task["task_id"])
        if previous is not None:
            failed = set(filter(None, str(previous["failed_criteria"]).split(";")))
            for cb, cid in zip(self.checkboxes, self._ids):
                cb.value = cid not in failed
            self.comment.value = str(previous["comment"] or "")
            verdict = "plausible" if previous["plausible"] else "implausible"
            self.message.value = f"Judged before: {verdict}. A new judgment is added; the latest counts."
        else:
            for cb in self.checkboxes:
                cb.value = False
            self.comment.value = ""
            self.message.value = ""

    # -- actions --
    def judge(self, plausible: bool) -> dict | None:
        """Record a judgment of the current task and move on; returns the row, or None if refused."""
        if self.index >= self.n_tasks:
            self.message.value = "All tasks are judged; use Back to revisit one."
            return None
        failed = [cid for cb, cid in zip(self.checkboxes, self._ids) if not cb.value]
        if plausible and failed:
            self.message.value = ("<span style='color:#b00'>Not recorded: plausible needs every criterion "
                                  "ticked (an image failing any criterion is implausible).</span>")
            return None
        if not plausible and not failed:
            self.message.value = ("<span style='color:#b00'>Not recorded: untick the criteria the image "
                                  "fails, then press Implausible.</span>")
            return None
        task_id = self.current_task_id
        row = append_judgment(self.run_dir, self.reviewer, task_id, plausible, failed, self.comment.value,
                              self.criteria["version"])
        self._latest[task_id] = {"plausible": plausible, "failed_criteria": row["failed_criteria"],
                                 "comment": row["comment"]}
        self.index = self.first_unjudged(self.index + 1)
        self._show()
        return row

    def next(self) -> None:
        """Show the next task (judged or not)."""
        if self.index < self.n_tasks - 1:
            self.index += 1
            self._show()

    def back(self) -> None:
        """Show the previous task."""
        if self.index > 0:
            self.index = min(self.index, self.n_tasks) - 1
            self._show()

    def on_key(self, key: str) -> None:
        """Keyboard shortcut: p plausible, i implausible, n next, b back, 1-9 toggle a criterion."""
        key = (key or "").strip().lower()
        if key == "p":
            self.judge(True)
        elif key == "i":
            self.judge(False)
        elif key == "n":
            self.next()
        elif key == "b":
            self.back()
        elif key.isdigit() and 1 <= int(key) <= len(self.checkboxes):
            cb = self.checkboxes[int(key) - 1]
            cb.value = not cb.value

    def _on_shortcut_text(self, change) -> None:
        text = change["new"]
        if not text:
            return
        self.shortcuts.value = ""  # re-enters this handler with "", which returns above
        self.on_key(text[-1])

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

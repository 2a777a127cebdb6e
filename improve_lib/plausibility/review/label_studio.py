"""Label Studio exchange: the blinded tasks as an import file with a labeling config, and the experts'
exports back into the review's judgment files (:mod:`improve_lib.plausibility.review.tasks`)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from xml.sax.saxutils import quoteattr

import pandas as pd

from improve_lib.core.errors import StudyInputError
from improve_lib.core import run_layout
from improve_lib.core.files import atomic_path, atomic_write_json, atomic_write_text
from improve_lib.plausibility.review.tasks import (JUDGMENT_COLUMNS, append_judgment, blinded_png, load_criteria,
                                                   load_tasks, now, parse_time, read_judgments, record_criteria,
                                                   recorded_criteria, register_reviewer)


def labeling_config(criteria: dict) -> str:
    """Label Studio labeling config (XML) for ``criteria``: plausible / implausible, failed criteria, comment.
    Images are shown at 256 px without smoothing: small samples stay sharp and the choices above the fold."""
    failed_title = f"Criteria the image fails ({criteria['dataset']} v{criteria['version']})"
    choices = "\n".join(
        f"    <Choice value={quoteattr(c['name'])} alias={quoteattr(c['id'])} hint={quoteattr(c['question'])}/>"
        for c in criteria["criteria"])
    return (
        "<View>\n"
        '  <Header value="Intended class"/>\n'
        '  <Text name="intended_class" value="$intended_class"/>\n'
        '  <Image name="image" value="$image" zoom="true" smoothing="false" width="256px" maxWidth="256px"/>\n'
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
    record_criteria(run_dir, criteria)
    out_path = Path(out_path)
    image_dir = out_path.parent / "images"
    root = Path(document_root) if document_root is not None else out_path.parent
    items = []
    for t in tasks.itertuples():
        copy = image_dir / f"{t.task_id}.png"
        with atomic_path(copy) as tmp:
            tmp.write_bytes(blinded_png(run_dir / t.image_path))
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


def _annotator(annotation: dict) -> tuple[str, str]:
    """``(user id, e-mail)`` of an annotation's author, as far as the export tells (either may be "")."""
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        return str(who.get("id", "")), str(who.get("email") or "").lower()
    if isinstance(who, str) and "@" in who:
        return "", who.lower()
    return ("" if who is None else str(who)), ""


def _label(who: tuple[str, str]) -> str:
    return who[1] or who[0]


def _by(annotations: list, completed_by, where: Path) -> list:
    """The annotations of one annotator, given by user id or e-mail; an error when none match."""
    wanted = str(completed_by).strip().lower()
    picked = [(t, a) for t, a in annotations if wanted in {v for v in _annotator(a) if v}]
    if not picked and annotations:
        known = sorted({_label(_annotator(a)) for _, a in annotations})
        hint = ("; this export names annotators by user id: pass the id, or pull from the server with "
                "`python -m improve_lib review label-studio pull`, which looks e-mails up"
                if "@" in wanted and not any(_annotator(a)[1] for _, a in annotations) else "")
        raise StudyInputError(f"{where}: no annotation by {completed_by!r} (annotators: {known}){hint}")
    return picked


def _judgment_of(ann: dict, where: str, by_name: dict[str, str], criteria_label: str):
    """``(plausible, failed criterion ids, comment, timestamp)`` of one Label Studio annotation."""
    verdict, failed, comment = None, [], ""
    for region in ann.get("result") or []:
        name, value = region.get("from_name"), region.get("value") or {}
        if name == "plausible":
            picked = value.get("choices") or []
            if len(picked) != 1 or picked[0] not in ("plausible", "implausible"):
                raise StudyInputError(f"{where}: plausible must be one of plausible / implausible, got {picked}")
            verdict = picked[0] == "plausible"
        elif name == "failed":
            for choice in value.get("choices") or []:
                cid = by_name.get(choice, choice)
                if cid not in by_name.values():
                    raise StudyInputError(f"{where}: unknown criterion {choice!r} "
                                          f"({criteria_label}: {', '.join(by_name.values())})")
                failed.append(cid)
        elif name == "comment":
            comment = " ".join(str(t) for t in value.get("text") or [])
    if verdict is None:
        raise StudyInputError(f"{where}: annotation {ann.get('id')} has no plausible / implausible choice")
    if verdict and failed:  # the rule: an image failing any criterion is implausible; keep what was ticked
        warnings.warn(f"{where}: marked plausible but fails {failed}; recorded as implausible with a note",
                      stacklevel=3)
        verdict = False
        comment = f"[Label Studio: marked plausible and failing {', '.join(failed)}] {comment}".strip()
    stamp = str(ann.get("updated_at") or ann.get("created_at") or now())
    try:
        parse_time(stamp)
    except ValueError:
        raise StudyInputError(f"{where}: timestamp {stamp!r} is not ISO 8601") from None
    return verdict, failed, comment, stamp


def import_label_studio(export_json_path, run_dir, reviewer: str, completed_by=None) -> pd.DataFrame:
    """Append the judgments of a Label Studio JSON export to ``review/<reviewer>.csv``.

    Reads Label Studio's export (a list of tasks, each with ``data.task_id`` and ``annotations``, each
    with ``result`` regions: ``choices`` from ``plausible`` and ``failed``, ``textarea`` from
    ``comment``). Cancelled annotations are skipped. If the export holds annotations from several
    annotators, pass ``completed_by`` (Label Studio user id, or e-mail where the export carries it) to
    pick one: one reviewer file is one person; a ``completed_by`` that matches nothing is an error. An
    annotation marked plausible that also ticks a failed criterion is recorded as implausible, with the
    criteria and a note in its comment, and a warning. The annotation's ``updated_at`` (else ``created_at``) becomes the timestamp, and a
    judgment already imported (same task and timestamp) is not appended twice. Returns the rows
    appended. Raises :class:`StudyInputError` naming the task for anything it cannot read.
    """
    run_dir = Path(run_dir)
    export_json_path = Path(export_json_path)
    register_reviewer(run_dir, reviewer)
    record = recorded_criteria(run_dir)
    if not record:
        raise StudyInputError(f"review: {run_layout.review_dir(run_dir) / 'criteria.json'} is missing; export with "
                              "export_label_studio first so the criteria version is known")
    dataset = record["dataset"]
    criteria = load_criteria(dataset)
    if criteria["version"] not in record["versions"]:
        record_criteria(run_dir, criteria)
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
    annotators = sorted({_label(_annotator(a)) for _, a in annotations})
    if completed_by is not None:
        annotations = _by(annotations, completed_by, export_json_path)
    elif len(annotators) > 1:
        raise StudyInputError(f"{export_json_path}: annotations by several annotators {annotators}; pass "
                              "completed_by=... to import one of them as reviewer " + repr(reviewer))
    existing = read_judgments(run_dir, reviewer, latest=False)
    seen = set(zip(existing["task_id"], existing["timestamp"]))
    parsed = []
    # Oldest first, so the latest annotation of a task is also the last row appended (and wins).
    annotations.sort(key=lambda ta: str(ta[1].get("updated_at") or ta[1].get("created_at") or ""))
    for task_id, ann in annotations:
        verdict, failed, comment, stamp = _judgment_of(ann, f"{export_json_path}: task {task_id}", by_name,
                                                       f"criteria {dataset} v{criteria['version']}")
        if (task_id, stamp) not in seen:
            parsed.append((task_id, verdict, failed, comment, stamp))
            seen.add((task_id, stamp))
    # Everything is read and checked before the first row is written: a bad export appends nothing.
    appended = [append_judgment(run_dir, reviewer, task_id, verdict, failed, comment, criteria["version"],
                                timestamp=stamp) for task_id, verdict, failed, comment, stamp in parsed]
    return pd.DataFrame(appended, columns=JUDGMENT_COLUMNS)

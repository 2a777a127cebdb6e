"""Blinded expert review: tasks, the ipywidgets app driven headless, judgments, agreement, tables,
Label Studio round trip, and every kind of bad input."""
from __future__ import annotations

import json
import math
import shutil
import warnings

import pandas as pd
import pytest

from improve_lib.core.errors import StudyInputError
from improve_lib.data import synthetic_cells as sc
from improve_lib.plausibility.review import agreement, label_studio, tables
from improve_lib.plausibility.review import app as review_app
from improve_lib.plausibility.review import tasks as review_tasks


def build_tasks(run, arms=review_tasks.ARMS, seed=0, n_per_class=None):
    """Blinded review tasks with notebook 07's arms and the given seed (all images by default)."""
    return review_tasks.build_review_tasks(run, arms, seed, n_per_class)

ARMS = ("baseline", "prototype")
CLASSES = ("lymphocyte", "blast")
N = 3  # images per arm and class: 12 tasks


@pytest.fixture(scope="module")
def _template(tmp_path_factory):
    root = tmp_path_factory.mktemp("run_template")
    for arm in ARMS:
        for c in CLASSES:
            folder = root / "samples" / arm / c
            folder.mkdir(parents=True)
            for i in range(N):
                img, _ = sc.render_cell(c, sc.image_rng(3 if arm == "baseline" else 4, c, i), 32)
                img.save(folder / f"{i}.png")
    return root


@pytest.fixture
def run(_template, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(_template, dst)
    return dst


@pytest.fixture
def app(run):
    build_tasks(run, seed=7)
    return review_app.ReviewApp(run, "alice", "synthetic")


def _tick_all(app, value=True):
    for cb in app.checkboxes:
        cb.value = value


def _walk(widget):
    yield widget
    for child in getattr(widget, "children", ()) or ():
        yield from _walk(child)


# ---- criteria -----------------------------------------------------------------------------------

def test_criteria_files_load_and_match_the_paper():
    bm = review_tasks.load_criteria("bone_marrow")
    assert [c["id"] for c in bm["criteria"]] == [
        "cell_size", "nucleus_shape_size", "nc_ratio", "cytoplasm", "chromatin", "inclusions", "granules"]
    ham = review_tasks.load_criteria("ham10000")
    assert len(ham["criteria"]) == 5 and "dermatologist" in ham["note"]
    for ds in ("bone_marrow", "ham10000", "synthetic"):
        c = review_tasks.load_criteria(ds)
        assert c["dataset"] == ds and isinstance(c["version"], str) and c["source"]
    with pytest.raises(StudyInputError, match="no criteria file"):
        review_tasks.load_criteria("mnist")


def test_duplicate_or_incomplete_criteria_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(review_tasks, "CRITERIA_DIR", tmp_path)
    base = "dataset: x\nversion: '1.0'\nsource: s\nnote: n\ncriteria:\n"
    (tmp_path / "dup.yaml").write_text(base + "  - {id: size, name: Size, question: q}\n"
                                              "  - {id: size, name: Size again, question: q}\n")
    with pytest.raises(StudyInputError, match="duplicate criterion id 'size'"):
        review_tasks.load_criteria("dup")
    (tmp_path / "noq.yaml").write_text(base + "  - {id: size, name: Size}\n")
    with pytest.raises(StudyInputError, match="'question'"):
        review_tasks.load_criteria("noq")
    (tmp_path / "nover.yaml").write_text("dataset: x\nsource: s\nnote: n\n"
                                         "criteria:\n  - {id: a, name: A, question: q}\n")
    with pytest.raises(StudyInputError, match="missing field 'version'"):
        review_tasks.load_criteria("nover")
    (tmp_path / "badid.yaml").write_text(base + "  - {id: Cell Size, name: Size, question: q}\n")
    with pytest.raises(StudyInputError, match="snake_case"):
        review_tasks.load_criteria("badid")


# ---- tasks and blinding -------------------------------------------------------------------------

def test_tasks_are_blinded_shuffled_and_reproducible(run, tmp_path, _template):
    tasks = build_tasks(run, seed=7)
    assert list(tasks.columns) == review_tasks.TASK_COLUMNS and len(tasks) == 2 * 2 * N
    assert tasks.task_id.str.fullmatch(r"[0-9a-f]{12}").all() and tasks.task_id.is_unique
    assert list(tasks.position) == list(range(len(tasks)))
    assert set(tasks.arm) == set(ARMS) and not tasks.image_path.str.startswith("/").any()
    assert list(tasks.arm) != sorted(tasks.arm), "tasks must be shuffled across arms"
    blinding = json.loads((run / "review" / "blinding.json").read_text())
    assert blinding["seed"] == 7 and blinding["n"] == len(tasks) and "created" not in blinding  # reproducible
    on_disk = pd.read_csv(run / "review" / "tasks.csv", dtype=str)
    assert list(on_disk.task_id) == list(tasks.task_id)

    other = tmp_path / "other"
    shutil.copytree(_template, other)
    again = build_tasks(other, seed=7)
    pd.testing.assert_frame_equal(again, tasks)
    shutil.rmtree(other / "review")
    assert list(build_tasks(other, seed=8).task_id) != list(tasks.task_id)

    # An existing review is reused as it is, never reshuffled.
    with pytest.warns(UserWarning, match="reusing it unchanged"):
        reused = build_tasks(run, seed=99)
    pd.testing.assert_frame_equal(reused, tasks)


def test_n_per_class_subsamples(run):
    tasks = build_tasks(run, seed=1, n_per_class=2)
    assert len(tasks) == 8
    assert tasks.groupby(["arm", "intended_class"]).size().eq(2).all()


def test_missing_samples_and_deleted_images_are_named(run, tmp_path):
    with pytest.raises(StudyInputError, match="no samples for arm 'ablation'"):
        build_tasks(run, arms=("baseline", "ablation"))
    tasks = build_tasks(run, seed=7)
    victim = run / tasks.image_path[4]
    victim.unlink()
    with pytest.raises(StudyInputError, match=tasks.image_path[4]):
        review_app.ReviewApp(run, "alice", "synthetic")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(StudyInputError, match="missing"):
            build_tasks(run, seed=7)


def test_widget_never_reveals_the_arm(app, run):
    seen = []
    for w in _walk(app.widget):
        for attr in ("description", "value", "placeholder", "tooltip"):
            v = getattr(w, attr, None)
            if isinstance(v, str):
                seen.append(v)
        seen.extend(getattr(w, "titles", ()) or ())
        if w is app.image:
            png = bytes(w.value)  # ipywidgets hands bytes back as a memoryview
            assert png.startswith(b"\x89PNG\r\n\x1a\n")
            assert b"baseline" not in png and b"prototype" not in png and b"samples" not in png
    text = " ".join(seen).lower()
    assert "baseline" not in text and "prototype" not in text and "samples/" not in text and str(run) not in text
    assert "lymphocyte" in text or "blast" in text  # the intended class is shown
    for k in range(app.n_tasks):  # every task, not just the first
        app.index = k
        app._show()
        for w in _walk(app.widget):
            v = getattr(w, "value", None)
            if isinstance(v, str):
                assert "baseline" not in v.lower() and "prototype" not in v.lower()
    import io

    from PIL import Image
    assert Image.open(io.BytesIO(bytes(app.image.value))).size == (256, 256)
    assert not hasattr(app, "tasks") and "arm" not in app._tasks.columns


# ---- judging ------------------------------------------------------------------------------------

def test_plausible_refused_unless_every_criterion_met(app, run):
    _tick_all(app)
    app.checkboxes[2].value = False
    app.plausible_button.click()
    assert "Not recorded" in app.message.value
    assert not (run / "review" / "alice.csv").exists()
    assert app.index == 0
    _tick_all(app)
    app.implausible_button.click()  # implausible needs at least one failed criterion
    assert "Not recorded" in app.message.value and not (run / "review" / "alice.csv").exists()


def test_judgments_are_appended_and_synced(app, run):
    first = app.current_task_id
    _tick_all(app)
    app.comment.value = "crisp"
    app.plausible_button.click()
    second = app.current_task_id
    assert second != first and app.index == 1
    _tick_all(app)
    app.checkboxes[0].value = False
    app.checkboxes[4].value = False
    app.implausible_button.click()
    path = run / "review" / "alice.csv"
    lines = path.read_text(encoding="utf-8").splitlines()  # what is on disk, not in a buffer
    assert lines[0] == ",".join(review_tasks.JUDGMENT_COLUMNS) and len(lines) == 3
    assert lines[1].startswith(f"{first},alice,true,,crisp,")
    assert lines[2].startswith(f"{second},alice,false,cell_size;granules,,")
    j = review_tasks.read_judgments(run, "alice")
    assert list(j.task_id) == [first, second] and list(j.plausible) == [True, False]
    assert (j.criteria_version == "1.0").all()
    assert app.progress.value == 2 and app.progress_label.value == "2 / 12 judged"


def test_resume_back_next_and_nothing_overwritten(app, run):
    for _ in range(3):
        _tick_all(app)
        app.plausible_button.click()
    reopened = review_app.ReviewApp(run, "alice", "synthetic")
    assert reopened.index == 3 and reopened.n_judged == 3
    assert reopened.progress_label.value == "3 / 12 judged"
    reopened.back_button.click()
    assert reopened.index == 2 and all(cb.value for cb in reopened.checkboxes)  # prefilled
    before = (run / "review" / "alice.csv").read_bytes()
    _tick_all(reopened, True)
    reopened.checkboxes[1].value = False
    reopened.implausible_button.click()  # re-judge task 2: a new row, the old one stays
    after = (run / "review" / "alice.csv").read_bytes()
    assert after.startswith(before) and len(after) > len(before)
    assert reopened.index == 3  # on to the first unjudged task after it
    task2 = reopened._tasks.task_id[2]
    history = review_tasks.read_judgments(run, "alice", latest=False)
    assert list(history[history.task_id == task2].plausible) == [True, False]
    assert not review_tasks.read_judgments(run, "alice").set_index("task_id").loc[task2, "plausible"]
    reopened.next_button.click()
    assert reopened.index == 4
    for _ in range(20):
        reopened.back_button.click()
    assert reopened.index == 0
    for _ in range(20):
        reopened.next_button.click()
    assert reopened.index == reopened.n_tasks - 1


def test_keyboard_shortcuts(app, run):
    app.on_key("1")
    assert app.checkboxes[0].value
    app.on_key("1")
    assert not app.checkboxes[0].value
    for k in range(len(app.checkboxes)):
        app.on_key(str(k + 1))
    app.on_key("p")
    assert app.n_judged == 1 and app.index == 1
    app.on_key("n")
    assert app.index == 2
    app.on_key("b")
    assert app.index == 1
    # The shortcut box: typing a key acts at once and clears the box.
    app.shortcuts.value = "n"
    assert app.index == 2 and app.shortcuts.value == ""
    app.shortcuts.value = "3"
    assert app.checkboxes[2].value and app.shortcuts.value == ""
    app.on_key("i")
    assert app.n_judged == 2
    assert review_tasks.read_judgments(run, "alice").plausible.tolist() == [True, False]


def test_all_judged_state(app):
    for _ in range(app.n_tasks):
        _tick_all(app)
        app.plausible_button.click()
    assert app.index == app.n_tasks and "All tasks judged" in app.intended.value
    app.plausible_button.click()
    assert app.n_judged == app.n_tasks
    app.back_button.click()
    assert app.index == app.n_tasks - 1


# ---- reviewers ----------------------------------------------------------------------------------

def test_reviewer_names_and_identity(run):
    build_tasks(run, seed=7)
    review_app.ReviewApp(run, "dr_lee", "synthetic", display_name="Dr. A. Lee")
    review_app.ReviewApp(run, "dr_lee", "synthetic")  # the same person reopening
    review_app.ReviewApp(run, "dr_lee", "synthetic", display_name="Dr. A. Lee")
    with pytest.raises(StudyInputError, match="already registered"):
        review_app.ReviewApp(run, "dr_lee", "synthetic", display_name="Dr. B. Lee")
    with pytest.raises(StudyInputError, match="1-64 of A-Z a-z 0-9"):
        review_app.ReviewApp(run, "../evil", "synthetic")
    with pytest.raises(StudyInputError, match="tasks"):
        review_app.ReviewApp(run, "tasks", "synthetic")
    registry = json.loads((run / "review" / "reviewers.json").read_text())
    assert registry["dr_lee"]["display_name"] == "Dr. A. Lee" and registry["dr_lee"]["created"]
    with pytest.raises(StudyInputError, match="one review folder holds one dataset"):
        review_app.ReviewApp(run, "dr_kim", "bone_marrow")


# ---- hand-edited files --------------------------------------------------------------------------

@pytest.mark.parametrize("edit,match", [
    (lambda rows: rows[2].__setitem__(2, "maybe"), "line 3: plausible must be true or false"),
    (lambda rows: rows[2].__setitem__(0, "deadbeef0000"), "line 3: unknown task_id 'deadbeef0000'"),
    (lambda rows: rows[1].__setitem__(3, "cell_size"), "line 2: plausible, yet failed criteria"),
    (lambda rows: rows[2].__setitem__(3, "sparkle"), "line 3: unknown criterion id"),
    (lambda rows: rows[2].__setitem__(1, "bob"), "line 3: reviewer 'bob'"),
    (lambda rows: rows[2].__setitem__(5, "yesterday"), "line 3: timestamp"),
    (lambda rows: [r.pop(2) for r in rows], "line 1: missing columns \\['plausible'\\]"),
])
def test_invalid_hand_edits_are_named(app, run, edit, match):
    _tick_all(app)
    app.plausible_button.click()
    _tick_all(app)
    app.checkboxes[0].value = False
    app.implausible_button.click()
    path = run / "review" / "alice.csv"
    import csv
    rows = list(csv.reader(path.open(newline="")))
    edit(rows)
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    with pytest.raises(StudyInputError, match=match) as err:
        review_tasks.read_judgments(run, "alice")
    assert "alice.csv" in str(err.value)


# ---- agreement and tables -----------------------------------------------------------------------

def test_cohen_kappa_hand_computed(run):
    tasks = build_tasks(run, seed=7)
    a = [True] * 6 + [False] * 4
    b = [True] * 4 + [False] * 5 + [True]
    for tid, x, y in zip(tasks.task_id[:10], a, b):
        review_tasks.append_judgment(run, "ann", tid, x, [] if x else ["cell_size"], criteria_version="1.0")
        review_tasks.append_judgment(run, "ben", tid, y, [] if y else ["nucleoli"], criteria_version="1.0")
    review_tasks.append_judgment(run, "ann", tasks.task_id[10], True)  # judged by one reviewer only
    # po = 7/10; pe = 0.6*0.5 + 0.4*0.5 = 0.5; kappa = (0.7 - 0.5) / 0.5 = 0.4
    out = agreement.cohen_kappa(run, "ann", "ben")
    assert out["n_common"] == 10 and out["kappa"] == pytest.approx(0.4) and out["agreement"] == pytest.approx(0.7)
    from sklearn.metrics import cohen_kappa_score
    assert out["kappa"] == pytest.approx(cohen_kappa_score(a, b))
    assert math.isnan(agreement.cohen_kappa(run, "ann", "nobody")["kappa"])


def test_wilson_interval_known_values():
    lo, hi = tables.wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert tables.wilson_interval(0, 5)[0] == 0.0 and tables.wilson_interval(5, 5)[1] == 1.0
    assert all(math.isnan(v) for v in tables.wilson_interval(0, 0))


def test_plausibility_table_unblinds_and_pools(run, tmp_path):
    tasks = build_tasks(run, seed=7)
    # alice: plausible iff prototype; bob judges two baseline lymphocytes plausible.
    for t in tasks.itertuples():
        ok = t.arm == "prototype"
        review_tasks.append_judgment(run, "alice", t.task_id, ok, [] if ok else ["cell_size"], criteria_version="1.0")
    base_lym = tasks[(tasks.arm == "baseline") & (tasks.intended_class == "lymphocyte")].task_id[:2]
    for tid in base_lym:
        review_tasks.append_judgment(run, "bob", tid, True, criteria_version="1.0")
    only_alice = tables.expert_plausibility_table(run, reviewers=["alice"])
    assert list(only_alice.index) == ["blast", "lymphocyte", "mean"]
    assert (only_alice["baseline %"] == 0).all() and (only_alice["prototype %"] == 100).all()
    assert only_alice.loc["blast", "prototype n"] == N and only_alice.loc["mean", "prototype n"] == 2 * N
    lo, hi = tables.wilson_interval(N, N)
    assert only_alice.loc["blast", "prototype CI low"] == pytest.approx(100 * lo)
    pooled = tables.expert_plausibility_table(run)  # alice + bob
    assert pooled.loc["lymphocyte", "baseline n"] == N + 2
    assert pooled.loc["lymphocyte", "baseline %"] == pytest.approx(100 * 2 / (N + 2))
    assert pooled.loc["mean", "baseline %"] == pytest.approx((100 * 2 / (N + 2) + 0) / 2)
    paths = tables.save_plausibility_table(pooled, tmp_path / "tables", "table4_expert")
    md = paths["markdown"].read_text()
    assert "baseline (%)" in md and "prototype 95 % CI" in md and "| mean |" in md
    assert pd.read_csv(paths["csv"], index_col=0).shape == pooled.shape
    fig = tables.plausibility_figure(pooled)
    assert fig.axes and len(fig.axes[0].patches) >= 6


# ---- Label Studio -------------------------------------------------------------------------------

def test_label_studio_round_trip(run, tmp_path):
    tasks = build_tasks(run, seed=7)
    out = tmp_path / "ls" / "tasks.json"
    paths = label_studio.export_label_studio(run, "synthetic", out)
    items = json.loads(out.read_text())
    assert len(items) == len(tasks)
    assert {i["data"]["task_id"] for i in items} == set(tasks.task_id)
    first = items[0]
    assert set(first["data"]) == {"image", "intended_class", "task_id"}
    assert first["data"]["image"] == f"/data/local-files/?d=images/{first['data']['task_id']}.png"
    config = paths["config"].read_text()
    assert '<Image name="image" value="$image"' in config and 'choice="multiple"' in config
    crit = review_tasks.load_criteria("synthetic")["criteria"]
    assert config.count("alias=") == len(crit) and '<TextArea name="comment" toName="image"' in config
    exported = out.read_text() + config + " ".join(p.name for p in paths["images"].iterdir())
    assert "baseline" not in exported and "prototype" not in exported
    for p in paths["images"].iterdir():
        assert b"baseline" not in p.read_bytes() and b"prototype" not in p.read_bytes()

    # What Label Studio's JSON export looks like after annotation (one annotator, user id 3).
    def ann(choice, failed=(), comment=None, stamp="2026-01-05T10:00:00.000000Z", cancelled=False):
        result = [{"id": "a1", "from_name": "plausible", "to_name": "image", "type": "choices",
                   "value": {"choices": [choice]}, "origin": "manual"}]
        if failed:
            result.append({"id": "a2", "from_name": "failed", "to_name": "image", "type": "choices",
                           "value": {"choices": list(failed)}})
        if comment:
            result.append({"id": "a3", "from_name": "comment", "to_name": "image", "type": "textarea",
                           "value": {"text": [comment]}})
        return {"id": 1, "result": result, "was_cancelled": cancelled, "ground_truth": False,
                "created_at": stamp, "updated_at": stamp, "lead_time": 3.2, "completed_by": 3}

    export = []
    for k, item in enumerate(items[:4]):
        annotations = [
            ann("plausible", stamp=f"2026-01-05T10:0{k}:00.000000Z"),
            ann("implausible", failed=["cell_size", "Nucleoli"], comment="too small",
                stamp=f"2026-01-05T10:0{k}:00.000000Z"),
            ann("implausible", failed=["granules"], stamp=f"2026-01-05T10:0{k}:00.000000Z"),
            ann("implausible", failed=["cytoplasm_colour"], stamp=f"2026-01-05T11:0{k}:00.000000Z"),
        ][k:k + 1]
        if k == 3:  # re-annotated: the later annotation wins, a cancelled one is ignored
            annotations = [ann("plausible", stamp="2026-01-05T09:00:00.000000Z"), annotations[0],
                           ann("plausible", stamp="2026-01-05T12:00:00.000000Z", cancelled=True)]
        export.append({"id": item["id"], "data": item["data"], "annotations": annotations, "predictions": [],
                       "created_at": "2026-01-05T09:00:00Z", "updated_at": "2026-01-05T12:00:00Z", "project": 1})
    export_path = tmp_path / "project-1-at-2026.json"
    export_path.write_text(json.dumps(export))
    added = label_studio.import_label_studio(export_path, run, "dr_ls")
    assert len(added) == 5
    j = review_tasks.read_judgments(run, "dr_ls").set_index("task_id")
    ids = [i["data"]["task_id"] for i in items[:4]]
    assert j.loc[ids[0], "plausible"] and j.loc[ids[0], "failed_criteria"] == ""
    assert not j.loc[ids[1], "plausible"] and j.loc[ids[1], "failed_criteria"] == "cell_size;nucleoli"
    assert j.loc[ids[1], "comment"] == "too small"
    assert j.loc[ids[2], "failed_criteria"] == "granules"
    assert not j.loc[ids[3], "plausible"] and j.loc[ids[3], "failed_criteria"] == "cytoplasm_colour"
    assert (j.criteria_version == "1.0").all()
    assert len(label_studio.import_label_studio(export_path, run, "dr_ls")) == 0  # no duplicates
    # The same judgments through the app format: tables and kappa read them like any reviewer's.
    assert tables.expert_plausibility_table(run, ["dr_ls"]).loc["mean", "baseline n"] + \
        tables.expert_plausibility_table(run, ["dr_ls"]).loc["mean", "prototype n"] == 4

    export[0]["annotations"].append(dict(ann("plausible"), completed_by=9))
    export_path.write_text(json.dumps(export))
    with pytest.raises(StudyInputError, match="several annotators"):
        label_studio.import_label_studio(export_path, run, "dr_ls")
    before = (run / "review" / "dr_ls.csv").read_bytes()
    export[0]["annotations"][0]["updated_at"] = "2026-02-01T00:00:00Z"  # a new judgment, then a bad one
    export[2]["annotations"][0]["result"][1]["value"]["choices"] = ["sparkle"]
    export_path.write_text(json.dumps(export))
    with pytest.raises(StudyInputError, match="unknown criterion 'sparkle'"):
        label_studio.import_label_studio(export_path, run, "dr_ls", completed_by=3)
    assert (run / "review" / "dr_ls.csv").read_bytes() == before, "a bad export must append nothing"
    export[1]["data"]["task_id"] = "0123456789ab"
    export_path.write_text(json.dumps(export))
    with pytest.raises(StudyInputError, match="0123456789ab"):
        label_studio.import_label_studio(export_path, run, "dr_ls", completed_by=3)


def test_row_cut_short_by_a_crash_is_named_and_isolated(app, run):
    _tick_all(app)
    app.plausible_button.click()
    path = run / "review" / "alice.csv"
    with path.open("a") as fh:
        fh.write("abc123,ali")  # the kernel died mid-write
    _tick_all(app)
    app.plausible_button.click()  # the next row still starts on its own line
    lines = path.read_text().splitlines()
    assert lines[2] == "abc123,ali" and lines[3].startswith(app._tasks.task_id[1] + ",alice,true")
    with pytest.raises(StudyInputError, match="alice.csv, line 3"):
        review_tasks.read_judgments(run, "alice")

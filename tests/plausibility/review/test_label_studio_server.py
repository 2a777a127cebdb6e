"""Label Studio in one command: the REST calls of push and pull against recorded responses (the shapes of
Label Studio's API reference), annotators by id or e-mail, and an inconsistent judgment kept with a note."""
from __future__ import annotations

import json

import pytest
import requests
from test_review import _template, build_tasks, run  # noqa: F401 (the review fixtures)

from improve_lib.core.errors import StudyInputError
from improve_lib.plausibility.review import label_studio
from improve_lib.plausibility.review import label_studio_server as lss
from improve_lib.plausibility.review import tasks as review_tasks

URL = "http://localhost:8080"


class Response:
    def __init__(self, status: int, body):
        self.status_code, self._body = status, body
        self.content = b"" if body is None else json.dumps(body).encode()
        self.text = self.content.decode()

    def json(self):
        return self._body


class RecordedServer:
    """A requests.Session stand-in: answers (method, path) from a table and records every call."""

    def __init__(self, answers: dict[tuple[str, str], tuple[int, object]]):
        self.answers, self.calls = answers, []

    def request(self, method, url, headers=None, timeout=None, json=None, params=None):
        path = url.removeprefix(URL)
        self.calls.append({"method": method, "path": path, "headers": headers or {}, "json": json, "params": params})
        if (method, path) not in self.answers:
            raise requests.ConnectionError(f"no recorded answer for {method} {path}")
        return Response(*self.answers[(method, path)])


def _annotation(choice, failed=(), who=3, stamp="2026-01-05T10:00:00.000000Z"):
    result = [{"from_name": "plausible", "to_name": "image", "type": "choices", "value": {"choices": [choice]}}]
    if failed:
        result.append({"from_name": "failed", "to_name": "image", "type": "choices", "value": {"choices": list(failed)}})
    return {"id": 1, "result": result, "was_cancelled": False, "created_at": stamp, "updated_at": stamp,
            "completed_by": who}


def _server(tasks_json, export):
    return RecordedServer({
        ("POST", "/api/projects"): (201, {"id": 7, "title": "IMPROVE review"}),
        ("POST", "/api/storages/localfiles"): (201, {"id": 11, "project": 7, "type": "localfiles"}),
        ("POST", "/api/projects/7/import"): (201, {"task_count": len(tasks_json), "annotation_count": 0}),
        ("GET", "/api/projects/7/export"): (200, export),
        ("GET", "/api/users"): (200, [{"id": 3, "email": "Dr.Smith@clinic.org"}, {"id": 9, "email": "b@x.org"}]),
        ("POST", "/api/token/refresh"): (200, {"access": "ACCESS"}),
    })


def test_push_creates_project_storage_and_tasks_then_pull_imports_by_email(run, tmp_path):
    build_tasks(run, seed=7)
    root = run.parent  # the server's LOCAL_FILES_DOCUMENT_ROOT holds the run folder
    first = _server([], [])
    record = lss.push(run, "synthetic", URL, "legacy-key", root, session=first)
    calls = [(c["method"], c["path"]) for c in first.calls]
    assert calls == [("POST", "/api/projects"), ("POST", "/api/storages/localfiles"), ("POST", "/api/projects/7/import")]
    assert all(c["headers"]["Authorization"] == "Token legacy-key" for c in first.calls)
    assert 'smoothing="false"' in first.calls[0]["json"]["label_config"]
    images = run / "review" / "label_studio" / "images"
    assert first.calls[1]["json"]["path"] == str(images.resolve()) and first.calls[1]["json"]["project"] == 7
    tasks = first.calls[2]["json"]
    assert len(tasks) == len(review_tasks.load_tasks(run))
    rel = images.resolve().relative_to(root.resolve()).as_posix()
    assert tasks[0]["data"]["image"].startswith(f"/data/local-files/?d={rel}/")
    assert record == json.loads((run / "review" / "label_studio" / "server.json").read_text())
    assert record["project"] == 7 and record["storage"] == 11

    ids = [t["data"]["task_id"] for t in tasks]
    export = [{"id": 1, "data": tasks[0]["data"], "annotations": [_annotation("plausible", who=3),
                                                                   _annotation("implausible", ["granules"], who=9)]},
              {"id": 2, "data": tasks[1]["data"], "annotations": [_annotation("implausible", ["cell_size"], who=3)]}]
    jwt = "header.payload.signature"  # a personal access token: exchanged for an access token first
    second = _server(tasks, export)
    added = lss.pull(run, "dr_smith", token=jwt, completed_by="dr.smith@clinic.org", session=second)
    assert [c["path"] for c in second.calls] == ["/api/token/refresh", "/api/projects/7/export", "/api/users"]
    assert second.calls[0]["json"] == {"refresh": jwt} and second.calls[1]["headers"]["Authorization"] == "Bearer ACCESS"
    assert second.calls[1]["params"] == {"exportType": "JSON"}
    assert list(added["task_id"]) == ids[:2] and list(added["plausible"]) == ["true", "false"]
    with pytest.raises(StudyInputError, match="no user 'nobody@x.org'"):
        lss.pull(run, "dr_smith", token="k", completed_by="nobody@x.org", session=_server(tasks, export))


def test_server_errors_are_named(run, tmp_path):
    build_tasks(run, seed=7)
    refused = RecordedServer({("POST", "/api/projects"): (401, {"detail": "Invalid token."})})
    with pytest.raises(StudyInputError, match="refused the token"):
        lss.push(run, "synthetic", URL, "bad", run.parent, session=refused)
    with pytest.raises(StudyInputError, match="not reachable"):
        lss.push(run, "synthetic", URL, "k", run.parent, session=RecordedServer({}))
    with pytest.raises(StudyInputError, match="push"):
        lss.pull(tmp_path, "dr", url=URL, token="k", session=RecordedServer({}))
    with pytest.raises(StudyInputError, match="--token"):
        lss.LabelStudio(URL, "")


def test_import_by_id_or_email_and_inconsistent_judgment_kept_with_note(run, tmp_path):
    build_tasks(run, seed=7)
    items = json.loads((label_studio.export_label_studio(run, "synthetic", tmp_path / "t.json")["tasks"]).read_text())
    by_dict = {"id": 3, "email": "Dr@Clinic.org"}
    export = [{"id": 1, "data": items[0]["data"], "annotations": [_annotation("plausible", ["granules"], who=by_dict)]},
              {"id": 2, "data": items[1]["data"], "annotations": [_annotation("implausible", ["cell_size"], who=9)]}]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))
    with pytest.warns(UserWarning, match="marked plausible but fails"):
        added = label_studio.import_label_studio(path, run, "dr", completed_by="dr@clinic.org")
    assert len(added) == 1 and added.iloc[0]["plausible"] == "false" and added.iloc[0]["failed_criteria"] == "granules"
    assert added.iloc[0]["comment"].startswith("[Label Studio: marked plausible and failing granules]")
    assert len(label_studio.import_label_studio(path, run, "dr2", completed_by=9)) == 1  # an int id
    with pytest.raises(StudyInputError, match=r"no annotation by 'b@x.org'.*user id"):
        only_ids = [dict(export[1])]
        path.write_text(json.dumps(only_ids))
        label_studio.import_label_studio(path, run, "dr3", completed_by="b@x.org")
    with pytest.raises(StudyInputError, match="no annotation by 4"):
        label_studio.import_label_studio(path, run, "dr3", completed_by=4)


def test_cli_names_what_is_missing(tmp_path, capsys):
    from improve_lib.runs.cli import main

    assert main(["review", "label-studio", "push", str(tmp_path), "--token", "k"]) == 2
    assert "--document-root" in capsys.readouterr().err
    assert main(["review", "label-studio", "pull", str(tmp_path), "--token", "k"]) == 2
    assert "--reviewer" in capsys.readouterr().err
    assert main(["review", "label-studio", "pull", str(tmp_path), "--reviewer", "dr", "--token", "k"]) == 2
    assert "push" in capsys.readouterr().err

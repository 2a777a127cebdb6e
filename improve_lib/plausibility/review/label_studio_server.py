"""Label Studio in one command: create the review project on a running server, let it serve the blinded
images, import the tasks; later pull the experts' annotations back into the review's judgment files.

Talks to Label Studio's REST API (the calls of its API reference; ``requests``): ``POST /api/projects``
(title and our labeling config), ``POST /api/storages/localfiles`` (a Local Storage over the images
folder: without it the image URLs of the tasks return 404), ``POST /api/projects/<id>/import``,
``GET /api/projects/<id>/export?exportType=JSON`` and ``GET /api/users`` (to accept an annotator's
e-mail). Legacy tokens are sent as ``Token <key>``; personal access tokens (JWT refresh tokens) are
exchanged at ``POST /api/token/refresh`` for an access token sent as ``Bearer``.

The server must serve local files: start it with ``LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true`` and
``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`` set to a folder that holds the run folder (README, "Expert
review"). What was created is recorded in ``review/label_studio/server.json`` for :func:`pull`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import requests

from improve_lib.core.errors import StudyInputError
from improve_lib.core import run_layout
from improve_lib.core.files import atomic_write_json
from improve_lib.plausibility.review.label_studio import export_label_studio, import_label_studio

SERVER_FILE = "server.json"
TIMEOUT_S = 60


def _folder(run_dir) -> Path:
    return run_layout.review_dir(run_dir) / "label_studio"


class LabelStudio:
    """A Label Studio server at ``url`` reached with ``token`` (legacy or personal access token)."""

    def __init__(self, url: str, token: str, session: requests.Session | None = None):
        if not url or not token:
            raise StudyInputError("Label Studio: give the server's --url and your --token "
                                  "(Account & Settings > Personal Access Token or Legacy Token)")
        self.url, self.token = url.rstrip("/"), token
        self.session = session or requests.Session()
        self._header: str | None = None

    def _auth(self) -> str:
        if self._header is None:
            if self.token.count(".") == 2:  # a JWT: a personal access token is a refresh token
                access = self._call("POST", "/api/token/refresh", json={"refresh": self.token}, auth=False)["access"]
                self._header = f"Bearer {access}"
            else:
                self._header = f"Token {self.token}"
        return self._header

    def _call(self, method: str, path: str, auth: bool = True, **kwargs) -> Any:
        headers = {"Authorization": self._auth()} if auth else {}
        try:
            response = self.session.request(method, self.url + path, headers=headers, timeout=TIMEOUT_S, **kwargs)
        except requests.RequestException as exc:
            raise StudyInputError(f"Label Studio at {self.url} is not reachable ({type(exc).__name__}: {exc}); "
                                  "is the server running?") from None
        if response.status_code in (401, 403):
            raise StudyInputError(f"Label Studio refused the token ({response.status_code} on {method} {path})")
        if response.status_code >= 400:
            raise StudyInputError(f"Label Studio: {method} {path} failed with {response.status_code}: "
                                  f"{response.text[:500]}")
        return response.json() if response.content else None

    def create_project(self, title: str, label_config: str) -> int:
        """A new project with the labeling config; returns its id."""
        return int(self._call("POST", "/api/projects", json={"title": title, "label_config": label_config})["id"])

    def add_local_storage(self, project: int, path: Path) -> int:
        """A Local Storage over ``path`` (absolute, under the server's document root), so that the tasks'
        ``/data/local-files/?d=...`` URLs are served. It is not synced: the tasks are imported once."""
        body = {"project": project, "path": str(Path(path).resolve()), "title": "IMPROVE blinded review images",
                "use_blob_urls": True, "regex_filter": r".*\.png"}
        return int(self._call("POST", "/api/storages/localfiles", json=body)["id"])

    def import_tasks(self, project: int, tasks: list[dict]) -> int:
        """Import ``tasks``; returns the number Label Studio reports."""
        answer = self._call("POST", f"/api/projects/{project}/import", json=tasks) or {}
        return int(answer.get("task_count", len(tasks)))

    def export(self, project: int) -> list[dict]:
        """The project's annotations, Label Studio's JSON export."""
        return self._call("GET", f"/api/projects/{project}/export", params={"exportType": "JSON"})

    def user_ids(self) -> dict[str, int]:
        """E-mail -> user id of the server's users."""
        answer = self._call("GET", "/api/users")
        users = answer.get("results", []) if isinstance(answer, dict) else answer
        return {str(u["email"]).lower(): int(u["id"]) for u in users if u.get("email")}


def push(run_dir, dataset: str, url: str, token: str, document_root, title: str | None = None,
         session: requests.Session | None = None) -> dict[str, Any]:
    """Create the review project on the server: export the blinded tasks under ``review/label_studio/``
    (image URLs relative to ``document_root``, the server's ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``),
    create the project, add the Local Storage, import the tasks. Returns (and records) the project id,
    storage id, task count and URL."""
    run_dir, root = Path(run_dir), Path(document_root)
    if not root.is_dir():
        raise StudyInputError(f"document_root {root} is not a folder (the server's LOCAL_FILES_DOCUMENT_ROOT)")
    paths = export_label_studio(run_dir, dataset, _folder(run_dir) / "tasks.json", document_root=root)
    server = LabelStudio(url, token, session)
    project = server.create_project(title or f"IMPROVE review: {run_dir.name}", paths["config"].read_text())
    storage = server.add_local_storage(project, paths["images"])
    tasks = json.loads(paths["tasks"].read_text())
    count = server.import_tasks(project, [{"data": t["data"]} for t in tasks])
    record = {"url": server.url, "project": project, "storage": storage, "tasks": count,
              "project_url": f"{server.url}/projects/{project}/data"}
    atomic_write_json(_folder(run_dir) / SERVER_FILE, record)
    return record


def pull(run_dir, reviewer: str, url: str | None = None, token: str = "", completed_by=None,
         session: requests.Session | None = None):
    """Fetch the project's JSON export into ``review/label_studio/export.json`` and append its judgments to
    ``review/<reviewer>.csv`` (:func:`~improve_lib.plausibility.review.label_studio.import_label_studio`). ``completed_by``:
    the annotator's user id or e-mail (an e-mail is looked up on the server). Returns the rows appended."""
    record_path = _folder(run_dir) / SERVER_FILE
    if not record_path.is_file():
        raise StudyInputError(f"{record_path} not found: create the project first (review label-studio push)")
    record = json.loads(record_path.read_text())
    server = LabelStudio(url or record["url"], token, session)
    export = server.export(int(record["project"]))
    out = _folder(run_dir) / "export.json"
    atomic_write_json(out, export)
    if isinstance(completed_by, str) and "@" in completed_by:
        ids = server.user_ids()
        if completed_by.lower() not in ids:
            raise StudyInputError(f"Label Studio has no user {completed_by!r} (users: {sorted(ids)})")
        completed_by = ids[completed_by.lower()]
    return import_label_studio(out, run_dir, reviewer, completed_by=completed_by)

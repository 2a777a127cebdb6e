"""The classroom readiness check: what it reports when runs or the cache are missing, and when present."""
from __future__ import annotations

import json

import pytest

from improve_lib.runs import workshop


def test_check_names_what_is_missing_and_passes_when_present(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(workshop, "REPO", tmp_path)
    monkeypatch.setenv("IMPROVE_CACHE_DIR", str(tmp_path / "cache"))
    checks = dict(workshop.checks())
    assert {"smoke run, all notebooks", "demo data, embeddings, prototypes", "embedding cache"} <= set(checks)
    assert workshop.main(["check"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  smoke run, all notebooks" in out and "`make workshop` runs it" in out
    assert "FAIL  embedding cache" in out and "is empty" in out

    stages = {n: {"status": "done", "seconds": 2.0} for n in
              ["01_explore_data.ipynb", "02_embeddings.ipynb", "03_prototypes.ipynb", "04_train_diffusion.ipynb",
               "05_sample.ipynb", "06_evaluate.ipynb", "07_plausibility_review.ipynb"]}
    for name in ("workshop-check", "workshop-demo"):
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "manifest.json").write_text(json.dumps({"stages": stages}))
    (tmp_path / "cache" / "enc").mkdir(parents=True)
    (tmp_path / "cache" / "enc" / "x.npy").write_bytes(b"0")
    checks = dict(workshop.checks())
    assert "7 notebooks done in 14 s" in checks["smoke run, all notebooks"]()
    assert "3 notebooks done" in checks["demo data, embeddings, prototypes"]()
    assert "1 cached embeddings" in checks["embedding cache"]()
    stages["03_prototypes.ipynb"]["status"] = "failed"
    (tmp_path / "runs" / "workshop-demo" / "manifest.json").write_text(json.dumps({"stages": stages}))
    with pytest.raises(RuntimeError, match="03_prototypes.ipynb"):
        checks["demo data, embeddings, prototypes"]()

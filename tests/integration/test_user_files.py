"""Nothing of the user's is ever deleted (issue 26): the commands that write a folder refuse one holding the
user's files, --resume adopts only this project's run folders, --force looks into every subfolder, and a
results export that fails verification leaves the earlier folder as it was."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from improve_lib import data
from improve_lib.core import folders, manifest
from improve_lib.core.errors import StudyInputError
from improve_lib.diffusion import checkpoint_export
from improve_lib.report import results_folder
from improve_lib.runs import pipeline

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def finished(smoke_synthetic_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(smoke_synthetic_run, run)
    return run


def test_export_out_keeps_the_users_files(finished, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(StudyInputError, match=r"mine.txt.*move them out or choose another folder"):
        checkpoint_export.export_checkpoint(finished, "prototype", out=out)
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    fresh = checkpoint_export.export_checkpoint(finished, "prototype", out=tmp_path / "export")
    assert (fresh / "model_index.json").is_file() and folders.foreign(fresh) == []
    checkpoint_export.export_checkpoint(finished, "prototype", out=fresh)  # its own export: replaced


def test_resume_refuses_a_folder_this_project_did_not_make(tmp_path):
    folder = tmp_path / "mine"
    (folder / "data").mkdir(parents=True)
    (folder / "important.txt").write_text("a")
    (folder / "data" / "mine.csv").write_text("b")
    with pytest.raises(StudyInputError, match="not a run folder of this project.*--resume"):
        pipeline.run_pipeline("smoke", run_dir=folder, resume=True, progress=False)
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) == ["data", "data/mine.csv", "important.txt"]


def test_resume_does_not_adopt_and_force_does_not_delete_the_users_files(finished):
    (finished / "important.txt").write_text("mine")
    (finished / "review" / "dr_smith.csv").write_text("task_id,plausible\n1,true\n")
    (finished / "figures" / "my_notes.txt").write_text("notes")
    pipeline.run_pipeline("smoke", run_dir=finished, resume=True, progress=False)  # all done: nothing reruns
    m = manifest.load(finished)
    users = {"important.txt", "review/dr_smith.csv", "figures/my_notes.txt"}
    assert users <= set(m["unclaimed"]) and not users & set(m["outputs"])
    assert not users & set(m["output_stages"])
    with pytest.raises(StudyInputError, match=r"3 file\(s\) this project did not write"):
        pipeline.run_pipeline("smoke", run_dir=finished, force=True, progress=False)
    assert (finished / "review" / "dr_smith.csv").is_file() and (finished / "figures" / "my_notes.txt").is_file()
    assert manifest.foreign_files(finished) == sorted(users)


def _sweep_from(results: Path, sweep: Path) -> Path:
    """A sweep folder rebuilt from a committed results folder (its runs' files back where the runs wrote them)."""
    for rel in results_folder.SWEEP_FILES:
        (sweep / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(results / rel, sweep / rel)
    back = {dst: src for src, dst in results_folder.RUN_FILES + results_folder.RUN_TABLES}
    for run in (results / "runs").iterdir():
        for f in run.iterdir():
            rel = back.get(f.name, manifest.MANIFEST if f.name == manifest.MANIFEST else f"figures/{f.name}")
            (sweep / run.name / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, sweep / run.name / rel)
    return sweep


def test_results_refuses_a_folder_with_the_users_files_and_a_failed_verification_leaves_the_old_one(tmp_path):
    sweep = _sweep_from(REPO / "results" / "demo_seeds", tmp_path / "sweep")
    out = tmp_path / "results"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(StudyInputError, match="mine.txt"):
        results_folder.write_results(sweep, out, "cmd")
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    (out / "mine.txt").unlink()
    results_folder.write_results(sweep, out, "cmd")
    before = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    edited = next(sweep.glob("*/metrics/metrics.json"))
    edited.write_text(edited.read_text().replace("4", "5", 1))  # no longer what its manifest hashed
    with pytest.raises(StudyInputError, match="sha256 differs"):
        results_folder.write_results(sweep, out, "cmd again")
    assert {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results", "sweep"]  # no half-written sibling


def _png(path: Path, size=(40, 40)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size[::-1], 3), 128, np.uint8)).save(path)


def test_one_image_under_two_classes_is_refused(tmp_path):
    root = tmp_path / "bm"
    for cls in ("ART", "BLA"):
        for i in range(12):
            _png(root / cls / f"{cls}_{i:05d}.png")
    (root / "BLA" / "BLA_twin.png").symlink_to(root / "ART" / "ART_00000.png")
    with pytest.raises(StudyInputError, match=r"ART_00000.png is listed 2 times, under class\(es\) \['ART', 'BLA'\]"):
        data.build_split("bone_marrow", root, tmp_path / "run", 5, 2, 0, None, 10, 32, progress=False)


def test_formula_like_metadata_is_escaped_in_split_csv(ham_dir, tmp_path):
    meta = pd.read_csv(ham_dir / "HAM10000_metadata.csv")
    keep = meta.groupby("dx").head(12)
    (tmp_path / "ham" / "images").mkdir(parents=True)
    for i in keep.image_id:
        shutil.copy(ham_dir / "images" / f"{i}.jpg", tmp_path / "ham" / "images")
    keep = keep.assign(lesion_id=[f'=HYPERLINK("http://x","{v}")' for v in keep.lesion_id])
    keep.to_csv(tmp_path / "ham" / "HAM10000_metadata.csv", index=False)
    result = data.build_split("ham10000", tmp_path / "ham", tmp_path / "run", 5, 2, 0, None, 5, 32, progress=False)
    data.write_split(result, tmp_path / "run")
    text = (tmp_path / "run" / "data" / "split.csv").read_text()
    assert "'=HYPERLINK" in text and ",=HYPERLINK" not in text
    assert list(data.read_split(tmp_path / "run")["path"]) == list(result.table["path"])


def test_a_decompression_bomb_names_its_file(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.png"
    _png(bomb, size=(200, 200))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 200 x 200 is then over twice the limit
    with pytest.raises(StudyInputError, match=r"bomb.png is refused as a decompression bomb"):
        data.verify_images([bomb])

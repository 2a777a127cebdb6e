"""Run folders hold relative paths (issue 26): a moved run folder still exports, resumes and reads its split,
and two identical runs in two folders write byte-identical outputs (the manifest's output hashes agree)."""
from __future__ import annotations

import shutil

from improve_lib import data
from improve_lib.core import folders, manifest
from improve_lib.diffusion import checkpoint_export
from improve_lib.runs import pipeline


def test_two_identical_runs_in_two_folders_write_identical_outputs(smoke_synthetic_run, tmp_path):
    other = pipeline.run_pipeline("smoke", run_dir=tmp_path / "a-much-longer-folder-name" / "run",
                                  only=["01", "02", "03", "04", "05"], progress=False)
    ours, theirs = manifest.load(smoke_synthetic_run)["outputs"], manifest.load(other)["outputs"]
    shared = sorted(k for k in theirs if manifest.load(other)["output_stages"][k][0][:2] in ("01", "02", "03", "04", "05"))
    assert len(shared) > 100 and "data/split.csv" in shared and "models/prototype/config.yaml" in shared
    assert [k for k in shared if ours.get(k) != theirs[k]] == []
    assert "a-much-longer" not in (other / "data" / "split.csv").read_text()


def test_a_moved_run_folder_exports_resumes_and_reads_its_images(smoke_synthetic_run, tmp_path):
    moved = tmp_path / "moved" / "elsewhere"
    shutil.copytree(smoke_synthetic_run, moved)
    table = data.read_split(moved)
    assert all(str(p).startswith(str(moved)) for p in table["path"]) and all(map(lambda p: p.is_file(),
                                                                                data.split_paths(moved, table)))
    out = checkpoint_export.export_checkpoint(moved, "prototype", out=tmp_path / "export")
    assert (out / "unet" / "config.json").is_file() and folders.foreign(out) == []
    before = manifest.load(moved)["outputs"]
    pipeline.run_pipeline("smoke", run_dir=moved, resume=True, progress=False)  # everything done: nothing reruns
    assert manifest.load(moved)["outputs"] == before

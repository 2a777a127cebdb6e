"""tools/external_test_set.py: an external test set carved from a larger copy of a dataset holds no excluded image,
file name or lesion, draws one image per lesion, and is accepted by notebook 06's reader."""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from improve_lib import data
from improve_lib.core.files import sha256_file


@pytest.fixture(scope="module")
def tool(load_tool):
    return load_tool("external_test_set")


def _split(folder: Path, dataset: str, tool) -> pd.DataFrame:
    """A run's split table over every image of ``folder`` (what external_test compares against)."""
    pool = tool.read_all(dataset, folder)
    return pool.assign(split="train")


def test_bone_marrow_leaves_out_excluded_images_by_hash_and_by_name(tool, bm_dir, tmp_path):
    excluded = tmp_path / "dev"
    for cls in ("BLA", "LYT"):
        (excluded / cls).mkdir(parents=True)
        for p in sorted((bm_dir / cls).glob("*.jpg"))[:40]:
            shutil.copy2(p, excluded / cls / p.name)
    renamed = sorted((bm_dir / "EOS").glob("*.jpg"))[0]  # the same bytes under another name
    (excluded / "EOS").mkdir()
    shutil.copy2(renamed, excluded / "EOS" / "copy.jpg")
    out = tmp_path / "external"
    assert tool.main(["--dataset", "bone_marrow", "--source", str(bm_dir), "--exclude", str(excluded),
                      "--per-class", "30", "--seed", "1", "--out", str(out), "--no-progress"]) == 0
    manifest = pd.read_csv(out / tool.MANIFEST)
    sizes = manifest.groupby("class_name").size()  # the subset's long tail (0-6 images) keeps what it has
    assert (sizes[sizes.index.isin(["ART", "BLA", "EOS", "LYT", "MON", "NGS", "NIF", "PMO"])] == 30).all()
    assert len(sizes) > 8 and (sizes <= 30).all()
    kept_out = {sha256_file(p) for p in excluded.rglob("*.jpg")}
    assert not set(manifest["sha256"]) & kept_out and renamed.name not in set(manifest["file"].map(lambda f: Path(f).name))
    assert all((out / f).is_file() and sha256_file(out / f) == h for f, h in zip(manifest["file"], manifest["sha256"]))
    ext = data.external_test("bone_marrow", out, _split(excluded, "bone_marrow", tool), ["BLA", "EOS", "LYT"])
    assert len(ext.table) == 90 and not ext.missing_classes  # the run's reader accepts it: nothing shared
    again = tmp_path / "again"
    tool.main(["--dataset", "bone_marrow", "--source", str(bm_dir), "--exclude", str(excluded), "--per-class", "30",
               "--seed", "1", "--out", str(again), "--no-progress"])
    assert pd.read_csv(again / tool.MANIFEST)["sha256"].tolist() == manifest["sha256"].tolist()  # seeded
    assert tool.main(["--dataset", "bone_marrow", "--source", str(bm_dir), "--exclude", str(excluded),
                      "--out", str(out), "--no-progress"]) == 2  # an existing folder is never written into
    assert pd.read_csv(out / tool.MANIFEST)["sha256"].tolist() == manifest["sha256"].tolist()


def test_ham10000_leaves_out_every_image_of_an_excluded_lesion(tool, ham_dir, tmp_path, capsys):
    meta = pd.read_csv(ham_dir / "HAM10000_metadata.csv", dtype=str)
    multi = meta[meta["dx"] == "df"].groupby("lesion_id").filter(lambda g: len(g) > 1)
    lesion = multi["lesion_id"].iloc[0]
    one_image = multi[multi["lesion_id"] == lesion].iloc[:1]  # only one of the lesion's images is excluded
    others = meta[meta["dx"] == "akiec"].iloc[:20]
    excluded = tmp_path / "dev"
    (excluded / "images").mkdir(parents=True)
    rows = pd.concat([one_image, others])
    rows.to_csv(excluded / "HAM10000_metadata.csv", index=False)
    for image_id in rows["image_id"]:
        shutil.copy2(ham_dir / "images" / f"{image_id}.jpg", excluded / "images" / f"{image_id}.jpg")
    out = tmp_path / "external"
    assert tool.main(["--dataset", "ham10000", "--source", str(ham_dir), "--exclude", str(excluded),
                      "--per-class", "200", "--out", str(out), "--no-progress"]) == 0
    chosen = pd.read_csv(out / "HAM10000_metadata.csv", dtype=str)
    assert lesion not in set(chosen["lesion_id"]) and not set(chosen["lesion_id"]) & set(others["lesion_id"])
    assert chosen["lesion_id"].is_unique  # one image per lesion
    assert (chosen["dx"] == "df").sum() == meta[meta["dx"] == "df"]["lesion_id"].nunique() - 1
    assert "fewer than --per-class" in capsys.readouterr().out
    ext = data.external_test("ham10000", out, _split(excluded, "ham10000", tool), ["akiec", "df"])
    assert set(ext.table["class_name"]) == {"akiec", "df"}

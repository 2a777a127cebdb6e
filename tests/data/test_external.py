"""An external test set (EXTERNAL_TEST_DIR, notebook 06): read in the dataset's own layout, refused when it shares an
image (by bytes) or a HAM10000 lesion with the run's split; its missing and extra classes named."""
from __future__ import annotations

import shutil

import pandas as pd
import pytest

from improve_lib import data
from improve_lib.core.errors import StudyInputError


def _ham_split(ham_dir, tmp_path):
    return data.build_split("ham10000", ham_dir, tmp_path / "run", 10, 5, 0, ["bcc", "mel", "nv"], 1, 32,
                            verify=False, progress=False)


def _ham_folder(ham_dir, out, image_ids):
    meta = pd.read_csv(ham_dir / "HAM10000_metadata.csv", dtype=str)
    (out / "images").mkdir(parents=True)
    rows = meta[meta["image_id"].isin(image_ids)]
    rows.to_csv(out / "HAM10000_metadata.csv", index=False)
    for i in rows["image_id"]:
        shutil.copy(next(ham_dir.glob(f"*/{i}.jpg")), out / "images" / f"{i}.jpg")
    return out


def test_ham10000_held_back_lesions_are_read_and_a_shared_lesion_is_refused(ham_dir, tmp_path):
    split = _ham_split(ham_dir, tmp_path)
    meta = pd.read_csv(ham_dir / "HAM10000_metadata.csv", dtype=str)
    held = meta[~meta["lesion_id"].isin(split.table["group"]) & meta["dx"].isin(["bcc", "mel", "akiec"])]
    held = held.groupby("dx").head(3)
    folder = _ham_folder(ham_dir, tmp_path / "external", held["image_id"])
    ext = data.external_test("ham10000", folder, split.table, split.class_names)
    assert sorted(ext.table["class_name"].unique()) == ["bcc", "mel"] and len(ext.table) == 6
    assert ext.missing_classes == ["nv"] and ext.left_out == {"akiec": 3}
    assert (ext.table["label"] == ext.table["class_name"].map(split.class_names.index)).all()
    assert any(p.name == "HAM10000_metadata.csv" for p in ext.input_files)
    # a lesion the split holds (here one of its own images; the lesion check comes before the bytes): refused
    shared = split.table["image_id"].iloc[0]
    other = _ham_folder(ham_dir, tmp_path / "shared_lesion", list(held["image_id"]) + [shared])
    with pytest.raises(StudyInputError, match=r"1 lesion\(s\) are also in the run's split"):
        data.external_test("ham10000", other, split.table, split.class_names)


def test_bone_marrow_an_image_of_the_split_under_another_name_is_refused(bm_dir, tmp_path):
    split = data.build_split("bone_marrow", bm_dir, tmp_path / "run", 10, 5, 0, ["LYT", "MON"], 10, 32,
                             verify=False, progress=False)
    folder = tmp_path / "external"
    used = set(split.table["path"])
    for cls in ("LYT", "ABE"):
        (folder / cls).mkdir(parents=True)
        for p in [p for p in sorted((bm_dir / cls).glob("*.jpg")) if str(p) not in used][:2]:
            shutil.copy(p, folder / cls / p.name)
    ext = data.external_test("bone_marrow", folder, split.table, split.class_names)
    assert list(ext.table["class_name"]) == ["LYT", "LYT"] and ext.missing_classes == ["MON"]
    assert list(ext.left_out) == ["ABE"]  # the subset holds one ABE image
    train_image = split.table[split.table["class_name"] == "MON"]["path"].iloc[0]
    (folder / "MON").mkdir()
    shutil.copy(train_image, folder / "MON" / "renamed.jpg")
    with pytest.raises(StudyInputError, match=r"1 image\(s\) are byte for byte images of the run's split"):
        data.external_test("bone_marrow", folder, split.table, split.class_names)
    with pytest.raises(StudyInputError, match="not DATASET=synthetic"):
        data.external_test("synthetic", folder, split.table, split.class_names)
    with pytest.raises(StudyInputError, match="does not exist"):
        data.external_test("bone_marrow", tmp_path / "nope", split.table, split.class_names)

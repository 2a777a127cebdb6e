"""Data layer: real subsets, splits, image loading and every kind of bad input."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from improve_lib import data
from improve_lib.core.errors import StudyInputError


def build_split(dataset, data_dir, run_dir, n_train, n_test, seed, classes=None, min_per_class=1, resolution=64, **kw):
    """``data.build_split`` with every class, no minimum class size and 64 px unless a test says otherwise."""
    return data.build_split(dataset, data_dir, run_dir, n_train, n_test, seed, classes, min_per_class, resolution, **kw)


def test_ham10000_split_by_lesion_and_counts(ham_dir, tmp_path):
    r = build_split("ham10000", ham_dir, tmp_path, n_train=100, n_test=50, seed=0)
    t = r.table
    assert list(t.columns[:5]) == data.SPLIT_COLUMNS
    train_groups = set(t.loc[t.split == "train", "group"])
    test_groups = set(t.loc[t.split == "test", "group"])
    assert not train_groups & test_groups, "a lesion is in both train and test"
    counts = t.groupby(["class_name", "split"]).size().unstack()
    # 150 single-image lesions per class: full quota; df (115 images / 73 lesions) and vasc fall short.
    for c in ["akiec", "bcc", "bkl", "mel", "nv"]:
        assert counts.loc[c, "train"] == 100 and counts.loc[c, "test"] == 50
    assert counts.loc["df", "test"] <= 50 and counts.loc["df", "train"] < 100
    assert r.summary.set_index("class_name").loc["df", "short"]
    assert r.class_names == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    assert sorted(t.label.unique()) == list(range(7))
    assert not list(tmp_path.iterdir()), "HAM10000 split must not write anything"


def test_ham10000_split_is_seeded(ham_dir, tmp_path):
    a = build_split("ham10000", ham_dir, tmp_path, 20, 10, seed=1, verify=False).table
    b = build_split("ham10000", ham_dir, tmp_path, 20, 10, seed=1, verify=False).table
    c = build_split("ham10000", ham_dir, tmp_path, 20, 10, seed=2, verify=False).table
    pd.testing.assert_frame_equal(a, b)
    assert set(a.path) != set(c.path)


def test_ham10000_alternative_folder_layout(ham_dir, tmp_path):
    """Users who downloaded the original archive have HAM10000_images_part_1/2."""
    meta = pd.read_csv(ham_dir / "HAM10000_metadata.csv")
    ids = sorted(p.stem for p in (ham_dir / "images_600x450").glob("*.jpg"))
    (tmp_path / "HAM10000_images_part_1").mkdir()
    (tmp_path / "HAM10000_images_part_2").mkdir()
    for i, image_id in enumerate(ids):
        part = "HAM10000_images_part_1" if i % 2 else "HAM10000_images_part_2"
        shutil.copy(ham_dir / "images_600x450" / f"{image_id}.jpg", tmp_path / part)
    meta[meta.image_id.isin(ids)].to_csv(tmp_path / "HAM10000_metadata.csv", index=False)
    r = build_split("ham10000", tmp_path, tmp_path / "run", 5, 3, seed=0)
    assert len(r.table) == 7 * 8
    assert r.table.path.str.contains("part_").all()


def test_bone_marrow_excludes_long_tail_visibly(bm_dir, tmp_path):
    r = build_split("bone_marrow", bm_dir, tmp_path, n_train=100, n_test=50, seed=0, min_per_class=20)
    assert r.class_names == ["ART", "BLA", "EOS", "LYT", "MON", "NGS", "NIF", "PMO"]
    excl = r.excluded.set_index("class_name")
    assert len(excl) == 16, "every requested paper class is listed"
    assert not excl.loc["EBO", "kept"] and excl.loc["EBO", "images"] == 4
    assert not excl.loc["BAS", "kept"] and excl.loc["BAS", "images"] == 0
    assert "MIN_PER_CLASS" in excl.loc["NGB", "reason"]
    assert (r.table.groupby("class_name").size() == 150).all()


def test_bone_marrow_nested_layout_and_no_usable_class(bm_dir, tmp_path):
    nested = tmp_path / "bm" / "LYT" / "0001"
    nested.mkdir(parents=True)
    for p in sorted((bm_dir / "LYT").glob("*.jpg"))[:6]:
        shutil.copy(p, nested)
    r = build_split("bone_marrow", tmp_path / "bm", tmp_path / "run", 3, 2, 0, classes=["LYT"], min_per_class=5)
    assert len(r.table) == 5
    with pytest.raises(StudyInputError, match="no class .* at least MIN_PER_CLASS=50"):
        build_split("bone_marrow", tmp_path / "bm", tmp_path / "run", 3, 2, 0, classes=["LYT"], min_per_class=50)


def test_synthetic_split_written_into_run(tmp_path):
    r = build_split("synthetic", None, tmp_path, n_train=3, n_test=2, seed=0, resolution=16, progress=False)
    assert len(r.class_names) >= 6
    assert (r.table.groupby(["class_name", "split"]).size().unstack()[["train", "test"]].values == [3, 2]).all()
    assert all(str(tmp_path) in p for p in r.table.path)
    out = data.write_split(r, tmp_path)
    back = data.read_split(tmp_path)
    assert list(back.path) == list(r.table.path) and out.name == "split.csv"


def test_medmnist_npz(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in [("train", 40), ("val", 5), ("test", 20)]:
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 28, 28, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 8).reshape(-1, 1)
    np.savez(tmp_path / "bloodmnist_28.npz", **arrays)
    r = build_split("bloodmnist", tmp_path, tmp_path / "run", n_train=4, n_test=2, seed=0)
    assert len(r.class_names) == 8 and len(r.table) == 8 * 6
    assert (r.table[r.table.split == "test"].group.str.startswith("test-")).all()
    assert data.load_image(r.table.path[0], 16).shape == (3, 16, 16)
    del arrays["test_labels"]
    np.savez(tmp_path / "dermamnist.npz", **arrays)
    with pytest.raises(StudyInputError, match="lacks key.*test_labels"):
        build_split("dermamnist", tmp_path, tmp_path / "run2", 4, 2, 0)


def test_load_image_center_crop(tmp_path):
    # A wide image: red left third, green middle, blue right third. The center crop keeps green.
    arr = np.zeros((30, 90, 3), dtype=np.uint8)
    arr[:, :30, 0] = 255
    arr[:, 30:60, 1] = 255
    arr[:, 60:, 2] = 255
    Image.fromarray(arr).save(tmp_path / "wide.png")
    t = data.load_image(tmp_path / "wide.png", 16)
    assert t.shape == (3, 16, 16) and t.dtype.is_floating_point
    assert 0.0 <= t.min() and t.max() <= 1.0
    assert t[1].mean() > 0.95 and t[0].mean() < 0.05 and t[2].mean() < 0.05


# ----------------------------------------------------------------------------- bad input

def _ham_copy(ham_dir, tmp_path, n=20):
    meta = pd.read_csv(ham_dir / "HAM10000_metadata.csv")
    (tmp_path / "images").mkdir()
    keep = meta.groupby("dx").head(n)
    for i in keep.image_id:
        shutil.copy(ham_dir / "images" / f"{i}.jpg", tmp_path / "images")
    keep.to_csv(tmp_path / "HAM10000_metadata.csv", index=False)
    return keep


def test_truncated_image_is_named(ham_dir, tmp_path):
    keep = _ham_copy(ham_dir, tmp_path)
    victim = tmp_path / "images" / f"{keep.image_id.iloc[0]}.jpg"
    victim.write_bytes(victim.read_bytes()[:400])
    with pytest.raises(StudyInputError, match=victim.name):
        build_split("ham10000", tmp_path, tmp_path / "run", 10, 10, 0)
    assert not (tmp_path / "run").exists()


def test_metadata_missing_column_is_named(ham_dir, tmp_path):
    keep = _ham_copy(ham_dir, tmp_path, n=2)
    keep.drop(columns="lesion_id").to_csv(tmp_path / "HAM10000_metadata.csv", index=False)
    with pytest.raises(StudyInputError, match="lesion_id"):
        build_split("ham10000", tmp_path, tmp_path / "run", 1, 1, 0)


def test_unknown_class_is_named(ham_dir, bm_dir, tmp_path):
    with pytest.raises(StudyInputError, match="melanomaX"):
        build_split("ham10000", ham_dir, tmp_path, 1, 1, 0, classes=["mel", "melanomaX"])
    with pytest.raises(StudyInputError, match="XYZ"):
        build_split("bone_marrow", bm_dir, tmp_path, 1, 1, 0, classes=["LYT", "XYZ"])
    with pytest.raises(StudyInputError, match="plasma"):
        build_split("synthetic", None, tmp_path, 1, 1, 0, classes=["plasma"])


def test_missing_data_dir_and_unknown_dataset(tmp_path):
    with pytest.raises(StudyInputError, match="does not exist"):
        build_split("ham10000", tmp_path / "nowhere", tmp_path, 1, 1, 0)
    with pytest.raises(StudyInputError, match="needs DATA_DIR"):
        build_split("bone_marrow", None, tmp_path, 1, 1, 0)
    with pytest.raises(StudyInputError, match="unknown DATASET"):
        build_split("imagenet", tmp_path, tmp_path, 1, 1, 0)
    with pytest.raises(StudyInputError, match="HAM10000_metadata.csv"):
        build_split("ham10000", tmp_path, tmp_path, 1, 1, 0)


def test_read_split_says_what_to_run(tmp_path):
    with pytest.raises(StudyInputError, match="01_explore_data"):
        data.read_split(tmp_path)


@pytest.mark.parametrize("dataset", ["ham10000", "bone_marrow"])
def test_validation_is_carved_from_the_training_images(dataset, ham_dir, bm_dir, tmp_path):
    """N_VALIDATION holds out whole groups of the very images N_VALIDATION=0 trains on: the test split is
    unchanged (the verdict's images), train + validation is the old train side, no group is on two sides."""
    src = ham_dir if dataset == "ham10000" else bm_dir
    plain = build_split(dataset, src, tmp_path, 100, 50, seed=3, min_per_class=20, verify=False)
    held = build_split(dataset, src, tmp_path, 100, 50, seed=3, min_per_class=20, verify=False, n_validation=20)
    a, b = plain.table, held.table
    assert set(a.split) == {"train", "test"} and set(b.split) == {"train", "validation", "test"}
    pd.testing.assert_frame_equal(a[a.split == "test"].reset_index(drop=True), b[b.split == "test"].reset_index(drop=True))
    assert set(a.loc[a.split == "train", "path"]) == set(b.loc[b.split != "test", "path"])
    sides = {s: set(b.loc[b.split == s, "group"]) for s in ("train", "validation", "test")}
    assert not (sides["train"] & sides["validation"] or sides["validation"] & sides["test"] or sides["train"] & sides["test"])
    per_class = b[b.split == "validation"].groupby("class_name").size()
    assert per_class.le(20).all() and per_class.ge(15).all(), per_class  # whole groups, never overshooting 20
    summary = held.summary.set_index("class_name")
    assert (summary["validation"] == per_class).all() and (summary["validation_wanted"] == 20).all()
    assert (summary["train"] + summary["validation"] == plain.summary.set_index("class_name")["train"]).all()


def test_validation_must_leave_training_images(ham_dir, tmp_path):
    for n in (-1, 100):
        with pytest.raises(StudyInputError, match="N_VALIDATION"):
            build_split("ham10000", ham_dir, tmp_path, 100, 50, seed=3, verify=False, n_validation=n)
    # a short class (df: 65 images left after 50 test images) can be carved whole: named, with what to lower
    with pytest.raises(StudyInputError, match=r"'df'.* have no training image left after N_TEST=50 test and "
                                              r"N_VALIDATION=70 validation images.*lower N_TEST or N_VALIDATION"):
        build_split("ham10000", ham_dir, tmp_path, 100, 50, seed=3, verify=False, n_validation=70)


def test_synthetic_validation_split_is_written_and_read_back(tmp_path):
    r = build_split("synthetic", None, tmp_path, 12, 4, seed=0, resolution=32, n_validation=3)
    data.write_split(r, tmp_path)
    t = data.read_split(tmp_path)
    assert t.groupby(["split", "class_name"]).size().unstack(0)[["train", "validation", "test"]].eq([9, 3, 4]).all().all()
    assert list(t.split.drop_duplicates()) == ["train", "validation", "test"]

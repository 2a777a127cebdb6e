"""Convolutional Prototype Learning: losses against hand computations, rules, errors, files, and a
run on real Bone Marrow images."""
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from improve_lib.conditioning.prototype_files import load_class_embeddings, load_prototypes, save_prototypes
from improve_lib.conditioning.prototypes import (class_embedding_from_prototypes, dce_loss, nearest_prototype_predict,
                                                 prototype_loss, prototype_metrics, squared_distances, train_prototypes)
from improve_lib.core.errors import StudyInputError
from improve_lib.core.notebook_parameters import notebook_defaults

SHARED_DATA = Path(os.environ.get("IMPROVE_SHARED_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data")
BONE_MARROW_CLASSES = ["ART", "BLA", "EOS", "LYT", "MON", "NGS", "NIF", "PMO"]


pytestmark = pytest.mark.usefixtures("one_thread")  # one torch thread: see conftest.one_thread


def cpl(x, y, names, **settings):
    """``train_prototypes`` with notebook 03's settings (the library has no defaults of its own)."""
    nb = notebook_defaults("03")
    defaults = dict(k=nb["K"], gamma=nb["GAMMA"], lam=nb["LAMBDA"], projection=nb["PROJECTION"],
                    epochs=nb["PROTO_EPOCHS"], lr=nb["PROTO_LR"], batch_size=nb["PROTO_BATCH_SIZE"], seed=nb["SEED"],
                    on_sphere=nb["PROTOTYPES_ON_SPHERE"] and settings.get("projection", "none") == "none",
                    progress=False)
    return train_prototypes(x, y, names, **{**defaults, **settings})


# Two classes, K=2, 2-d features. Class 0 prototypes (0,1), (1,0); class 1 prototypes (2,2), (3,0).
PROTOS = torch.tensor([[[0.0, 1.0], [1.0, 0.0]], [[2.0, 2.0], [3.0, 0.0]]])
FEATS = torch.tensor([[1.0, 1.0], [2.5, 0.5]])
LABELS = torch.tensor([0, 1])
# Squared distances by hand:
#   x1=(1,1): (0,1)->1, (1,0)->1, (2,2)->1+1=2, (3,0)->4+1=5
#   x2=(2.5,0.5): (0,1)->6.25+0.25=6.5, (1,0)->2.25+0.25=2.5, (2,2)->0.25+2.25=2.5, (3,0)->0.25+0.25=0.5
D_HAND = [[[1.0, 1.0], [2.0, 5.0]], [[6.5, 2.5], [2.5, 0.5]]]


def test_squared_distances_shape_and_values():
    d = squared_distances(FEATS, PROTOS)
    assert d.shape == (2, 2, 2)
    assert torch.allclose(d, torch.tensor(D_HAND))
    assert squared_distances(torch.zeros(5, 7), torch.zeros(3, 4, 7)).shape == (5, 3, 4)


def test_dce_loss_matches_hand_computation_k2():
    g = 0.7
    e = math.exp
    # p(y|x) = sum over own prototypes of exp(-g d) / sum over all prototypes
    p1 = (e(-g * 1) + e(-g * 1)) / (e(-g * 1) + e(-g * 1) + e(-g * 2) + e(-g * 5))
    p2 = (e(-g * 2.5) + e(-g * 0.5)) / (e(-g * 6.5) + e(-g * 2.5) + e(-g * 2.5) + e(-g * 0.5))
    expected = (-math.log(p1) - math.log(p2)) / 2
    assert dce_loss(FEATS, LABELS, PROTOS, gamma=g).item() == pytest.approx(expected, rel=1e-5)


def test_dce_loss_matches_hand_computation_k1():
    protos = torch.tensor([[[0.0, 1.0]], [[2.0, 0.0]]])
    feats = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    # x1=(0,0), label 0: d=(1, 4); x2=(1,1), label 1: d=(1, 2)
    g = 0.5
    l1 = -math.log(math.exp(-0.5) / (math.exp(-0.5) + math.exp(-2.0)))
    l2 = -math.log(math.exp(-1.0) / (math.exp(-0.5) + math.exp(-1.0)))
    assert dce_loss(feats, torch.tensor([0, 1]), protos, gamma=g).item() == pytest.approx((l1 + l2) / 2, rel=1e-5)


def test_dce_loss_is_stable_for_far_features():
    loss = dce_loss(torch.tensor([[1e4, 0.0]]), torch.tensor([1]), PROTOS, gamma=2.0)
    assert torch.isfinite(loss)


def test_prototype_loss_matches_hand_computation():
    # x1 label 0: min(1, 1) = 1; x2 label 1: min(2.5, 0.5) = 0.5; mean 0.75
    assert prototype_loss(FEATS, LABELS, PROTOS).item() == pytest.approx(0.75)


def test_class_embedding_is_prototype_nearest_class_mean():
    protos = torch.tensor([[[0.0, 0.0], [5.0, 5.0], [1.0, 0.0]],
                           [[9.0, 9.0], [-3.0, 0.0], [4.0, 4.0]]])
    means = torch.tensor([[1.2, 0.1], [4.5, 4.0]])  # nearest: class 0 -> (1,0); class 1 -> (4,4)
    table = class_embedding_from_prototypes(protos, means)
    assert torch.equal(table, torch.tensor([[1.0, 0.0], [4.0, 4.0]]))
    k1 = torch.randn(3, 1, 4)
    assert torch.equal(class_embedding_from_prototypes(k1, torch.randn(3, 4)), k1[:, 0])
    with pytest.raises(StudyInputError, match="class_means"):
        class_embedding_from_prototypes(protos, torch.zeros(3, 2))


def _gaussians(n_per_class, dim=6, classes=3, seed=0, spread=0.3, noise_seed=None):
    centres = np.random.default_rng(seed).normal(size=(classes, dim)) * 3
    rng = np.random.default_rng(seed + 1000 if noise_seed is None else noise_seed)
    x = np.concatenate([c + spread * rng.normal(size=(n_per_class, dim)) for c in centres]).astype(np.float32)
    return x, np.repeat(np.arange(classes), n_per_class)


def test_k_larger_than_class_size_names_class():
    x, y = _gaussians(5)
    x, y = x[:12], y[:12]  # class 2 keeps only 2 images
    with pytest.raises(StudyInputError, match=r"'c2': 2"):
        cpl(x, y, ["c0", "c1", "c2"], k=3, epochs=1)


def test_non_finite_and_bad_inputs_are_rejected():
    x, y = _gaussians(4)
    x[3, 1] = np.nan
    with pytest.raises(StudyInputError, match="non-finite"):
        cpl(x, y, ["a", "b", "c"], epochs=1)
    x, y = _gaussians(4)
    with pytest.raises(StudyInputError, match="labels"):
        cpl(x, y + 1, ["a", "b", "c"], epochs=1)
    with pytest.raises(StudyInputError, match="PROJECTION"):
        cpl(x, y, ["a", "b", "c"], projection="mlp", epochs=1)
    # settings are named as notebook 03's parameters, only the wrong ones
    with pytest.raises(StudyInputError, match=r"GAMMA=0 \(expected > 0\); PROTO_EPOCHS=0 \(expected >= 1\)$"):
        cpl(x, y, ["a", "b", "c"], gamma=0, epochs=0)


def test_training_is_deterministic_for_a_seed():
    x, y = _gaussians(10)
    runs = [cpl(x, y, ["a", "b", "c"], k=2, epochs=5, batch_size=8, seed=3)
            for _ in range(2)]
    assert torch.equal(runs[0].prototypes, runs[1].prototypes)
    assert runs[0].history == runs[1].history
    assert [h["epoch"] for h in runs[0].history] == [1, 2, 3, 4, 5]
    assert set(runs[0].history[0]) == {"epoch", "loss", "dce", "pl", "train_acc", "prototype_norm"}
    other = cpl(x, y, ["a", "b", "c"], k=2, epochs=5, batch_size=8, seed=4)
    assert not torch.equal(runs[0].prototypes, other.prototypes)


@pytest.mark.parametrize("projection,k", [("none", 1), ("none", 2), ("linear", 1)])
def test_cpl_separates_toy_gaussians(projection, k):
    x, y = _gaussians(40)
    xt, yt = _gaussians(40, noise_seed=7)  # same class centres, fresh samples
    res = cpl(x, y, ["a", "b", "c"], k=k, projection=projection, epochs=30)
    assert res.prototypes.shape == (3, k, 6)
    assert (res.projection is None) == (projection == "none")
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    pred = nearest_prototype_predict(xt, res.prototypes, res.projection)
    assert (pred == yt).mean() >= 0.99
    m = prototype_metrics(res, x, y, xt, yt)
    assert m["cpl"]["test_accuracy"] == pytest.approx((pred == yt).mean())
    assert m["class_means"]["test_accuracy"] >= 0.99
    assert np.trace(np.array(m["confusion_matrix_test"])) == int((pred == yt).sum())
    assert np.array(m["confusion_matrix_test"]).sum() == len(yt)
    for key in ("compactness_train", "compactness_test", "separation_min", "separation_mean",
                "separation_over_compactness"):
        assert np.isfinite(m["cpl"][key]) and np.isfinite(m["class_means"][key])


@pytest.mark.parametrize("projection", ["none", "linear"])
def test_save_load_round_trip(tmp_path, projection):
    x, y = _gaussians(6)
    names = ["blast", "eosinophil", "lymphocyte"]
    res = cpl(x, y, names, k=2, projection=projection, epochs=2)
    written = save_prototypes(tmp_path, res, names, "efficientnet-lite0", class_means=None)
    assert ("projection" in written) == (projection == "linear")
    protos, got_names, meta = load_prototypes(tmp_path / "prototypes" / "prototypes.safetensors")
    assert got_names == names and torch.equal(protos, res.prototypes)
    assert meta["encoder_id"] == "efficientnet-lite0" and meta["k"] == "2" and meta["projection"] == projection
    assert json.loads(meta["class_names"]) == names and "L2-normalised" in meta["feature_space"]
    table, got_names, meta2 = load_class_embeddings(tmp_path / "prototypes" / "class_embeddings.safetensors")
    assert got_names == names and table.shape == (3, 6)
    assert torch.equal(table, class_embedding_from_prototypes(res.prototypes, res.class_means))
    assert not list((tmp_path / "prototypes").glob("*.tmp*"))  # atomic writes leave no temp files
    with pytest.raises(StudyInputError, match="class_names"):
        save_prototypes(tmp_path, res, names[::-1], "efficientnet-lite0")


def test_load_rejects_non_finite_and_missing(tmp_path):
    from safetensors.torch import save_file

    bad = torch.zeros(2, 1, 3)
    bad[1, 0, 2] = float("inf")
    save_file({"prototypes": bad}, str(tmp_path / "p.safetensors"), metadata={"class_names": '["a", "b"]'})
    with pytest.raises(StudyInputError, match="non-finite"):
        load_prototypes(tmp_path / "p.safetensors")
    with pytest.raises(StudyInputError, match="not found"):
        load_class_embeddings(tmp_path / "absent.safetensors")
    save_file({"class_embeddings": torch.zeros(2, 3)}, str(tmp_path / "c.safetensors"),
              metadata={"class_names": '["a"]'})
    with pytest.raises(StudyInputError, match="class_names"):
        load_class_embeddings(tmp_path / "c.safetensors")


@pytest.mark.slow
def test_cpl_on_real_bone_marrow_beats_chance(tmp_path):
    """EfficientNet-Lite0 embeddings of 30 train + 15 test images per class (first files in sorted
    order, 8 classes): nearest-prototype test accuracy must clear chance (12.5 %) widely."""
    root = SHARED_DATA / "bone_marrow"
    if not root.is_dir():
        if os.environ.get("CI"):  # CI always has the shared data: a skip there would hide a failure
            raise FileNotFoundError(f"CI expects the shared development data at {root}")
        pytest.skip(f"real data not found at {root} (set IMPROVE_SHARED_DATA to the shared data folder)")
    from improve_lib.conditioning.embeddings import embed_paths
    from improve_lib.conditioning.encoders import load_encoder

    n_train, n_test = 30, 15
    train, test = [], []
    for c in BONE_MARROW_CLASSES:
        files = sorted((root / c).glob("*.jpg"))
        assert len(files) >= n_train + n_test, f"{c}: only {len(files)} images"
        train += files[:n_train]
        test += files[n_train:n_train + n_test]
    y_train = np.repeat(np.arange(8), n_train)
    y_test = np.repeat(np.arange(8), n_test)
    enc = load_encoder("efficientnet-lite0")
    vectors = embed_paths(train + test, enc, tmp_path / "cache", progress=False)
    x_train, x_test = vectors[:len(train)], vectors[len(train):]
    res = cpl(x_train, y_train, BONE_MARROW_CLASSES)
    m = prototype_metrics(res, x_train, y_train, x_test, y_test)
    print(f"\nBone Marrow, {enc.id}, {n_train}+{n_test}/class: CPL test accuracy "
          f"{m['cpl']['test_accuracy']:.3f}, class means {m['class_means']['test_accuracy']:.3f}, "
          f"chance {m['chance_accuracy']:.3f}")
    assert m["cpl"]["test_accuracy"] > 0.40


def test_class_means_as_class_embeddings(tmp_path):
    """CLASS_EMBEDDING="class_means": the table notebook 04 freezes is the class means, labelled so."""
    x, y = _gaussians(6)
    names = ["blast", "eosinophil", "lymphocyte"]
    res = cpl(x, y, names, k=1, epochs=2)
    save_prototypes(tmp_path, res, names, "efficientnet-lite0", class_embedding="class_means")
    table, _, meta = load_class_embeddings(tmp_path / "prototypes" / "class_embeddings.safetensors")
    assert torch.allclose(table, res.class_means) and not torch.allclose(table, res.prototypes[:, 0])
    assert "mean of f(x)" in meta["class_embedding_rule"]
    with pytest.raises(StudyInputError, match="CLASS_EMBEDDING must be one of"):
        save_prototypes(tmp_path, res, names, "efficientnet-lite0", class_embedding="medoids")


def test_prototypes_on_the_sphere_converge_when_epochs_double():
    """The class table notebook 04 freezes must not depend on how long CPL ran: on the sphere (notebook
    03's default) doubling PROTO_EPOCHS moves each row of the PCA-mapped table by under 5 % of its norm;
    free prototypes with the references' gamma = 1 keep growing and move it several times more."""
    from improve_lib.conditioning.class_table import class_table_rows

    rng = np.random.default_rng(3)
    centres = rng.normal(size=(4, 48))
    x = np.concatenate([c + 0.8 * rng.normal(size=(60, 48)) for c in centres]).astype(np.float32)
    y = np.repeat(np.arange(4), 60)
    feats = torch.nn.functional.normalize(torch.as_tensor(x), dim=1).numpy()

    def table(epochs, **kw):
        res = cpl(x, y, list("abcd"), epochs=epochs, **kw)
        return res, class_table_rows(res.prototypes[:, 0], "pca", 16, feats, seed=0)

    def change(a, b):
        return float(((a - b).norm(dim=1) / b.norm(dim=1)).max())

    (_, t100), (long, t200) = table(100), table(200)
    assert abs(long.history[-1]["prototype_norm"] - 1.0) < 1e-5
    assert change(t100, t200) < 0.05, change(t100, t200)
    (_, f100), (free, f200) = table(100, gamma=1.0, on_sphere=False), table(200, gamma=1.0, on_sphere=False)
    assert free.history[-1]["prototype_norm"] > 1.5
    assert change(f100, f200) > 2 * change(t100, t200)


def test_prototype_files_are_byte_reproducible(tmp_path):
    """Identical runs must give identical manifest hashes: safetensors writes its metadata in a random
    order, so the files are written with a sorted header."""
    x, y = _gaussians(6)
    names = ["blast", "eosinophil", "lymphocyte"]
    res = cpl(x, y, names, k=1, epochs=2)
    for run in ("a", "b"):
        save_prototypes(tmp_path / run, res, names, "efficientnet-lite0")
    for name in ("prototypes.safetensors", "class_embeddings.safetensors"):
        a, b = ((tmp_path / r / "prototypes" / name).read_bytes() for r in ("a", "b"))
        assert a == b, name
    protos, got, meta = load_prototypes(tmp_path / "a" / "prototypes" / "prototypes.safetensors")
    assert got == names and torch.equal(protos, res.prototypes) and meta["encoder_id"] == "efficientnet-lite0"

"""TSTR (improve_lib.metrics.tstr), bootstrap uncertainty (improve_lib.metrics.scores) and embedding-space fidelity
(improve_lib.metrics.fidelity).

Toy data only (16 px squares, a few hundred vectors): every test runs in seconds on a CPU.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import precision_recall_fscore_support

from improve_lib.core.errors import StudyInputError
from improve_lib.metrics import tstr
from improve_lib.metrics.fidelity import fidelity_table, kid, prdc_scores, prototype_consistency
from improve_lib.metrics.scores import (accuracy, bootstrap_ci, classification_scores, macro_f1, macro_precision,
                                        macro_recall, paired_bootstrap)
from improve_lib.metrics.tstr import build_classifier, predict, tstr_table

# The TSTR budget given in full (the library has no defaults of its own); the tests override what they vary.
BUDGET = dict(arch="small_cnn", epochs=1, batch_size=64, lr=1e-3, progress=False)


def train_classifier(x, y, num_classes, **settings):
    return tstr.train_classifier(x, y, num_classes, **{**BUDGET, "seed": 0, **settings})


def tstr_scores(sets, test_x, test_y, classes, **settings):
    return tstr.tstr_scores(sets, test_x, test_y, classes, **{**BUDGET, "seeds": [0], "n_boot": 100, **settings})

CLASSES = ["red", "green", "blue"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny convolutions and 200x200 kernels gain nothing from a second thread, and on a shared,
    busy 2-core machine two torch / OpenBLAS threads wait on each other (measured: 7-10x slower)."""
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- scores

def test_classification_scores_match_hand_computation():
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 1, 1, 2, 2]
    # per class: tp / predicted, tp / true
    p = [2 / 2, 1 / 2, 1 / 2]
    r = [2 / 3, 1 / 2, 1 / 1]
    f = [2 * a * b / (a + b) for a, b in zip(p, r)]  # 0.8, 0.5, 2/3
    s = classification_scores(y_true, y_pred, CLASSES)
    assert s["precision"] == pytest.approx(sum(p) / 3)
    assert s["recall"] == pytest.approx(sum(r) / 3)
    assert s["f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert s["accuracy"] == pytest.approx(4 / 6)
    assert s["per_class_f1"] == pytest.approx(dict(zip(CLASSES, f)))
    assert s["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    # the fast bootstrap metrics agree with the same hand numbers
    assert (macro_precision(y_true, y_pred), macro_recall(y_true, y_pred), macro_f1(y_true, y_pred)) == pytest.approx(
        (sum(p) / 3, sum(r) / 3, (0.8 + 0.5 + 2 / 3) / 3))


def test_fast_macro_metrics_agree_with_sklearn_including_unpredicted_classes():
    rng = np.random.default_rng(1)
    for _ in range(20):
        y_true = rng.integers(0, 4, 30)
        y_pred = np.where(rng.random(30) < 0.5, y_true, rng.integers(0, 5, 30))  # class 4 never true
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)
        assert (macro_precision(y_true, y_pred), macro_recall(y_true, y_pred), macro_f1(y_true, y_pred)) == \
            pytest.approx((p, r, f))


# ----------------------------------------------------------------------------- bootstrap

def test_bootstrap_ci_covers_true_accuracy_about_95_percent():
    rng = np.random.default_rng(0)
    n, reps, covered = 150, 100, 0
    y_true = np.repeat([0, 1, 2], n // 3)
    for rep in range(reps):
        correct = rng.random(n) < 0.7
        y_pred = np.where(correct, y_true, (y_true + 1) % 3)
        point, low, high = bootstrap_ci(y_true, y_pred, accuracy, n_boot=300, seed=rep)
        assert low <= point <= high
        covered += low <= 0.7 <= high
    assert 0.88 <= covered / reps <= 0.99


def test_bootstrap_ci_with_seeds_averages_the_metric():
    y_true = np.array([0, 0, 1, 1])
    preds = np.array([[0, 0, 1, 1], [0, 1, 1, 1]])  # accuracy 1.0 and 0.75
    point, low, high = bootstrap_ci(y_true, preds, accuracy, n_boot=50)
    assert point == pytest.approx(0.875) and low <= point <= high


def test_paired_bootstrap_identical_and_clearly_better():
    rng = np.random.default_rng(0)
    y_true = np.repeat(np.arange(3), 40)
    pred = np.where(rng.random(120) < 0.6, y_true, (y_true + 1) % 3)
    same = paired_bootstrap(y_true, pred, pred, macro_f1, n_boot=200, seed=0)
    assert same["diff"] == 0 and same["low"] == 0 and same["high"] == 0 and same["p_value"] == 1.0

    better = np.where(rng.random(120) < 0.95, y_true, (y_true + 1) % 3)
    res = paired_bootstrap(y_true, better, pred, macro_f1, n_boot=200, seed=0)
    assert res["diff"] > 0.2 and res["low"] > 0 and res["p_value"] < 0.02
    flipped = paired_bootstrap(y_true, pred, better, macro_f1, n_boot=200, seed=0)
    assert flipped["diff"] == pytest.approx(-res["diff"]) and flipped["high"] < 0 and flipped["p_value"] < 0.02


def test_empty_test_split_is_an_input_error():
    with pytest.raises(StudyInputError, match="empty"):
        bootstrap_ci([], [], accuracy, n_boot=10)
    with pytest.raises(StudyInputError, match="N_BOOT=0"):
        bootstrap_ci([0, 1], [0, 1], accuracy, n_boot=0)


# ----------------------------------------------------------------------------- embedding space

def test_prdc_identical_and_far_sets():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8))
    same = prdc_scores(x, x, nearest_k=5)
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0
    assert all(isinstance(v, float) for v in same.values())
    far = prdc_scores(x, x + 100.0, nearest_k=5)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    with pytest.raises(StudyInputError, match="6 real and 60 fake"):
        prdc_scores(x[:6], x, nearest_k=5)


def test_kid_near_zero_for_same_distribution_and_positive_when_shifted():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 16)), rng.normal(size=(300, 16))
    same_mean, same_std = kid(a, b, n_subsets=20, subset_size=200)
    shifted_mean, _ = kid(a, b + 1.0, n_subsets=20, subset_size=200)
    assert abs(same_mean) < 0.05 and same_std >= 0
    assert shifted_mean > 1.0 and shifted_mean > 20 * abs(same_mean)
    full_mean, full_std = kid(a[:50], b[:40])  # default subset = all 40 -> every subset the same size
    assert np.isfinite(full_mean) and full_std >= 0


def test_prototype_consistency_hand_checked():
    protos = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])  # [C=2, K=1, D=2]
    fake = np.array([[2.0, 0.1], [0.1, 3.0], [1.0, 0.2], [0.3, 1.0]])
    intended = np.array([0, 1, 1, 1])  # nearest: 0, 1, 0, 1 -> hits 1, 1, 0, 1
    out = prototype_consistency(fake, intended, protos, class_names=["a", "b"])
    assert out["overall"] == pytest.approx(0.75)
    assert out["per_class"] == pytest.approx({"a": 1.0, "b": 2 / 3})
    assert out["n_per_class"] == {"a": 1, "b": 3}


def test_fidelity_table_rows_and_columns():
    rng = np.random.default_rng(0)
    protos = np.eye(3, 6)[:, None, :]
    real = {n: np.eye(3, 6)[i] * 5 + rng.normal(scale=0.3, size=(20, 6)) for i, n in enumerate(CLASSES)}
    fakes = {"prototype": {n: v + rng.normal(scale=0.05, size=v.shape) for n, v in real.items()},
             "baseline": {"red": rng.normal(size=(20, 6)), "green": real["green"][:4]}}  # 4 < k + 2
    table = fidelity_table(real, fakes, protos, nearest_k=3, n_subsets=5)
    assert list(table["arm"]) == ["prototype"] * 4 + ["baseline"] * 3
    assert list(table["class_name"])[-3:] == ["red", "green", "all"]
    for col in ("precision", "recall", "density", "coverage", "kid_mean", "kid_std", "prototype_consistency", "note"):
        assert col in table
    proto_all = table[(table.arm == "prototype") & (table.class_name == "all")].iloc[0]
    assert proto_all.prototype_consistency == 1.0 and proto_all.precision > 0.9
    short = table[(table.arm == "baseline") & (table.class_name == "green")].iloc[0]
    assert np.isnan(short.precision) and "needs" in short.note and np.isfinite(short.kid_mean)


# ----------------------------------------------------------------------------- TSTR

def squares(n_per_class: int, seed: int, noise: float = 0.1, res: int = 16):
    """Coloured squares at random places on grey: class = colour (red, green, blue)."""
    g = torch.Generator().manual_seed(seed)
    images, labels = [], []
    for c in range(3):
        for _ in range(n_per_class):
            img = torch.full((3, res, res), 0.5)
            x0, y0 = torch.randint(0, res - 8, (2,), generator=g).tolist()
            img[:, y0:y0 + 8, x0:x0 + 8] = 0.1
            img[c, y0:y0 + 8, x0:x0 + 8] = 0.9
            images.append((img + noise * torch.randn(img.shape, generator=g)).clamp(0, 1))
            labels.append(c)
    return torch.stack(images), np.array(labels)


def test_tstr_end_to_end_three_sets_two_seeds():
    test_x, test_y = squares(10, seed=99)
    sets = {"real": squares(20, 1), "prototype": squares(20, 2, noise=0.2), "baseline": squares(20, 3, noise=0.4)}
    res = tstr_scores(sets, test_x, test_y, CLASSES, arch="small_cnn", seeds=[0, 1], epochs=2, batch_size=16,
                      lr=3e-3, n_boot=100, progress=False)
    table = tstr_table(res)
    assert list(table.index) == ["baseline", "prototype", "real"]
    for m in ("precision", "recall", "f1"):
        assert table[m].str.match(r"^\d+\.\d\d \[\d+\.\d\d, \d+\.\d\d\]$").all()
        assert ((table[f"{m}_low"] <= table[f"{m}_mean"]) & (table[f"{m}_mean"] <= table[f"{m}_high"])).all()
    assert (table["n_seeds"] == 2).all()
    real = res["sets"]["real"]
    assert len(real["per_seed"]) == 2 and np.array(real["predictions"]).shape == (2, 30)
    assert np.sum(real["confusion_matrix"]) == 60 and set(real["per_class_f1"]) == set(CLASSES)
    cmp = res["comparison"]
    assert (cmp["a"], cmp["b"]) == ("prototype", "baseline") and 0 < cmp["p_value"] <= 1
    assert cmp["low"] <= cmp["diff"] <= cmp["high"]
    json.loads(json.dumps(res))  # the notebook writes it to metrics/ as plain JSON


def test_training_is_deterministic_for_a_seed():
    x, y = squares(8, seed=5)
    preds = [predict(train_classifier(x, y, 3, arch="small_cnn", epochs=1, batch_size=8, seed=3, progress=False,
                                      device="cpu"), x) for _ in range(2)]
    state = torch.random.get_rng_state()
    train_classifier(x, y, 3, arch="small_cnn", epochs=1, batch_size=8, seed=4, progress=False, device="cpu")
    assert np.array_equal(*preds)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG is left alone


@pytest.mark.parametrize("arch,res", [("resnet18", 16), ("resnet18", 64), ("resnext50_32x4d", 16)])
def test_torchvision_backbones_adapt_stem_and_head(arch, res):
    model = build_classifier(arch, 5, res).eval()
    assert model.net.fc.out_features == 5
    small = res <= 32
    assert (model.net.conv1.stride == (1, 1)) == small and isinstance(model.net.maxpool, torch.nn.Identity) == small
    with torch.no_grad():
        assert model(torch.rand(2, 3, res, res)).shape == (2, 5)


def test_weights_path_loads_matching_backbone_and_rejects_other_arch(tmp_path):
    from safetensors.torch import save_file

    donor = build_classifier("small_cnn", 7, 16).net  # another head size: fc.* is ignored
    good = tmp_path / "small.pth"
    torch.save({"state_dict": donor.state_dict()}, good)
    loaded = build_classifier("small_cnn", 3, 16, weights_path=good).net
    assert torch.equal(loaded.features[0].weight, donor.features[0].weight)

    other = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in build_classifier("resnet18", 3, 16).net.state_dict().items()}, str(other))
    x, y = squares(2, seed=0)
    with pytest.raises(StudyInputError, match=r"resnet18\.safetensors.*small_cnn.*missing.*features\.0\.weight"):
        train_classifier(x, y, 3, arch="small_cnn", epochs=1, weights_path=other, progress=False)
    with pytest.raises(StudyInputError, match="not found"):
        build_classifier("small_cnn", 3, 16, weights_path=tmp_path / "nope.pt")


def test_tstr_rejects_empty_test_split_and_bad_images():
    x, y = squares(2, seed=0)
    with pytest.raises(StudyInputError, match="test split is empty"):
        tstr_scores({"real": (x, y)}, torch.zeros(0, 3, 16, 16), [], CLASSES, arch="small_cnn", epochs=1,
                    progress=False)
    with pytest.raises(StudyInputError, match=r"\[0, 1\]"):
        tstr_scores({"real": (x * 2 - 1, y)}, x, y, CLASSES, arch="small_cnn", epochs=1, progress=False)
    with pytest.raises(StudyInputError, match=r"TSTR classifier: EVAL_LR=0\.0 \(expected > 0\)$"):
        tstr_scores({"real": (x, y)}, x, y, CLASSES, arch="small_cnn", epochs=1, lr=0.0, progress=False)


def test_pretrained_efficientnet_lite0_classifier_offline():
    """The offline ImageNet-pretrained TSTR classifier: packaged weights, own input scaling, upsampling,
    a new head; it trains and the table says which classifier made it."""
    from improve_lib.conditioning.efficientnet_lite0 import efficientnet_lite0_imagenet

    model = build_classifier("efficientnet_lite0", 3, 16)
    ref = efficientnet_lite0_imagenet()
    assert torch.equal(model.net.backbone._conv_stem.weight, ref._conv_stem.weight)  # ImageNet weights loaded
    assert model.input_size == 128 and model.net.fc.out_features == 3
    x, y = squares(2, seed=0)
    res = tstr_scores({"real": (x, y)}, x, y, CLASSES, arch="efficientnet_lite0", epochs=1, batch_size=6)
    assert tstr_table(res).loc["real", "classifier"].startswith("efficientnet_lite0, ImageNet-pretrained")
    with pytest.raises(StudyInputError, match="CLASSIFIER_WEIGHTS"):
        build_classifier("efficientnet_lite0", 3, 16, weights_path="x.pt")

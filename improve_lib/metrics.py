"""Evaluation of generated images without experts: TSTR with uncertainty, fidelity and diversity.

IMPROVE Tables 5 and 6 report "train on synthetic, test on real" (TSTR): a ResNeXt-50 trained on
each arm's generated images, tested on 50 real images per class, scored by macro precision, recall
and F1 -- one number each. This module produces the same numbers with their uncertainty, plus
human-free proxies measured in the run's embedding space.

Decisions recorded here (the notebooks cite them):

* **Classifier.** ``resnext50_32x4d`` (the paper's) and ``resnet18`` come from torchvision, trained
  from scratch unless ``weights_path`` names a local ImageNet state dict (nothing is downloaded).
  For inputs of 32 px or less the stem keeps its 7x7 conv1 (so ImageNet weights still load) but with
  stride 1 and without the max-pool: the standard stem divides 32 px by 4 before the first block and
  leaves a 1x1 map after layer4. Above 32 px (the paper's 64 px) the standard stem is kept.
  ``small_cnn`` is a compact CNN (4 conv blocks 32-64-128-256 with BN, global pooling) for CPU demos.
  Every model takes RGB in [0, 1] and normalises with the ImageNet mean/std inside itself.
* **Identical budget.** Every training set gets the same architecture, epochs, batch size, AdamW
  (weight decay 0.05), a per-step cosine schedule from ``lr`` to 0 without warm-up, and the same
  augmentation: random horizontal and vertical flips (cells and dermoscopy have no canonical
  orientation), a random zoom-in crop of side 85-100 % and a shift of up to 10 % of the image,
  done with one ``affine_grid``/``grid_sample`` (reflection padding) per batch. One seed fixes the
  initial weights (under ``torch.random.fork_rng``, so the caller's RNG is untouched), shuffling and
  augmentation (one ``torch.Generator``): CPU training is deterministic for a seed.
* **Macro averages** run over the classes present in ``y_true`` or ``y_pred`` (scikit-learn's
  default, ``zero_division=0``); per-class F1 and the confusion matrix list every class.
* **Bootstrap.** Percentile bootstrap over test images, *stratified by class* by default: each
  class's test images are resampled within the class, because the test split has a fixed number of
  images per class by design (50 in the paper), so the class mix is not a source of variance.
  With several seeds, each resample scores every seed's predictions on the same indices and the
  seed-averaged metric is what the interval is taken over: the interval covers test-set sampling of
  the seed-averaged score; the std over seeds (ddof=1) is reported beside it for training noise.
* **Paired comparison.** Both arms are scored on the same resampled indices; the two-sided p-value
  is ``2 * (count + 1) / (n_boot + 1)`` where ``count`` is the number of bootstrap differences on the
  other side of 0 from the observed difference (or at 0), capped at 1. The add-one keeps a finite
  resample from reporting p = 0: the smallest reportable p is ``2 / (n_boot + 1)``. An observed
  difference of exactly 0 gives p = 1.
* **PRDC** (Naeem et al. 2020) through ``prdc.compute_prdc`` (0.2: returns numpy floats, prints the
  set sizes -- silenced here, and needs at least ``nearest_k + 2`` vectors per set because it asks
  for the (k+1)-th smallest distance including the point itself).
* **KID** (Binkowski et al. 2018): unbiased MMD^2 with the kernel ``(x.y/d + 1)^3`` averaged over
  ``n_subsets`` random subsets of ``min(1000, n_real, n_fake)`` vectors per set (without
  replacement); the unbiased estimator has no small-sample bias (it can be slightly negative), which
  FID has. When the subset is the whole set, every subset is the same and std is 0.
* **Embedding space for the fidelity table.** ``normalize=True`` (default) maps every vector to
  ``sqrt(D) * x / ||x||``: the L2-normalised space the prototypes live in (see
  ``improve_lib.prototypes``), scaled so that KID's ``x.y/d`` is the cosine similarity. PRDC is
  unchanged by the common scale.
* No Inception FID: its weights cannot be downloaded here, and a torchvision Inception is not the
  TF-FID network, so its numbers would not compare with published FIDs.
"""
from __future__ import annotations

import contextlib
import io
import math
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from improve_lib.errors import StudyInputError

ARCHS = ("resnext50_32x4d", "resnet18", "small_cnn")
SMALL_STEM_MAX_RESOLUTION = 32
WEIGHT_DECAY = 0.05
AUGMENT = {"hflip": True, "vflip": True, "min_crop": 0.85, "max_shift": 0.10}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TABLE_ORDER = ("baseline", "prototype", "real")
METRICS = ("precision", "recall", "f1")


# ----------------------------------------------------------------------------- classifiers

class SmallCNN(nn.Module):
    """Four conv blocks (3x3 conv, BN, ReLU; 2x2 max-pool after the first three), global average
    pooling and a linear head ``fc``: about 0.4M parameters, trains in seconds on a CPU."""

    def __init__(self, num_classes: int, widths: Sequence[int] = (32, 64, 128, 256)):
        super().__init__()
        layers, c_in = [], 3
        for i, c_out in enumerate(widths):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


class TSTRClassifier(nn.Module):
    """A backbone with a ``num_classes`` head that takes RGB images in [0, 1] ([N, 3, R, R]) and
    normalises them with the ImageNet mean/std itself; ``net`` is the backbone (torchvision layout)."""

    def __init__(self, net: nn.Module, arch: str, num_classes: int, resolution: int):
        super().__init__()
        self.net = net
        self.arch, self.num_classes, self.resolution = arch, num_classes, resolution
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.history: list[dict] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def _load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    from .io import load_state_dict_file

    return load_state_dict_file(path, "CLASSIFIER_WEIGHTS")


def _load_backbone_weights(net: nn.Module, path, arch: str) -> None:
    """Strict load of everything but the ``fc`` head; a mismatch names the file and some keys."""
    path = Path(path)
    state = {k: v for k, v in _load_state_dict_file(path).items() if not k.startswith("fc.")}
    own = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:4]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:4]})")
        if shapes:
            parts.append(f"{len(shapes)} with other shapes (e.g. "
                         + ", ".join(f"{k}: file {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in shapes[:3])
                         + ")")
        raise StudyInputError(
            f"weights_path {path} does not match arch={arch!r} (all keys but fc.* must match): " + "; ".join(parts))
    net.load_state_dict(state, strict=False)


def build_classifier(arch: str, num_classes: int, resolution: int, weights_path=None) -> TSTRClassifier:
    """The TSTR classifier for ``arch`` (one of ``ARCHS``) with a ``num_classes`` head, adapted to
    ``resolution`` px inputs (small stem at <= 32 px, see module docstring), optionally initialised
    from a local backbone state dict ``weights_path`` (all keys but ``fc.*`` must match)."""
    if arch not in ARCHS:
        raise StudyInputError(f"arch={arch!r}: expected one of {ARCHS}")
    if not (isinstance(num_classes, (int, np.integer)) and num_classes >= 2):
        raise StudyInputError(f"num_classes={num_classes!r}: expected an integer >= 2")
    if arch == "small_cnn":
        net = SmallCNN(int(num_classes))
    else:
        import torchvision

        net = getattr(torchvision.models, arch)(weights=None)
        if resolution <= SMALL_STEM_MAX_RESOLUTION:
            net.conv1.stride = (1, 1)
            net.maxpool = nn.Identity()
    if weights_path is not None:
        _load_backbone_weights(net, weights_path, arch)
    if arch != "small_cnn":
        net.fc = nn.Linear(net.fc.in_features, int(num_classes))
    return TSTRClassifier(net, arch, int(num_classes), int(resolution))


def _check_images(images, name: str) -> torch.Tensor:
    x = torch.as_tensor(images)
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != x.shape[3]:
        raise StudyInputError(f"{name}: expected images [N, 3, R, R], got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise StudyInputError(f"{name}: no images (expected at least one)")
    if not x.is_floating_point():
        raise StudyInputError(f"{name}: expected float images in [0, 1], got dtype {x.dtype}")
    lo, hi = float(x.min()), float(x.max())
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < -1e-3 or hi > 1 + 1e-3:
        raise StudyInputError(f"{name}: expected values in [0, 1], found [{lo:.3g}, {hi:.3g}]"
                              " (diffusion outputs in [-1, 1] need (x + 1) / 2)")
    return x.float()


def _check_labels(labels, n: int, num_classes: int, name: str) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n,) or (n and not np.issubdtype(y.dtype, np.integer)):
        raise StudyInputError(f"{name}: expected {n} integer labels, got shape {y.shape} dtype {y.dtype}")
    if n and (y.min() < 0 or y.max() >= num_classes):
        raise StudyInputError(f"{name}: labels must lie in 0..{num_classes - 1}, found {y.min()}..{y.max()}")
    return y.astype(np.int64)


def augment_batch(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random flips, zoom-in crop and shift (``AUGMENT``) of a batch [B, 3, R, R], drawn from ``gen``
    (a CPU generator, so the same seed gives the same augmentation on any device)."""
    b = x.shape[0]
    u = torch.rand(b, 5, generator=gen)
    sx = torch.where(u[:, 0] < 0.5, -1.0, 1.0) if AUGMENT["hflip"] else torch.ones(b)
    sy = torch.where(u[:, 1] < 0.5, -1.0, 1.0) if AUGMENT["vflip"] else torch.ones(b)
    scale = AUGMENT["min_crop"] + (1 - AUGMENT["min_crop"]) * u[:, 2]
    # grid coordinates span [-1, 1], so a shift of f of the image is 2f; reflection fills the edge
    shift = (u[:, 3:5] * 2 - 1) * 2 * AUGMENT["max_shift"]
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = scale * sx, scale * sy
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _default_device(device) -> torch.device:
    return torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")


def train_classifier(images, labels, num_classes: int, arch: str = "resnext50_32x4d", epochs: int = 30,
                     batch_size: int = 64, lr: float = 1e-3, seed: int = 0, weights_path=None,
                     progress: bool = True, device=None) -> TSTRClassifier:
    """Train a TSTR classifier on ``images`` [N, 3, R, R] float in [0, 1] with int ``labels`` [N] in
    0..num_classes-1: AdamW (weight decay ``WEIGHT_DECAY``), per-step cosine schedule, cross entropy,
    ``augment_batch`` on every batch. Deterministic for ``seed`` on CPU. ``device`` defaults to CUDA
    when available. Returns the model in eval mode; ``model.history`` holds per-epoch mean loss and
    seconds."""
    x = _check_images(images, "train images")
    y = torch.as_tensor(_check_labels(labels, x.shape[0], num_classes, "train labels"))
    # named as notebook 06's parameters, since that is where a user sets them
    bad = [f"{name}={value!r} (expected {rule})" for name, value, ok, rule in (
        ("EVAL_EPOCHS", epochs, epochs >= 1, ">= 1"), ("EVAL_BATCH_SIZE", batch_size, batch_size >= 1, ">= 1"),
        ("EVAL_LR", lr, lr > 0, "> 0")) if not ok]
    if bad:
        raise StudyInputError("TSTR classifier: " + "; ".join(bad))
    dev = _default_device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_classifier(arch, num_classes, x.shape[-1], weights_path)
    model.to(dev).train()
    x, y = x.to(dev), y.to(dev)
    gen = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    # A trailing batch of one breaks BatchNorm where a map is 1x1 (ResNets at small sizes): drop it.
    n_batches = max(1, n // batch_size + (1 if n % batch_size >= 2 else 0))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=WEIGHT_DECAY)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * n_batches)
    bar = range(epochs)
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(bar, desc=f"TSTR {arch}", unit="epoch", leave=False)
    for epoch in bar:
        t0, total, seen = time.perf_counter(), 0.0, 0
        order = torch.randperm(n, generator=gen)
        for idx in order.split(batch_size)[:n_batches]:
            idx = idx.to(dev)
            loss = F.cross_entropy(model(augment_batch(x[idx], gen)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, seen = total + loss.item() * len(idx), seen + len(idx)
        model.history.append({"epoch": epoch + 1, "loss": total / seen, "seconds": time.perf_counter() - t0})
        if progress:
            bar.set_postfix(loss=f"{total / seen:.3f}")
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, images, batch_size: int = 256) -> np.ndarray:
    """Predicted class indices [N] (int64) of ``model`` for ``images`` [N, 3, R, R] in [0, 1]."""
    x = _check_images(images, "images to predict")
    model.eval()
    dev = next(model.parameters()).device
    out = [model(b.to(dev)).argmax(1).cpu() for b in x.split(batch_size)]
    return torch.cat(out).numpy().astype(np.int64)


# ----------------------------------------------------------------------------- scores

def _labels_and_confusion(y_true, y_pred) -> np.ndarray:
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    k = int(max(y_true.max(initial=0), y_pred.max(initial=0))) + 1
    return np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)


def _macro_from_confusion(cm: np.ndarray) -> dict[str, float]:
    """Macro P/R/F1 over classes present in truth or prediction, zero_division=0 (as scikit-learn)."""
    tp = np.diag(cm).astype(float)
    n_true, n_pred = cm.sum(1).astype(float), cm.sum(0).astype(float)
    present = (n_true + n_pred) > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(n_pred > 0, tp / n_pred, 0.0)
        r = np.where(n_true > 0, tp / n_true, 0.0)
        f = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    total = cm.sum()
    return {"precision": float(p[present].mean()), "recall": float(r[present].mean()),
            "f1": float(f[present].mean()), "accuracy": float(tp.sum() / total) if total else 0.0}


def macro_precision(y_true, y_pred) -> float:
    """Macro precision (scikit-learn ``average="macro"``, ``zero_division=0``), fast for bootstraps."""
    return _macro_from_confusion(_labels_and_confusion(y_true, y_pred))["precision"]


def macro_recall(y_true, y_pred) -> float:
    """Macro recall (scikit-learn ``average="macro"``, ``zero_division=0``), fast for bootstraps."""
    return _macro_from_confusion(_labels_and_confusion(y_true, y_pred))["recall"]


def macro_f1(y_true, y_pred) -> float:
    """Macro F1 (mean of per-class F1; scikit-learn ``average="macro"``, ``zero_division=0``)."""
    return _macro_from_confusion(_labels_and_confusion(y_true, y_pred))["f1"]


def accuracy(y_true, y_pred) -> float:
    """Share of correct predictions."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float((y_true == y_pred).mean()) if len(y_true) else 0.0


METRIC_FNS: dict[str, Callable] = {"precision": macro_precision, "recall": macro_recall, "f1": macro_f1,
                                   "accuracy": accuracy}


def classification_scores(y_true, y_pred, class_names: Sequence[str]) -> dict:
    """Macro precision / recall / F1 (scikit-learn, ``zero_division=0``, over the classes present in
    truth or prediction), accuracy, per-class F1 (dict by class name, every class) and the confusion
    matrix (rows = true class, columns = predicted, every class; list of lists)."""
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

    class_names = list(class_names)
    c = len(class_names)
    y_true = _check_labels(y_true, len(np.asarray(y_true)), c, "y_true")
    y_pred = _check_labels(y_pred, len(y_true), c, "y_pred")
    if len(y_true) == 0:
        raise StudyInputError("y_true: the test split is empty (expected real test images)")
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)
    per_class = f1_score(y_true, y_pred, labels=list(range(c)), average=None, zero_division=0)
    return {
        "precision": float(p), "recall": float(r), "f1": float(f),
        "accuracy": float((y_true == y_pred).mean()),
        "per_class_f1": {name: float(v) for name, v in zip(class_names, per_class)},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=list(range(c))).tolist(),
        "n": int(len(y_true)),
    }


# ----------------------------------------------------------------------------- bootstrap

def bootstrap_indices(y_true, n_boot: int, seed: int = 0, stratified: bool = True) -> np.ndarray:
    """``n_boot`` resamples (with replacement) of the test indices, [n_boot, N]; ``stratified``
    resamples each class's indices within the class, keeping the per-class counts fixed."""
    y = np.asarray(y_true)
    if len(y) == 0:
        raise StudyInputError("y_true: the test split is empty (expected real test images)")
    if n_boot < 1:
        raise StudyInputError(f"N_BOOT={n_boot}: expected >= 1 bootstrap resamples")
    rng = np.random.default_rng(seed)
    if not stratified:
        return rng.integers(0, len(y), size=(n_boot, len(y)))
    out = np.empty((n_boot, len(y)), dtype=np.int64)
    for cls in np.unique(y):
        members = np.flatnonzero(y == cls)
        out[:, members] = members[rng.integers(0, len(members), size=(n_boot, len(members)))]
    return out


def _as_pred_matrix(y_pred, n: int, name: str) -> np.ndarray:
    p = np.asarray(y_pred)
    p = p[None, :] if p.ndim == 1 else p
    if p.ndim != 2 or p.shape[1] != n or p.shape[0] == 0:
        raise StudyInputError(
            f"{name}: expected predictions [N] or [seeds, N] with N={n}, got shape {np.shape(y_pred)}")
    return p


def _seed_mean(metric_fn, y_true, preds: np.ndarray, idx: np.ndarray | None = None) -> float:
    if idx is None:
        return float(np.mean([metric_fn(y_true, p) for p in preds]))
    yt = y_true[idx]
    return float(np.mean([metric_fn(yt, p[idx]) for p in preds]))


def _boot_stats(y_true, preds, metric_fn, idx) -> np.ndarray:
    return np.array([_seed_mean(metric_fn, y_true, preds, i) for i in idx])


def bootstrap_ci(y_true, y_pred, metric_fn: Callable = macro_f1, n_boot: int = 1000, alpha: float = 0.05,
                 seed: int = 0, stratified: bool = True) -> tuple[float, float, float]:
    """Percentile bootstrap CI of ``metric_fn(y_true, y_pred)`` over test images.

    ``y_pred`` is [N] or [seeds, N]; with several seeds the metric is the mean over seeds, each seed
    scored on the same resampled indices. Returns ``(point, low, high)`` with the point on the full
    test set and ``low, high`` the ``alpha/2`` and ``1 - alpha/2`` percentiles."""
    y_true = np.asarray(y_true)
    preds = _as_pred_matrix(y_pred, len(y_true), "y_pred")
    idx = bootstrap_indices(y_true, n_boot, seed, stratified)
    stats = _boot_stats(y_true, preds, metric_fn, idx)
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return _seed_mean(metric_fn, y_true, preds), float(low), float(high)


def paired_bootstrap(y_true, pred_a, pred_b, metric_fn: Callable = macro_f1, n_boot: int = 1000, seed: int = 0,
                     alpha: float = 0.05, stratified: bool = True) -> dict:
    """Paired bootstrap of ``metric(a) - metric(b)``: both arms are scored on the same resampled
    test indices (predictions [N] or [seeds, N], seed-averaged). Returns ``diff`` (full test set),
    the percentile interval ``low, high``, and the two-sided ``p_value`` = 2 * (count + 1) /
    (n_boot + 1), capped at 1, where count = bootstrap differences at or across 0 from ``diff``."""
    y_true = np.asarray(y_true)
    a = _as_pred_matrix(pred_a, len(y_true), "pred_a")
    b = _as_pred_matrix(pred_b, len(y_true), "pred_b")
    idx = bootstrap_indices(y_true, n_boot, seed, stratified)
    diffs = _boot_stats(y_true, a, metric_fn, idx) - _boot_stats(y_true, b, metric_fn, idx)
    diff = _seed_mean(metric_fn, y_true, a) - _seed_mean(metric_fn, y_true, b)
    low, high = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    if diff == 0:
        p = 1.0
    else:
        count = int((diffs <= 0).sum()) if diff > 0 else int((diffs >= 0).sum())
        p = min(1.0, 2 * (count + 1) / (n_boot + 1))
    return {"diff": float(diff), "low": float(low), "high": float(high), "p_value": float(p),
            "n_boot": int(n_boot), "alpha": float(alpha)}


# ----------------------------------------------------------------------------- TSTR

def tstr_scores(train_sets: Mapping[str, tuple], test_images, test_labels, class_names: Sequence[str],
                arch: str = "resnext50_32x4d", seeds: Sequence[int] = (0,), epochs: int = 30, batch_size: int = 64,
                lr: float = 1e-3, n_boot: int = 1000, progress: bool = True, weights_path=None, device=None,
                alpha: float = 0.05, boot_seed: int = 0, compare: tuple[str, str] = ("prototype", "baseline")) -> dict:
    """Train one classifier per (training set, seed) with the same budget and score each on the same
    real test split (IMPROVE Tables 5, 6).

    ``train_sets`` maps a name ("baseline", "prototype", "real", ...) to ``(images [N,3,R,R] in
    [0,1], labels [N])``. Returns a JSON-ready dict: ``class_names``, ``n_test``, ``budget``, and per
    set under ``sets[name]``: ``per_seed`` (classification_scores + seed), ``mean`` / ``std`` (ddof=1
    when > 1 seed) over seeds of precision/recall/F1/accuracy, ``ci`` (metric -> [point, low, high],
    bootstrap of the seed-averaged metric, same resamples for every set), ``per_class_f1`` (mean
    over seeds), ``confusion_matrix`` (summed over seeds), ``predictions`` [seeds][N]. ``comparison``
    is ``paired_bootstrap`` of macro F1 for ``compare[0]`` minus ``compare[1]`` when both exist."""
    class_names = list(class_names)
    c = len(class_names)
    x_test = torch.as_tensor(test_images)
    if x_test.ndim == 0 or x_test.shape[0] == 0:
        raise StudyInputError("test_images: the real test split is empty (expected real test images per class)")
    x_test = _check_images(x_test, "test_images")
    y_test = _check_labels(test_labels, x_test.shape[0], c, "test_labels")
    if not train_sets:
        raise StudyInputError("train_sets: expected at least one training set (e.g. baseline, prototype, real)")
    if not seeds:
        raise StudyInputError("seeds: expected at least one seed")
    checked = {}
    for name, pair in train_sets.items():
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise StudyInputError(f"train_sets[{name!r}]: expected (images, labels)")
        xi = _check_images(pair[0], f"train_sets[{name!r}] images")
        checked[name] = (xi, _check_labels(pair[1], xi.shape[0], c, f"train_sets[{name!r}] labels"))
        if xi.shape[-1] != x_test.shape[-1]:
            raise StudyInputError(f"train_sets[{name!r}]: images are {xi.shape[-1]} px, the test images "
                                  f"{x_test.shape[-1]} px; TSTR needs one resolution")

    idx = bootstrap_indices(y_test, n_boot, boot_seed)
    sets = {}
    for name, (xi, yi) in checked.items():
        per_seed, preds = [], []
        for s in seeds:
            model = train_classifier(xi, yi, c, arch=arch, epochs=epochs, batch_size=batch_size, lr=lr, seed=s,
                                     weights_path=weights_path, progress=progress, device=device)
            pred = predict(model, x_test)
            preds.append(pred)
            per_seed.append({"seed": int(s), **classification_scores(y_test, pred, class_names),
                             "train_seconds": float(sum(h["seconds"] for h in model.history))})
        preds = np.stack(preds)
        keys = ("precision", "recall", "f1", "accuracy")
        vals = {k: np.array([r[k] for r in per_seed]) for k in keys}
        ci = {}
        for k in keys:
            stats = _boot_stats(y_test, preds, METRIC_FNS[k], idx)
            low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
            ci[k] = [_seed_mean(METRIC_FNS[k], y_test, preds), float(low), float(high)]
        sets[name] = {
            "n_train": int(xi.shape[0]),
            "per_seed": per_seed,
            "mean": {k: float(v.mean()) for k, v in vals.items()},
            "std": {k: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for k, v in vals.items()},
            "ci": ci,
            "per_class_f1": {n: float(np.mean([r["per_class_f1"][n] for r in per_seed])) for n in class_names},
            "confusion_matrix": np.sum([r["confusion_matrix"] for r in per_seed], axis=0).tolist(),
            "predictions": preds.tolist(),
        }
    comparison = None
    a, b = compare
    if a in sets and b in sets:
        comparison = {"a": a, "b": b, "metric": "f1",
                      **paired_bootstrap(y_test, np.array(sets[a]["predictions"]), np.array(sets[b]["predictions"]),
                                         macro_f1, n_boot=n_boot, seed=boot_seed, alpha=alpha)}
    return {
        "class_names": class_names, "n_test": int(len(y_test)),
        "n_test_per_class": {n: int((y_test == i).sum()) for i, n in enumerate(class_names)},
        "budget": {"arch": arch, "seeds": [int(s) for s in seeds], "epochs": int(epochs), "batch_size": int(batch_size),
                   "lr": float(lr), "weight_decay": WEIGHT_DECAY, "augment": dict(AUGMENT),
                   "weights_path": None if weights_path is None else str(weights_path)},
        "bootstrap": {"n_boot": int(n_boot), "alpha": float(alpha), "seed": int(boot_seed), "stratified": True,
                      "over": "test images; seed-averaged metric on shared resamples"},
        "sets": sets, "comparison": comparison,
    }


def tstr_table(result: dict) -> pd.DataFrame:
    """IMPROVE Tables 5/6 from ``tstr_scores``: one row per training set (baseline, prototype, real
    first), columns ``precision``, ``recall``, ``f1`` as "mean [low, high]" strings in percent, and
    floats in percent: ``<metric>_mean`` (seed-averaged score on the full test set), ``_std`` (over
    seeds), ``_low``, ``_high`` (bootstrap interval); plus ``n_seeds`` and ``n_train``."""
    sets = result["sets"]
    order = [n for n in TABLE_ORDER if n in sets] + [n for n in sets if n not in TABLE_ORDER]
    rows = []
    for name in order:
        s = sets[name]
        row = {"training_set": name}
        for m in METRICS:
            point, low, high = (100 * v for v in s["ci"][m])
            row[m] = f"{point:.2f} [{low:.2f}, {high:.2f}]"
        for m in METRICS:
            point, low, high = (100 * v for v in s["ci"][m])
            row.update({f"{m}_mean": point, f"{m}_std": 100 * s["std"][m], f"{m}_low": low, f"{m}_high": high})
        row.update(n_seeds=len(s["per_seed"]), n_train=s["n_train"])
        rows.append(row)
    return pd.DataFrame(rows).set_index("training_set")


# ----------------------------------------------------------------------------- embedding-space fidelity

def _as_vectors(vectors, name: str) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float64)
    if v.ndim != 2 or v.shape[0] == 0:
        raise StudyInputError(f"{name}: expected a non-empty 2-d array [N, D], got shape {v.shape}")
    if not np.isfinite(v).all():
        raise StudyInputError(f"{name}: non-finite values; embeddings must be finite")
    return v


def _check_pair(real, fake) -> tuple[np.ndarray, np.ndarray]:
    r, f = _as_vectors(real, "real_vectors"), _as_vectors(fake, "fake_vectors")
    if r.shape[1] != f.shape[1]:
        raise StudyInputError(
            f"real_vectors have dim {r.shape[1]}, fake_vectors dim {f.shape[1]}; expected one encoder")
    return r, f


def prdc_scores(real_vectors, fake_vectors, nearest_k: int = 5) -> dict[str, float]:
    """Precision, recall, density and coverage (Naeem et al. 2020, ``prdc.compute_prdc``) of fake
    vs real embeddings [N, D]; each set needs at least ``nearest_k + 2`` vectors (prdc 0.2 asks for
    the (k+1)-th distance including the point itself). Returns Python floats."""
    from prdc import compute_prdc

    r, f = _check_pair(real_vectors, fake_vectors)
    need = nearest_k + 2
    if nearest_k < 1 or len(r) < need or len(f) < need:
        raise StudyInputError(f"PRDC with nearest_k={nearest_k} needs nearest_k >= 1 and at least {need} vectors "
                              f"per set; got {len(r)} real and {len(f)} fake")
    with contextlib.redirect_stdout(io.StringIO()):  # prdc 0.2 prints the set sizes
        out = compute_prdc(real_features=r, fake_features=f, nearest_k=nearest_k)
    return {k: float(out[k]) for k in ("precision", "recall", "density", "coverage")}


def _poly_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def kid(real_vectors, fake_vectors, n_subsets: int = 50, subset_size: int | None = None,
        seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance-style unbiased MMD^2 with ``k(x, y) = (x.y/d + 1)^3`` between real
    and fake embeddings [N, D], over ``n_subsets`` subsets of ``subset_size`` (default
    ``min(1000, n_real, n_fake)``) drawn without replacement from each set. Returns (mean, std)."""
    r, f = _check_pair(real_vectors, fake_vectors)
    m = min(1000, len(r), len(f)) if subset_size is None else int(subset_size)
    if m < 2 or m > min(len(r), len(f)) or n_subsets < 1:
        raise StudyInputError(f"KID needs 2 <= subset_size <= min(n_real, n_fake) and n_subsets >= 1; got "
                              f"subset_size={m}, n_real={len(r)}, n_fake={len(f)}, n_subsets={n_subsets}")
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_subsets):
        x = r[rng.choice(len(r), m, replace=False)]
        y = f[rng.choice(len(f), m, replace=False)]
        kxx, kyy, kxy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
        # unbiased: drop the diagonal k(x_i, x_i) terms from the within-set means
        vals.append((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                    - 2 * kxy.mean())
    return float(np.mean(vals)), float(np.std(vals))


def prototype_consistency(fake_vectors, intended_labels, prototypes, projection=None, normalize: bool = True,
                          class_names: Sequence[str] | None = None) -> dict:
    """Share of generated images whose nearest prototype (``nearest_prototype_predict``, same ``f``
    as CPL training) is their intended class: ``overall``, ``per_class`` (by class name when
    ``class_names`` is given, else by index; classes with generated images only) and ``n_per_class``."""
    from improve_lib.prototypes import nearest_prototype_predict

    v = _as_vectors(fake_vectors, "fake_vectors")
    c = np.asarray(prototypes).shape[0]
    y = _check_labels(intended_labels, len(v), c, "intended_labels")
    pred = nearest_prototype_predict(v, prototypes, projection=projection, normalize=normalize)
    names = list(class_names) if class_names is not None else list(range(c))
    if len(names) != c:
        raise StudyInputError(f"class_names has {len(names)} entries, prototypes {c} classes")
    hit = pred == y
    present = [i for i in range(c) if (y == i).any()]
    return {"overall": float(hit.mean()),
            "per_class": {names[i]: float(hit[y == i].mean()) for i in present},
            "n_per_class": {names[i]: int((y == i).sum()) for i in present}}


def _embed_space(v: np.ndarray, normalize: bool) -> np.ndarray:
    if not normalize:
        return v
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    return np.sqrt(v.shape[1]) * v / np.maximum(norm, 1e-12)


def fidelity_table(real_by_class: Mapping[str, object], fake_by_class_by_arm: Mapping[str, Mapping[str, object]],
                   prototypes, projection=None, normalize: bool = True, nearest_k: int = 5, n_subsets: int = 50,
                   seed: int = 0, class_names: Sequence[str] | None = None) -> pd.DataFrame:
    """Fidelity and diversity per arm and class in the encoder's embedding space.

    ``real_by_class`` maps class name -> real vectors [n, D] (held-out real images);
    ``fake_by_class_by_arm`` maps arm -> class name -> generated vectors. ``class_names`` gives the
    order of the prototype rows (default: the order of ``real_by_class``). Rows: every (arm, class)
    with generated vectors, then an "all" row per arm (all classes pooled). Columns: ``n_real``,
    ``n_fake``, PRDC ``precision, recall, density, coverage``, ``kid_mean, kid_std``,
    ``prototype_consistency`` and ``note`` (why a value is NaN, e.g. too few vectors for PRDC).
    Vectors are compared in ``sqrt(D) * x/||x||`` space when ``normalize`` (module docstring);
    prototype consistency always uses the raw vectors with ``normalize``/``projection`` as in CPL."""
    class_names = list(class_names) if class_names is not None else list(real_by_class)
    missing = [n for n in class_names if n not in real_by_class]
    if missing:
        raise StudyInputError(f"real_by_class: no real vectors for classes {missing}")
    c = np.asarray(prototypes).shape[0]
    if c != len(class_names):
        raise StudyInputError(f"prototypes have {c} classes, class_names {len(class_names)}: {class_names}")
    real = {n: _as_vectors(real_by_class[n], f"real_by_class[{n!r}]") for n in class_names}

    def measure(r_raw, f_raw, labels) -> dict:
        r, f = _embed_space(r_raw, normalize), _embed_space(f_raw, normalize)
        row = {"n_real": len(r), "n_fake": len(f)}
        notes = []
        try:
            row.update(prdc_scores(r, f, nearest_k))
        except StudyInputError as exc:
            row.update(dict.fromkeys(("precision", "recall", "density", "coverage"), float("nan")))
            notes.append(str(exc))
        try:
            row["kid_mean"], row["kid_std"] = kid(r, f, n_subsets=n_subsets, seed=seed)
        except StudyInputError as exc:
            row["kid_mean"] = row["kid_std"] = float("nan")
            notes.append(str(exc))
        consistency = prototype_consistency(f_raw, labels, prototypes, projection, normalize)
        row["prototype_consistency"] = consistency["overall"]
        row["note"] = "; ".join(notes)
        return row

    rows = []
    for arm, by_class in fake_by_class_by_arm.items():
        unknown = [n for n in by_class if n not in class_names]
        if unknown:
            raise StudyInputError(f"fake_by_class_by_arm[{arm!r}]: unknown classes {unknown}; expected {class_names}")
        pooled_f, pooled_y = [], []
        for i, name in enumerate(class_names):
            if name not in by_class:
                continue
            f = _as_vectors(by_class[name], f"fake_by_class_by_arm[{arm!r}][{name!r}]")
            labels = np.full(len(f), i)
            rows.append({"arm": arm, "class_name": name, **measure(real[name], f, labels)})
            pooled_f.append(f)
            pooled_y.append(labels)
        if pooled_f:
            r_all = np.concatenate([real[n] for n in class_names])
            rows.append({"arm": arm, "class_name": "all",
                         **measure(r_all, np.concatenate(pooled_f), np.concatenate(pooled_y))})
    return pd.DataFrame(rows)

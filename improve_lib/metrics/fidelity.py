"""Fidelity and diversity of generated images without humans, measured in an image encoder's space.

* **PRDC** (Naeem et al. 2020) through ``prdc.compute_prdc`` (0.2: returns numpy floats, prints the
  set sizes -- silenced here, and needs at least ``nearest_k + 2`` vectors per set because it asks
  for the (k+1)-th smallest distance including the point itself).
* **KID** (Binkowski et al. 2018): unbiased MMD^2 with the kernel ``(x.y/d + 1)^3`` averaged over
  ``n_subsets`` random subsets of ``min(1000, n_real, n_fake)`` vectors per set (without
  replacement); the unbiased estimator has no small-sample bias (it can be slightly negative), which
  FID has. When the subset is the whole set, every subset is the same and std is 0.
* **Prototype consistency**: the share of generated images whose nearest class prototype (the space
  CPL learned them in) is their intended class.
* **Embedding space for the fidelity table.** ``normalize=True`` (default) maps every vector to
  ``sqrt(D) * x / ||x||``: the L2-normalised space the prototypes live in (see
  ``improve_lib.conditioning.prototypes``), scaled so that KID's ``x.y/d`` is the cosine similarity. PRDC is
  unchanged by the common scale. The space is the project's encoder, not Inception: no Inception
  FID, since its weights cannot be downloaded here and a torchvision Inception is not the TF-FID
  network, so its numbers would not compare with published FIDs.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from prdc import compute_prdc

from improve_lib import data
from improve_lib.conditioning.prototypes import nearest_prototype_predict
from improve_lib.core import input_checks, run_layout
from improve_lib.core.errors import StudyInputError
from improve_lib.diffusion import sample


def feature_space(encoder_id: str, resolution: int) -> str:
    """The label every fidelity figure carries: which encoder, at which image size, and what KID is here."""
    return (f"{encoder_id} embeddings of {int(resolution)} px images (real resized like the samples); "
            f"KID = unbiased MMD^2 with the cubic kernel (cos + 1)^3 of that encoder, not Inception")


def _check_pair(real, fake) -> tuple[np.ndarray, np.ndarray]:
    r, f = input_checks.vectors(real, "real_vectors"), input_checks.vectors(fake, "fake_vectors")
    if r.shape[1] != f.shape[1]:
        raise StudyInputError(
            f"real_vectors have dim {r.shape[1]}, fake_vectors dim {f.shape[1]}; expected one encoder")
    return r, f


def prdc_scores(real_vectors, fake_vectors, nearest_k: int = 5) -> dict[str, float]:
    """Precision, recall, density and coverage (Naeem et al. 2020, ``prdc.compute_prdc``) of fake
    vs real embeddings [N, D]; each set needs at least ``nearest_k + 2`` vectors (prdc 0.2 asks for
    the (k+1)-th distance including the point itself). Returns Python floats."""
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
    v = input_checks.vectors(fake_vectors, "fake_vectors")
    c = np.asarray(prototypes).shape[0]
    y = input_checks.labels(intended_labels, len(v), c, "intended_labels")
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
    real = {n: input_checks.vectors(real_by_class[n], f"real_by_class[{n!r}]") for n in class_names}

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
            f = input_checks.vectors(by_class[name], f"fake_by_class_by_arm[{arm!r}][{name!r}]")
            labels = np.full(len(f), i)
            rows.append({"arm": arm, "class_name": name, **measure(real[name], f, labels)})
            pooled_f.append(f)
            pooled_y.append(labels)
        if pooled_f:
            r_all = np.concatenate([real[n] for n in class_names])
            rows.append({"arm": arm, "class_name": "all",
                         **measure(r_all, np.concatenate(pooled_f), np.concatenate(pooled_y))})
    return pd.DataFrame(rows)


def resized_real(run_dir: str | Path, split: str, resolution: int) -> pd.DataFrame:
    """The run's real ``split`` images as the generated ones are: center-cropped, resized to ``resolution``
    and written as 8-bit PNGs by the samples' own writer, into ``fidelity/real_<split>_<R>px/<class>/``.

    Fidelity measures embed these rather than the originals, so that real and generated images differ
    in what they show, not in their size (a 200x150 photograph and a 32 px sample are embedded from
    different pixels). Existing copies are kept. Returns ``path, label, class_name`` per image.
    """
    table = data.read_split(run_dir)
    rows = table[table.split == split]
    if rows.empty:
        raise StudyInputError(f"{run_layout.split_csv(run_dir)} has no {split} images")
    out = run_layout.fidelity_dir(run_dir) / f"real_{split}_{int(resolution)}px"
    records = []
    for i, r in enumerate(rows.itertuples()):
        path = out / str(r.class_name) / f"{i:05d}.png"
        if not path.is_file():
            sample.save_png(data.load_image(r.path, int(resolution)), path)
        records.append({"path": str(path), "label": int(r.label), "class_name": r.class_name})
    return pd.DataFrame(records)

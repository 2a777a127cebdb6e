"""Checked inputs shared by the stages: embedding vectors, class labels and image batches.

One rule each, so that prototype learning, TSTR and fidelity reject the same bad input with the same
message, naming the argument at fault.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from improve_lib.core.errors import StudyInputError


def vectors(values, name: str, dtype=np.float64) -> np.ndarray:
    """``values`` as a non-empty, finite 2-d array ``[N, D]`` of ``dtype``."""
    v = np.asarray(values, dtype=dtype)
    if v.ndim != 2 or v.shape[0] == 0:
        raise StudyInputError(f"{name}: expected a non-empty 2-d array [N, D], got shape {v.shape}")
    finite = np.isfinite(v).all(1)
    if not finite.all():
        bad = np.flatnonzero(~finite)[:5].tolist()
        raise StudyInputError(f"{name}: non-finite values in rows {bad}; embeddings must be finite")
    return v


def labels(values, n: int, num_classes: int, name: str) -> np.ndarray:
    """``values`` as ``n`` int64 class indices in ``0..num_classes-1``."""
    y = np.asarray(values)
    if y.shape != (n,) or (n and not np.issubdtype(y.dtype, np.integer)):
        raise StudyInputError(f"{name}: expected {n} integer labels, got shape {y.shape} dtype {y.dtype}")
    if n and (y.min() < 0 or y.max() >= num_classes):
        raise StudyInputError(f"{name}: labels must lie in 0..{num_classes - 1}, found {y.min()}..{y.max()}")
    return y.astype(np.int64)


def images(values, name: str) -> torch.Tensor:
    """``values`` as a non-empty float batch ``[N, 3, R, R]`` with values in [0, 1]."""
    x = torch.as_tensor(values)
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

"""The class table an arm's UNet starts from: one row per class, built from the run's prototypes.

The prototype arm's rows are its CPL class embeddings (``prototypes/class_embeddings.safetensors``),
used as they are or through a fixed whitened-PCA map to ``COND_DIM`` (:func:`class_table_rows`); the
baseline gets no table (random rows, learnt) but the same width, so both arms build the same UNet
(:func:`arm_class_table`). Notebook 04 asks this module; the UNet itself is :mod:`improve_lib.diffusion.unet`'s.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from sklearn.decomposition import PCA

from improve_lib.conditioning.embeddings import load_embeddings
from improve_lib.conditioning.prototype_files import CLASS_EMBEDDINGS_FILE, load_class_embeddings, space_of
from improve_lib.conditioning.prototypes import as_tensor, cpl_features
from improve_lib.core import run_layout
from improve_lib.core.errors import StudyInputError

CLASS_EMBEDDING_MAPS = ("none", "pca")  # how prototypes become the table's rows (class_table_rows)


def class_table_rows(class_embeddings: torch.Tensor, mode: str, cond_dim: int | None,
                     train_features: np.ndarray | torch.Tensor | None = None, seed: int = 0) -> torch.Tensor:
    """Turn per-class prototype vectors ``[C, D]`` into the UNet's table rows ``[C, COND_DIM]``.

    ``mode="none"``: the prototypes themselves (``cond_dim`` must be None or D; the paper's setup).
    ``mode="pca"``: a fixed linear map, fitted once: whitened PCA of ``train_features`` (the run's training
    image embeddings in the prototypes' space, ``[N, D]``) to ``cond_dim`` components (``random_state=seed``
    for sklearn's randomized solver on large inputs); the prototypes are projected through it. Being
    fixed, the map keeps the table frozen and adds nothing the baseline lacks. Whitening gives every kept
    direction unit variance over the training images, so no single direction dominates the table.

    In both modes the result is rescaled by one scalar to RMS 1 over all entries, so it starts on the
    same scale as the baseline's N(0, 1) init (the relative geometry of the prototypes is unchanged).
    """
    emb = torch.as_tensor(class_embeddings, dtype=torch.float64)
    if emb.ndim != 2 or emb.shape[0] < 1:
        raise StudyInputError(f"class_embeddings must be [C, D], got shape {tuple(emb.shape)}")
    dim = emb.shape[1]
    if mode == "none":
        if cond_dim is not None and int(cond_dim) != dim:
            raise StudyInputError(f"CLASS_EMBEDDING_MAP='none' uses the prototypes as they are, so COND_DIM "
                                  f"must equal their dimension D={dim} (got COND_DIM={cond_dim}); "
                                  f"use CLASS_EMBEDDING_MAP='pca' for a narrower table")
        table = emb
    elif mode == "pca":
        if train_features is None:
            raise StudyInputError("CLASS_EMBEDDING_MAP='pca' needs the training embeddings "
                                  "(embeddings/train.npz 'vectors'); run notebook 02 first")
        vec = np.asarray(train_features, dtype=np.float64)
        if vec.ndim != 2 or vec.shape[1] != dim:
            raise StudyInputError(f"training embeddings have shape {vec.shape}; expected [N, D={dim}] "
                                  f"like the prototypes")
        if cond_dim is None or not 1 <= int(cond_dim) <= min(vec.shape):
            raise StudyInputError(f"COND_DIM={cond_dim} must be between 1 and min(N, D)={min(vec.shape)} "
                                  f"for CLASS_EMBEDDING_MAP='pca' (N training embeddings, D={dim})")
        pca = PCA(n_components=int(cond_dim), whiten=True, random_state=int(seed)).fit(vec)
        table = torch.from_numpy(pca.transform(emb.numpy()))
    else:
        raise StudyInputError(f"CLASS_EMBEDDING_MAP must be one of {list(CLASS_EMBEDDING_MAPS)}, got {mode!r}")
    rms = table.pow(2).mean().sqrt()
    if not torch.isfinite(rms) or rms == 0:
        raise StudyInputError("the class table is all zero or not finite; check the prototypes file")
    return (table / rms).float()


def arm_class_table(run_dir, arm: str, class_names: Sequence[str], mode: str, cond_dim: int | None,
                    seed: int) -> tuple[torch.Tensor | None, int]:
    """The class table an arm starts from, ``[C, COND_DIM]`` (None for the baseline), and its width.

    Prototype arm: the run's ``prototypes/class_embeddings.safetensors`` (class names must match the
    split's, in order) through :func:`improve_lib.conditioning.class_table.class_table_rows`; with ``mode="pca"`` the map is fitted on the
    run's training embeddings (``embeddings/train.npz``) mapped into the prototypes' space. Baseline arm:
    None, with ``cond_dim``, or (``mode="none"``, ``cond_dim`` None) the prototypes' width, so that both
    arms build the same UNet.
    """
    path = run_layout.prototypes_dir(run_dir) / CLASS_EMBEDDINGS_FILE
    if not path.is_file():
        if arm == "baseline" and not (mode == "none" and cond_dim is None):
            return None, int(cond_dim)
        raise StudyInputError(f"{path} not found: run notebook 03_prototypes for this RUN_DIR first"
                              + ("" if arm != "baseline" else " (or set COND_DIM, which it would set)"))
    emb, names, meta = load_class_embeddings(path)
    if arm == "baseline":
        if mode == "none":
            if cond_dim is not None and int(cond_dim) != emb.shape[1]:
                raise StudyInputError(f"CLASS_EMBEDDING_MAP='none' ties COND_DIM to the prototype dimension "
                                      f"{emb.shape[1]} ({path}), got COND_DIM={cond_dim}")
            return None, int(emb.shape[1])
        return None, int(cond_dim)
    if names != list(class_names):
        raise StudyInputError(f"{path}: class_names {names} differ from the split's classes {list(class_names)} "
                              f"(same names in the same order expected); rerun notebook 03_prototypes")
    features = None
    if mode == "pca":
        npz = run_layout.embeddings_file(run_dir, "train")
        if not npz.is_file():
            raise StudyInputError(f"{npz} not found: CLASS_EMBEDDING_MAP='pca' fits its map on the training "
                                  f"embeddings; run notebook 02_embeddings first")
        # The prototypes live in CPL's feature space (L2-normalised, maybe projected): fit the map there.
        projection, normalize = space_of(meta, path.parent)
        features = cpl_features(as_tensor(load_embeddings(npz)["vectors"], str(npz)), projection, normalize).numpy()
    table = class_table_rows(emb, mode, cond_dim, features, seed=seed)
    return table, int(table.shape[1])

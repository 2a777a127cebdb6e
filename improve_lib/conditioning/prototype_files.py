"""The prototypes folder of a run (``RUN_DIR/prototypes/``): what notebook 03 writes, and its readers.

``prototypes.safetensors`` ("prototypes" [C, K, D]), ``class_embeddings.safetensors`` ("class_embeddings"
[C, D], one vector per class) and, for a linear projection, ``projection.safetensors``; the metadata
carries the class names, the encoder and CPL's settings. The CPL maths are :mod:`improve_lib.conditioning.prototypes`'.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from improve_lib.conditioning.prototypes import PrototypeResult, class_embedding_from_prototypes, feature_space_note
from improve_lib.core import run_layout
from improve_lib.core.errors import StudyInputError
from improve_lib.core.files import save_safetensors

FORMAT_VERSION = "1"


# The prototypes folder of a run, written by notebook 03 and read by notebook 04 (:func:`arm_class_table`).
PROTOTYPES_FILE = "prototypes.safetensors"


CLASS_EMBEDDINGS_FILE = "class_embeddings.safetensors"


PROJECTION_FILE = "projection.safetensors"


CLASS_EMBEDDING_RULE = "per class, the prototype nearest the class mean of f(x) over training images"


CLASS_EMBEDDINGS = ("prototypes", "class_means")


CLASS_MEANS_RULE = "per class, the mean of f(x) over training images (ablation: the CPL prototypes are not used)"


def save_prototypes(run_dir, result: PrototypeResult, class_names: Sequence[str], encoder_id: str,
                    class_means=None, class_embedding: str = "prototypes") -> dict[str, Path]:
    """Write into ``RUN_DIR/prototypes/``: ``prototypes.safetensors`` ("prototypes" [C, K, D]), ``class_embeddings.safetensors``
    ("class_embeddings" [C, D], rule: ``class_embedding_from_prototypes``) and, for a linear
    projection, ``projection.safetensors`` ("weight" [D', D]) atomically; metadata
    carries class_names (JSON), encoder_id, k, gamma, lambda, projection, normalize, feature_space.
    ``class_means`` [C, D'] defaults to ``result.class_means``. ``class_embedding="class_means"`` (an
    ablation) makes the class means themselves the class embeddings. Returns the paths written."""
    class_names = list(class_names)
    if class_names != list(result.class_names):
        raise StudyInputError(
            f"class_names {class_names} differ from the classes the prototypes were trained on "
            f"{list(result.class_names)}")
    if class_embedding not in CLASS_EMBEDDINGS:
        raise StudyInputError(f"CLASS_EMBEDDING must be one of {list(CLASS_EMBEDDINGS)}, got {class_embedding!r}")
    means = result.class_means if class_means is None else class_means
    table = class_embedding_from_prototypes(result.prototypes, means)
    if class_embedding == "class_means":
        table = torch.as_tensor(np.asarray(means, dtype=np.float32))
    p = result.params
    meta = {
        "format_version": FORMAT_VERSION,
        "class_names": json.dumps(class_names),
        "encoder_id": str(encoder_id),
        "k": str(p.get("k")), "gamma": str(p.get("gamma")), "lambda": str(p.get("lam")),
        "projection": str(p.get("projection")), "normalize": str(p.get("normalize", True)),
        "on_sphere": str(p.get("on_sphere", False)),
        "feature_space": feature_space_note(p, result.prototypes.shape[-1]),
        "class_embedding_rule": CLASS_EMBEDDING_RULE if class_embedding == "prototypes" else CLASS_MEANS_RULE,
    }
    out_dir = run_layout.prototypes_dir(run_dir)
    files = {"prototypes": (out_dir / PROTOTYPES_FILE, {"prototypes": result.prototypes}),
             "class_embeddings": (out_dir / CLASS_EMBEDDINGS_FILE, {"class_embeddings": table})}
    if result.projection is not None:
        files["projection"] = (out_dir / PROJECTION_FILE, {"weight": result.projection})
    for name, (path, tensors) in files.items():
        save_safetensors({k: v.float() for k, v in tensors.items()}, path, metadata={**meta, "kind": name})
    return {name: path for name, (path, _) in files.items()}


def _load_table(path, key: str, ndim: int) -> tuple[torch.Tensor, list[str], dict]:
    path = Path(path)
    if not path.is_file():
        raise StudyInputError(f"{path}: file not found (expected a {key} safetensors file)")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
            if key not in fh.keys():
                raise StudyInputError(f"{path}: no tensor {key!r} (found {list(fh.keys())})")
            tensor = fh.get_tensor(key)
    except StudyInputError:
        raise
    except Exception as exc:  # truncated or foreign file
        raise StudyInputError(f"{path}: not a readable safetensors file ({exc})") from exc
    if tensor.ndim != ndim:
        raise StudyInputError(f"{path}: tensor {key!r} should have {ndim} dims, has shape {tuple(tensor.shape)}")
    if not torch.isfinite(tensor).all():
        raise StudyInputError(f"{path}: tensor {key!r} contains non-finite values")
    try:
        names = json.loads(meta["class_names"])
    except (KeyError, ValueError) as exc:
        raise StudyInputError(f"{path}: metadata 'class_names' missing or not JSON") from exc
    if not isinstance(names, list) or len(names) != tensor.shape[0]:
        raise StudyInputError(
            f"{path}: metadata class_names has {len(names) if isinstance(names, list) else '?'} entries "
            f"but tensor {key!r} has {tensor.shape[0]} rows")
    return tensor.float(), [str(n) for n in names], meta


def load_prototypes(path) -> tuple[torch.Tensor, list[str], dict]:
    """Read ``prototypes.safetensors``: (prototypes [C, K, D], class_names, metadata dict of str)."""
    return _load_table(path, "prototypes", 3)


def load_class_embeddings(path) -> tuple[torch.Tensor, list[str], dict]:
    """Read ``class_embeddings.safetensors``: (class_embeddings [C, D], class_names, metadata)."""
    return _load_table(path, "class_embeddings", 2)


def space_of(meta: dict, folder: Path) -> tuple[torch.Tensor | None, bool]:
    """``(projection or None, normalize)`` recorded in a prototypes file's metadata."""
    projection = None
    if meta.get("projection") == "linear":
        path = folder / PROJECTION_FILE
        if not path.is_file():
            raise StudyInputError(f"{path}: projection weights missing although the prototypes used a linear projection")
        projection = load_file(str(path))["weight"].float()
    return projection, str(meta.get("normalize", "True")).lower() == "true"


def load_space(run_dir) -> dict:
    """Everything needed to compare new embeddings with a run's prototypes: ``prototypes`` [C, K, D'],
    ``class_names``, ``projection`` ([D', D] or None) and ``normalize``."""
    folder = run_layout.prototypes_dir(run_dir)
    protos, names, meta = load_prototypes(folder / PROTOTYPES_FILE)
    projection, normalize = space_of(meta, folder)
    return {"prototypes": protos, "class_names": names, "projection": projection, "normalize": normalize}

"""Image embeddings of a run: each image's vector from an encoder (:mod:`improve_lib.conditioning.encoders`),
cached on disk by (encoder id, image sha256) so no image is encoded twice, and the ``embeddings/<split>.npz``
files notebook 02 writes (paths, labels, class names, vectors, encoder id) with their checked readers.

A vector is the same whatever the cache held before and whichever images shared its batch: every forward holds
``batch_size`` images (the last batch padded), and the cache is kept apart per batch size, torch thread count and
device. On a CPU, a convolution's rounding can depend on the batch's size and the thread count (measured: 6e-6 on
EfficientNet-Lite0 at one thread), so without this a run's embeddings, and the prototypes learned on them, would
depend on which earlier runs filled the cache.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from improve_lib.conditioning.encoders import Encoder
from improve_lib.core import run_layout
from improve_lib.core.errors import StudyInputError
from improve_lib.core.files import atomic_path, atomic_write_text, sha256_file
from improve_lib.data.images import open_rgb

log = logging.getLogger(__name__)

CACHE_VERSION = "1"  # bump when preprocessing changes so old cache entries are never reused


def default_cache_dir() -> Path:
    """``$IMPROVE_CACHE_DIR`` if set, else ``~/.cache/improve_study/embeddings``."""
    env = os.environ.get("IMPROVE_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "improve_study" / "embeddings"


# ----------------------------------------------------------------------------- cache + embedding

def _cache_key(encoder: Encoder, batch_size: int) -> str:
    """What a vector's bits depend on besides the image: the encoder, the forward's batch size, the threads, the device."""
    return f"{encoder.id} | batch {batch_size} | threads {torch.get_num_threads()} | {encoder.device}"


def _encoder_cache_dir(cache_dir: Path, encoder: Encoder, batch_size: int) -> Path:
    key = hashlib.sha256(f"{CACHE_VERSION}|{_cache_key(encoder, batch_size)}".encode()).hexdigest()[:20]
    return Path(cache_dir) / key


def _entry_path(enc_dir: Path, image_sha: str) -> Path:
    return enc_dir / image_sha[:2] / f"{image_sha}.f32"


def _read_entry(path: Path, dim: int) -> np.ndarray | None:
    """The cached vector, or None when absent or corrupt (wrong length, checksum or non-finite)."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    body, digest = raw[:-32], raw[-32:]
    if len(raw) != 4 * dim + 32 or hashlib.sha256(body).digest() != digest:
        if path.exists():
            log.warning("corrupt embedding cache entry %s: recomputing", path)
        return None
    vec = np.frombuffer(body, dtype="<f4")
    return vec if np.isfinite(vec).all() else None


def _write_entry(path: Path, vec: np.ndarray) -> None:
    body = np.ascontiguousarray(vec, dtype="<f4").tobytes()
    with atomic_path(path) as tmp:  # float32 bytes + sha256 of them: a damaged entry never reads as valid
        tmp.write_bytes(body + hashlib.sha256(body).digest())


def _open_image(path: Path) -> Image.Image:
    return open_rgb(path)


def embed_paths(paths: Sequence, encoder: Encoder, cache_dir=None, batch_size: int = 32,
                progress: bool = True) -> np.ndarray:
    """Embed the images at ``paths`` with ``encoder``; returns float32 [N, encoder.dim] in order.

    Vectors are cached under ``cache_dir`` (default ``default_cache_dir()``) per (encoder id, batch size,
    threads, device, image sha256), one checksummed file each, written atomically: a rerun on the same
    images runs no encoder forward, and a corrupt entry is recomputed. Every forward holds ``batch_size``
    images (the last padded with zeros), so a vector does not depend on its batch-mates (module docstring)."""
    paths = [Path(p) for p in paths]
    batch_size = int(batch_size)
    if batch_size < 1:
        raise StudyInputError(f"EMBED_BATCH_SIZE must be 1 or more, got {batch_size}")
    enc_dir = _encoder_cache_dir(Path(cache_dir) if cache_dir is not None else default_cache_dir(), encoder, batch_size)
    if not (enc_dir / "encoder.txt").exists():
        atomic_write_text(enc_dir / "encoder.txt", _cache_key(encoder, batch_size) + "\n")
    shas = []
    for p in paths:
        try:
            shas.append(sha256_file(p))
        except OSError as exc:
            raise StudyInputError(f"{p}: cannot read image file ({exc.strerror or exc})") from exc
    found: dict[str, np.ndarray] = {}
    todo: dict[str, Path] = {}
    for p, sha in zip(paths, shas):
        if sha in found or sha in todo:
            continue
        vec = _read_entry(_entry_path(enc_dir, sha), encoder.dim)
        if vec is None:
            todo[sha] = p
        else:
            found[sha] = vec
    items = list(todo.items())
    bar = None
    if progress and items:
        bar = tqdm(total=len(items), desc=f"embed ({encoder.id[:40]})", unit="img")
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        batch = torch.stack([encoder.preprocess(_open_image(p)) for _, p in chunk])
        if len(chunk) < batch_size:  # pad: the forward's shape, and so its rounding, is that of every other batch
            batch = torch.cat([batch, batch.new_zeros((batch_size - len(chunk), *batch.shape[1:]))])
        out = encoder.encode(batch).numpy()[:len(chunk)]
        for (sha, p), vec in zip(chunk, out):
            if vec.shape != (encoder.dim,) or not np.isfinite(vec).all():
                raise StudyInputError(f"{p}: encoder {encoder.id} produced a non-finite embedding")
            _write_entry(_entry_path(enc_dir, sha), vec)
            found[sha] = vec
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    if not paths:
        return np.zeros((0, encoder.dim), dtype=np.float32)
    return np.stack([found[s] for s in shas]).astype(np.float32)


# ----------------------------------------------------------------------------- files

_NPZ_KEYS = ("paths", "labels", "class_names", "vectors", "encoder_id")


def _run_of(npz) -> Path:
    """The run folder of an embeddings file (it lies in the run's ``embeddings/``)."""
    return Path(npz).parent.parent


def save_embeddings(path, paths, labels, class_names, vectors, encoder_id: str) -> Path:
    """Write ``paths`` [N], ``labels`` [N] (0..C-1), ``class_names`` [C], ``vectors`` [N, D] and
    ``encoder_id`` to one ``.npz`` atomically; validated as ``load_embeddings`` would. The file lies in a run's
    ``embeddings/``: image paths inside that run are stored relative to it (:func:`run_layout.relative_to_run`)."""
    data = _validate(dict(paths=np.asarray(run_layout.relative_paths(paths, _run_of(path)), dtype=str),
                          labels=np.asarray(labels), class_names=np.asarray(list(class_names), dtype=str),
                          vectors=np.asarray(vectors, dtype=np.float32),
                          encoder_id=np.asarray(str(encoder_id))), Path(path))
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **{k: data[k] for k in _NPZ_KEYS})
    return Path(path)


def load_embeddings(path) -> dict:
    """Read a ``save_embeddings`` file: dict with paths (list[str]), labels (int64 [N]),
    class_names (list[str]), vectors (float32 [N, D]), encoder_id (str) and file (the path it was read
    from, for error messages); shapes and finiteness are checked."""
    path = Path(path)
    if not path.is_file():
        raise StudyInputError(f"{path}: embeddings file not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in _NPZ_KEYS if k not in z.files]
            if missing:
                raise StudyInputError(f"{path}: embeddings file lacks arrays {missing}")
            data = {k: z[k] for k in _NPZ_KEYS}
    except StudyInputError:
        raise
    except Exception as exc:
        raise StudyInputError(f"{path}: not a readable embeddings .npz ({exc})") from exc
    data = _validate(data, path)
    return {"paths": [str(p) for p in run_layout.resolved_paths(data["paths"], _run_of(path))],
            "labels": data["labels"].astype(np.int64),
            "class_names": [str(c) for c in data["class_names"]], "vectors": data["vectors"],
            "encoder_id": str(data["encoder_id"]), "file": str(path)}


def _validate(d: dict, path: Path) -> dict:
    v, y, names = d["vectors"], d["labels"], d["class_names"]
    if v.ndim != 2:
        raise StudyInputError(f"{path}: vectors should be [N, D], got shape {v.shape}")
    n = v.shape[0]
    if d["paths"].shape != (n,) or y.shape != (n,):
        raise StudyInputError(
            f"{path}: {n} vectors but {d['paths'].shape} paths and {y.shape} labels (expected ({n},))")
    if n and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= len(names)):
        raise StudyInputError(f"{path}: labels must be integers in 0..{len(names) - 1}")
    if not np.isfinite(v).all():
        rows = np.nonzero(~np.isfinite(v).all(1))[0][:5]
        raise StudyInputError(f"{path}: non-finite vectors for {[str(d['paths'][i]) for i in rows]}")
    return d


def check_class_sets(emb: dict, split_class_names: Sequence[str]) -> None:
    """Raise StudyInputError unless the embeddings were made for exactly the split's classes, in the
    same order (labels index ``class_names``)."""
    have, want = list(emb["class_names"]), list(split_class_names)
    where = emb.get("file", "embeddings")  # which file (train.npz or test.npz) is at fault
    if set(have) != set(want):
        raise StudyInputError(
            f"{where}: class_names differ from the split's: missing {sorted(set(want) - set(have))}, "
            f"extra {sorted(set(have) - set(want))}; recompute the embeddings for this split (notebook 02)")
    if have != want:
        raise StudyInputError(
            f"{where}: class_names are in order {have} but the split's are {want}; labels would not "
            f"match: recompute the embeddings for this split (notebook 02)")

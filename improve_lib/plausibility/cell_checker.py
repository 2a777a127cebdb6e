"""Objective morphology check for synthetic cells: measure from pixels what the generator's rules fix.

The embedded dataset (:mod:`improve_lib.data.synthetic_cells`) draws every class from written rules
(:data:`~improve_lib.data.synthetic_cells.RULES`). This module measures the same quantities from the
pixels of any image (a generated sample or a real synthetic cell), never from recorded parameters,
and judges them against tolerance bands derived from ``RULES``, one band per criterion of
``plausibility/review/criteria/synthetic.yaml``. It is the study's expert-free plausibility proxy: an image failing any
criterion is implausible, as in section 5.3 of the paper.

How pixels are read (colours in YIQ, the space in which the generator applies its stain jitter):

* **Noise.** Generated cells carry grain, and a checker tuned on clean renders reads grain as
  background or cytoplasm that is not there. The noise SD is estimated from the image itself: the
  median absolute response to Immerkaer's (1996) Laplacian-difference mask, which cancels smooth
  structure, scaled to a Gaussian SD (MAD / 0.6745, the mask's gain 6). Clean renders read about
  2.5/255 (32 px) or 1.5/255 (64 px) from their own fine texture; above :data:`DENOISE_ABOVE` the image
  goes through non-local means (Buades et al. 2005, ``skimage.restoration.denoise_nl_means``,
  h = 0.8 x the noise SD with the texture's share removed), which keeps edges where a Gaussian blur
  would merge nucleus and cytoplasm. Clean images are measured untouched, so the validation below
  is unchanged by this step. ``noise_sd`` and ``denoised`` are reported with every measurement.
* **Normalisation.** The background's luma (bright border pixels) rescales the image to the nominal
  background luma (undoes the brightness jitter). Hues are taken *relative to the red cells' hue*
  (the sharpest hue peak near the nominal red-cell hue, among pixels beyond the largest cell the
  nucleus allows), which cancels the stain's hue rotation; colours are then rotated back into the
  nominal (unstained) frame of ``RULES``.
* **Cell.** Pixels that are neither background (within 9 of its colour) nor red-cell coloured (hue
  within 6 deg of the red cells) and connect to the nucleus; holes filled. 64 rays from the centre
  find the outline, and a circle fitted to the rays near the median radius ignores bites and leaks
  (a cytoplasm that happens to have a red cell's hue, a red cell touching the cell).
  Diameter = 2 x radius (less 0.3 px, the mean outward bias of mixed edge pixels).
* **Nucleus.** Purple (hue 30-118 deg past the red cells, luma < 150) plus very dark pixels give
  the nucleus's own colour; every cell pixel then goes to the nearer of the cell's nucleus and
  cytoplasm colours (a 50 % boundary, so the area is unbiased). N:C = nucleus area / cell area.
  Shape, from the purple mask: lobes (most components of >= 6 % of the nucleus seen while eroding
  it away), solidity (area / convex hull) and elongation (axis ratio of the second moments).
* **Granules.** Dark pixels (luma < 42, hue < 62 deg past the red cells: a basophil's purple-black,
  not the blue-black of a lymphocyte's chromatin) and orange ones (hue -60..-6 deg, chroma > 45),
  as fractions of the cell area, plus their count of blobs. At 32-64 px granules are 1-4 px and
  merge, so judging uses the fractions.
* **Nucleoli.** Blobs inside the eroded nucleus brighter than 1.2 x its median luma (and luma 110),
  lilac (hue 50-125 deg), peaking at >= 1.33 x the median, covering >= 30 % of a 1.2 um disc and
  away from dark granules: lacy monocyte chromatin (<= 1.25 x) and the cytoplasm glimpsed between a
  basophil's granules do not count.
* **Cytoplasm colour.** Median colour of the cytoplasm's interior (away from the edge, nucleus and
  granules); a rim too thin to have an interior (lymphocyte, blast at 32 px) uses its purest 40 %
  of pixels (farthest from both nucleus and background colours).

Tolerance bands (:func:`tolerance_bands`, values in :data:`MARGINS`) widen each rule range for
resolution, blur and the generator's own jitter (+-8 per RGB channel, stain hue/saturation):

* cell size: rule diameter +- (0.6 um + 1 px);
* N:C: rule range +- 0.10 (basophil: granules cover the nucleus, so nucleus plus granules is what
  shows: rule minimum - 0.10 up to 0.95);
* nucleus shape: one mass (round, kidney) -> 1 component (kidney or granule-covered: 1-2),
  solidity >= 0.75 (granule-covered: 0.65) and elongation < 1.45; lobed (bilobed 2, segmented 3-5)
  -> 2 to the rule's maximum + 1 components, or solidity < 0.86, or elongation >= 1.45 (touching
  lobes merge below 64 px: "not one round mass" is what the pixels can show);
* cytoplasm colour: distance to the rule colour <= 48 in YIQ with luma weighted 0.35 (thin rims
  and granules mix the cytoplasm with nucleus, background and granules mostly in brightness);
* granules: dark-granule classes need a dark fraction >= 0.05, orange-granule classes an orange
  fraction >= 0.10; every other class must stay below 0.05 for both (neutrophil granules are
  0.3-0.45 um and half transparent, below a pixel, so only "no coarse granules" is checked);
* nucleoli: the rule's count, upper end + 1 (a nucleolus may show as two blobs).

:func:`improve_lib.plausibility.checker_scoring.validation_table` is the check that these bands work: fresh images of every class judged
against every class's rules. Measured on seeds never used for tuning: 40 per class (seeds 4242 at
32 px, 4343 at 64 px, as in tests/plausibility/test_cell_checker.py) gives 100 % on the diagonal and 0 % elsewhere;
200 per class (seeds 900 and 901) gives >= 98.5 % (32 px) and >= 99.5 % (64 px) on the diagonal and
0 % elsewhere. One 32 px image takes about 5 ms.
"""
from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, QhullError
from skimage.restoration import denoise_nl_means

from improve_lib.core.errors import StudyInputError
from improve_lib.data.synthetic_cells import CLASSES, COMMON_RULES, FIELD_OF_VIEW_UM, RULES

__all__ = [
    "CRITERIA",
    "MARGINS",
    "count_lobes",
    "measure_cell",
    "noise_sd",
    "tolerance_bands",
    "judge",
]

#: Criterion ids, the same as in ``plausibility/review/criteria/synthetic.yaml``.
CRITERIA: tuple[str, ...] = ("cell_size", "nucleus_shape", "nc_ratio", "cytoplasm_colour", "granules", "nucleoli")

#: Margins that widen the rule ranges (see the module docstring for why each is what it is).
MARGINS: dict = {
    "diameter_um": 0.6,          # plus one pixel, added per resolution
    "nc": 0.10,
    "basophil_nc_max": 0.95,
    "round_min_solidity": 0.75,
    "lobed_max_solidity": 0.86,
    "lobed_min_elongation": 1.45,
    "colour_luma_weight": 0.35,
    "colour_distance": 48.0,
    "covered_min_solidity": 0.65,
    "dark_fraction": 0.05,
    "orange_fraction_present": 0.10,
    "orange_fraction_absent": 0.05,
    "extra_nucleoli": 1,
}

#: Estimated noise SD (0-255 units) above which an image is denoised before measuring. Clean renders
#: read at most about 3 from their own texture (measured on 30 renders per resolution, 32 and 64 px).
DENOISE_ABOVE = 4.0
#: The share of the estimate that is the renders' own fine texture, not noise (removed in quadrature).
TEXTURE_SD = 2.5
_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)

_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=np.float32)
_CROSS = ndi.generate_binary_structure(2, 1)
_SQUARE = np.ones((3, 3), bool)
_ANGLES = np.linspace(0.0, 2.0 * np.pi, 64, endpoint=False)


def _yiq_of(rgb) -> np.ndarray:
    return _YIQ.astype(np.float64) @ np.asarray(rgb, dtype=np.float64)


def _hue(v) -> float:
    return math.degrees(math.atan2(v[2], v[1]))


def _wrap(deg):
    return (deg + 180.0) % 360.0 - 180.0


_BG_Y = float(_yiq_of(COMMON_RULES["background_rgb"])[0])
_RBC_HUE = _hue(_yiq_of(COMMON_RULES["rbc_rgb"]))


def _as_rgb_array(image) -> np.ndarray:
    if isinstance(image, (str, os.PathLike)):
        try:
            with Image.open(image) as im:
                arr = np.asarray(im.convert("RGB"))
        except (OSError, ValueError) as exc:
            raise StudyInputError(f"morphology: cannot read image {image}: {exc}") from exc
    elif isinstance(image, Image.Image):
        arr = np.asarray(image.convert("RGB"))
    else:
        arr = np.asarray(image)
        if arr.dtype != np.uint8:
            # float images in [0, 1], as the models produce them
            arr = (np.clip(arr.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] != arr.shape[1] or arr.shape[0] < 16:
        raise StudyInputError(f"morphology: expected a square RGB image of at least 16 px, got shape {arr.shape}")
    return arr


def noise_sd(image) -> float:
    """Estimated SD of the image's pixel noise in 0-255 units, averaged over RGB (see module docstring).

    Robust to edges: the Laplacian-difference mask cancels locally planar structure and the median
    ignores the few pixels on edges. Clean synthetic renders read 1.5-3 from their fine texture."""
    rgb = _as_rgb_array(image).astype(np.float64)
    per_channel = [np.median(np.abs(ndi.convolve(rgb[..., c], _IMMERKAER, mode="reflect")[1:-1, 1:-1]))
                   for c in range(3)]
    return float(np.mean(per_channel)) / 0.6745 / 6.0


def _denoised(rgb: np.ndarray, sd: float) -> np.ndarray:
    """Non-local means with a strength set by the noise estimate ``sd`` (module docstring)."""
    sigma = math.sqrt(max(sd * sd - TEXTURE_SD ** 2, 1.0)) / 255.0
    out = denoise_nl_means(rgb.astype(np.float64) / 255.0, h=0.8 * sigma, sigma=sigma, patch_size=3,
                           patch_distance=4, fast_mode=True, channel_axis=-1)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def _sizes(lab: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(lab.ravel(), minlength=n + 1)[1:]


def _pixels(rgb: np.ndarray) -> dict:
    """Per-pixel colour features in the normalised frame (see module docstring) and pixel classes."""
    res = rgb.shape[0]
    yiq = rgb.astype(np.float32) @ _YIQ.T
    bw = max(1, res // 16)
    border = np.zeros(rgb.shape[:2], bool)
    border[:bw] = border[-bw:] = True
    border[:, :bw] = border[:, -bw:] = True
    by = yiq[..., 0][border]
    bright = border & (yiq[..., 0] >= np.percentile(by, 95) - 8)
    bg_ref = np.median(yiq[bright], axis=0)
    gain = _BG_Y / max(float(bg_ref[0]), 1.0)
    yiq *= gain
    bg_ref = bg_ref * gain
    y = yiq[..., 0]
    hue = np.degrees(np.arctan2(yiq[..., 2], yiq[..., 1]))
    chroma = np.hypot(yiq[..., 1], yiq[..., 2])

    rel = _wrap(hue - _RBC_HUE)
    cand = (chroma > 25) & (y > 130) & (np.abs(rel) < 30)
    pre = (rel > 30) & (rel < 125) & (y < 150)
    gy, gx = np.mgrid[:res, :res]
    if pre.sum() >= 3:
        py, px = np.nonzero(pre)
        r_max = math.sqrt(pre.sum() / (0.25 * math.pi))
        outside = cand & ((gx - px.mean()) ** 2 + (gy - py.mean()) ** 2 > r_max ** 2)
        if outside.sum() >= 5:
            cand = outside
    rbc_shift = 0.0
    if cand.sum() >= 5:
        hist = np.bincount(np.clip((rel[cand] + 30).astype(int), 0, 59), minlength=60).astype(float)
        mode = float(np.argmax(np.convolve(hist, np.ones(5), mode="same"))) - 29.5
        rbc_shift = float(np.median(rel[cand & (np.abs(rel - mode) < 4)]))
    dh = _wrap(rel - rbc_shift)
    # The same rotation on the I/Q plane puts every colour in the nominal (unstained) hue frame.
    c, s_ = math.cos(math.radians(-rbc_shift)), math.sin(math.radians(-rbc_shift))
    yiq_n = np.stack([y, c * yiq[..., 1] - s_ * yiq[..., 2], s_ * yiq[..., 1] + c * yiq[..., 2]], axis=-1)
    d_bg = np.linalg.norm(yiq - bg_ref, axis=-1)
    bg = d_bg < 9
    return {
        "yiq": yiq_n, "y": y, "dh": dh, "chroma": chroma, "grid": (gy, gx), "d_bg": d_bg,
        "bg": bg,
        "rbc": (np.abs(dh) < 6) & (chroma > 6) & (y > 130) & ~bg,
        "nuc": (dh > 30) & (dh < 118) & (y < 150),
        "dark": (y < 42) & (dh < 62),
        "orange": (dh < -6) & (dh > -60) & (chroma > 45),
    }


def _fit_circle(mask: np.ndarray, cx: float, cy: float):
    """Centre and radius (px) of the circle fitted to where 64 rays from (cx, cy) leave ``mask``."""
    res = mask.shape[0]
    rs = np.arange(0.0, 0.75 * res, 0.5)
    cos, sin = np.cos(_ANGLES)[:, None], np.sin(_ANGLES)[:, None]
    radius = None
    for _ in range(3):
        xs = np.rint(cx + cos * rs).astype(int)
        ys = np.rint(cy + sin * rs).astype(int)
        ok = (xs >= 0) & (xs < res) & (ys >= 0) & (ys < res)
        inside = np.zeros(xs.shape, bool)
        inside[ok] = mask[ys[ok], xs[ok]]
        # The edge is the first gap of two samples (1 px): a one-sample speck inside does not stop a ray.
        gap = ~inside[:, 1:-1] & ~inside[:, 2:]
        r = rs[np.where(gap.any(1), gap.argmax(1) + 1, len(rs) - 1)] - 0.25
        med = float(np.median(r))
        keep = np.abs(r - med) <= 0.15 * med + 0.5
        if keep.sum() < 12 or med <= 1:
            break
        px, py = cx + np.cos(_ANGLES[keep]) * r[keep], cy + np.sin(_ANGLES[keep]) * r[keep]
        a = np.stack([px, py, np.ones_like(px)], 1)
        sol = np.linalg.lstsq(a, px * px + py * py, rcond=None)[0]
        cx, cy = sol[0] / 2, sol[1] / 2
        radius = math.sqrt(max(sol[2] + cx * cx + cy * cy, 0.0))
    return cx, cy, radius


def count_lobes(nuc: np.ndarray, min_frac: float = 0.06) -> int:
    """Most components (each >= ``min_frac`` of the nucleus) seen while eroding the nucleus away (also
    :mod:`improve_lib.plausibility.morphometry`'s lobe count). Erosion by k steps of the 4-neighbour cross keeps the
    pixels whose city-block distance to the background exceeds k: one distance transform does them all.
    """
    rows, cols = np.nonzero(nuc.any(1))[0], np.nonzero(nuc.any(0))[0]
    if len(rows) == 0:
        return 0
    crop = np.pad(nuc[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1], 1)
    depth = ndi.distance_transform_cdt(crop, metric="taxicab")
    min_px = max(1.0, min_frac * float(crop.sum()))
    best = 0
    for k in range(int(depth.max())):
        lab, n = ndi.label(depth > k)
        best = max(best, int((_sizes(lab, n) >= min_px).sum()))
    return best


def _solidity(mask: np.ndarray) -> float:
    yy, xx = np.nonzero(mask)
    if len(yy) < 3:
        return float("nan")
    pts = np.concatenate([np.stack([xx + dx, yy + dy], 1) for dx in (-0.5, 0.5) for dy in (-0.5, 0.5)])
    try:
        return float(len(yy) / ConvexHull(pts).volume)
    except QhullError:
        return float("nan")


def _elongation(mask: np.ndarray) -> float:
    """Major / minor axis of the second moments (1 for a disc; about 2 for two touching discs)."""
    yy, xx = np.nonzero(mask)
    if len(yy) < 3:
        return float("nan")
    ev = np.linalg.eigvalsh(np.cov(np.stack([xx, yy]).astype(float)) + np.eye(2) / 12.0)
    return float(math.sqrt(ev[1] / max(ev[0], 1e-9)))


def _nan_measures(res: int, sd: float, denoised: bool) -> dict:
    out = {"resolution": res, "noise_sd": sd, "denoised": denoised, "cell_found": False}
    for key in ("cell_diameter_um", "nucleus_fraction", "nucleus_solidity", "nucleus_elongation",
                "dark_fraction", "orange_fraction", "cytoplasm_y", "cytoplasm_i", "cytoplasm_q",
                "cytoplasm_hue_deg", "cytoplasm_chroma"):
        out[key] = float("nan")
    out.update(n_lobes=0, n_dark_granules=0, n_orange_granules=0, n_nucleoli=0)
    return out


def measure_cell(image, return_masks: bool = False) -> dict:
    """Measure one cell image (path, PIL image, uint8 array or float array in [0, 1]).

    Returns a dict: ``resolution``, ``cell_found``, ``cell_diameter_um``, ``nucleus_fraction`` (N:C,
    nucleus area / cell area), ``n_lobes``, ``nucleus_solidity``, ``nucleus_elongation``, ``dark_fraction`` /
    ``n_dark_granules``, ``orange_fraction`` / ``n_orange_granules``, ``n_nucleoli`` and the
    cytoplasm colour (``cytoplasm_y/_i/_q`` in YIQ 0-255 units, ``cytoplasm_hue_deg``,
    ``cytoplasm_chroma``), all in the normalised frame of the module docstring, plus ``noise_sd`` (the
    estimate of :func:`noise_sd`) and ``denoised`` (whether non-local means ran first). Lengths assume
    the generator's 24 um field of view. ``return_masks=True`` adds boolean ``cell_mask`` and
    ``nucleus_mask`` arrays (for figures). No cell or nucleus found: ``cell_found`` False, NaNs.
    """
    rgb = _as_rgb_array(image)
    res = rgb.shape[0]
    px_per_um = res / FIELD_OF_VIEW_UM
    sd = noise_sd(rgb)
    denoised = sd > DENOISE_ABOVE
    if denoised:
        rgb = _denoised(rgb, sd)
    p = _pixels(rgb)
    nucleish = p["nuc"] | p["dark"]
    lab, n = ndi.label(nucleish)
    if n == 0:
        return _nan_measures(res, sd, denoised)
    sizes = _sizes(lab, n)
    seed = np.isin(lab, np.flatnonzero(sizes >= 0.25 * sizes.max()) + 1)
    cell, radius = _cell(p, seed, res)
    cell_area = float(cell.sum())
    if cell_area < 4:
        return _nan_measures(res, sd, denoised)
    nuc, cyto_ref = _nucleus(p, seed, nucleish, cell)
    # Shape from the strict purple mask: the nearest-colour boundary closes the waist between lobes.
    shape_mask = ndi.binary_fill_holes(nucleish & cell)

    dark = p["dark"] & cell
    orange = p["orange"] & cell & ~nuc
    out = {"resolution": res, "noise_sd": sd, "denoised": denoised, "cell_found": True,
           "cell_diameter_um": 2.0 * radius / px_per_um,
           "nucleus_fraction": float(nuc.sum()) / cell_area,
           "n_lobes": count_lobes(shape_mask),
           "nucleus_solidity": _solidity(shape_mask),
           "nucleus_elongation": _elongation(shape_mask),
           "dark_fraction": float(dark.sum()) / cell_area,
           "n_dark_granules": int(ndi.label(dark)[1]),
           "orange_fraction": float(orange.sum()) / cell_area,
           "n_orange_granules": int(ndi.label(orange)[1])}
    if cyto_ref is not None:
        out.update(cytoplasm_y=float(cyto_ref[0]), cytoplasm_i=float(cyto_ref[1]), cytoplasm_q=float(cyto_ref[2]),
                   cytoplasm_hue_deg=_hue(cyto_ref), cytoplasm_chroma=float(math.hypot(cyto_ref[1], cyto_ref[2])))
    else:
        out.update({k: float("nan") for k in ("cytoplasm_y", "cytoplasm_i", "cytoplasm_q", "cytoplasm_hue_deg",
                                              "cytoplasm_chroma")})
    out["n_nucleoli"] = _nucleoli(p, nuc, res, px_per_um)
    if return_masks:
        out["cell_mask"] = cell
        out["nucleus_mask"] = nuc
    return out


def _cell(p: dict, seed: np.ndarray, res: int) -> tuple[np.ndarray, float]:
    """The cell disc (mask) and its radius in px, grown from the nucleus ``seed``."""
    # Cell: not background, not red cell, connected to the nucleus (the ring between a purple nucleus
    # and a salmon cytoplasm can pass through red-cell hues, hence the dilated seed).
    celllike = ~(p["bg"] | p["rbc"]) | seed
    lab, _ = ndi.label(celllike)
    near = ndi.binary_dilation(seed, _SQUARE, iterations=max(1, res // 32))
    ids = np.unique(lab[near & celllike])
    rough = ndi.binary_fill_holes(np.isin(lab, ids[ids > 0]))
    yy, xx = np.nonzero(rough)
    cx, cy, radius = _fit_circle(rough, float(xx.mean()), float(yy.mean()))
    if radius is None:
        radius = math.sqrt(rough.sum() / math.pi)
    # Mixed edge pixels count as cell in ``rough``: take 0.3 px off the radius (calibrated on
    # generated cells at 32 and 64 px, where it removes the mean bias).
    radius = max(radius - 0.3, 0.5)
    gy, gx = p["grid"]
    return (gx - cx) ** 2 + (gy - cy) ** 2 <= radius ** 2, radius


def _nucleus(p: dict, seed: np.ndarray, nucleish: np.ndarray, cell: np.ndarray):
    """The nucleus mask and the cytoplasm's reference colour (None when no cytoplasm shows)."""
    # Nucleus: nearest of the cell's own nucleus and cytoplasm colours (an unbiased 50 % boundary).
    yiq = p["yiq"]
    core = seed & cell & p["nuc"]
    core_eroded = ndi.binary_erosion(core, _CROSS)
    nuc_ref = np.median(yiq[core_eroded if core_eroded.sum() >= 4 else (core if core.any() else seed)], axis=0)
    granules = p["dark"] | p["orange"]
    # Nucleoli are holes in the purple mask: keep them out of the cytoplasm sample.
    nuc_filled = ndi.binary_fill_holes(nucleish)
    cyto_px = cell & ~nuc_filled & ~granules & ~p["bg"] & ~p["rbc"]
    interior = cyto_px & ndi.binary_erosion(cell, _CROSS) & ~ndi.binary_dilation(nuc_filled | granules, _CROSS)
    cyto_ref = None
    if interior.sum() >= 5:
        cyto_ref = np.median(yiq[interior], axis=0)
    elif cyto_px.sum() >= 3:
        # A thin rim (lymphocyte, blast: about a pixel at 32 px) has no interior: take its purest
        # pixels, the farthest from both the nucleus colour and the background colour.
        d_nuc = np.linalg.norm(yiq[cyto_px] - nuc_ref, axis=-1)
        purity = np.minimum(d_nuc, p["d_bg"][cyto_px])
        cyto_ref = np.median(yiq[cyto_px][purity >= np.quantile(purity, 0.6)], axis=0)
    if cyto_ref is not None:
        nearer = np.linalg.norm(yiq - nuc_ref, axis=-1) < np.linalg.norm(yiq - cyto_ref, axis=-1)
        nuc = (nearer & ~p["orange"]) | p["dark"]
        nuc &= cell
        lab, n = ndi.label(nuc)
        keep = np.unique(lab[nuc & seed])
        nuc = np.isin(lab, keep[keep > 0])
    else:
        nuc = nucleish & cell
    return ndi.binary_fill_holes(nuc), cyto_ref


def _nucleoli(p: dict, nuc: np.ndarray, res: int, px_per_um: float) -> int:
    """Number of nucleoli: pale lilac blobs inside the eroded nucleus (module docstring)."""
    inner_nuc = ndi.binary_erosion(nuc, _CROSS, iterations=max(1, res // 32))
    if inner_nuc.sum() < 3:
        return 0
    med = float(np.median(p["y"][inner_nuc]))
    pale = inner_nuc & (p["y"] > max(1.2 * med, 110.0)) & (p["dh"] > 50) & (p["dh"] < 125)
    # Pale gaps between a basophil's granules are cytoplasm, not nucleoli: drop blobs touching granules.
    lab, n = ndi.label(pale)
    if n and p["dark"].any():
        near_dark = ndi.binary_dilation(p["dark"], _SQUARE, iterations=max(1, res // 32) + 1)
        touching = np.unique(lab[near_dark & pale])
        pale &= ~np.isin(lab, touching[touching > 0])
        lab, n = ndi.label(pale)
    if not n:
        return 0
    # Hysteresis: a nucleolus peaks >= 1.33 x the nucleus luma (lacy monocyte chromatin
    # stays below 1.25 x) and covers at least 30 % of a 1.2 um disc.
    peaks = ndi.maximum(p["y"], lab, index=np.arange(1, n + 1))
    min_px = max(1, int(0.3 * math.pi * (0.6 * px_per_um) ** 2))
    return int(((np.asarray(peaks) >= 1.33 * med) & (_sizes(lab, n) >= min_px)).sum())


# ---- judging ------------------------------------------------------------------------------------

def _granule_kind(rule: dict) -> str:
    """'dark', 'orange', 'fine' (too small to resolve) or 'none', from a class's granule rule."""
    if not rule["granule_rgb"] or rule["n_granules"][1] == 0:
        return "none"
    if rule["granule_diameter_um"][1] < 0.6:
        return "fine"
    y, i, q = _yiq_of(rule["granule_rgb"])
    if y < 60:
        return "dark"
    return "orange" if abs(_wrap(math.degrees(math.atan2(q, i)) - _RBC_HUE)) < 45 else "dark"


def tolerance_bands(class_name: str, resolution: int) -> dict:
    """The tolerance band of every criterion for ``class_name`` at ``resolution`` px, from RULES.

    Keys are the ids of :data:`CRITERIA`; values are small dicts (ranges as (lo, hi) tuples) that
    :func:`judge` applies. The margins are :data:`MARGINS` (see the module docstring).
    """
    if class_name not in RULES:
        raise StudyInputError(f"morphology: unknown class {class_name!r}; valid classes are {', '.join(CLASSES)}")
    rule = RULES[class_name]
    px_um = FIELD_OF_VIEW_UM / int(resolution)
    d_lo, d_hi = rule["diameter_um"]
    dm = MARGINS["diameter_um"] + px_um
    nc_lo, nc_hi = rule["nucleus_area_fraction"]
    nc = (nc_lo - MARGINS["nc"], nc_hi + MARGINS["nc"])
    if rule["granules_cover_nucleus"]:
        nc = (nc_lo - MARGINS["nc"], MARGINS["basophil_nc_max"])
    shape = rule["nucleus_shape"]
    lobes = tuple(rule["n_lobes"])
    if lobes[1] >= 2:
        # Lobed (segmented 3-5, bilobed 2): the lobe count, widened by one; or, since overlapping
        # lobes merge below 64 px, a clearly non-convex or elongated single mass.
        nucleus = {"shape": shape, "lobed": True, "lobes": (2, lobes[1] + 1),
                   "max_solidity": MARGINS["lobed_max_solidity"], "min_elongation": MARGINS["lobed_min_elongation"]}
    else:
        # One mass: one component (a kidney's deep hof, or granules over the nucleus, may split it in
        # two while eroding), compact and not elongated; granules over a nucleus make it ragged.
        nucleus = {"shape": shape, "lobed": False,
                   "lobes": (1, 2 if shape == "kidney" or rule["granules_cover_nucleus"] else 1),
                   "min_solidity": MARGINS["covered_min_solidity" if rule["granules_cover_nucleus"]
                                           else "round_min_solidity"],
                   "max_elongation": MARGINS["lobed_min_elongation"]}
    kind = _granule_kind(rule)
    n_nucl = tuple(rule["n_nucleoli"])
    return {
        "cell_size": {"diameter_um": (d_lo - dm, d_hi + dm)},
        "nucleus_shape": nucleus,
        "nc_ratio": {"nucleus_fraction": nc},
        "cytoplasm_colour": {"yiq": tuple(float(v) for v in _yiq_of(rule["cytoplasm_rgb"])),
                             "luma_weight": MARGINS["colour_luma_weight"], "max_distance": MARGINS["colour_distance"]},
        "granules": {"kind": kind,
                     "dark_fraction": ((MARGINS["dark_fraction"], 1.0) if kind == "dark"
                                       else (0.0, MARGINS["dark_fraction"])),
                     "orange_fraction": ((MARGINS["orange_fraction_present"], 1.0) if kind == "orange"
                                         else (0.0, MARGINS["orange_fraction_absent"]))},
        "nucleoli": {"n_nucleoli": (n_nucl[0], n_nucl[1] + MARGINS["extra_nucleoli"] if n_nucl[1] else 0)},
    }


def _inside(value, lohi, closed_hi: bool = True) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    lo, hi = lohi
    return lo <= value <= hi if closed_hi else lo <= value < hi


def judge(measures: dict, class_name: str) -> dict:
    """Judge :func:`measure_cell` output against ``class_name``'s rules.

    Returns ``{"plausible": bool, "criteria": {criterion id: bool}, "failed": [ids], "class_name": ...}``;
    ``plausible`` is True only when every criterion passes (the paper's rule). An image with no cell
    found fails every criterion.
    """
    bands = tolerance_bands(class_name, int(measures.get("resolution", 64)))
    ok: dict[str, bool] = {}
    found = bool(measures.get("cell_found", False))
    ok["cell_size"] = found and _inside(measures["cell_diameter_um"], bands["cell_size"]["diameter_um"])
    nb = bands["nucleus_shape"]
    if not found:
        shape_ok = False
    elif nb["lobed"]:
        shape_ok = (_inside(measures["n_lobes"], nb["lobes"]) or measures["nucleus_solidity"] < nb["max_solidity"]
                    or measures["nucleus_elongation"] >= nb["min_elongation"])
    else:
        shape_ok = (_inside(measures["n_lobes"], nb["lobes"]) and measures["nucleus_solidity"] >= nb["min_solidity"]
                    and measures["nucleus_elongation"] < nb["max_elongation"])
    ok["nucleus_shape"] = bool(shape_ok)
    ok["nc_ratio"] = found and _inside(measures["nucleus_fraction"], bands["nc_ratio"]["nucleus_fraction"])
    cb = bands["cytoplasm_colour"]
    got = np.array([measures.get("cytoplasm_y", np.nan), measures.get("cytoplasm_i", np.nan),
                    measures.get("cytoplasm_q", np.nan)], dtype=float)
    diff = (got - np.array(cb["yiq"])) * np.array([cb["luma_weight"], 1.0, 1.0])
    dist = float(np.linalg.norm(diff))
    ok["cytoplasm_colour"] = found and dist <= cb["max_distance"]
    gb = bands["granules"]
    ok["granules"] = found and (_inside(measures["dark_fraction"], gb["dark_fraction"], gb["kind"] == "dark")
                                and _inside(measures["orange_fraction"], gb["orange_fraction"], gb["kind"] == "orange"))
    ok["nucleoli"] = found and _inside(measures["n_nucleoli"], bands["nucleoli"]["n_nucleoli"])
    ok = {k: bool(v) for k, v in ok.items()}
    return {"class_name": class_name, "plausible": all(ok.values()), "criteria": ok,
            "failed": [k for k in CRITERIA if not ok[k]], "colour_distance": dist}

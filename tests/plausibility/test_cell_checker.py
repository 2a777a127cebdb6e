"""Pixel morphology checker (improve_lib.plausibility.cell_checker) and its tables (improve_lib.plausibility.checker_scoring): validated on
fresh synthetic cells, exact on hand-drawn shapes."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from improve_lib.core.errors import StudyInputError
from improve_lib.data import synthetic_cells as sc
from improve_lib.plausibility import cell_checker, checker_scoring

# Seeds 0-11, 500 and 600 were used to tune the margins; these are fresh.
VALIDATION_SEEDS = {32: 4242, 64: 4343}


@pytest.mark.parametrize("resolution", [32, 64])
def test_validation_own_class_plausible_other_classes_not(resolution):
    table = checker_scoring.validation_table(resolution, n_per_class=40, seed=VALIDATION_SEEDS[resolution])
    assert list(table.index) == list(sc.CLASSES) and list(table.columns) == list(sc.CLASSES)
    for true in sc.CLASSES:
        own = table.loc[true, true]
        assert own >= 95.0, f"{true} judged plausible for its own class only {own} %"
        for other in sc.CLASSES:
            if other != true:
                assert table.loc[true, other] <= 10.0, f"{true} passes as {other} in {table.loc[true, other]} %"


def _hand_drawn_cell(res=64, cell_r=12.0, nucleus_r=6.0, supersample=4):
    """A grey-blue disc (cytoplasm) with a purple disc (nucleus) on the plasma background, antialiased."""
    big = res * supersample
    im = Image.new("RGB", (big, big), (236, 228, 234))
    d = ImageDraw.Draw(im)
    c = big / 2
    r = cell_r * supersample
    d.ellipse((c - r, c - r, c + r, c + r), fill=(170, 178, 205))
    r = nucleus_r * supersample
    d.ellipse((c - r, c - r, c + r, c + r), fill=(138, 100, 165))
    return im.resize((res, res), Image.Resampling.BOX)


@pytest.mark.parametrize("res,cell_r,nucleus_r", [(64, 12.0, 6.0), (64, 18.0, 13.0), (32, 8.0, 5.0)])
def test_measure_hand_drawn_disc(res, cell_r, nucleus_r):
    m = cell_checker.measure_cell(_hand_drawn_cell(res, cell_r, nucleus_r))
    assert m["cell_found"]
    want_um = 2 * cell_r * sc.FIELD_OF_VIEW_UM / res
    assert m["cell_diameter_um"] == pytest.approx(want_um, abs=0.5 * sc.FIELD_OF_VIEW_UM / res + 0.05)
    assert m["nucleus_fraction"] == pytest.approx((nucleus_r / cell_r) ** 2, abs=0.05)
    assert m["n_lobes"] == 1 and m["nucleus_solidity"] > 0.9 and m["nucleus_elongation"] < 1.1
    assert m["dark_fraction"] == 0 and m["orange_fraction"] == 0 and m["n_nucleoli"] == 0


def test_measure_accepts_paths_arrays_and_floats(tmp_path):
    img, _ = sc.render_cell("eosinophil", sc.image_rng(99, "eosinophil", 0), 32)
    path = tmp_path / "cell.png"
    img.save(path)
    a = cell_checker.measure_cell(img)
    assert cell_checker.measure_cell(path) == a
    assert cell_checker.measure_cell(np.asarray(img)) == a
    from_floats = cell_checker.measure_cell(np.asarray(img) / 255.0)
    assert from_floats["cell_diameter_um"] == pytest.approx(a["cell_diameter_um"], abs=0.3)


def test_measure_rejects_bad_images(tmp_path):
    with pytest.raises(StudyInputError, match="square RGB"):
        cell_checker.measure_cell(np.zeros((32, 40, 3), np.uint8))
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(StudyInputError, match="broken.png"):
        cell_checker.measure_cell(bad)


def test_empty_field_is_implausible():
    m = cell_checker.measure_cell(np.full((32, 32, 3), (236, 228, 234), np.uint8))
    assert not m["cell_found"]
    j = cell_checker.judge(m, "lymphocyte")
    assert not j["plausible"] and j["failed"] == list(cell_checker.CRITERIA)


def test_bands_come_from_rules():
    for name, rule in sc.RULES.items():
        bands = cell_checker.tolerance_bands(name, 64)
        lo, hi = bands["cell_size"]["diameter_um"]
        assert lo < rule["diameter_um"][0] and hi > rule["diameter_um"][1]
        nlo, nhi = bands["nc_ratio"]["nucleus_fraction"]
        assert nlo < rule["nucleus_area_fraction"][0] < rule["nucleus_area_fraction"][1] < nhi
        assert set(bands) == set(cell_checker.CRITERIA)
    assert cell_checker.tolerance_bands("basophil", 64)["granules"]["kind"] == "dark"
    assert cell_checker.tolerance_bands("eosinophil", 64)["granules"]["kind"] == "orange"
    assert cell_checker.tolerance_bands("neutrophil", 64)["granules"]["kind"] == "fine"
    assert cell_checker.tolerance_bands("blast", 64)["nucleoli"]["n_nucleoli"] == (1, 4)
    with pytest.raises(StudyInputError, match="unknown class"):
        cell_checker.tolerance_bands("erythrocyte", 64)


def test_criteria_ids_match_the_review_criteria():
    from improve_lib.plausibility.review.tasks import load_criteria

    assert [c["id"] for c in load_criteria("synthetic")["criteria"]] == list(cell_checker.CRITERIA)


def test_check_images_and_objective_table(tmp_path):
    # baseline: blast folder holds lymphocytes (implausible as blasts); prototype: all correct.
    for arm in ("baseline", "prototype"):
        for folder in ("lymphocyte", "blast"):
            drawn = "lymphocyte" if arm == "baseline" else folder
            for i in range(3):
                img, _ = sc.render_cell(drawn, sc.image_rng(77, drawn, i), 32)
                (tmp_path / "samples" / arm / folder).mkdir(parents=True, exist_ok=True)
                img.save(tmp_path / "samples" / arm / folder / f"{i}.png")
    table, checks = checker_scoring.objective_plausibility_table(tmp_path, ("baseline", "prototype"), return_checks=True)
    assert list(table.index) == ["lymphocyte", "blast", "mean"]
    assert table.loc["lymphocyte", "baseline %"] == 100 and table.loc["blast", "baseline %"] == 0
    assert table.loc["blast", "prototype %"] == 100 and table.loc["mean", "baseline %"] == 50
    assert table.loc["blast", "baseline n"] == 3 and table.loc["mean", "prototype n"] == 6
    assert table.loc["blast", "baseline CI high"] > 0  # Wilson: 0/3 still allows up to ~56 %
    assert len(checks) == 12 and {"ok_cell_size", "failed", "cell_diameter_um"} <= set(checks.columns)
    wrong = checks[(checks.arm == "baseline") & (checks.intended_class == "blast")]
    assert not wrong.plausible.any() and wrong.failed.str.contains("cell_size").all()
    with pytest.raises(StudyInputError, match="3 paths but 2"):
        checker_scoring.check_images(list(checks.path[:3]), ["blast", "blast"])


def test_measure_is_fast():
    import time

    imgs = [sc.render_cell(c, sc.image_rng(5, c, 0), 32)[0] for c in sc.CLASSES]
    cell_checker.measure_cell(imgs[0])
    t = time.perf_counter()
    for im in imgs:
        cell_checker.measure_cell(im)
    per_image = (time.perf_counter() - t) / len(imgs)
    assert per_image < 0.05, f"{per_image * 1000:.1f} ms per 32 px image"


# ---- generated cells: noise, the status of each check, which rule failed ---------------------------

def test_noise_estimate_reads_added_noise_and_leaves_clean_renders_alone():
    rng = np.random.default_rng(3)
    for res in (32, 64):
        for cls in sc.CLASSES:
            img, _ = sc.render_cell(cls, sc.image_rng(4444, cls, 0), res)
            clean = cell_checker.noise_sd(img)
            assert clean < cell_checker.DENOISE_ABOVE, f"{cls} at {res} px reads {clean:.2f} clean"
            assert not cell_checker.measure_cell(img)["denoised"]
            noisy = checker_scoring.perturb(img, "noise", 8, rng)
            assert 6.5 < cell_checker.noise_sd(noisy) < 11.0
            assert cell_checker.measure_cell(noisy)["denoised"]


@pytest.mark.parametrize("resolution", [32, 64])
def test_checker_sees_cells_through_noise(resolution):
    """The issue's bar: real renders pass >= 90 % at noise SD 8/255 while other classes pass <= 20 %
    (fresh seed; 12 per class keeps the test short, the README's curves use more)."""
    curves = checker_scoring.robustness_curves(resolution, 12, seed=4646, perturbations={"noise": (8,)})
    verdict = checker_scoring.robustness_verdict(curves)
    assert verdict["met"], verdict
    assert list(curves.columns[:4]) == ["perturbation", "level", "n", "own %"] and curves["n"].iloc[0] == 72


def test_perturbations_are_reproducible_and_do_what_they_say():
    img, _ = sc.render_cell("monocyte", sc.image_rng(1, "monocyte", 0), 32)
    a = np.asarray(img).astype(float)
    for kind, zero in (("noise", 0), ("blur", 0.0), ("tone", 0.0), ("jpeg", 100)):
        assert np.array_equal(np.asarray(checker_scoring.perturb(img, kind, zero, np.random.default_rng(0))), a)
    n1 = np.asarray(checker_scoring.perturb(img, "noise", 8, np.random.default_rng(5)))
    assert np.array_equal(n1, np.asarray(checker_scoring.perturb(img, "noise", 8, np.random.default_rng(5))))
    assert 6.0 < float((n1 - a).std()) < 9.0
    grey = np.asarray(checker_scoring.perturb(img, "tone", 0.5, np.random.default_rng(0))).astype(float)
    assert np.abs(grey - (0.5 * a + 64.0)).max() <= 0.5 + 1e-9
    blurred = np.asarray(checker_scoring.perturb(img, "blur", 1.0, np.random.default_rng(0))).astype(float)
    assert blurred.std() < a.std()
    assert checker_scoring.perturb(img, "jpeg", 50, np.random.default_rng(0)).size == img.size
    with pytest.raises(StudyInputError, match="unknown perturbation 'rotate'"):
        checker_scoring.perturb(img, "rotate", 1, np.random.default_rng(0))


def test_no_cell_is_reported_apart_and_criterion_table_says_which_rule_failed(tmp_path):
    blank = Image.new("RGB", (32, 32), (236, 228, 234))
    (tmp_path / "samples" / "baseline" / "lymphocyte").mkdir(parents=True)
    (tmp_path / "samples" / "prototype" / "lymphocyte").mkdir(parents=True)
    blank.save(tmp_path / "samples" / "baseline" / "lymphocyte" / "0.png")
    for i in range(2):
        img, _ = sc.render_cell("lymphocyte", sc.image_rng(78, "lymphocyte", i), 32)
        img.save(tmp_path / "samples" / "prototype" / "lymphocyte" / f"{i}.png")
    big, _ = sc.render_cell("monocyte", sc.image_rng(78, "monocyte", 0), 32)  # far too big for a lymphocyte
    big.save(tmp_path / "samples" / "baseline" / "lymphocyte" / "1.png")
    _, checks = checker_scoring.objective_plausibility_table(tmp_path, ("baseline", "prototype"), return_checks=True)
    assert list(checks.sort_values("path").status) == ["no cell found", "implausible", "plausible", "plausible"]
    table = checker_scoring.criterion_table(checks, ("baseline", "prototype"))
    base = table.loc[("lymphocyte", "baseline")]
    assert base["n"] == 2 and base["no cell found %"] == 50 and base["cell_size %"] == 0 and base["plausible %"] == 0
    assert table.loc[("lymphocyte", "prototype"), "plausible %"] == 100
    assert table.loc[("mean", "prototype"), "n"] == 2
    with pytest.raises(StudyInputError, match="lack columns"):
        checker_scoring.criterion_table(checks.drop(columns=["status"]), ("baseline",))

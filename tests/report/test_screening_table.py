"""tools/screening_table.py: the screening's gap to real images per variant, and its refusal of the test split."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from scipy import ndimage

from improve_lib.core.errors import StudyInputError


@pytest.fixture(scope="module")
def tool(load_tool):
    return load_tool("screening_table")


def _images(run: Path) -> None:
    """8 px real validation images of two classes (noise with a tone of its own per image); the laptop variant's
    samples are them blurred, rot90's are them as they are."""
    rng = np.random.default_rng(0)
    rows = []
    for label, name in enumerate(("ART", "BLA")):
        for i in range(2):
            real = np.clip(rng.normal(0.3 + 0.4 * rng.random(), 0.2, (8, 8, 3)), 0, 1)
            (run / "real").mkdir(parents=True, exist_ok=True)
            Image.fromarray((real * 255).astype(np.uint8)).save(run / "real" / f"{name}{i}.png")
            rows.append({"path": str(run / "real" / f"{name}{i}.png"), "label": label, "class_name": name,
                         "split": "validation", "group": f"{name}{i}"})
            sample = ndimage.uniform_filter(real, size=(3, 3, 1)) if run.name.startswith("recipe_laptop") else real
            for arm in ("baseline", "prototype"):
                (run / "samples" / arm / name).mkdir(parents=True, exist_ok=True)
                Image.fromarray((sample * 255).astype(np.uint8)).save(run / "samples" / arm / name / f"{i:04d}.png")
    (run / "data").mkdir()
    pd.DataFrame(rows).to_csv(run / "data" / "split.csv", index=False)
    (run / "params.yaml").write_text(yaml.safe_dump({"RESOLUTION": 8, "N_PER_CLASS": 2}))


def _sweep(root: Path, eval_split: str = "validation") -> Path:
    """A finished two-variant screening as the sweep writes it (only the files the tool reads)."""
    (root / "comparison").mkdir(parents=True)
    (root / "sweep.yaml").write_text(yaml.safe_dump({"dataset": "bone_marrow", "grid": {"RECIPE": ["laptop", "rot90"]}}))
    pd.DataFrame({"run": ["recipe_laptop-seed0", "recipe_rot90-seed0"], "RECIPE": ["laptop", "rot90"],
                  "status": ["done", "done"]}).to_csv(root / "runs.csv", index=False)
    for run in ("recipe_laptop-seed0", "recipe_rot90-seed0"):
        (root / run / "metrics").mkdir(parents=True)
        (root / run / "metrics" / "metrics.json").write_text(json.dumps({"eval_split": eval_split}))
        _images(root / run)
    rows = []
    for variant, (b, p, real, kid) in {"laptop": (40.0, 38.0, 63.0, 3.5), "rot90": (45.0, 47.5, 62.0, 2.5)}.items():
        rows += [(variant, "TSTR macro F1 %", "baseline", b), (variant, "TSTR macro F1 %", "prototype", p),
                 (variant, "TSTR macro F1 %", "real", real), (variant, "KID", "baseline", kid),
                 (variant, "KID", "prototype", kid + 0.1), (variant, "recall %", "baseline", 0.5),
                 (variant, "recall %", "prototype", 0.25), (variant, "coverage %", "baseline", 8.0),
                 (variant, "coverage %", "prototype", 6.0), (variant, "precision %", "baseline", 40.0),
                 (variant, "precision %", "prototype", 41.0)]
    pd.DataFrame([{"RECIPE": v, "metric": m, "arm": a, "n": 1, "mean": x, "low": None, "high": None, "seeds": "0"}
                  for v, m, a, x in rows]).to_csv(root / "comparison" / "summary.csv", index=False)
    return root


def test_gap_to_real_and_its_change_against_the_reference(tool, tmp_path):
    dataset, table = tool.dataset_table(_sweep(tmp_path / "s"), "laptop")
    assert dataset == "bone_marrow" and list(table["variant"]) == ["laptop", "rot90"]
    assert table["gap"].tolist() == pytest.approx([23.0, 14.5])  # real minus the better arm (baseline, then prototype)
    assert table["gap change"].tolist() == pytest.approx([0.0, -8.5])
    text = tool.markdown(dataset, table)
    assert "| rot90 | 45.0 | 47.5 | 62.0 | 14.5 | -8.5 | 2.50 / 2.60 | 0.5 / 0.2 |" in text
    # samples that are the real images: as real; blurred copies: less detail, the tone's spread about kept
    assert text.rstrip().endswith("| 1.00 / 1.00 | 1.00 / 1.00 |")
    laptop = table.set_index("variant").loc["laptop"]
    assert laptop["detail baseline"] < 0.5 and laptop["tone spread prototype"] == pytest.approx(1, abs=0.1)
    with pytest.raises(StudyInputError, match="no variant 'w1'"):
        tool.dataset_table(tmp_path / "s", "w1")


def test_a_screening_scored_on_the_test_split_is_refused(tool, tmp_path):
    with pytest.raises(StudyInputError, match="scored on the test split"):
        tool.dataset_table(_sweep(tmp_path / "s", eval_split="test"), "laptop")


def _results(root: Path, seed: int, gaps: dict, cpu: str = "AVX512+AMX+AVX512_BF16", split: str = "validation") -> Path:
    """A results folder of one sitting (python -m improve_lib results): per variant a run whose real images score
    60 % and whose better arm scores 60 - gap (only the files the over-seeds table reads)."""
    (root / "runs").mkdir(parents=True)
    (root / "sweep.yaml").write_text(yaml.safe_dump({"dataset": "bone_marrow", "grid": {"RECIPE": list(gaps)}}))
    for variant, gap in gaps.items():
        run = root / "runs" / f"recipe_{variant}-seed{seed}"
        run.mkdir()
        f1 = {"baseline": (60 - gap) / 100, "prototype": (60 - gap - 1) / 100, "real": 0.6}
        fidelity = [{"arm": arm, "class_name": "all", "kid_mean": 2.0 + gap / 10, "recall": 0.05}
                    for arm in ("baseline", "prototype")]
        (run / "metrics.json").write_text(json.dumps({"eval_split": split, "fidelity": fidelity, "tstr": {
            "sets": {k: {"mean": {"f1": v}} for k, v in f1.items()}}}))
        (run / "manifest.json").write_text(json.dumps({
            "sweep": {"dataset": "bone_marrow", "seed": seed, "point": {"RECIPE": variant}},
            "facts": {"04_train_diffusion": {"cpu_capability": {"baseline": cpu, "prototype": cpu}}}}))
    return root


def test_over_seeds_pairs_each_variant_with_the_reference_within_a_seed(tool, tmp_path):
    first = _results(tmp_path / "s0", 0, {"laptop": 22.0, "rot90": 22.0, "cosine_3000": 12.0})
    second = _results(tmp_path / "s1", 1, {"laptop": 18.0, "cosine_3000": 12.0}, cpu="AVX512+AVX512_BF16")
    table = tool.over_seeds([first, second], "laptop")["bone_marrow"].set_index("variant")
    assert list(table.index) == ["laptop", "rot90", "cosine_3000"]  # the sweeps' order, not alphabetical
    cosine = table.loc["cosine_3000"]
    assert cosine["gap per seed"] == "12.0 / 12.0" and cosine["gap"] == pytest.approx(12.0)
    assert cosine["reference gap"] == pytest.approx(20.0) and table.loc["rot90", "reference gap"] == pytest.approx(22)
    assert cosine["change"] == pytest.approx(-8.0) and cosine["paired seeds"] == 2  # -10 and -6, paired per seed
    assert cosine["low"] < -8.0 < cosine["high"]
    assert cosine["seeds"] == "0 (AVX512+AMX+AVX512_BF16), 1 (AVX512+AVX512_BF16)"
    assert cosine["KID baseline"] == pytest.approx(3.2)
    assert table.loc["rot90", "paired seeds"] == 1 and table.loc["rot90", "change"] == pytest.approx(0.0)
    text = tool.over_seeds_markdown("bone_marrow", table.reset_index(), "laptop")
    assert "| cosine_3000 | 0 (AVX512+AMX+AVX512_BF16), 1 (AVX512+AVX512_BF16) | 12.0 / 12.0 | 12.0 | 20.0 | -8.0 [" in text
    assert "| rot90 | 0 (AVX512+AMX+AVX512_BF16) | 22.0 | 22.0 | 22.0 | +0.0 | 4.20 / 4.20 | 5.0 / 5.0 |" in text
    tool.main(["--over-seeds", str(first), str(second), "--out", str(tmp_path / "out")])
    assert (tmp_path / "out" / "over_seeds.md").read_text() == text


def test_over_seeds_refuses_the_test_split_and_two_runs_of_one_seed(tool, tmp_path):
    with pytest.raises(StudyInputError, match="scored on the test split"):
        tool.over_seeds([_results(tmp_path / "t", 0, {"laptop": 20.0}, split="test")], "laptop")
    first = _results(tmp_path / "a", 0, {"laptop": 20.0})
    with pytest.raises(StudyInputError, match="'laptop' seed 0 on AVX512\\+AMX\\+AVX512_BF16: two different runs"):
        tool.over_seeds([first, _results(tmp_path / "b", 0, {"laptop": 21.0})], "laptop")
    # the same run condensed into two sittings' folders (their reference) counts once
    again = _results(tmp_path / "c", 0, {"laptop": 20.0, "rot90": 18.0})
    table = tool.over_seeds([first, again], "laptop")["bone_marrow"].set_index("variant")
    assert table.loc["laptop", "gap per seed"] == "20.0" and table.loc["rot90", "change"] == pytest.approx(-2.0)
    with pytest.raises(StudyInputError, match="reference variant 'w1'"):
        tool.over_seeds([first], "w1")


def test_a_seed_rerun_on_another_cpu_is_paired_with_the_reference_run_on_that_cpu(tool, tmp_path):
    """Seed 0 on the AMX machine (laptop and rot90) and again on the AVX-512 BF16 one (laptop and cosine_3000): each
    variant meets the laptop run of its own machine, and laptop lists both runs."""
    amx = _results(tmp_path / "amx", 0, {"laptop": 22.0, "rot90": 20.0})
    avx = _results(tmp_path / "avx", 0, {"laptop": 16.0, "cosine_3000": 10.0}, cpu="AVX512+AVX512_BF16")
    table = tool.over_seeds([amx, avx], "laptop")["bone_marrow"].set_index("variant")
    assert table.loc["laptop", "seeds"] == "0 (AVX512+AMX+AVX512_BF16), 0 (AVX512+AVX512_BF16)"
    assert table.loc["laptop", "gap per seed"] == "22.0 / 16.0"
    assert table.loc["rot90", "change"] == pytest.approx(-2.0) and table.loc["rot90", "reference gap"] == 22.0
    assert table.loc["cosine_3000", "change"] == pytest.approx(-6.0)
    assert table.loc["cosine_3000", "reference gap"] == 16.0 and table.loc["cosine_3000", "paired seeds"] == 1

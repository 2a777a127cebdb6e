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

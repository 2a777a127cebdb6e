"""tools/fidelity_yardstick.py: real training images, blurred, measured exactly as notebook 06 measures samples."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from improve_lib.core.errors import StudyInputError
from improve_lib.core.files import sha256_file
from improve_lib.metrics import tone


def test_blur_removes_fine_detail_step_by_step(load_tool):
    tool = load_tool("fidelity_yardstick")
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(tool.blurred(images, 0.0), images)
    details = [tone.detail(tool.blurred(images, s)) for s in (0.0, 0.5, 1.0, 2.0)]
    assert details == sorted(details, reverse=True) and details[-1] < 0.2 * details[0]
    out = tool.blurred(images, 1.0)
    assert out.shape == images.shape and out.dtype == torch.float32
    assert out.mean().item() == pytest.approx(images.mean().item(), abs=0.01)  # blur moves detail, not tone


def test_unblurred_row_is_notebook_06s_real_train_row(smoke_synthetic_run, load_tool, tmp_path):
    """Blur 0 re-measures the real training images: it must give the numbers notebook 06 wrote for them,
    and each arm the numbers notebook 06 wrote for its samples; the run folder is left as it was."""
    tool = load_tool("fidelity_yardstick")
    run = smoke_synthetic_run
    before = {p: sha256_file(p) for p in run.rglob("*") if p.is_file() and "fidelity" not in p.parts}
    assert tool.main([str(run), "--blur", "0", "1.5", "--out", str(tmp_path / "out")]) == 0
    table = pd.read_csv(tmp_path / "out" / "yardstick.csv")
    assert list(table["set"]) == ["real train, blur 0 px", "real train, blur 1.5 px", "baseline samples",
                                  "prototype samples"]
    written = pd.DataFrame(json.loads((run / "metrics" / "metrics.json").read_text())["fidelity"])
    written = written[written.class_name == "all"].set_index("arm")
    for row, arm in ((0, "real train"), (2, "baseline"), (3, "prototype")):
        for col, key, scale in (("KID", "kid_mean", 1), ("coverage %", "coverage", 100), ("precision %", "precision", 100)):
            np.testing.assert_allclose(table.loc[row, col], scale * written.loc[arm, key], rtol=1e-3, atol=1e-6,
                                       err_msg=f"{arm} {col}")
    assert table.loc[0, "detail_ratio"] == pytest.approx(1.0)
    assert table.loc[1, "detail_ratio"] < 0.5  # 1.5 px of blur at 32 px removes most of the fine detail
    record = json.loads((tmp_path / "out" / "yardstick.json").read_text())
    assert record["command"].startswith("python tools/fidelity_yardstick.py ") and record["runs"]
    assert {p: sha256_file(p) for p in run.rglob("*") if p.is_file() and "fidelity" not in p.parts} == before


def test_a_folder_that_is_no_finished_run_is_named(load_tool, tmp_path):
    tool = load_tool("fidelity_yardstick")
    with pytest.raises(StudyInputError, match="no params.yaml"):
        tool.main([str(tmp_path), "--out", str(tmp_path / "out")])
    (tmp_path / "params.yaml").write_text("RESOLUTION: 32\n")
    with pytest.raises(StudyInputError, match="lacks"):
        tool.main([str(tmp_path), "--out", str(tmp_path / "out")])
    with pytest.raises(StudyInputError, match="--blur"):
        tool.main([str(tmp_path), "--blur", "-1", "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()

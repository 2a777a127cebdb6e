"""Evidence a reviewer accepts: like-for-like fidelity inputs, the copy check, verdicts that need seeds."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from PIL import Image

from improve_lib import data
from improve_lib.conditioning.embeddings import embed_paths
from improve_lib.conditioning.encoders import load_encoder
from improve_lib.diffusion import sample
from improve_lib.metrics import copy_check, fidelity, tstr_report
from improve_lib.report import comparison


def _run_with_real_images(root, n=3, size=(40, 30)):
    """A run folder whose split points at real-sized (40x30) RGB photographs of two classes."""
    rng = np.random.default_rng(0)
    rows = []
    for label, name in enumerate(["a", "b"]):
        for i in range(2 * n):
            path = root / "photos" / f"{name}{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
            rows.append({"path": str(path), "label": label, "class_name": name, "split": "train" if i < n else "test",
                         "group": f"{name}{i}"})
    (root / "data").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(root / "data" / "split.csv", index=False)
    return root


def test_real_images_reach_the_encoder_as_samples_do(tmp_path):
    """Fidelity embeds real images resized to RESOLUTION and written by the samples' own PNG writer: a real
    image and a 'sample' with the same pixels give the same vector (nothing but content differs)."""
    run = _run_with_real_images(tmp_path / "run")
    resized = fidelity.resized_real(run, "test", 16)
    assert len(resized) == 6 and all(Image.open(p).size == (16, 16) for p in resized.path)
    first = data.read_split(run).query("split == 'test'").path.iloc[0]
    as_sample = sample.save_png(data.load_image(first, 16), tmp_path / "samples" / "a" / "0000.png")
    enc = load_encoder("efficientnet-lite0:64")
    v_real, v_sample = embed_paths([resized.path.iloc[0], as_sample], enc, tmp_path / "cache", progress=False)
    assert np.array_equal(v_real, v_sample)
    native = embed_paths([first], enc, tmp_path / "cache", progress=False)[0]
    assert not np.allclose(native, v_real)  # the original-size photograph is another input


def test_copy_check_flags_an_exact_copy_not_a_fresh_real_image():
    train = torch.rand(40, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    test = torch.rand(20, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    fresh = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    projection = np.random.default_rng(1).normal(size=(192, 16))  # a fixed stand-in for the encoder

    def spaces(x):
        return {"pixels": x, "embedding": x.reshape(len(x), -1).numpy() @ projection}

    table, per_image = copy_check.copy_check(spaces(train), spaces(test), {"arm": spaces(torch.cat([train[7:8], fresh]))})
    assert list(per_image["near_copy"]) == [True, False]
    assert per_image.loc[0, "nearest_train_pixels"] == 7 and per_image.loc[0, "distance_pixels"] < 1e-6
    row = table[(table.arm == "arm") & (table.space == "pixels")].iloc[0]
    assert row.n_flagged == 1 and row.share_flagged == 0.5
    assert list(table.arm.unique()) == ["real test", "arm"]


def test_sweep_verdict_needs_three_seeds_and_an_interval_that_excludes_zero():
    def long(values):
        return pd.DataFrame({"run": [f"r{i}" for i in range(len(values))], "seed": range(len(values)),
                             "metric": "TSTR F1 difference (points)", "arm": "prototype - baseline", "value": values})

    assert "no winner" in comparison.arm_verdict(long([12.0, 9.0]), [])
    assert "prototype arm is better" in comparison.arm_verdict(long([12.0, 9.0, 10.5]), [])
    assert "neither arm" in comparison.arm_verdict(long([12.0, -9.0, 3.0]), [])
    assert "baseline is better" in comparison.arm_verdict(long([-5.0, -6.0, -5.5, -4.0]), [])
    p = comparison.arm_verdict(long([12.0, 9.0, 10.5]), [])
    assert "paired t-test p = 0.00" in p


def test_one_run_declares_no_winner():
    result = {"sets": {a: {"ci": {"f1": [f, f - 0.05, f + 0.05]}} for a, f in (("prototype", 0.9), ("baseline", 0.5))},
              "comparison": {"diff": 0.4, "low": 0.3, "high": 0.5, "p_value": 0.001},
              "n_test": 300, "budget": {"seeds": [0, 1, 2]}}
    text = tstr_report.verdict(result)
    assert "No winner is declared from one run" in text and "beat" not in text


def test_a_sweep_over_seeds_alone_is_one_point(tmp_path):
    """The study's replication (sweep --seeds without --grid): the table has one column, the figure one
    point per arm, the verdict one line, all named 'all runs'."""
    rows = [{"run": f"seed{s}", "seed": s, "complete": True, "metric": "TSTR macro F1 %", "arm": arm, "value": v + s}
            for s in range(3) for arm, v in (("baseline", 50.0), ("prototype", 53.0), ("real", 70.0))]
    rows += [{"run": f"seed{s}", "seed": s, "complete": True, "metric": "TSTR F1 difference (points)",
              "arm": "prototype - baseline", "value": 3.0 + s} for s in range(3)]
    long = pd.DataFrame(rows)
    summary = comparison.summarise(long, [])
    table = comparison.wide_table(summary, [])
    assert list(table.columns) == ["metric (arm)", "all runs"]
    assert table.set_index("metric (arm)").loc["TSTR macro F1 % (baseline)", "all runs"].startswith("51.0 [")
    fig = comparison.figure(long, summary, [], "bone_marrow")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["all runs"]
    assert len(fig.axes[0].collections) >= 3  # one scatter of seeds per arm, at one x position each
    assert comparison.arm_verdict(long, []).startswith("- **all runs**: prototype minus baseline +4.0 points")

"""Nothing lost: training killed (SIGKILL) at random moments, or stopped by a full disk, resumes to the very
weights of an uninterrupted run."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_train import make_run, tiny_config

from improve_lib.core.errors import StudyInputError
from improve_lib.diffusion.train import train

pytestmark = pytest.mark.slow


def _weights(run, arm):
    final = run / "models" / arm / "final"
    return {name: load_file(str(final / "unet" / name)) for name in ("diffusion_pytorch_model.safetensors",
                                                                      "diffusion_pytorch_model.raw.safetensors")}


def _assert_same(run, a, b):
    wa, wb = _weights(run, a), _weights(run, b)
    for sub in wa:
        assert wa[sub].keys() == wb[sub].keys()
        for k in wa[sub]:
            assert torch.equal(wa[sub][k], wb[sub][k]), (sub, k)  # bit-identical on CPU
    pd.testing.assert_frame_equal(pd.read_csv(run / "models" / a / "loss.csv"), pd.read_csv(run / "models" / b / "loss.csv"))


def test_killed_at_five_random_moments_ends_with_the_uninterrupted_weights(tmp_path):
    run = make_run(tmp_path / "run")
    cfg = tiny_config(run, "baseline", MAX_STEPS=12, CHECKPOINT_EVERY=2, KEEP_CHECKPOINTS=2)
    train({**cfg, "ARM_NAME": "reference"})
    config = tmp_path / "killed.yaml"
    config.write_text(yaml.safe_dump({**cfg, "ARM_NAME": "killed"}))
    rng = np.random.default_rng(5)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    kills = 0
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-m", "improve_lib.diffusion.train", "--config", str(config)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for line in proc.stdout:  # imports done, training about to start
            if line.startswith("world_size="):
                break
        time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=300)
        proc.stdout.close()
    assert kills >= 3  # most kills landed while it trained
    train({**cfg, "ARM_NAME": "killed"})  # and once more to the end
    _assert_same(run, "reference", "killed")


def test_a_full_disk_stops_with_a_clear_error_and_resumes_to_the_same_weights(tmp_path):
    disk = tmp_path / "small-disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1600k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root and CAP_SYS_ADMIN): " + mounted.stderr.decode()[-200:])
    try:
        run = make_run(disk / "run")
        cfg = tiny_config(run, "baseline", MAX_STEPS=12, CHECKPOINT_EVERY=1, KEEP_CHECKPOINTS=12, EMA_DECAY=0.9)
        with pytest.raises(StudyInputError, match=r"no space left on the disk while writing .*checkpoint-\d+.*resumes from"):
            train(cfg)
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        summary = train(cfg)
        assert summary["resumed_from"] is not None and summary["steps"] == 12
        reference = make_run(tmp_path / "reference")
        train(tiny_config(reference, "baseline", MAX_STEPS=12, CHECKPOINT_EVERY=1, KEEP_CHECKPOINTS=12, EMA_DECAY=0.9))
        shutil.copytree(reference / "models" / "baseline", run / "models" / "uninterrupted")
        _assert_same(run, "baseline", "uninterrupted")
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)  # lazy: even if a file is still open


def test_a_full_disk_while_a_notebook_runs_records_a_failed_stage_and_leaves_no_half_notebook(tmp_path, monkeypatch):
    """The runner's own writes failing (ENOSPC while papermill saves the executed notebook): the stage is recorded
    as failed, the truncated executed notebook is removed, and the error names the cause in one line."""
    import errno
    import json

    from improve_lib.runs import pipeline

    def full_disk(notebook, out, **kwargs):
        with open(out, "w") as fh:
            fh.write('{"cells": [{"cell_type": "code", "sou')  # what a write cut short leaves
        raise OSError(errno.ENOSPC, "No space left on device", out)

    monkeypatch.setattr(pipeline.papermill, "execute_notebook", full_disk)
    run = tmp_path / "run"
    with pytest.raises(pipeline.StudyRunError, match=r"01_explore_data.ipynb: could not write \(No space left on "
                                                     r"device: .*half-written executed copy was removed"):
        pipeline.run_pipeline("smoke", run_dir=run, only=["01"], progress=False)
    assert not (run / "notebooks" / "01_explore_data.ipynb").exists()
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    assert stages["01_explore_data.ipynb"]["status"] == "failed"

"""benchmarks/gpu_check.sh in its CPU mode (tiny sizes): the GPU check of issue 18 keeps working without a GPU.

Every section must report numbers, and on a CPU a run resumed from the straight run's checkpoint must end with
identical weights in both arms. Timings themselves are not asserted (a shared CI machine is noisy)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_gpu_check_runs_on_a_cpu_and_writes_every_section(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out), "--modes", "none",
                           "--models", "1", "2", "--steps", "2", "--resume-steps", "2"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["mode"] == "cpu" and report["errors"] == {} and report["skipped"] == {}
    assert report["peak"]["peak_source"] == "measured matmul" and report["peak"]["measured_matmul_flops"] > 0
    variants = report["step"]["variants"]
    assert set(variants) == {"bare_loop", "entry_compile_none"} and report["step"]["tflop_per_step"] > 0
    assert all(v["steps_per_s"] > 0 and 0 < v["mfu"] for v in variants.values())
    rounds = report["models_per_gpu"]["rounds"]
    assert [r["models"] for r in rounds] == [1, 2] and len(rounds[1]["per_model_steps_per_s"]) == 2
    for arm in ("baseline", "prototype"):
        check = report["resume"][arm]
        assert check["resumed_from"] == "checkpoint-1" and check["identical_weights"], check

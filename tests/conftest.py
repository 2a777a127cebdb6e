"""Shared fixtures: where the real development subsets live, and small helpers."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("IMPROVE_SHARED_DATA", REPO.parent / "shared" / "data"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Every papermill cell the tests run is bounded (smoke cells take seconds): a hung kernel fails its
# test naming the cell, instead of holding the suite until CI's hard limit.
os.environ.setdefault("IMPROVE_CELL_TIMEOUT", "600")
# `make test` runs the suite on pytest-xdist workers (TEST_WORKERS). The workers share the machine's cores:
# each worker, and every notebook kernel or training process it starts (they inherit the environment),
# gets its share of torch threads, because OpenMP threads beyond the cores spin against each other and
# run the smoke models many times slower (measured; see the one_thread fixture).
# (The cores are counted as improve_lib.core.machine.usable_cpus does; importing that module here would load
# torch, and with it OpenMP, before the variable is set, leaving this worker's own torch on every core.)
if os.environ.get("PYTEST_XDIST_WORKER_COUNT") and "OMP_NUM_THREADS" not in os.environ:
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    os.environ["OMP_NUM_THREADS"] = str(max(1, _cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


@pytest.fixture(autouse=True, scope="session")
def _fresh_embedding_cache(tmp_path_factory):
    """A cache per test session: a warm cache from an earlier run must not hide an encoder regression."""
    os.environ["IMPROVE_CACHE_DIR"] = str(tmp_path_factory.mktemp("embedding-cache"))


@pytest.fixture(scope="session")
def smoke_synthetic_run(tmp_path_factory) -> Path:
    """One finished smoke run of every notebook on the embedded synthetic cells, shared by the tests
    that check a full run and the sweep test that reuses its stages (one pipeline run instead of two; one per
    pytest-xdist worker that runs such a test)."""
    from improve_lib.runs import pipeline

    return pipeline.run_pipeline("smoke", dataset="synthetic", run_dir=tmp_path_factory.mktemp("smoke") / "run",
                                 progress=False)


def _require(path: Path) -> Path:
    if not path.exists():
        if os.environ.get("CI"):
            raise FileNotFoundError(f"CI expects the shared development data at {path}")
        pytest.skip(f"shared development data not found at {path} (set IMPROVE_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def load_tool():
    """A script of tools/ imported as a module by its name (tools/ is not a package): ``load_tool("probe_replicates")``."""
    import importlib.util

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load


@pytest.fixture(scope="session")
def ham_dir() -> Path:
    """The HAM10000 development subset (../shared/data/ham10000)."""
    return _require(SHARED_DATA / "ham10000")


@pytest.fixture(scope="session")
def bm_dir() -> Path:
    """The Bone Marrow development subset (../shared/data/bone_marrow)."""
    return _require(SHARED_DATA / "bone_marrow")


@pytest.fixture()
def one_thread():
    """Run a test with one torch thread: on a shared 2-core machine two OpenMP threads spin against
    other processes and run the tiny models of the unit tests many times slower (measured)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

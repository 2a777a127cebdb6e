"""The papermill runner: smoke runs per dataset, run-folder rules, failures that name their cell."""
from __future__ import annotations

import json
import shutil

import nbformat
import pandas as pd
import pytest
import yaml

from improve_lib import data
from improve_lib.core import manifest, notebook_parameters
from improve_lib.core.errors import StudyInputError
from improve_lib.runs import pipeline, profiles

pytestmark = pytest.mark.slow


def _check_run(run_dir, dataset, notebooks):
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["dataset"] == dataset and m["seed"] == 0
    assert m["packages"]["torch"] and "commit" in m["git"] and m["torch_threads"] >= 1
    assert sorted(m["stages"]) == sorted(notebooks)
    assert all(v["status"] == "done" for v in m["stages"].values())
    assert "data/split.csv" in m["outputs"] and "notebooks/01_explore_data.ipynb" in m["records"]
    assert all(len(h) == 64 for h in m["outputs"].values())
    assert (run_dir / "figures" / "01_class_counts.png").is_file()
    params = yaml.safe_load((run_dir / "params.yaml").read_text())
    assert params["PROFILE"] == "smoke" and params["DATASET"] == dataset
    return m


ALL = [p.name for p in notebook_parameters.list_notebooks()]


# Notebooks per dataset: every one on the embedded data and on the Bone Marrow subset (07 scores with the real
# data's morphometry, 06 also on an external test folder of held-back images); 01-03 on the HAM10000
# subset (its split by lesion; its morphometry runs through 07's steps in tests/plausibility/test_morphometry.py).
SMOKE_NOTEBOOKS = {"synthetic": None, "ham10000": ["01", "02", "03"], "bone_marrow": None}


def _held_back(dataset, data_dir, out, per_class=3):
    """An external test folder of images the smoke run's split will not hold (its split drawn here the same way),
    in Bone Marrow's layout, with one class the run lacks; and an image of that split."""
    p = profiles.resolve_params("smoke", dataset=dataset, data_dir=str(data_dir))
    split = data.build_split(dataset, data_dir, out / "unused", p["N_TRAIN"], p["N_TEST"], p["SEED"], p["CLASSES"],
                             p["MIN_PER_CLASS"], p["RESOLUTION"], verify=False, progress=False)
    used = set(split.table["path"])
    for cls in ("LYT", "MON", "ABE"):
        (out / "external" / cls).mkdir(parents=True)
        for img in [q for q in sorted((data_dir / cls).glob("*.jpg")) if str(q) not in used][:per_class]:
            shutil.copy(img, out / "external" / cls / img.name)
    return out / "external", split.table["path"].iloc[0]


@pytest.mark.parametrize("dataset", list(SMOKE_NOTEBOOKS))
def test_smoke_run(dataset, tmp_path, request):
    """The runner on the smoke profile, on the embedded data and the real subsets (SMOKE_NOTEBOOKS)."""
    only = SMOKE_NOTEBOOKS[dataset]
    if dataset == "synthetic":
        run = request.getfixturevalue("smoke_synthetic_run")  # the conftest's full run, shared with test_sweep
    else:
        data_dir = request.getfixturevalue("ham_dir" if dataset == "ham10000" else "bm_dir")
        sets = {}
        if dataset == "bone_marrow":  # 06 also scores every classifier on held-back images (EXTERNAL_TEST_DIR)
            external, split_image = _held_back(dataset, data_dir, tmp_path)
            shutil.copy(split_image, external / "MON" / "a_split_image.jpg")
            with pytest.raises(StudyInputError, match="byte for byte images of the run's split"):  # before any run
                pipeline.run_pipeline("smoke", dataset=dataset, data_dir=data_dir, run_dir=tmp_path / "refused",
                                      only=only, progress=False, sets={"EXTERNAL_TEST_DIR": str(external)})
            assert not (tmp_path / "refused").exists()
            (external / "MON" / "a_split_image.jpg").unlink()
            sets = {"EXTERNAL_TEST_DIR": str(external)}
        run = pipeline.run_pipeline("smoke", dataset=dataset, data_dir=data_dir, run_dir=tmp_path / "run",
                                    only=only, progress=False, sets=sets)
    books = ALL if only is None else [b for b in ALL if b[:2] in only]
    m = _check_run(run, dataset, books)
    assert m["complete"] == (only is None)
    assert m["facts"]["02_embeddings"]["encoder_is_clip"] is False
    assert (run / "prototypes" / "prototypes.safetensors").is_file()
    if only is None or "04" in only:
        assert (run / "models" / "prototype" / "final" / "unet" / "diffusion_pytorch_model.raw.safetensors").is_file()
        assert (run / "models" / "baseline" / "final" / "model_index.json").is_file()
    if dataset == "bone_marrow":
        excluded = [r["class_name"] for r in m["facts"]["01_explore_data"]["excluded_classes"] if not r["kept"]]
        assert "EBO" in excluded and "NGB" in excluded
        tstr = json.loads((run / "metrics" / "metrics.json").read_text())["tstr"]
        ext = tstr["external"]["external"]
        assert ext["n_test"] == 6 and set(ext["sets"]) == {"baseline", "prototype", "real"}
        assert {k for k, n in ext["n_test_per_class"].items() if n} == {"LYT", "MON"} and ext["comparison"]
        assert all(len(p) == 2 for s in ext["sets"].values() for p in [s["per_seed"]])  # every classifier scored
        assert (run / "tables" / "tstr_external.csv").is_file()
        assert sum(k.startswith(str(external)) for k in m["inputs"]) == 6  # the external images' hashes
    if dataset == "ham10000":
        assert any(k.endswith("HAM10000_metadata.csv") for k in m["inputs"])
    if only is None:
        assert (run / "tables" / "tstr.md").is_file() and (run / "metrics" / "metrics.json").is_file()
        tstr = json.loads((run / "metrics" / "metrics.json").read_text())["tstr"]
        assert set(tstr["sets"]) == {"baseline", "prototype", "real"}
    if only is None or "07" in only:
        objective = pd.read_csv(run / "tables" / "objective_plausibility.csv", index_col=0)
        assert {"baseline %", "prototype %"} <= set(objective.columns) and objective.index[-1] == "mean"
        if dataset == "synthetic":
            assert (run / "tables" / "objective_criteria.csv").is_file()
            assert (run / "tables" / "objective_robustness.csv").is_file()
        else:
            # Calibrated on the run's held-out real images before any sample is scored; a class whose
            # region does not discriminate (4 test images per class in smoke: none does) says why.
            calibration = pd.read_csv(run / "tables" / "morphometry_calibration.csv", index_col=0)
            # every calibrated class is in the table (a class without a region is there too, saying why)
            assert set(calibration.index) - {"mean"} <= set(objective.index) - {"mean"}
            unscored = objective["baseline %"].isna()
            assert (objective.loc[unscored, "reason"].str.len() > 0).all()
            assert m["facts"]["07_plausibility_review"]["objective_instrument"] == "morphometry"
        n_classes = {"synthetic": 6, "bone_marrow": 8}[dataset]  # Bone Marrow: EBO and NGB excluded
        assert len(list((run / "samples" / "prototype").rglob("*.png"))) == n_classes * 8


def test_rerun_reproduces_every_output_byte_for_byte(smoke_synthetic_run, tmp_path):
    """Two identical smoke runs (same command, same folder, same seed, CPU) give the same sha256 for every
    output in their manifests; only the records of the execution (executed notebooks, training wall
    times) differ. The shared run is moved aside, made again in its place up to training (01-04, where
    the numbers come from: split, embeddings, prototypes, weights; the rest is checked the same way by
    hand, see the README's "Run folders"), compared, and put back for the tests that use it."""
    import shutil

    from improve_lib.core import manifest

    first = manifest.load(smoke_synthetic_run)
    aside = tmp_path / "first"
    shutil.move(str(smoke_synthetic_run), aside)
    try:
        again = pipeline.run_pipeline("smoke", dataset="synthetic", run_dir=smoke_synthetic_run, progress=False,
                                      only=["01", "02", "03", "04"])
        second = manifest.load(again)
    finally:
        shutil.rmtree(smoke_synthetic_run, ignore_errors=True)
        shutil.move(str(aside), smoke_synthetic_run)
    stages = {"01_explore_data.ipynb", "02_embeddings.ipynb", "03_prototypes.ipynb", "04_train_diffusion.ipynb"}
    # The files only 01-04 wrote (params.yaml is written before any stage: no writer recorded).
    upstream = {k: h for k, h in first["outputs"].items() if set(first["output_stages"].get(k, [])) <= stages}
    assert len(upstream) > 100 and set(upstream) == set(second["outputs"])
    assert "models/baseline/final/unet/diffusion_pytorch_model.safetensors" in upstream
    differ = sorted(k for k in upstream if upstream[k] != second["outputs"][k])
    assert not differ, f"{len(differ)} outputs differ between identical runs: {differ[:10]}"
    assert set(second["records"]) < set(first["records"]) and all(manifest.is_record(k) for k in first["records"])
    assert "models/baseline/training_time.json" in first["records"]
    assert "models/baseline/final/training_summary.json" in first["outputs"]


def test_each_kernel_gets_a_socket_folder_of_its_own(tmp_path):
    """Kernels of runs started at once from the same notebooks folder must not share IPC socket names."""
    import os

    cfg = pipeline.kernel_config(tmp_path)
    if os.name == "posix":
        assert cfg.KernelManager.transport == "ipc" and cfg.KernelManager.ip == str(tmp_path / "kernel")


def test_refuses_non_empty_run_dir_and_bad_input_leaves_nothing(tmp_path, ham_dir):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "x.txt").write_text("keep me")
    with pytest.raises(StudyInputError, match="not empty.*--resume.*--force"):
        pipeline.run_pipeline("smoke", run_dir=tmp_path / "run", only=["01"], progress=False)
    assert (tmp_path / "run" / "x.txt").read_text() == "keep me"
    with pytest.raises(StudyInputError, match="does not exist"):
        pipeline.run_pipeline("smoke", dataset="ham10000", data_dir=tmp_path / "nope", run_dir=tmp_path / "r2",
                              only=["01"], progress=False)
    assert not (tmp_path / "r2").exists()
    with pytest.raises(StudyInputError, match="NOT_A_PARAM"):
        pipeline.run_pipeline("smoke", run_dir=tmp_path / "r3", sets={"NOT_A_PARAM": 1}, progress=False)
    with pytest.raises(StudyInputError, match="unknown profile"):
        pipeline.run_pipeline("nosuch", run_dir=tmp_path / "r4", progress=False)
    assert not (tmp_path / "r3").exists() and not (tmp_path / "r4").exists()


def _one_notebook(tmp_path, name: str, *code: str):
    """A folder holding one notebook: a parameters cell (SEED) followed by the given code cells."""
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    cells = [nbformat.v4.new_code_cell("SEED = 0  # seed"), *map(nbformat.v4.new_code_cell, code)]
    cells[0].metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, nbdir / name)
    return nbdir


def test_failing_notebook_is_named_with_its_cell(tmp_path):
    nbdir = _one_notebook(tmp_path, "01_fail.ipynb", "x = 1", "raise ValueError('boom here')")
    with pytest.raises(pipeline.StudyRunError, match=r"01_fail.ipynb failed in cell 3 \(\"raise ValueError.*ValueError: boom here"):
        pipeline.run_pipeline("smoke", run_dir=tmp_path / "run", progress=False, notebook_dir=nbdir)
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert m["stages"]["01_fail.ipynb"]["status"] == "failed"


def test_cell_past_the_time_limit_fails_with_the_cell_named(tmp_path, monkeypatch, capfd):
    """A hung cell must fail its run (and its test) instead of stalling a sweep or the CI suite. The kernel
    talks over local sockets (IPC), so it does not warn that TCP traffic is unencrypted."""
    nbdir = _one_notebook(tmp_path, "01_hang.ipynb", "import time", "time.sleep(600)  # a cell that never ends in time")
    monkeypatch.setenv("IMPROVE_CELL_TIMEOUT", "3")
    with pytest.raises(pipeline.StudyRunError, match=r"01_hang.ipynb: cell 3 \('time.sleep\(600\).*IMPROVE_CELL_TIMEOUT=3 s"):
        pipeline.run_pipeline("smoke", run_dir=tmp_path / "run", progress=False, notebook_dir=nbdir)
    assert "without encryption" not in capfd.readouterr().err
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["01_hang.ipynb"]["status"] == "failed"
    for bad in ("soon", "1e"):
        monkeypatch.setenv("IMPROVE_CELL_TIMEOUT", bad)
        with pytest.raises(StudyInputError, match="IMPROVE_CELL_TIMEOUT"):
            pipeline.cell_timeout()
    monkeypatch.setenv("IMPROVE_CELL_TIMEOUT", "0")
    assert pipeline.cell_timeout() is None


def test_cli_reports_errors(tmp_path, capsys):
    from improve_lib.runs.cli import main

    code = main(["run", "--profile", "smoke", "--dataset", "ham10000", "--data-dir", str(tmp_path / "nope"),
                 "--run-dir", str(tmp_path / "r"), "--no-progress"])
    assert code == 2 and "does not exist" in capsys.readouterr().err


def test_split_seed_keeps_the_split_apart_from_the_training_seed(tmp_path, smoke_synthetic_run):
    """SPLIT_SEED draws the split alone: SEED=1 with SPLIT_SEED=0 gives seed 0's split (and records it); the default
    (None) keeps today's rule, one SEED for everything, so SEED=1 alone gives another split."""
    run = pipeline.run_pipeline("smoke", dataset="synthetic", run_dir=tmp_path / "same_split", only=["01"],
                                sets={"SEED": 1, "SPLIT_SEED": 0}, progress=False)
    other = pipeline.run_pipeline("smoke", dataset="synthetic", run_dir=tmp_path / "seed1", only=["01"],
                                  sets={"SEED": 1}, progress=False)
    def split_of(run_dir):  # the embedded images are written into each run folder: compare names, not folders
        table = pd.read_csv(run_dir / "data" / "split.csv")
        return table.assign(path=table["path"].map(lambda p: p.split("/")[-1]))

    pd.testing.assert_frame_equal(split_of(run), split_of(smoke_synthetic_run))
    assert not split_of(other).equals(split_of(smoke_synthetic_run))
    assert manifest.load(run)["facts"]["01_explore_data"]["split_seed"] == 0
    assert manifest.load(other)["facts"]["01_explore_data"]["split_seed"] == 1


@pytest.mark.parametrize("book", ALL)
def test_committed_notebooks_are_valid_and_without_outputs(book):
    """Each notebook validates against its nbformat schema with nothing to fix (every cell has its id: nbformat
    otherwise warns in every run's log) and is committed without outputs (executed copies belong in run folders)."""
    import warnings

    path = notebook_parameters.NOTEBOOK_DIR / book
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # MissingIDFieldWarning and friends fail here
        nb = nbformat.read(str(path), as_version=4)
        nbformat.validate(nb)
    assert all(c.get("id") for c in nb.cells)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")

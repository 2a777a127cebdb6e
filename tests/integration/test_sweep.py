"""Sweeps: grid expansion and naming, bad input, stage keys, upstream reuse, skip and failure."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import yaml

from improve_lib.core import manifest, notebook_parameters
from improve_lib.core.errors import StudyInputError
from improve_lib.report import results_folder
from improve_lib.runs import pipeline, profiles, sharing, sweep
from improve_lib.runs.cli import main


def _spec(**kw):
    base = dict(profile="smoke", grid={"GUIDANCE_SCALE": [0, 2]}, seeds=[0])
    base.update(kw)
    return sweep.SweepSpec(**base)


# ------------------------------------------------------------------------------- parsing, expansion

def test_parse_grid_reads_yaml_values():
    grid = sweep.parse_grid(["K=1,3", "GAMMA=0.5,1e-3", "ARMS=[prototype],[baseline,prototype]",
                             "ENCODER=efficientnet-lite0,open_clip:ViT-B-32:/w/x.safetensors", "FLIP=true,false"])
    assert grid["K"] == [1, 3]
    assert grid["GAMMA"] == [0.5, 0.001]
    assert grid["ARMS"] == [["prototype"], ["baseline", "prototype"]]
    assert grid["ENCODER"] == ["efficientnet-lite0", "open_clip:ViT-B-32:/w/x.safetensors"]
    assert grid["FLIP"] == [True, False]
    for bad, msg in (["K"], "KEY=v1"), (["k=1"], "UPPER_CASE"), (["K=1", "K=2"], "twice"), (["K="], "no values"):
        with pytest.raises(StudyInputError, match=msg):
            sweep.parse_grid(bad)
    assert sweep.parse_seeds("0, 1,2") == [0, 1, 2]
    with pytest.raises(StudyInputError, match="seeds"):
        sweep.parse_seeds("0,0")
    with pytest.raises(StudyInputError, match="integers"):
        sweep.parse_seeds("a")


def test_expand_names_runs_from_settings_in_seed_major_order():
    runs = sweep.expand(_spec(grid={"K": [1, 3], "GUIDANCE_SCALE": [0, 2.5]}, seeds=[0, 1]))
    assert [r.name for r in runs[:4]] == ["k_1-guidance_scale_0-seed0", "k_1-guidance_scale_2.5-seed0",
                                          "k_3-guidance_scale_0-seed0", "k_3-guidance_scale_2.5-seed0"]
    assert len(runs) == 8 and {r.seed for r in runs[4:]} == {1}
    r = runs[3]
    assert r.params["K"] == 3 and r.params["GUIDANCE_SCALE"] == 2.5 and r.params["SEED"] == 0
    assert isinstance(runs[0].params["GUIDANCE_SCALE"], float)  # 0 is coerced to the parameter's type
    assert r.params["PROFILE"] == "smoke" and set(r.keys) == {p.name for p in notebook_parameters.list_notebooks()}


def test_a_sweep_over_seeds_alone_needs_seeds_asked_for():
    """The study's replication is a sweep over seeds without a grid; without --seeds a missing --grid is an error."""
    with pytest.raises(StudyInputError, match="--grid KEY=v1,v2 .* or --seeds"):
        sweep.spec_from(profile="smoke")
    spec = sweep.spec_from(profile="laptop", dataset="synthetic", seeds="0,1", from_nb="04")
    runs = sweep.expand(spec)
    assert [r.name for r in runs] == ["seed0", "seed1"] and all(r.point == {} for r in runs)
    assert [r.params["SEED"] for r in runs] == [0, 1] and runs[0].params["PROFILE"] == "laptop"
    assert sweep.default_sweep_dir(spec) == Path("runs/sweeps/laptop-synthetic")
    assert sweep.expand(sweep.spec_from(profile="smoke", seeds="3"))[0].name == "seed3"


def test_value_labels_are_file_name_safe():
    assert sweep.value_label(True) == "true" and sweep.value_label(0.5) == "0.5" and sweep.value_label(2.0) == "2"
    assert sweep.value_label(["prototype", "baseline"]) == "prototype+baseline"
    long = sweep.value_label("open_clip:ViT-L-14:/very/long/path/to/weights/open_clip_model.safetensors")
    assert len(long) <= 32 and "/" not in long and "~" in long


@pytest.mark.parametrize("grid,kw,msg", [
    ({"NOT_A_PARAM": [1, 2]}, {}, "no notebook declares NOT_A_PARAM"),
    ({"K": [1, 1.5]}, {}, r"K=1.5 is a float, but K takes an int"),
    ({"FREEZE_PROTOTYPES": [True, 1]}, {}, "takes a bool"),
    ({"ENCODER": ["efficientnet-lite0", 3]}, {}, "takes a str"),
    ({"GAMMA": [1, 1.0]}, {}, "given twice"),
    ({"ENCODER": ["a/b", "a_b"]}, {}, "same run name 'encoder_a_b-seed0'"),
    ({"SEED": [0, 1]}, {}, "--seeds"),
    ({"K": [1, 3]}, {"from_nb": "04"}, "before --from 04"),
    ({"GUIDANCE_SCALE": [0, 1]}, {"to_nb": "03"}, "does not run"),
    ({"K": [1, 3]}, {"sets": {"K": 2}}, "both a --grid key and a --set"),
    ({"K": [1, 3]}, {"sets": {"PROTO_EPOCHS": "many"}}, "PROTO_EPOCHS='many' is a str"),
])
def test_bad_grids_fail_before_anything_runs(grid, kw, msg, tmp_path):
    with pytest.raises(StudyInputError, match=msg):
        sweep.run_sweep(_spec(grid=grid, **kw), tmp_path / "sw", progress=False)
    assert not (tmp_path / "sw").exists()


def test_empty_values_fail_and_none_is_passed_on(tmp_path):
    with pytest.raises(StudyInputError, match="K: no values"):
        sweep.expand(_spec(grid={"K": []}))
    runs = sweep.expand(_spec(grid={"MAX_STEPS": [None, 4]}))
    assert [r.params["MAX_STEPS"] for r in runs] == [None, 4] and runs[0].name == "max_steps_none-seed0"


def test_cli_sweep_errors_and_dry_run(tmp_path, capsys):
    assert main(["sweep", "--profile", "smoke", "--grid", "NOPE=1,2", "--sweep-dir", str(tmp_path / "s")]) == 2
    assert "no notebook declares NOPE" in capsys.readouterr().err
    assert main(["sweep", "--profile", "smoke", "--grid", "GUIDANCE_SCALE=0,2", "--seeds", "0,1", "--dry-run",
                 "--sweep-dir", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "guidance_scale_0-seed0: runs every notebook" in out
    assert "guidance_scale_2-seed0: copies 01-04, runs the rest" in out
    assert "guidance_scale_2-seed1: copies 01-04" in out and "guidance_scale_0-seed1: runs every notebook" in out
    assert "05 x4" in out and "01 x2" in out
    assert not (tmp_path / "s").exists()


def test_presets_are_valid_sweeps(monkeypatch):
    presets = sorted(sweep.ABLATIONS_DIR.glob("*.yaml"))
    assert len(presets) >= 6
    for path in presets:
        if "${" in path.read_text():  # the open_clip preset names its weights file by an environment variable
            monkeypatch.delenv("OPENCLIP_WEIGHTS", raising=False)
            with pytest.raises(StudyInputError, match="environment variable.*OPENCLIP_WEIGHTS"):
                sweep.load_preset(path.stem)
            monkeypatch.setenv("OPENCLIP_WEIGHTS", "/weights/vit_b_32.safetensors")
        data = sweep.load_preset(path.stem)
        assert data.get("description") and data.get("time"), f"{path.name}: say what it tests and how long it takes"
        runs = sweep.expand(sweep.spec_from(data))
        assert len({r.seed for r in runs}) >= 3, path.name


# ------------------------------------------------------------------------------------------ stage keys

def test_stage_keys_change_from_the_first_notebook_a_parameter_reaches():
    books = notebook_parameters.list_notebooks()
    base = profiles.resolve_params("smoke")
    keys = pipeline.stage_keys(base, books)

    def changed(**kw):
        other = pipeline.stage_keys({**base, **kw}, books)
        return [b.name[:2] for b in books if other[b.name] != keys[b.name]]

    assert changed() == []
    assert changed(GUIDANCE_SCALE=4.0) == ["05", "06", "07"]
    assert changed(K=3) == ["03", "04", "05", "06", "07"]
    assert changed(SEED=1) == ["01", "02", "03", "04", "05", "06", "07"]
    assert changed(DATASET="ham10000") == ["01", "02", "03", "04", "05", "06", "07"]
    assert changed(DATA_DIR="/elsewhere") == ["01", "02", "03", "04", "05", "06", "07"]
    assert changed(CACHE_DIR="/another/cache", RUN_DIR="/another/run") == []


# ------------------------------------------------------------------------- execution on tiny notebooks

def _notebook(path: Path, params: str, code: str) -> None:
    cells = [nbformat.v4.new_code_cell(params), nbformat.v4.new_code_cell(code)]
    cells[0].metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture()
def tiny_notebooks(tmp_path):
    """Two notebooks: 01 writes a.txt from SEED and K, 02 writes b.txt from a.txt and GAMMA and fails
    when GAMMA is 3. Both log their execution to <sweep>/exec.log."""
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    log = "from pathlib import Path\nrun = Path(RUN_DIR)\n"
    _notebook(nbdir / "01_first.ipynb", 'SEED = 0  # seed\nK = 1  # k\nRUN_DIR = "x"  # run folder',
              log + "import numpy as np\n(run / 'a.txt').write_text(f'{SEED}-{K}')\n"
                    "(run / 'paths.csv').write_text(f'path\\n{run.resolve() / \"a.txt\"}\\n')\n"
                    "np.savez(run / 'e.npz', paths=np.asarray([str(run.resolve() / 'a.txt')]), v=np.zeros(2))\n"
                    "with open(run.parent / 'exec.log', 'a') as fh:\n    fh.write(f'01 {run.name}\\n')")
    _notebook(nbdir / "02_second.ipynb", 'SEED = 0  # seed\nGAMMA = 1.0  # gamma\nRUN_DIR = "x"  # run folder',
              log + "with open(run.parent / 'exec.log', 'a') as fh:\n    fh.write(f'02 {run.name}\\n')\n"
                    "if GAMMA == 3:\n    raise ValueError('gamma three is not allowed')\n"
                    "(run / 'b.txt').write_text((run / 'a.txt').read_text() + f'|{GAMMA}')\n"
                    "if GAMMA == 1:\n    (run / 'sub').mkdir(exist_ok=True)\n    (run / 'sub' / 'only1.txt').write_text('x')")
    return nbdir


def _log(sweep_dir: Path) -> list[str]:
    return (sweep_dir / "exec.log").read_text().splitlines()


@pytest.mark.slow
def test_sweep_shares_upstream_skips_complete_and_continues_past_failure(tiny_notebooks, tmp_path):
    spec = _spec(grid={"GAMMA": [1, 2, 3]}, seeds=[0, 1])
    sw = tmp_path / "sw"
    _, outcomes = sweep.run_sweep(spec, sw, compare=False, progress=False, notebook_dir=tiny_notebooks)
    status = {o.run.name: o.status for o in outcomes}
    assert status == {f"gamma_{g}-seed{s}": ("failed" if g == 3 else "done") for s in (0, 1) for g in (1, 2, 3)}
    failed = next(o for o in outcomes if o.status == "failed")
    assert "02_second.ipynb failed" in failed.error and "gamma three" in failed.error
    log = _log(sw)
    # 01 ran once per seed (never shared across seeds); 02 once per run
    assert sorted(line for line in log if line.startswith("01")) == ["01 gamma_1-seed0", "01 gamma_1-seed1"]
    assert len([line for line in log if line.startswith("02")]) == 6
    assert (sw / "gamma_2-seed1" / "b.txt").read_text() == "1-1|2.0"
    assert (sw / "gamma_2-seed0" / "b.txt").read_text() == "0-1|2.0"
    m = manifest.load(sw / "gamma_2-seed1")
    assert m["stages"]["01_first.ipynb"]["reused_from"] == "gamma_1-seed1"
    assert "reused_from" not in m["stages"]["02_second.ipynb"]
    assert m["sweep"] == {"folder": str(sw.resolve()), "point": {"GAMMA": 2.0}, "seed": 1, "profile": "smoke",
                          "dataset": "synthetic", "data_dir": None, "sets": {}}
    assert "notebooks/01_first.ipynb" in m["records"] and "a.txt" in m["outputs"]
    # copied files point at their own run folder, not the donor's
    own = (sw / "gamma_2-seed1").resolve()
    assert (sw / "gamma_2-seed1" / "paths.csv").read_text().splitlines()[1] == str(own / "a.txt")
    import numpy as np

    assert str(np.load(sw / "gamma_2-seed1" / "e.npz")["paths"][0]) == str(own / "a.txt")
    assert "FAILED gamma_3-seed0" in sweep.report(outcomes)
    rows = (sw / "runs.csv").read_text().splitlines()
    assert rows[0].startswith("run,seed,GAMMA,status") and len(rows) == 7

    # a second invocation skips the complete runs and retries only the failed ones (01 is reused)
    (sw / "exec.log").unlink()
    _, again = sweep.run_sweep(spec, sw, compare=False, progress=False, notebook_dir=tiny_notebooks)
    assert sum(o.status == "skipped (complete)" for o in again) == 4
    assert all(o.seconds > 0 for o in again if o.status == "skipped (complete)")  # the time it took, not 0
    assert sorted(_log(sw)) == ["02 gamma_3-seed0", "02 gamma_3-seed1"]

    # a new grid value reuses 01 of the matching seed only
    (sw / "exec.log").unlink()
    _, more = sweep.run_sweep(_spec(grid={"GAMMA": [5]}, seeds=[1]), sw, compare=False, progress=False,
                              notebook_dir=tiny_notebooks)
    assert _log(sw) == ["02 gamma_5-seed1"]
    assert (sw / "gamma_5-seed1" / "b.txt").read_text() == "1-1|5.0"
    # a run folder of the same name made with other fixed settings is not overwritten
    with pytest.raises(StudyInputError, match="another sweep setting.*gamma_1-seed0"):
        sweep.run_sweep(_spec(grid={"GAMMA": [1]}, sets={"K": 2}), sw, compare=False, progress=False,
                        notebook_dir=tiny_notebooks)
    # ... and a change of an upstream parameter reuses nothing
    (sw / "exec.log").unlink()
    sweep.run_sweep(_spec(grid={"K": [7]}, seeds=[1]), sw, compare=False, progress=False, notebook_dir=tiny_notebooks)
    assert _log(sw) == ["01 k_7-seed1", "02 k_7-seed1"]


def _reuse(sw: Path, names) -> dict[str, dict[str, str | None]]:
    return {n: {nb: st.get("reused_from") for nb, st in manifest.load(sw / n)["stages"].items()} for n in names}


@pytest.mark.slow
def test_jobs_2_gives_the_results_of_jobs_1_and_computes_shared_stages_once(tiny_notebooks, tmp_path):
    """--jobs 2 on a 2 x 2 grid: runs sharing notebook 01 wait for the run that computes it, the others run
    at the same time; files, sharing and runs.csv are those of the sequential sweep."""
    spec = _spec(grid={"K": [1, 2], "GAMMA": [1, 2]}, seeds=[0])
    lines = []
    _, seq = sweep.run_sweep(spec, tmp_path / "one", compare=False, progress=False, notebook_dir=tiny_notebooks)
    _, par = sweep.run_sweep(spec, tmp_path / "two", compare=False, progress=False, notebook_dir=tiny_notebooks,
                             jobs=2, echo=lines.append)
    names = [o.run.name for o in seq]
    assert [o.run.name for o in par] == names and {o.status for o in seq + par} == {"done"}
    for n in names:
        assert (tmp_path / "one" / n / "b.txt").read_text() == (tmp_path / "two" / n / "b.txt").read_text()
    assert _reuse(tmp_path / "one", names) == _reuse(tmp_path / "two", names)
    for sw in ("one", "two"):  # 01 once per K, 02 once per run
        assert sorted(x for x in _log(tmp_path / sw) if x.startswith("01")) == ["01 k_1-gamma_1-seed0", "01 k_2-gamma_1-seed0"]
    started = [x for x in lines if x.endswith("started")]
    # the two runs that compute 01 start first; each run reusing one starts after it has finished
    assert [x.split("] ")[1] for x in started[:2]] == ["k_1-gamma_1-seed0: started", "k_2-gamma_1-seed0: started"]
    finished = {x.split("] ")[1].split(":")[0]: i for i, x in enumerate(lines) if ": done" in x}
    starts = {x.split("] ")[1].split(":")[0]: i for i, x in enumerate(lines) if x.endswith("started")}
    assert starts["k_1-gamma_2-seed0"] > finished["k_1-gamma_1-seed0"]
    assert starts["k_2-gamma_2-seed0"] > finished["k_2-gamma_1-seed0"]
    rows = [r.split(",")[:5] for r in (tmp_path / "two" / "runs.csv").read_text().splitlines()[1:]]
    assert [r[0] for r in rows] == names and {r[4] for r in rows} == {"done"}


@pytest.mark.slow
def test_submitit_local_executor_runs_a_two_point_sweep(tiny_notebooks, tmp_path):
    """--executor submitit-local: each grid point a submitit job (the path of --executor slurm), logs in jobs/."""
    spec = _spec(grid={"GAMMA": [1, 2]}, seeds=[0])
    sw, outcomes = sweep.run_sweep(spec, tmp_path / "sw", compare=False, progress=False, notebook_dir=tiny_notebooks,
                                   jobs=2, executor="submitit-local", echo=lambda *_: None)
    assert [o.status for o in outcomes] == ["done", "done"], sweep.report(outcomes)
    assert (sw / "gamma_2-seed0" / "b.txt").read_text() == "0-1|2.0"
    assert manifest.load(sw / "gamma_2-seed0")["stages"]["01_first.ipynb"]["reused_from"] == "gamma_1-seed0"
    assert list((sw / "jobs").glob("*_log.out")) and (sw / "runs.csv").is_file()
    # run again: both complete, nothing submitted
    _, again = sweep.run_sweep(spec, sw, compare=False, progress=False, notebook_dir=tiny_notebooks, jobs=2,
                               executor="submitit-local", echo=lambda *_: None)
    assert [o.status for o in again] == ["skipped (complete)"] * 2
    with pytest.raises(StudyInputError, match="--jobs must be at least 1"):
        sweep.run_sweep(spec, tmp_path / "x", notebook_dir=tiny_notebooks, jobs=0)
    with pytest.raises(StudyInputError, match="--slurm settings need"):
        sweep.run_sweep(spec, tmp_path / "x", notebook_dir=tiny_notebooks, executor_settings={"a": 1})
    assert not (tmp_path / "x").exists()


class _Job:
    def __init__(self, value):
        self.value = value

    def done(self):
        return True

    def result(self):
        if isinstance(self.value, BaseException):
            raise self.value
        return self.value


class _FakeExecutor:
    """Runs tasks at once; refuses to submit task 1 (a broken pool, a refused sbatch); task 2's job crashes."""

    def __init__(self, interrupt_at=None):
        self.submitted, self.stopped, self.interrupt_at = [], None, interrupt_at

    def submit(self, fn, i):
        if i == self.interrupt_at:
            raise KeyboardInterrupt
        if i == 1:
            raise RuntimeError("pool is broken")
        self.submitted.append(i)
        return _Job(RuntimeError("worker died") if i == 2 else fn(i))

    def shutdown(self, stop):
        self.stopped = stop


def test_run_all_records_refused_and_crashed_jobs_and_stops_workers_when_interrupted():
    from improve_lib.runs import sweep_jobs

    done, pool = {}, _FakeExecutor()
    sweep_jobs.run_all([0, 1, 2, 3], lambda i: (i,), lambda i: f"ok {i}", {3: [1]}, 2, pool,
                       on_start=lambda i: None, on_done=done.__setitem__,
                       on_error=lambda i, exc: f"failed {i}: {exc}")
    assert done == {0: "ok 0", 1: "failed 1: pool is broken", 2: "failed 2: worker died", 3: "ok 3"}
    assert pool.stopped is False  # finished normally: nothing to stop
    pool = _FakeExecutor(interrupt_at=2)
    with pytest.raises(KeyboardInterrupt):
        sweep_jobs.run_all([0, 2], lambda i: (i,), lambda i: i, {}, 2, pool, on_start=lambda i: None,
                           on_done=lambda i, r: None, on_error=lambda i, exc: None)
    assert pool.stopped is True


def test_donor_whose_files_a_later_stage_rewrote_is_not_reused(tmp_path):
    books = [Path("01_first.ipynb"), Path("02_second.ipynb")]
    keys = {"01_first.ipynb": "k1", "02_second.ipynb": "k2"}
    run = sweep.SweepRun("new-seed0", {}, 0, {}, keys)
    donor = tmp_path / "old-seed0"
    donor.mkdir()
    (donor / "a.txt").write_text("rewritten by 02")
    stages = {b.name: {"status": "done", "key": keys[b.name]} for b in books}
    manifest.save(donor, {"stages": stages, "outputs": {"a.txt": "h"},
                          "output_stages": {"a.txt": ["01_first.ipynb", "02_second.ipynb"]}})
    assert sharing.find_donor(run, tmp_path, books) == (donor, ["01_first.ipynb", "02_second.ipynb"])
    other = sweep.SweepRun("new-seed0", {}, 0, {}, {**keys, "02_second.ipynb": "other"})
    assert sharing.find_donor(other, tmp_path, books) == (None, [])  # 01's a.txt is 02's now
    manifest.save(donor, {"stages": stages, "outputs": {"a.txt": "h"}, "output_stages": {"a.txt": ["01_first.ipynb"]}})
    assert sharing.find_donor(other, tmp_path, books) == (donor, ["01_first.ipynb"])
    n = sharing.adopt_stages(tmp_path / "new-seed0", donor, ["01_first.ipynb"])
    assert n == 1 and (tmp_path / "new-seed0" / "a.txt").read_text() == "rewritten by 02"
    assert manifest.load(tmp_path / "new-seed0")["stages"]["01_first.ipynb"]["reused_from"] == "old-seed0"


@pytest.mark.slow
def test_resume_with_force_reruns_from_the_first_changed_notebook(tiny_notebooks, tmp_path):
    run = tmp_path / "run"
    pipeline.run_pipeline("smoke", run_dir=run, sets={"GAMMA": 1.0}, progress=False, notebook_dir=tiny_notebooks)
    assert (run / "sub" / "only1.txt").is_file()
    with pytest.raises(StudyInputError, match="changed parameter.*GAMMA"):
        pipeline.run_pipeline("smoke", run_dir=run, sets={"GAMMA": 2.0}, resume=True, progress=False,
                              notebook_dir=tiny_notebooks)
    (tmp_path / "exec.log").unlink()
    pipeline.run_pipeline("smoke", run_dir=run, sets={"GAMMA": 2.0}, resume=True, force=True, progress=False,
                          notebook_dir=tiny_notebooks)
    assert _log(tmp_path) == ["02 run"] and (run / "b.txt").read_text() == "0-1|2.0"
    assert not (run / "sub").exists()  # what the old GAMMA wrote is gone, folder and all
    assert json.loads((run / "manifest.json").read_text())["complete"] is True


# ---------------------------------------------------------------------- the real notebooks, smoke scale

@pytest.mark.slow
def test_smoke_sweep_2x2_and_comparison_notebook(smoke_synthetic_run, tmp_path):
    """A 2x2 sweep on the smoke profile (to 06, for CI time) over one sampling and one evaluation
    parameter, with --jobs 2. A plain run of the same settings placed in the sweep folder lends its 01-04
    (equal stage keys: the same computation), 05 runs once per guidance scale, 06 in every run, as in a
    sequential sweep (the two guidance scales run at once); 08 renders the table."""
    shutil.copytree(smoke_synthetic_run, tmp_path / "sw" / "plain-run")
    # one classifier seed (06's EVAL_SEEDS) and no tone diagnostic in 05 (the shared run checks it), for CI time;
    # 01-04's stage keys stay the plain run's
    spec = _spec(grid={"GUIDANCE_SCALE": [0, 2], "EVAL_EPOCHS": [1, 2]}, seeds=[0], from_nb="05", to_nb="06",
                 sets={"EVAL_SEEDS": [0], "DIAGNOSTIC_PER_CLASS": 0})
    sw, outcomes = sweep.run_sweep(spec, tmp_path / "sw", progress=False, jobs=2)
    assert [o.status for o in outcomes] == ["done"] * 4, sweep.report(outcomes)
    names = [o.run.name for o in outcomes]
    assert names[:2] == ["guidance_scale_0-eval_epochs_1-seed0", "guidance_scale_0-eval_epochs_2-seed0"]
    ran_from = {}
    for o in outcomes:
        stages = manifest.load(sw / o.run.name)["stages"]
        ran_from[o.run.name] = next(nb[:2] for nb, st in stages.items() if not st.get("reused_from"))
        assert all(st["status"] == "done" for st in stages.values())
        info = json.loads((sw / o.run.name / "samples" / "prototype" / "sampling.json").read_text())
        assert info["GUIDANCE_SCALE"] == o.run.point["GUIDANCE_SCALE"]
        assert yaml.safe_load((sw / o.run.name / "params.yaml").read_text())["EVAL_EPOCHS"] == o.run.point["EVAL_EPOCHS"]
    # a new evaluation setting reuses the samples of its guidance scale; a new guidance scale reuses 01-04
    assert [ran_from[n] for n in names] == ["05", "06", "05", "06"]
    assert manifest.load(sw / names[0])["stages"]["04_train_diffusion.ipynb"]["reused_from"] == "plain-run"
    nb = nbformat.read(sw / "08_compare_runs.ipynb", as_version=4)
    text = "\n".join(str(out.get("data", {}).get("text/markdown", "")) for c in nb.cells for out in c.get("outputs", []))
    assert "TSTR macro F1 % (prototype)" in text and "GUIDANCE_SCALE=2, EVAL_EPOCHS=2" in text
    summary = (sw / "comparison" / "summary.csv").read_text()
    assert "nearest-prototype test accuracy %" in summary and (sw / "comparison" / "comparison.png").is_file()
    out = results_folder.write_results(sw, tmp_path / "results" / "sweep", "python -m improve_lib sweep ...")
    assert results_folder.verify(out) == sorted(names) and not list(out.rglob("*.safetensors"))
    metrics = out / "runs" / names[0] / "metrics.json"
    metrics.write_text(metrics.read_text().replace('"f1"', '"f1" ', 1))  # a hand edit
    with pytest.raises(StudyInputError, match="sha256 differs"):
        results_folder.verify(out)
    shutil.rmtree(sw / "guidance_scale_2-eval_epochs_2-seed0")  # a comparison of what is left still renders
    sweep.render_comparison(sw, progress=False)


def test_comparison_of_runs_without_metrics_is_empty_not_an_error():
    from improve_lib.report import comparison

    long = pd.DataFrame([{"run": "k_1-seed0", "seed": 0, "K": 1, "complete": False, "metric": None, "arm": None,
                          "value": float("nan")}])
    summary = comparison.summarise(long, ["K"])
    assert summary.empty and "mean" in summary.columns
    assert comparison.wide_table(summary, ["K"]).empty


def test_t_interval_matches_the_formula():
    from improve_lib.report.comparison import t_interval

    mean, low, high = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and high - mean == pytest.approx(4.302653 * 1.0 / 3 ** 0.5, rel=1e-5)
    assert t_interval([5.0])[0] == 5.0 and all(map(lambda v: v != v, t_interval([5.0])[1:]))


def test_named_variants_set_several_keys_per_grid_point():
    preset = {"profile": "smoke", "variants": {"plain": {"DROPOUT": 0.1, "INPUT_NORMALIZATION": "none"},
                                               "standardized": {"DROPOUT": 0.0, "INPUT_NORMALIZATION": "standardize"}},
              "seeds": [0, 1], "from": "04"}
    runs = sweep.expand(sweep.spec_from(preset))
    assert [r.name for r in runs] == ["recipe_plain-seed0", "recipe_standardized-seed0", "recipe_plain-seed1",
                                      "recipe_standardized-seed1"]
    assert runs[1].point == {"RECIPE": "standardized"} and runs[1].params["INPUT_NORMALIZATION"] == "standardize"
    assert runs[1].params["DROPOUT"] == 0.0 and runs[0].keys["03_prototypes.ipynb"] == runs[1].keys["03_prototypes.ipynb"]
    only = sweep.expand(sweep.spec_from(preset, variants="standardized"))
    assert [r.name for r in only] == ["recipe_standardized-seed0", "recipe_standardized-seed1"]
    with pytest.raises(StudyInputError, match="not variants of the preset"):
        sweep.spec_from(preset, variants="nope")
    bad = {**preset, "variants": {"x": {"GUIDANCE_SCALE": "high"}}}
    with pytest.raises(StudyInputError, match="variant 'x': GUIDANCE_SCALE"):
        sweep.expand(sweep.spec_from(bad))
    early = {**preset, "variants": {"x": {"GAMMA": 2.0}}}
    with pytest.raises(StudyInputError, match="before --from 04"):
        sweep.expand(sweep.spec_from(early))


def test_a_sweep_on_real_data_records_the_inputs_of_its_runs(tmp_path, ham_dir):
    """A sweep's fresh run folder starts from the manifest's whole skeleton: notebook 01 on a real dataset records
    its input images (a marker-only manifest once failed every real-data sweep in 01 with KeyError 'inputs')."""
    spec = sweep.SweepSpec(profile="smoke", grid={}, dataset="ham10000", data_dir=str(ham_dir), seeds=[0], to_nb="01")
    sw, outcomes = sweep.run_sweep(spec, tmp_path / "sw", compare=False, progress=False)
    assert [o.status for o in outcomes] == ["done"], outcomes
    m = manifest.load(sw / "seed0")
    assert m["written_by"] == manifest.WRITTEN_BY and m["sweep"]["seed"] == 0
    assert len(m["inputs"]) > 100 and all(len(h) == 64 for h in m["inputs"].values())

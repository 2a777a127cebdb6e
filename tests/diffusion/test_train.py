"""Training entry point: one step, freezing, kill-and-resume, config changes, NaN, 2 processes, limits.

Tiny UNets (channels 8/16, 16 px, 2 classes, 8 training images) so that each test takes seconds.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from improve_lib.conditioning.class_table import arm_class_table
from improve_lib.conditioning.embeddings import save_embeddings
from improve_lib.core.errors import StudyInputError
from improve_lib.core.notebook_parameters import notebook_defaults
from improve_lib.diffusion import checkpoints, train as train_module, training_objective
from improve_lib.diffusion.trained_arm import load_trained
from improve_lib.diffusion.unet import build_unet, model_config

CLASSES = ["blast", "lymphocyte"]
D = 24  # prototype dimension != COND_DIM


def make_run(root, n_train=4, n_test=1, seed=0):
    """A run folder as notebooks 01-03 leave it: split.csv + PNGs, embeddings/train.npz, prototypes."""
    rng = np.random.default_rng(seed)
    rows = []
    img_dir = root / "data" / "images"
    img_dir.mkdir(parents=True)
    for label, name in enumerate(CLASSES):
        for i in range(n_train + n_test):
            colour = rng.integers(0, 256, 3)
            arr = np.clip(colour + rng.integers(-40, 40, (20, 20, 3)), 0, 255).astype(np.uint8)
            path = img_dir / f"{name}_{i}.png"
            Image.fromarray(arr).save(path)
            rows.append({"path": str(path), "label": label, "class_name": name,
                         "split": "train" if i < n_train else "test", "group": f"{name}_{i}"})
    # as notebook 01 writes it: images inside the run folder relative to it, so a copied run is a run of its own
    pd.DataFrame(rows).assign(path=lambda t: [str(Path(p).relative_to(root)) for p in t["path"]]).to_csv(
        root / "data" / "split.csv", index=False)
    vectors = rng.normal(size=(n_train * len(CLASSES), D)).astype(np.float32)
    train_paths = [r["path"] for r in rows if r["split"] == "train"]
    save_embeddings(root / "embeddings" / "train.npz", train_paths, np.repeat(np.arange(len(CLASSES)), n_train),
                    CLASSES, vectors, "test-encoder")
    (root / "prototypes").mkdir()
    protos = torch.from_numpy(rng.normal(size=(len(CLASSES), D)).astype(np.float32))
    save_file({"class_embeddings": protos}, str(root / "prototypes" / "class_embeddings.safetensors"),
              metadata={"class_names": json.dumps(CLASSES)})
    return root


def tiny_config(run_dir, arm="prototype", **over):
    """A complete training config: notebook 04's defaults with a tiny model and run."""
    cfg = {**notebook_defaults("04"), "RUN_DIR": str(run_dir), "ARM": arm, "SEED": 3, "RESOLUTION": 16, "BASE_CHANNELS": 8,
           "CHANNEL_MULT": [1, 2], "LAYERS_PER_BLOCK": 1, "NORM_GROUPS": 8, "DROPOUT": 0.1, "COND_DIM": 8,
           "CLASS_EMBEDDING_MAP": "pca", "BATCH_SIZE": 4, "MAX_STEPS": 1, "CHECKPOINT_EVERY": 100,
           "SAMPLE_STEPS": 2, "SAMPLE_PER_CLASS": 1, "EMA_DECAY": 0.9, "FLIP": True, "LR": 1e-3,
           "PROGRESS": False, "CPU": True, "WARMUP_STEPS": 0, "SAMPLE_EVERY": 0, "KEEP_CHECKPOINTS": 2,
           "PREVIEW_GUIDANCE_SCALE": 1.8}
    cfg.update(over)
    return cfg


pytestmark = pytest.mark.slow  # every test here runs the training loop (a few seconds each)


@pytest.fixture()
def run(tmp_path):
    return make_run(tmp_path / "run")


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def _initial_model(cfg):
    from improve_lib.diffusion.train import resolve_config

    cfg = resolve_config(cfg)
    table, cond_dim = arm_class_table(cfg["RUN_DIR"], cfg["ARM"], CLASSES, cfg["CLASS_EMBEDDING_MAP"],
                                      cfg["COND_DIM"], seed=cfg["SEED"])
    frozen = cfg["ARM"] == "prototype" and cfg["FREEZE_PROTOTYPES"]
    return build_unet(model_config(cfg, cond_dim), len(CLASSES), table, freeze=frozen), table


@pytest.mark.parametrize("arm", ["prototype", "baseline"])
def test_one_step_updates_every_trainable_parameter_and_only_baseline_table(run, arm):
    from improve_lib.diffusion.train import train

    cfg = tiny_config(run, arm, MAX_STEPS=1)
    summary = train(cfg)
    assert summary["steps"] == 1 and summary["world_size"] == 1
    init, table = _initial_model(cfg)
    trained, names, saved_cfg = load_trained(run, arm, ema=False)
    assert names == CLASSES and saved_cfg["ARM"] == arm and saved_cfg["COND_DIM"] == 8
    before, after = init.state_dict(), trained.state_dict()
    unchanged = [k for k, p in init.named_parameters() if p.requires_grad and torch.equal(before[k], after[k])]
    assert unchanged == []
    emb_before, emb_after = before["class_embedding.weight"], after["class_embedding.weight"]
    assert torch.count_nonzero(emb_after[len(CLASSES)]) == 0  # the null row stays zero
    if arm == "prototype":
        assert torch.equal(emb_after, emb_before) and torch.equal(emb_after[:2], table)
        assert not trained.class_embedding.weight.requires_grad  # load_trained re-froze it
    else:
        assert not torch.equal(emb_after[:2], emb_before[:2])
        assert trained.class_embedding.weight.requires_grad
    out = run / "models" / arm
    for rel in ("final/unet/diffusion_pytorch_model.safetensors", "final/unet/diffusion_pytorch_model.raw.safetensors",
                "final/model_index.json", "final/pipeline_improve.py", "final/README.md",
                "final/class_table.safetensors", "final/scheduler/scheduler_config.json",
                "final/class_names.json", "final/train_config.yaml", "loss.png", "samples/step-1.png",
                "checkpoint-1/training_state.json", "class_table.safetensors"):
        assert (out / rel).is_file(), rel
    loss = pd.read_csv(out / "loss.csv")
    assert list(loss.columns) == ["step", "loss", "lr"] and list(loss["step"]) == [1]


def test_kill_and_resume_replays_the_uninterrupted_run(run, monkeypatch):
    import improve_lib.diffusion.train as tr

    full = tiny_config(run, "baseline", MAX_STEPS=5, CHECKPOINT_EVERY=2, ARM_NAME="full")
    tr.train(full)
    resumed = {**full, "ARM_NAME": "resumed"}
    real_loss, calls = training_objective.diffusion_loss, []

    def killed_at_step_4(*args):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt  # the kernel was interrupted during step 4
        return real_loss(*args)

    monkeypatch.setattr(training_objective, "diffusion_loss", killed_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        tr.train(resumed)
    monkeypatch.setattr(training_objective, "diffusion_loss", real_loss)
    out = run / "models" / "resumed"
    assert [c[0] for c in checkpoints.list_checkpoints(out)] == [2] and not (out / "final").exists()
    (out / "checkpoint-3").mkdir()  # a checkpoint cut short by a kill: no training_state.json
    summary = tr.train(resumed)
    assert summary["resumed_from"].endswith("checkpoint-2") and summary["steps_this_session"] == 3
    assert not (out / "checkpoint-3").exists()  # the stale incomplete folder was cleaned up
    for sub in ("final/unet/diffusion_pytorch_model.safetensors", "final/unet/diffusion_pytorch_model.raw.safetensors"):
        a, b = _weights(run / "models" / "full" / sub), _weights(out / sub)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.allclose(a[k], b[k], atol=1e-6), (sub, k)
    pd.testing.assert_frame_equal(pd.read_csv(run / "models" / "full" / "loss.csv"), pd.read_csv(out / "loss.csv"))


def test_resume_refuses_a_changed_config_and_a_corrupt_checkpoint(run):
    from improve_lib.diffusion.train import train

    cfg = tiny_config(run, "prototype", MAX_STEPS=2, CHECKPOINT_EVERY=2)
    train(cfg)
    with pytest.raises(StudyInputError, match=r"BASE_CHANNELS changed from 8 to 16"):
        train({**cfg, "MAX_STEPS": 4, "BASE_CHANNELS": 16, "NORM_GROUPS": 8})
    with pytest.raises(StudyInputError, match=r"LR changed from 0\.001 to 0\.002"):
        train({**cfg, "MAX_STEPS": 4, "LR": 2e-3})
    ckpt = run / "models" / "prototype" / "checkpoint-2"
    (ckpt / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(StudyInputError, match=r"checkpoint-2 is corrupt"):
        train({**cfg, "MAX_STEPS": 4})


def test_nan_loss_stops_naming_the_step_and_keeps_checkpoints(run, monkeypatch):
    import improve_lib.diffusion.train as tr

    real_loss, calls = training_objective.diffusion_loss, []

    def nan_from_step_3(*args):
        calls.append(1)
        loss = real_loss(*args)
        return loss * float("nan") if len(calls) >= 3 else loss

    monkeypatch.setattr(training_objective, "diffusion_loss", nan_from_step_3)
    with pytest.raises(tr.TrainingDivergedError, match=r"nan at step 3 .*checkpoint-2"):
        tr.train(tiny_config(run, "baseline", MAX_STEPS=5, CHECKPOINT_EVERY=2))
    assert [c[0] for c in checkpoints.list_checkpoints(run / "models" / "baseline")] == [2]


def test_keep_checkpoints_limit(run):
    from improve_lib.diffusion.train import train

    train(tiny_config(run, "baseline", MAX_STEPS=5, CHECKPOINT_EVERY=1, KEEP_CHECKPOINTS=2, EMA_DECAY=0))
    assert [(s, c) for s, _, c in checkpoints.list_checkpoints(run / "models" / "baseline")] == [(4, True), (5, True)]
    final = run / "models" / "baseline" / "final"
    assert not (final / "unet" / "diffusion_pytorch_model.raw.safetensors").exists()  # EMA off: raw weights only
    assert json.loads((final / "model_index.json").read_text())["weights"] == "raw"


def test_cli_with_epochs_and_load_trained_errors(run, tmp_path):
    import yaml

    from improve_lib.diffusion.train import main

    with pytest.raises(StudyInputError, match="04_train_diffusion"):
        load_trained(run, "baseline")
    path = tmp_path / "params.yaml"
    cfg = tiny_config(run, "baseline", EPOCHS=1, LR="1e-3", DATASET="synthetic")  # unrelated keys are ignored
    cfg["MAX_STEPS"] = None
    path.write_text(yaml.safe_dump(cfg))
    assert main(["--config", str(path)]) == 0
    _, names, saved = load_trained(run, "baseline")
    assert saved["TOTAL_STEPS"] == 2 and saved["LR"] == 1e-3 and names == CLASSES  # 8 images / batch 4
    path.write_text(yaml.safe_dump({**cfg, "MAX_STEPS": 3}))
    assert main(["--config", str(path)]) == 2  # MAX_STEPS and EPOCHS together: a clear error, exit code 2


def test_two_cpu_processes_through_notebook_launcher(run, tmp_path):
    import subprocess
    import sys
    import textwrap

    import yaml

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tiny_config(run, "baseline", MAX_STEPS=2, BATCH_SIZE=2, DROPOUT=0.0)))
    # A fresh interpreter, as a notebook kernel that has not trained yet: notebook_launcher forks, and a
    # parent that already ran a backward on a CUDA machine has autograd threads that forked workers
    # cannot use ("Unable to handle autograd's threading in combination with fork-based multiprocessing").
    code = textwrap.dedent(f"""
        import torch
        import improve_lib.core.machine as processes
        from improve_lib.diffusion.launch import launch
        processes.usable_cpus = lambda: 16  # as on a 16-core machine: forked workers with 8 threads hung there
        torch.nn.functional.conv2d(torch.randn(8, 8, 32, 32), torch.randn(8, 8, 3, 3))  # the OpenMP pool ran
        launch({str(path)!r}, num_processes=2)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world_size=2" in proc.stdout
    summary = json.loads((run / "models" / "baseline" / "final" / "training_summary.json").read_text())
    assert summary["world_size"] == 2 and len(summary["rank_weight_sha256"]) == 2
    assert len(set(summary["rank_weight_sha256"])) == 1  # DDP kept both ranks' weights identical
    # One process computing both ranks' shards replays the same batches and noise: the same losses and
    # weights up to float rounding (one batch of 4 against two of 2 and an all-reduce)
    from improve_lib.diffusion.train import train

    single = make_run(tmp_path / "single")
    one = train(tiny_config(single, "baseline", MAX_STEPS=2, BATCH_SIZE=2, DROPOUT=0.0, DATA_SHARDS=2))
    assert one["world_size"] == 2 and one["processes"] == 1
    _assert_same_training(run / "models" / "baseline", single / "models" / "baseline")


def _assert_same_training(a: Path, b: Path, lr: float = 1e-3, steps: int = 2) -> None:
    """Two arm folders trained the same steps on the same draws: equal losses and final weights up to rounding.

    Adam moves a weight by about ``lr`` whatever the size of its gradient, so a gradient near 0 whose sign
    rounding flips moves it the other way: single elements may differ by up to 2 lr a step, the mean stays
    at rounding level (measured: mean 2e-6, 2 % of elements above 1e-5; other draws give a mean near lr)."""
    la, lb = pd.read_csv(a / "loss.csv"), pd.read_csv(b / "loss.csv")
    assert len(la) == len(lb) > 0
    np.testing.assert_allclose(la.loss, lb.loss, rtol=1e-4, atol=1e-5)  # loss.csv keeps 6 significant digits
    files = sorted(p.relative_to(a) for p in (a / "final").rglob("*.safetensors"))
    assert files
    for name in files:
        wa, wb = _weights(a / name), _weights(b / name)
        assert wa.keys() == wb.keys()
        diff = torch.cat([(wa[k].float() - wb[k].float()).abs().flatten() for k in wa])
        assert diff.mean() < 1e-5 and diff.max() <= 2 * lr * steps, (name, float(diff.mean()), float(diff.max()))


def _write_configs(run: Path, folder: Path, **over) -> dict:
    import yaml

    folder.mkdir(exist_ok=True)
    paths = {}
    for arm in ("baseline", "prototype"):
        paths[arm] = folder / f"{arm}.yaml"
        paths[arm].write_text(yaml.safe_dump(tiny_config(run, arm, **over)))
    return paths


def test_arms_side_by_side_replay_the_shards_and_a_failed_arm_is_named(tmp_path):
    """launch_concurrently: each arm a process of its own computing 2 shards, the same numbers as one process
    computing them; an arm that fails leaves the other trained and the error names it."""
    from improve_lib.diffusion.launch import train_arms
    from improve_lib.diffusion.train import train

    over = dict(MAX_STEPS=2, BATCH_SIZE=2, DROPOUT=0.0)
    side = make_run(tmp_path / "side")
    seconds = train_arms(_write_configs(side, tmp_path / "cfg", **over), num_processes=2, schedule="concurrent")
    assert set(seconds) == {"baseline", "prototype"}
    single = make_run(tmp_path / "single")
    for arm in ("baseline", "prototype"):
        train(tiny_config(single, arm, DATA_SHARDS=2, **over))
        summary = json.loads((side / "models" / arm / "final" / "training_summary.json").read_text())
        assert summary["world_size"] == 2 and summary["processes"] == 1
        _assert_same_training(side / "models" / arm, single / "models" / arm)
    broken = make_run(tmp_path / "broken")
    (broken / "prototypes" / "class_embeddings.safetensors").unlink()
    with pytest.raises(RuntimeError, match=r"training failed for prototype\n--- prototype \(exit code 2\)"):
        train_arms(_write_configs(broken, tmp_path / "cfg_broken", **over), num_processes=1, schedule="concurrent")
    assert (broken / "models" / "baseline" / "final").is_dir()
    with pytest.raises(StudyInputError, match="ARM_SCHEDULE"):
        train_arms({}, 1, "parallel")


def test_arms_side_by_side_end_with_the_notebook_that_started_them(tmp_path):
    """A kernel killed while its arms train side by side leaves no training process behind."""
    import signal
    import subprocess
    import sys
    import time

    run = make_run(tmp_path / "run")
    configs = _write_configs(run, tmp_path / "cfg", MAX_STEPS=10**6, CHECKPOINT_EVERY=10**6)
    code = f"from improve_lib.diffusion.launch import launch_concurrently; launch_concurrently({ {k: str(v) for k, v in configs.items()} !r})"
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def children():
        out = subprocess.run(["pgrep", "-f", str(tmp_path / "cfg")], capture_output=True, text=True).stdout.split()
        return [int(pid) for pid in out if int(pid) != parent.pid]

    deadline = time.time() + 120
    while len(children()) < 2 and time.time() < deadline:
        time.sleep(0.5)
    assert len(children()) == 2, parent.communicate(timeout=60)[0][-2000:] if parent.poll() is not None else "no arms started"
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 60
    while children() and time.time() < deadline:
        time.sleep(0.5)
    assert not children()


def test_too_many_processes_is_refused(run, tmp_path):
    import yaml

    from improve_lib.diffusion.launch import launch

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tiny_config(run, "baseline")))
    with pytest.raises(StudyInputError, match="NUM_PROCESSES=4096"):
        launch(path, num_processes=4096)
    assert not (run / "models").exists()


def test_resume_from_a_checkpoint_older_than_a_new_model_key(tmp_path):
    """A checkpoint written before CLASS_EMBEDDING_COMBINE existed resumes when the key has its default,
    and refuses when it does not."""
    new = {"BASE_CHANNELS": 8, "CLASS_EMBEDDING_COMBINE": "concat"}
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"step": 3, "resume_config": {"BASE_CHANNELS": 8}}))
    assert checkpoints.check_resume(state, new)["step"] == 3
    with pytest.raises(StudyInputError, match="CLASS_EMBEDDING_COMBINE changed from 'concat' to 'add'"):
        checkpoints.check_resume(state, {**new, "CLASS_EMBEDDING_COMBINE": "add"})


class _Planted:
    """A pickle that, when unpickled, writes a file: what a tampered checkpoint would hide."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_resuming_never_unpickles_code_planted_in_a_checkpoint(run, tmp_path):
    import pickle

    from improve_lib.diffusion.train import train

    cfg = tiny_config(run, "baseline", MAX_STEPS=2, CHECKPOINT_EVERY=2)
    train(cfg)
    ckpt = run / "models" / "baseline" / "checkpoint-2"
    assert (ckpt / "ema.safetensors").is_file() and (ckpt / "ema.json").is_file()
    assert not list(ckpt.glob("*.pkl")) or all(p.name.startswith("random_states") for p in ckpt.glob("*.pkl"))
    marker = tmp_path / "executed"
    planted = ckpt / "custom_checkpoint_0.pkl"  # where accelerate kept a registered EMA, as a pickle
    planted.write_bytes(pickle.dumps(_Planted(marker)))
    with pytest.raises(StudyInputError, match="never unpickles"):
        train({**cfg, "MAX_STEPS": 3})
    assert not marker.exists()
    planted.unlink()
    rng_files = list(ckpt.glob("random_states_*.pkl"))
    for p in rng_files:  # accelerate reads these with torch.load(weights_only=True), which refuses the object
        p.write_bytes(pickle.dumps(_Planted(marker)))
    summary = train({**cfg, "MAX_STEPS": 3})  # (no draw depends on the global RNG: every step seeds its own)
    assert summary["resumed_from"].endswith("checkpoint-2") and rng_files and not marker.exists()


def test_compiled_unet_resumes_exactly_and_saves_plain_parameter_names(run, monkeypatch):
    """The fast path (COMPILE, improve_lib.diffusion.fast_path) keeps the exact-resume guarantee on a CPU: a run
    resumed from the uninterrupted run's checkpoint-2 replays its steps 3-4 exactly.

    For CI time the graph goes to torch's ``aot_eager`` backend (dynamo and AOT autograd, as with inductor,
    without generating C++: inductor's first compile took 85 s of a 2-core CI run). Inductor itself resumed
    bit for bit here in ``benchmarks/gpu_check.sh --cpu --modes reduce-overhead`` and within bf16 tolerance
    on the H200 (results/gpu_check/h200.json)."""
    import shutil

    from improve_lib.diffusion import fast_path
    from improve_lib.diffusion.train import train

    real_compile = torch.compile
    monkeypatch.setattr(fast_path.torch, "compile", lambda model, mode=None, dynamic=None:
                        real_compile(model, backend="aot_eager", dynamic=dynamic))

    with pytest.raises(StudyInputError, match="COMPILE"):
        train(tiny_config(run, "baseline", COMPILE="fastest"))
    full = tiny_config(run, "baseline", MAX_STEPS=4, CHECKPOINT_EVERY=2, KEEP_CHECKPOINTS=2, COMPILE="default",
                       ARM_NAME="full")
    train(full)
    shutil.copytree(run / "models" / "full" / "checkpoint-2", run / "models" / "resumed" / "checkpoint-2")
    summary = train({**full, "ARM_NAME": "resumed"})
    assert summary["resumed_from"].endswith("checkpoint-2") and summary["steps_this_session"] == 2
    sub = "final/unet/diffusion_pytorch_model.raw.safetensors"
    a, b = _weights(run / "models" / "full" / sub), _weights(run / "models" / "resumed" / sub)
    assert a.keys() == b.keys() and not any("_orig_mod" in k for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bit for bit
    loss = [pd.read_csv(run / "models" / name / "loss.csv") for name in ("full", "resumed")]
    pd.testing.assert_frame_equal(loss[0][loss[0]["step"] > 2].reset_index(drop=True), loss[1], check_exact=True)


def test_the_training_config_checks_the_one_domain_table(tmp_path):
    """resolve_config and the run's preflight read one table (core.parameter_domains): each key's first value outside
    its domain is refused here too, NaN included, and GRAD_CLIP=0 (documented: no clipping) is accepted by both."""
    from improve_lib.core import parameter_domains

    for key in train_module._FLOATS + train_module._INTS:
        low, high, low_open, high_open = parameter_domains.NUMBERS[key]
        for bad in (low if low_open else low - 1, float("nan")):
            if key in train_module._INTS and bad != bad:
                continue  # an int key refuses NaN as a type error (as_int)
            with pytest.raises(StudyInputError, match=key):
                train_module.resolve_config(tiny_config(tmp_path, **{key: bad}))
    assert train_module.resolve_config(tiny_config(tmp_path, GRAD_CLIP=0))["GRAD_CLIP"] == 0
    assert parameter_domains.check_domains({"GRAD_CLIP": 0.0})


def test_quarter_turns_reach_the_batch_and_the_saved_config(tmp_path):
    """ROT90 changes what the step trains on (the loss of the same draws differs) and is a recipe key of the
    saved config and of resuming."""
    from improve_lib.diffusion.train import RESUME_KEYS, train

    losses = {}
    for rot in (False, True):
        run = make_run(tmp_path / f"rot{rot}")
        train(tiny_config(run, "baseline", MAX_STEPS=2, ROT90=rot))
        losses[rot] = pd.read_csv(run / "models" / "baseline" / "loss.csv")["loss"].tolist()
        assert load_trained(run, "baseline", ema=False)[2]["ROT90"] is rot
    assert losses[False] != losses[True] and "ROT90" in RESUME_KEYS

"""GPU check of the training fast path, in one run, written to one JSON file (``benchmarks/gpu_check.sh``).

    python benchmarks/gpu_check.py --out gpu_check.json            # a GPU: the paper's UNet, batch 16, 64 px
    python benchmarks/gpu_check.py --out gpu_check.json --cpu      # tiny sizes on the CPU (what CI runs)

Sections, each timed inside one process on the same card, so that ratios are comparable:

1. ``peak``: the card's dense bf16 peak from its data sheet (where known) and a measured large matmul.
2. ``step``: seconds per training step and MFU of the UNet for the bare diffusers + accelerate loop
   (``bench_train.bare_loop``) and for the entry point's own step (``improve_lib.diffusion.train.TrainingRun.step``:
   seeded draws, condition dropout, clipping, EMA, the loss log) without and with each ``COMPILE`` mode.
   MFU = FLOPs of one step (forward + backward, ``torch.utils.flop_counter``) x steps/s / peak.
3. ``models_per_gpu``: K training processes (arms and seeds of a study) on the one device at once, each
   timing the same number of steps after its warm-up; per-model speed as a fraction of one process alone.
4. ``resume``: both arms trained N steps straight, and again from the straight run's checkpoint at N/2;
   the weight difference (exact on a CPU; on a GPU bf16 and non-deterministic kernels allow a small one).

Sections are skipped, with the reason, when ``--budget-s`` would be exceeded; the JSON is rewritten after
each section, so a run stopped early still reports what it measured. Not a test (CI runs the CPU mode).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import bare_loop, make_images  # noqa: E402

from improve_lib.core import machine  # noqa: E402
from improve_lib.core.notebook_parameters import notebook_defaults  # noqa: E402
from improve_lib.diffusion.train import TrainingRun, resolve_config, train  # noqa: E402
from improve_lib.diffusion.unet import build_unet, count_flops_per_step, model_config  # noqa: E402

# Dense bf16 tensor-core peaks from NVIDIA's data sheets (FLOP/s, without sparsity).
SPEC_PEAK_BF16 = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12, "L40S": 362.05e12, "L4": 121e12}

# The paper's UNet (Table 2) at batch 16, 64 px, with CLIP's 768-d prototypes; and a CPU-sized one.
SIZES = {
    "gpu": dict(RESOLUTION=64, BASE_CHANNELS=64, CHANNEL_MULT=[1, 2, 4, 8], LAYERS_PER_BLOCK=2, NORM_GROUPS=32,
                DROPOUT=0.1, BATCH_SIZE=16, proto_dim=768, classes=7, images=700),
    "cpu": dict(RESOLUTION=16, BASE_CHANNELS=8, CHANNEL_MULT=[1, 2], LAYERS_PER_BLOCK=1, NORM_GROUPS=8,
                DROPOUT=0.1, BATCH_SIZE=4, proto_dim=24, classes=2, images=16),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def config(run_dir: Path, size: dict, arm: str, cpu: bool, **over) -> dict:
    """A complete training config: notebook 04's defaults with the paper's recipe (Table 2) at ``size``."""
    model = {k: v for k, v in size.items() if k.isupper()}
    cfg = {**notebook_defaults("04"), **model, "RUN_DIR": str(run_dir), "ARM": arm, "SEED": 0,
           "CLASS_EMBEDDING_MAP": "none", "COND_DIM": None, "PREDICTION_TYPE": "epsilon", "SNR_GAMMA": None,
           "ZERO_TERMINAL_SNR": False, "INPUT_NORMALIZATION": "none", "LR": 1e-4, "WARMUP_STEPS": 0,
           "EMA_DECAY": 0.999, "MAX_STEPS": 1, "EPOCHS": None, "CHECKPOINT_EVERY": 10 ** 8, "SAMPLE_EVERY": 0,
           "SAMPLE_STEPS": 2, "SAMPLE_PER_CLASS": 1, "PROGRESS": False, "CPU": cpu, "MIXED_PRECISION": "auto"}
    cfg.update(over)
    return cfg


def peak(device: torch.device) -> dict:
    """The data-sheet bf16 peak (GPU) and a measured matmul rate (bf16 on a GPU, fp32 on a CPU)."""
    n, dtype, reps = (8192, torch.bfloat16, 10) if device.type == "cuda" else (1024, torch.float32, 5)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    measured = 2 * n ** 3 * reps / (time.perf_counter() - t0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    spec = next((v for k, v in SPEC_PEAK_BF16.items() if k in name), None) if device.type == "cuda" else None
    return {"device_name": name, "spec_bf16_flops": spec, "measured_matmul_flops": measured,
            "matmul": f"{n}x{n}x{n} {str(dtype).replace('torch.', '')}, mean of {reps} after 3 warm-ups",
            "peak_used_for_mfu": spec or measured, "peak_source": "data sheet" if spec else "measured matmul"}


def warm_run(cfg: dict, warmup: int) -> TrainingRun:
    """The entry point's training session for ``cfg`` after ``warmup`` steps (compilation happens here)."""
    run = TrainingRun(resolve_config(cfg))
    run.resume()
    run.model.train()
    if warmup:
        timed_steps(run, 0, warmup)
    return run


def timed_steps(run: TrainingRun, first: int, steps: int) -> float:
    """Steps/s of ``run.step`` over steps ``first .. first + steps - 1``, every queued step finished."""
    _sync(run.device)
    t0 = time.perf_counter()
    for i in range(first, first + steps):
        run.step(i)
    run.log.check()  # the losses are read: every queued step has run
    _sync(run.device)
    return steps / (time.perf_counter() - t0)


def entry_rate(cfg: dict, warmup: int, steps: int) -> float:
    """Steps/s of the entry point's training step (``TrainingRun.step``) after ``warmup`` steps."""
    try:
        return timed_steps(warm_run(cfg, warmup), warmup, steps)
    finally:
        machine.reset_accelerate()


def _worker(index: int, cfg: dict, warmup: int, threads: int, commands, results) -> None:
    """One model of ``models_per_gpu``: warm up, then time ``steps`` whenever told, until told to stop."""
    torch.set_num_threads(threads)
    try:
        run = warm_run(cfg, warmup)
        results.put((index, "ready", None))
        at = warmup
        while (command := commands.get()) is not None:
            results.put((index, "rate", timed_steps(run, at, command)))
            at += command
    except Exception:
        results.put((index, "error", traceback.format_exc()))


def models_per_gpu(root: Path, size: dict, cpu: bool, compile_mode: str, counts: list[int], warmup: int,
                   steps: int, threads: int, timeout_s: float) -> dict:
    """Per-model steps/s with K = ``counts`` processes training at once on the device (spawned workers)."""
    ctx = mp.get_context("spawn")
    most = max(counts)
    commands, results = [ctx.Queue() for _ in range(most)], ctx.Queue()
    procs = []
    for i in range(most):  # arms and seeds of a study: each worker its own run folder and seed
        run_dir = root / f"model{i}"
        make_images(run_dir, size["images"], size["RESOLUTION"], size["classes"], size["proto_dim"])
        cfg = config(run_dir, size, ("baseline", "prototype")[i % 2], cpu, SEED=i, COMPILE=compile_mode)
        procs.append(ctx.Process(target=_worker, args=(i, cfg, warmup, threads, commands[i], results)))
        procs[-1].start()
    try:
        for _ in range(most):
            index, kind, value = results.get(timeout=timeout_s)
            if kind == "error":
                raise RuntimeError(f"worker {index} failed:\n{value}")
        rounds = {}
        for k in counts:
            for i in range(k):
                commands[i].put(steps)
            rates = []
            for _ in range(k):
                index, kind, value = results.get(timeout=timeout_s)
                if kind == "error":
                    raise RuntimeError(f"worker {index} failed:\n{value}")
                rates.append(value)
            rounds[k] = rates
        solo = rounds[min(counts)][0] if min(counts) == 1 else None
        table = [{"models": k, "per_model_steps_per_s": [round(r, 3) for r in rates],
                  "min_fraction_of_solo": round(min(rates) / solo, 3) if solo else None,
                  "total_steps_per_s": round(sum(rates), 3),
                  "throughput_vs_solo": round(sum(rates) / solo, 3) if solo else None} for k, rates in rounds.items()]
        return {"compile": compile_mode, "steps_timed": steps, "warmup": warmup, "threads_per_process": threads,
                "rounds": table}
    finally:
        for q in commands:
            q.put(None)
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "final" / "unet" / "diffusion_pytorch_model.raw.safetensors"))


def resume_check(root: Path, size: dict, cpu: bool, compile_mode: str, steps: int) -> dict:
    """Both arms: ``steps`` straight vs resumed at ``steps // 2`` from the straight run's checkpoint."""
    run_dir = root / "resume"
    make_images(run_dir, size["images"], size["RESOLUTION"], size["classes"], size["proto_dim"])
    out = {"compile": compile_mode, "steps": steps, "resumed_at": steps // 2}
    for arm in ("baseline", "prototype"):
        cfg = config(run_dir, size, arm, cpu, MAX_STEPS=steps, CHECKPOINT_EVERY=steps // 2, COMPILE=compile_mode,
                     ARM_NAME=f"{arm}-straight", SAMPLE_STEPS=2)
        t0 = time.perf_counter()
        straight = train(cfg)
        seconds = time.perf_counter() - t0
        models = run_dir / "models"
        shutil.copytree(models / f"{arm}-straight" / f"checkpoint-{steps // 2}", models / f"{arm}-resumed" / f"checkpoint-{steps // 2}")
        resumed = train({**cfg, "ARM_NAME": f"{arm}-resumed"})
        a, b = _weights(models / f"{arm}-straight"), _weights(models / f"{arm}-resumed")
        diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
        num = sum(float((a[k].float() - b[k].float()).pow(2).sum()) for k in a) ** 0.5
        den = sum(float(a[k].float().pow(2).sum()) for k in a) ** 0.5
        import pandas as pd

        la, lb = (pd.read_csv(models / name / "loss.csv") for name in (f"{arm}-straight", f"{arm}-resumed"))
        la = la[la["step"] > steps // 2].reset_index(drop=True)
        out[arm] = {"resumed_from": Path(resumed["resumed_from"]).name, "identical_weights": diff == 0.0,
                    "max_abs_weight_diff": diff, "relative_l2_weight_diff": num / den,
                    "max_abs_loss_diff_after_resume": float((la["loss"] - lb["loss"]).abs().max()),
                    "final_loss_mean_last_10": float(lb["loss"].tail(10).mean()),
                    "straight_seconds_incl_compile_and_export": round(seconds, 1),
                    "straight_steps_per_s": straight["steps_per_second"]}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    p.add_argument("--cpu", action="store_true", help="tiny sizes on the CPU (CI); default: the paper UNet on CUDA")
    p.add_argument("--budget-s", type=float, default=420, help="skip sections that would not finish in this time")
    p.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 60 GPU, 4 CPU)")
    p.add_argument("--modes", nargs="+", default=None, help="COMPILE modes to time (default: all on a GPU, "
                   "none and default on a CPU)")
    p.add_argument("--models", type=int, nargs="+", default=None, help="process counts (default 1 2 4 8 GPU, 1 2 CPU)")
    p.add_argument("--resume-steps", type=int, default=None, help="steps of the resume check (default 300 GPU, 4 CPU)")
    args = p.parse_args()
    started = time.perf_counter()
    gpu = not args.cpu
    if gpu and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --cpu for the CPU check")
    device = torch.device("cuda" if gpu else "cpu")
    if not gpu:
        torch.set_num_threads(1)  # tiny sizes: more threads only wait on each other (and on a shared CI machine)
    size = SIZES["gpu" if gpu else "cpu"]
    steps = args.steps or (60 if gpu else 4)
    warmup = 10 if gpu else 2
    modes = args.modes or (["none", "default", "reduce-overhead"] if gpu else ["none", "default"])
    modes = ["none", *[m for m in modes if m != "none"]]  # the eager step is every ratio's reference
    counts = args.models or ([1, 2, 4, 8] if gpu else [1, 2])
    resume_steps = args.resume_steps or (300 if gpu else 4)
    report: dict = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "torch": torch.__version__,
                    "cuda": torch.version.cuda, "host_cpus": os.cpu_count(), "mode": "gpu" if gpu else "cpu",
                    "model": {k: v for k, v in size.items() if k.isupper()} | {"proto_dim": size["proto_dim"]},
                    "skipped": {}, "errors": {}}

    def write() -> None:
        report["seconds"] = round(time.perf_counter() - started, 1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=2))
        tmp.replace(args.out)

    def section(name: str, need_s: float, fn) -> None:
        left = args.budget_s - (time.perf_counter() - started)
        if left < need_s:
            report["skipped"][name] = f"{left:.0f} s of the budget left, about {need_s:.0f} s needed"
        else:
            t0 = time.perf_counter()
            try:
                report[name] = fn()
            except Exception:
                report["errors"][name] = traceback.format_exc()[-3000:]
            print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
        write()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        section("peak", 10, lambda: peak(device))
        mfu_peak = report.get("peak", {}).get("peak_used_for_mfu")

        def step_section() -> dict:
            run_dir = root / "step"
            make_images(run_dir, size["images"], size["RESOLUTION"], size["classes"], size["proto_dim"])
            base = config(run_dir, size, "baseline", not gpu)
            model = build_unet(model_config(resolve_config(base), size["proto_dim"]), size["classes"]).to(device)
            flops = count_flops_per_step(model, size["BATCH_SIZE"], size["RESOLUTION"])["step"]
            params = sum(q.numel() for q in model.parameters())
            del model
            rates = {"bare_loop": bare_loop({**base, "COND_DIM": size["proto_dim"]}, size["classes"], steps, warmup)}
            for mode in modes:
                if mode != "none" and time.perf_counter() - started > args.budget_s - 150:
                    report["skipped"][f"step {mode}"] = "too little of the budget left to compile"
                    continue
                try:
                    rates[f"entry_compile_{mode}"] = entry_rate({**base, "COMPILE": mode}, warmup, steps)
                except Exception:  # one mode failing to compile must not hide the others' numbers
                    if mode == "none":
                        raise
                    report["errors"][f"step {mode}"] = traceback.format_exc()[-3000:]
            rows = {name: {"steps_per_s": round(r, 3), "s_per_step": round(1 / r, 5),
                           "speed_vs_bare": round(r / rates["bare_loop"], 3),
                           "speed_vs_entry_none": round(r / rates["entry_compile_none"], 3),
                           "mfu": round(flops * r / mfu_peak, 4) if mfu_peak else None} for name, r in rates.items()}
            best = max((m for m in modes if f"entry_compile_{m}" in rates), key=lambda m: rates[f"entry_compile_{m}"])
            return {"params": params, "tflop_per_step": flops / 1e12, "steps_timed": steps, "warmup": warmup,
                    "variants": rows, "fastest_compile": best}

        section("step", 30 if not gpu else 150, step_section)
        fastest = report.get("step", {}).get("fastest_compile", "none")
        threads = 2 if gpu else 1
        section("models_per_gpu", 40 if not gpu else 120,
                lambda: models_per_gpu(root, size, not gpu, fastest if gpu else "none", counts, warmup, steps, threads,
                                       max(30.0, args.budget_s - (time.perf_counter() - started) - 60)))
        section("resume", 20 if not gpu else 60, lambda: resume_check(root, size, not gpu, fastest, resume_steps))
    write()
    print(json.dumps({k: report[k] for k in ("step", "models_per_gpu", "resume", "skipped", "errors") if k in report},
                     indent=1, default=str)[:6000])
    if report["errors"]:
        sys.exit(1)


if __name__ == "__main__":
    main()

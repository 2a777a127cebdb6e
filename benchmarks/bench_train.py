"""Training speed: our entry point's step vs a bare diffusers + accelerate loop, in one process.

    python benchmarks/bench_train.py                       # small CPU config
    python benchmarks/bench_train.py --channels 32 64 128 --cond-dim 128 --batch 32 --resolution 32

Both loops train the same UNet (``improve_lib.diffusion.unet.build_unet``, baseline arm) on the same in-memory
images. The entry point (``improve_lib.diffusion.train.train``) adds what a real run needs: per-step seeded
generators, condition dropout, the loss all-reduce and NaN check, gradient clipping, EMA, the loss log
and one checkpoint at its last step; the bare loop has none of these. The entry point is timed by its
own ``steps_per_second`` (which leaves out checkpoint and preview time) after a warm-up run it resumes
from; the ratio shows the per-step overhead. Runs alternate ``--repeats`` times and the best of each is kept, since
other processes on a shared CPU slow either loop at random. Also prints
the measured FLOPs of one step (forward + backward). Not a test.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from improve_lib.core.notebook_parameters import notebook_defaults  # noqa: E402
from improve_lib.diffusion.train import train  # noqa: E402
from improve_lib.diffusion.training_objective import noise_scheduler  # noqa: E402
from improve_lib.diffusion.unet import build_unet, count_flops_per_step, model_config  # noqa: E402


def make_images(run_dir: Path, n: int, resolution: int, classes: int = 2, proto_dim: int | None = None) -> None:
    """Random-coloured PNGs and a ``data/split.csv`` (what the baseline arm reads); with ``proto_dim``, also
    random unit prototypes ``prototypes/class_embeddings.safetensors`` (what the prototype arm reads)."""
    rng = np.random.default_rng(0)
    (run_dir / "data" / "img").mkdir(parents=True)
    rows = []
    for i in range(n):
        path = run_dir / "data" / "img" / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)).save(path)
        label = i % classes
        rows.append({"path": str(path), "label": label, "class_name": f"c{label}", "split": "train", "group": str(i)})
    pd.DataFrame(rows).to_csv(run_dir / "data" / "split.csv", index=False)
    if proto_dim:
        protos = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(classes, proto_dim)).astype(np.float32)), dim=1)
        (run_dir / "prototypes").mkdir()
        save_file({"class_embeddings": protos}, str(run_dir / "prototypes" / "class_embeddings.safetensors"),
                  metadata={"class_names": json.dumps([f"c{c}" for c in range(classes)])})


def bare_loop(cfg: dict, classes: int, steps: int, warmup: int) -> float:
    """Steps/s of a plain loop: same UNet, AdamW, DDPMScheduler noise, epsilon MSE, accelerate."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    gpu = torch.cuda.is_available() and cfg["CPU"] is not True
    # the same precision as the entry point's MIXED_PRECISION="auto"
    precision = "bf16" if gpu and torch.cuda.is_bf16_supported() else "no"
    accelerator = Accelerator(cpu=not gpu, mixed_precision=precision)
    model = build_unet(model_config(cfg), classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model, optimizer = accelerator.prepare(model, optimizer)
    sched = noise_scheduler(cfg)
    b, r = cfg["BATCH_SIZE"], cfg["RESOLUTION"]
    images = torch.rand(64, 3, r, r, device=accelerator.device) * 2 - 1
    model.train()
    for i in range(warmup + steps):
        if i == warmup:
            if accelerator.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        x0 = images[torch.randint(0, 64, (b,), device=accelerator.device)]
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (b,), device=accelerator.device)
        y = torch.randint(0, classes + 1, (b,), device=accelerator.device)
        pred = model(sched.add_noise(x0, noise, t), t, encoder_hidden_states=None, class_labels=y).sample
        loss = F.mse_loss(pred.float(), noise)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if accelerator.device.type == "cuda":
        torch.cuda.synchronize()
    rate = steps / (time.perf_counter() - t0)
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    return rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--channels", type=int, nargs="+", default=[16, 32], help="channels per level")
    p.add_argument("--layers", type=int, default=1, help="ResNet layers per level")
    p.add_argument("--cond-dim", type=int, default=64)
    p.add_argument("--norm-groups", type=int, default=8)
    p.add_argument("--attention", action="store_true")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2, help="alternating timed runs of each loop; best kept")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--gpu", action="store_true", help="use CUDA (bf16 autocast in the entry point)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = args.channels[0]
    if any(c % base for c in args.channels):
        raise SystemExit("--channels must be multiples of the first")
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        make_images(run_dir, 64, args.resolution)
        cfg = {**notebook_defaults("04"), "RUN_DIR": str(run_dir), "ARM": "baseline", "RESOLUTION": args.resolution, "BASE_CHANNELS": base,
               "CHANNEL_MULT": [c // base for c in args.channels], "LAYERS_PER_BLOCK": args.layers,
               "DROPOUT": 0.0, "COND_DIM": args.cond_dim, "NORM_GROUPS": args.norm_groups,
               "ATTENTION": args.attention, "BATCH_SIZE": args.batch, "CHECKPOINT_EVERY": 10 ** 8,
               "SAMPLE_EVERY": 0, "SAMPLE_STEPS": 1, "SAMPLE_PER_CLASS": 1, "WARMUP_STEPS": 0, "EPOCHS": None, "PROGRESS": False, "CPU": not args.gpu,
               "MIXED_PRECISION": "auto" if args.gpu else "no"}
        model = build_unet(model_config(cfg), 2)
        params = sum(p.numel() for p in model.parameters())
        flops = count_flops_per_step(model, args.batch, args.resolution)
        del model
        train({**cfg, "MAX_STEPS": args.warmup})  # warm-up run; each timed run resumes from the last
        entries, bares = [], []
        for r in range(args.repeats):  # alternate, keep the best: other processes on a shared CPU add noise
            summary = train({**cfg, "MAX_STEPS": args.warmup + (r + 1) * args.steps})
            entries.append(summary["steps_per_second"])
            bares.append(bare_loop(cfg, 2, args.steps, args.warmup))
        entry, bare = max(entries), max(bares)
    out = {"channels": args.channels, "layers": args.layers, "cond_dim": args.cond_dim, "resolution": args.resolution,
           "batch": args.batch, "attention": args.attention, "params": params, "gflops_per_step": flops["step"] / 1e9,
           "threads": torch.get_num_threads(), "device": "cuda" if args.gpu else "cpu",
           "entry_steps_per_s": round(entry, 3), "bare_steps_per_s": round(bare, 3),
           "entry_s_per_step": round(1 / entry, 4), "bare_s_per_step": round(1 / bare, 4),
           "entry_over_bare_speed": round(entry / bare, 3),
           "all_entry_steps_per_s": [round(e, 3) for e in entries],
           "all_bare_steps_per_s": [round(b, 3) for b in bares]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()

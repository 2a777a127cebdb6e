"""CPU throughput of the demo UNet's training step, every option side by side in one run.

    python benchmarks/bench_cpu_step.py                     # the demo UNet (16/32/64, batch 32, 32 px)
    python benchmarks/bench_cpu_step.py --json out.json --loss-steps 200

Measures, interleaved (so that a busy shared machine slows every option alike), the seconds per training
step (forward + backward + AdamW) of: fp32; fp32 with ``channels_last``; bf16 autocast; bf16 autocast with
``channels_last``; and ``torch.compile`` of the fp32 model. Beside them, the same run measures this CPU's
fp32 and bf16 matmul rate (a 1024^3 product), so each option's GFLOP/s can be read against the machine's
roofline. With ``--loss-steps N`` every option also trains N steps from the same start on the same
batches, and the loss curves are printed (a faster option must not train worse). Prints ratios against
fp32; not a test. Records what the CPU offers (``torch.backends.cpu.get_cpu_capability()``, AMX,
AVX-512 BF16), which decides ``MIXED_PRECISION=auto`` in training.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from improve_lib.core import machine
from improve_lib.core.notebook_parameters import notebook_defaults  # noqa: E402
from improve_lib.diffusion import training_objective, unet  # noqa: E402


def matmul_gflops(dtype: torch.dtype, n: int = 1024, repeats: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n ** 3 * repeats / (time.perf_counter() - t0) / 1e9


def make_step(option: str, cfg: dict, classes: int):
    """A training step closure for ``option`` over a fresh model (same seed for every option)."""
    model = unet.build_unet(cfg, classes)
    channels_last = "channels_last" in option
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if option == "compile" else model
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-4)
    sched = training_objective.noise_scheduler(cfg)
    bf16 = option.startswith("bf16")

    def step(x0, y, t, noise):
        xt = sched.add_noise(x0, noise, t)
        if channels_last:
            xt = xt.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            pred = forward(xt, t, encoder_hidden_states=None, class_labels=y).sample
        loss = F.mse_loss(pred.float(), noise)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss)

    return step


def batches(n: int, batch: int, res: int, classes: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    # smooth images with a mean and contrast like the synthetic cells (bright background, dark nuclei)
    base = F.interpolate(torch.rand(64, 3, res // 4, res // 4, generator=g), size=res, mode="bilinear")
    images = (base * 1.6 - 0.4).clamp(-1, 1)
    out = []
    for _ in range(n):
        idx = torch.randint(0, 64, (batch,), generator=g)
        out.append((images[idx], idx % classes, torch.randint(0, 1000, (batch,), generator=g),
                    torch.randn(batch, 3, res, res, generator=g)))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--layers", type=int, default=None,
                   help="ResNet layers per level (LAYERS_PER_BLOCK; default: notebook 04's)")
    p.add_argument("--cond-dim", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--steps", type=int, default=8, help="timed steps per option and round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median step time is kept")
    p.add_argument("--loss-steps", type=int, default=0, help="train this many steps per option and print losses")
    p.add_argument("--options", nargs="+",
                   default=["fp32", "fp32_channels_last", "bf16", "bf16_channels_last", "compile"])
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args()
    classes = 6
    cfg = {**notebook_defaults("04"), "BASE_CHANNELS": args.channels[0], "RESOLUTION": args.resolution,
           "CHANNEL_MULT": [c // args.channels[0] for c in args.channels], "COND_DIM": args.cond_dim}
    if args.layers is not None:
        cfg["LAYERS_PER_BLOCK"] = args.layers
    flops = unet.count_flops_per_step(unet.build_unet(cfg, classes), args.batch, args.resolution)["step"]
    data = batches(args.steps, args.batch, args.resolution, classes)
    steps = {o: make_step(o, cfg, classes) for o in args.options}
    for o, step in steps.items():  # warm-up (and compilation) outside the timing
        step(*data[0])
    times: dict[str, list[float]] = {o: [] for o in args.options}
    roof = {"fp32": [], "bf16": []}
    for _ in range(args.rounds):
        roof["fp32"].append(matmul_gflops(torch.float32))
        roof["bf16"].append(matmul_gflops(torch.bfloat16))
        for o, step in steps.items():
            t0 = time.perf_counter()
            for b in data:
                step(*b)
            times[o].append((time.perf_counter() - t0) / len(data))
    med = {o: sorted(v)[len(v) // 2] for o, v in times.items()}
    fp32_mm, bf16_mm = max(roof["fp32"]), max(roof["bf16"])
    out = {"cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "amx": torch.cpu._is_amx_tile_supported(), "avx512_bf16": torch.cpu._is_avx512_bf16_supported(),
           "threads": torch.get_num_threads(), "usable_cpus": machine.usable_cpus(),
           "channels": args.channels, "layers_per_block": cfg["LAYERS_PER_BLOCK"], "batch": args.batch,
           "resolution": args.resolution,
           "gflop_per_step": round(flops / 1e9, 2),
           "matmul_gflops": {"fp32": round(fp32_mm, 1), "bf16": round(bf16_mm, 1)},
           "options": {o: {"s_per_step": round(med[o], 4), "speed_vs_fp32": round(med["fp32"] / med[o], 3)
                           if "fp32" in med else None, "gflops": round(flops / med[o] / 1e9, 1),
                           "share_of_fp32_matmul": round(flops / med[o] / 1e9 / fp32_mm, 3),
                           "share_of_bf16_matmul": round(flops / med[o] / 1e9 / bf16_mm, 3)} for o in args.options}}
    if args.loss_steps:
        curves = {}
        train_batches = batches(args.loss_steps, args.batch, args.resolution, classes, seed=1)
        for o in args.options:
            step = make_step(o, cfg, classes)
            losses = [step(*b) for b in train_batches]
            k = max(1, len(losses) // 10)
            curves[o] = [round(sum(losses[i:i + k]) / len(losses[i:i + k]), 4) for i in range(0, len(losses), k)]
        out["loss_curves_mean_per_tenth"] = curves
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Classifier-free guidance: one batched forward (cond + uncond) vs two passes, images per second.

    python benchmarks/bench_cfg.py                       # demo-size UNet at 32 px on this machine
    python benchmarks/bench_cfg.py --channels 64 128 256 512 --layers 2 --cond-dim 768 --resolution 64

Both samplers run the same guided DDIM on the same untrained UNet and seeds; the batched one is
``improve_lib.diffusion.sample.ddim_sample`` (``guided_epsilon`` concatenates ``[x; x]`` with labels
``[y; null]``), the two-pass one calls the UNet twice per step. Prints both rates, their ratio and the
largest pixel difference between the two outputs. Not a test.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from improve_lib.diffusion.sample import ddim_sample, ddim_scheduler  # noqa: E402
from improve_lib.diffusion.training_objective import noise_scheduler  # noqa: E402
from improve_lib.diffusion.unet import build_unet  # noqa: E402


@torch.no_grad()
def two_pass_sample(model, labels, sched_cfg, seeds, w, settings, res):
    """The same guided DDIM, with the conditional and unconditional passes as two forwards."""
    sched = ddim_scheduler(sched_cfg, settings)
    null = int(model.config.num_class_embeds) - 1
    x = torch.stack([torch.randn(3, res, res, generator=torch.Generator().manual_seed(s)) for s in seeds])
    for t in sched.timesteps:
        cond = model(x, t, encoder_hidden_states=None, class_labels=labels).sample
        uncond = model(x, t, encoder_hidden_states=None, class_labels=torch.full_like(labels, null)).sample
        x = sched.step((1 + w) * cond - w * uncond, t, x, eta=0.0).prev_sample
    return x.clamp(-1, 1).add(1).div(2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--cond-dim", type=int, default=128)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--classes", type=int, default=6)
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--guidance", type=float, default=1.8)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()

    cfg = {"RESOLUTION": args.resolution, "BASE_CHANNELS": args.channels[0],
           "CHANNEL_MULT": [c // args.channels[0] for c in args.channels], "LAYERS_PER_BLOCK": args.layers,
           "COND_DIM": args.cond_dim, "NORM_GROUPS": 8, "DROPOUT": 0.0, "SEED": 0, "ATTENTION": False,
           "CLASS_EMBEDDING_COMBINE": "concat"}
    model = build_unet(cfg, args.classes).eval()
    sched_cfg = noise_scheduler({"NUM_TRAIN_TIMESTEPS": 1000, "BETA_SCHEDULE": "linear", "PREDICTION_TYPE": "epsilon",
                                 "ZERO_TERMINAL_SNR": False}).config
    settings = {"STEPS": args.steps, "ETA": 0.0, "GUIDANCE_SCALE": args.guidance, "GUIDANCE_INTERVAL": [0.0, 1.0],
                "TIMESTEP_SPACING": "leading", "SAMPLE_CLIPPING": "clip"}
    labels = torch.arange(args.images) % args.classes
    seeds = list(range(args.images))
    best = {"batched": float("inf"), "two_pass": float("inf")}
    for _ in range(args.repeats):  # alternate, keep the best of each: a shared CPU slows either at random
        t0 = time.perf_counter()
        a = ddim_sample(model, labels, scheduler_config=sched_cfg, seeds=seeds, settings=settings)
        best["batched"] = min(best["batched"], time.perf_counter() - t0)
        t0 = time.perf_counter()
        b = two_pass_sample(model, labels, sched_cfg, seeds, args.guidance, settings, args.resolution)
        best["two_pass"] = min(best["two_pass"], time.perf_counter() - t0)
    rates = {k: args.images / v for k, v in best.items()}
    print(json.dumps({"images": args.images, "ddim_steps": args.steps, "channels": args.channels,
                      "resolution": args.resolution, "threads": torch.get_num_threads(),
                      "batched_images_per_s": round(rates["batched"], 3),
                      "two_pass_images_per_s": round(rates["two_pass"], 3),
                      "batched_over_two_pass": round(rates["batched"] / rates["two_pass"], 3),
                      "max_abs_pixel_diff": float((a - b).abs().max())}))


if __name__ == "__main__":
    main()

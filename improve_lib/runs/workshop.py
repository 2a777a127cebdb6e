"""``python -m improve_lib.runs.workshop check``: is this machine ready to teach the study without a network?

Run by ``make workshop`` after it has built the environment and run the smoke check and the demo's
notebooks 01-03. Each line says what was checked and where; the exit code is 1 if anything is missing,
so the instructor finds out the day before, not in class. See ``docs/workshop.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]
KERNEL_NAME = "improve-study"


def _kernel() -> str:
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)  # raises NoSuchKernel
    if Path(spec.argv[0]).resolve() != Path(sys.executable).resolve():
        raise RuntimeError(f"kernel {KERNEL_NAME!r} runs {spec.argv[0]}, not this environment's {sys.executable}")
    return f"{spec.display_name} -> {spec.argv[0]}"


def _widgets() -> str:
    import ipywidgets
    import jupyterlab

    return f"jupyterlab {jupyterlab.__version__}, ipywidgets {ipywidgets.__version__} (progress bars as widgets)"


def _encoder(spec: str) -> Callable[[], str]:
    def check() -> str:
        import torch
        from PIL import Image

        from improve_lib.conditioning.encoders import load_encoder

        enc = load_encoder(spec)
        vec = enc.encode(enc.preprocess(Image.new("RGB", (64, 64), (200, 120, 160)))[None])
        if not torch.isfinite(vec).all():
            raise RuntimeError("the encoder returned non-finite features")
        return f"{enc.id} loads offline, {enc.dim}-d features"
    return check


def _run(run_dir: Path, notebooks: list[str]) -> Callable[[], str]:
    def check() -> str:
        if not (run_dir / "manifest.json").is_file():
            raise RuntimeError(f"{run_dir} does not exist yet: `make workshop` runs it")
        m = json.loads((run_dir / "manifest.json").read_text())
        stages = m.get("stages", {})
        missing = [n for n in notebooks if stages.get(n, {}).get("status") != "done"]
        if missing:
            raise RuntimeError(f"{run_dir}: not done: {missing}")
        secs = sum(stages[n].get("seconds", 0) for n in notebooks)
        return f"{run_dir.relative_to(REPO) if run_dir.is_relative_to(REPO) else run_dir}: {len(notebooks)} notebooks done in {secs:.0f} s"
    return check


def _cache() -> str:
    from improve_lib.conditioning.embeddings import default_cache_dir

    cache = default_cache_dir()
    n = sum(1 for p in cache.rglob("*") if p.is_file()) if cache.is_dir() else 0
    if n == 0:
        raise RuntimeError(f"the embedding cache {cache} is empty")
    return f"{cache}: {n} cached embeddings (notebook 02 of the demo seed reads them instead of encoding)"


def checks(open_clip: str | None = None) -> list[tuple[str, Callable[[], str]]]:
    """The readiness checks, in order: ``(what, function returning a detail line or raising)``."""
    out = [
        ("project kernel registered", _kernel),
        ("JupyterLab with widgets", _widgets),
        ("offline ImageNet encoder", _encoder("efficientnet-lite0")),
        ("smoke run, all notebooks", _run(REPO / "runs" / "workshop-check",
                                          ["01_explore_data.ipynb", "02_embeddings.ipynb", "03_prototypes.ipynb",
                                           "04_train_diffusion.ipynb", "05_sample.ipynb", "06_evaluate.ipynb",
                                           "07_plausibility_review.ipynb"])),
        ("demo data, embeddings, prototypes", _run(REPO / "runs" / "workshop-demo",
                                                   ["01_explore_data.ipynb", "02_embeddings.ipynb",
                                                    "03_prototypes.ipynb"])),
        ("embedding cache", _cache),
    ]
    if open_clip:
        arch = os.environ.get("OPENCLIP_ARCH", "ViT-B-32")
        out.append((f"open_clip {arch} from {open_clip}", _encoder(f"open_clip:{arch}:{open_clip}")))
    return out


def main(argv: list[str] | None = None) -> int:
    """Print one line per check; exit code 1 if any failed."""
    p = argparse.ArgumentParser(prog="python -m improve_lib.runs.workshop", description=__doc__)
    p.add_argument("command", choices=["check"])
    p.add_argument("--open-clip", help="a local open_clip checkpoint to verify (architecture: $OPENCLIP_ARCH, "
                                       "default ViT-B-32)")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    failed = 0
    for what, fn in checks(args.open_clip):
        try:
            print(f"ok    {what}: {fn()}")
        except Exception as exc:  # noqa: BLE001 - every failed check is reported, then the next runs
            failed += 1
            print(f"FAIL  {what}: {type(exc).__name__}: {exc}")
    print("ready for the workshop" if not failed else f"{failed} check(s) failed: see docs/workshop.md")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

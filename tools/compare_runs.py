"""Do two run folders hold the same results? For refactors that must change no number.

    python tools/compare_runs.py RUN_A RUN_B

Compares, with each folder's own path replaced by a placeholder: ``data/split.csv`` (text), the tensors
of ``prototypes/*.safetensors`` (bit for bit; their metadata order is not fixed), the sha256 of every
trained arm's weights (``final/unet/`` and its raw variant, or the older ``final/`` and ``final/ema/``;
via ``improve_lib.diffusion.unet.state_dict_sha256``) and
``metrics/metrics.json`` (NaN equal to NaN; wall-clock fields, keys ending in ``seconds``, left out). Prints
one line per item and exits 1 when any differs.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from improve_lib.core import run_layout  # noqa: E402
from improve_lib.diffusion.trained_arm import RAW_VARIANT  # noqa: E402
from improve_lib.diffusion.unet import state_dict_sha256


def _text(run: Path, rel: str) -> str | None:
    path = run / rel
    return path.read_text().replace(str(run.resolve()), "<RUN>") if path.is_file() else None


def _numbers(value):
    """JSON value without its timing fields, as sorted text (so NaN equals NaN)."""
    def strip(v):
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if not k.endswith("seconds")}
        return [strip(x) for x in v] if isinstance(v, list) else v
    return None if value is None else json.dumps(strip(json.loads(value)), sort_keys=True)


def _weights(run: Path) -> dict[str, str]:
    out = {}
    for final in sorted(run_layout.arm_dir(run, "*").parent.glob(f"*/{run_layout.FINAL}")):
        for sub, variant in ((final, None), (final / "ema", None), (final / "unet", None), (final / "unet", RAW_VARIANT)):
            name = "diffusion_pytorch_model" + (f".{variant}" if variant else "") + ".safetensors"
            if (sub / "config.json").is_file() and (sub / name).is_file():
                model = UNet2DConditionModel.from_pretrained(str(sub), variant=variant)
                out[f"{sub.relative_to(run)}{':' + variant if variant else ''}"] = state_dict_sha256(model)
    return out


def _tensors(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {p.name: load_file(str(p)) for p in sorted(run_layout.prototypes_dir(run).glob("*.safetensors"))}


def main(a: Path, b: Path) -> int:
    checks = {"data/split.csv": (_text(a, "data/split.csv"), _text(b, "data/split.csv")),
              "metrics/metrics.json": tuple(_numbers(_text(r, "metrics/metrics.json")) for r in (a, b))}
    ta, tb = _tensors(a), _tensors(b)
    same_tensors = ta.keys() == tb.keys() and all(
        ta[f].keys() == tb[f].keys() and all(torch.equal(ta[f][k], tb[f][k]) for k in ta[f]) for f in ta)
    checks["prototypes/*.safetensors tensors"] = (same_tensors, True)
    wa, wb = _weights(a), _weights(b)
    for name in sorted(set(wa) | set(wb)):
        checks[f"{name} weights sha256"] = (wa.get(name), wb.get(name))
    differ = 0
    for name, (x, y) in checks.items():
        same = x == y and x is not None
        differ += not same
        shown = f" ({x[:16]}...)" if same and isinstance(x, str) and len(x) == 64 else ""
        print(f"{'identical' if same else 'DIFFERENT'}  {name}{shown}")
    return 1 if differ else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))

"""A trained arm's ``final/`` folder: written into a side folder and swapped in whole, EMA weights beside
the raw ones, with the scheduler, the class names, the training config and the training summary."""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

import yaml
from diffusers.training_utils import EMAModel

from .io import atomic_write_json, atomic_write_text


@contextlib.contextmanager
def ema_weights(ema: EMAModel | None, model):
    """``with ema_weights(ema, model):`` the EMA weights are in ``model``; the raw ones are back after."""
    if ema is None:
        yield
        return
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    try:
        yield
    finally:
        ema.restore(model.parameters())


def write_final(final: Path, model, ema: EMAModel | None, scheduler, cfg: dict[str, Any], class_names: list[str],
                summary: dict[str, Any]) -> Path:
    """Write ``final/`` (``save_pretrained`` raw weights, ``ema/``, ``scheduler/``, ``class_names.json``,
    ``train_config.yaml``, ``training_summary.json``) into a side folder, then swap it in, so a kill never
    leaves half a final model. Returns ``final``."""
    final = Path(final)
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(str(partial), safe_serialization=True)
    if ema is not None:
        with ema_weights(ema, model):
            model.save_pretrained(str(partial / "ema"), safe_serialization=True)
    scheduler.save_pretrained(str(partial / "scheduler"))
    atomic_write_json(partial / "class_names.json", class_names)
    atomic_write_text(partial / "train_config.yaml", yaml.safe_dump(cfg, sort_keys=True))
    atomic_write_json(partial / "training_summary.json", summary)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)
    return final

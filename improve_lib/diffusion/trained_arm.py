"""A trained arm on disk: its folder, its resolved training config and its weights (EMA or raw).

``RUN_DIR/models/<arm>/final/`` is the diffusers pipeline folder :mod:`improve_lib.diffusion.model_folder`
writes; :func:`load_trained` loads its UNet with the class table's null row and freezing restored.
"""
from __future__ import annotations

import json
from typing import Any

import yaml
from diffusers import UNet2DConditionModel

from improve_lib.core.errors import StudyInputError
from improve_lib.core import run_layout
from improve_lib.diffusion.unet import freeze_class_table


def trained_config(run_dir, arm: str) -> dict[str, Any]:
    """The resolved training config of a trained arm (``final/train_config.yaml``): every key of
    notebook 04 plus what training derived (resolved precision, CPU capability, input statistics, ...)."""
    final = run_layout.final_dir(run_dir, arm)
    has_unet = (final / "unet" / "config.json").is_file() or (final / "config.json").is_file()
    if not has_unet or not (final / "train_config.yaml").is_file():
        raise StudyInputError(f"no trained model for arm {arm!r} in {final}: run notebook 04_train_diffusion first")
    return yaml.safe_load((final / "train_config.yaml").read_text())


# In a model folder's unet/, the raw training weights are this diffusers variant when the EMA weights are the default.
RAW_VARIANT = "raw"


def load_trained(run_dir, arm: str, ema: bool = True) -> tuple[UNet2DConditionModel, list[str], dict[str, Any]]:
    """Load a trained arm: ``(model, class_names, cfg)``.

    ``arm`` is the folder name under ``models/`` (``prototype``, ``baseline`` or an ``ARM_NAME``). With
    ``ema`` the EMA weights (``final/unet``'s default weights) are loaded, else the raw ones (its variant
    ``raw``); a run trained with EMA off has only the raw ones, which are then its result. The class table's
    null row and freezing are restored (``from_pretrained`` forgets both). The model is returned in eval
    mode on the CPU. A ``final/`` of the layout before the pipeline folder (weights at its top, ``ema/``)
    loads too.
    """
    final = run_layout.final_dir(run_dir, arm)
    cfg = trained_config(run_dir, arm)
    class_names = json.loads((final / "class_names.json").read_text())
    used_ema = float(cfg.get("EMA_DECAY") or 0) > 0
    if (final / "unet" / "config.json").is_file():
        raw = final / "unet" / f"diffusion_pytorch_model.{RAW_VARIANT}.safetensors"
        if used_ema and not raw.is_file():
            raise StudyInputError(f"{raw} is missing although the run used EMA; rerun notebook 04_train_diffusion")
        model = UNet2DConditionModel.from_pretrained(str(final / "unet"), use_safetensors=True,
                                                     variant=None if ema or not used_ema else RAW_VARIANT)
    else:
        path = final / "ema" if ema and (final / "ema" / "config.json").is_file() else final
        if ema and path == final and used_ema:
            raise StudyInputError(f"{final / 'ema'} is missing although the run used EMA; "
                                  f"rerun notebook 04_train_diffusion")
        model = UNet2DConditionModel.from_pretrained(str(path), use_safetensors=True)
    freeze_class_table(model, frozen=cfg.get("ARM") == "prototype" and bool(cfg.get("FREEZE_PROTOTYPES", True)))
    return model.eval(), class_names, cfg

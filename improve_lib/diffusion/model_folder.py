"""A trained arm's ``final/`` folder: a diffusers pipeline folder a stranger can load, written into a side
folder and swapped in whole.

Layout (``DiffusionPipeline.from_pretrained(final, trust_remote_code=True)`` loads it)::

    model_index.json      the pipeline: its class (in pipeline_improve.py), components, class names,
                          null class index, image scaling, default sampler, the class table's provenance
    pipeline_improve.py   improve_lib/diffusion/guided_pipeline.py, copied: the guided DDIM sampler of the study
    unet/                 the UNet; its default weights are the EMA weights when the run kept an EMA
                          (the study samples with them) and the raw ones are the variant "raw"
                          (``diffusion_pytorch_model.raw.safetensors``, ``variant="raw"``)
    scheduler/            the training noise schedule (DDPMScheduler; the pipeline samples it with DDIM)
    README.md             the model card (YAML metadata as the Hub expects, the loading snippet)
    class_table.safetensors, class_names.json, train_config.yaml, training_summary.json
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import diffusers
import yaml
from diffusers.training_utils import EMAModel

from improve_lib.conditioning import prototype_files
from improve_lib.core import citation, folders, notebook_parameters, run_layout
from improve_lib.core.files import atomic_write_json, atomic_write_text, sha256_file
from improve_lib.diffusion import guided_pipeline, sample, trained_arm, unet

PIPELINE_MODULE = "pipeline_improve"  # the file name the pipeline's code has in every model folder
PIPELINE_CLASS = guided_pipeline.ImproveGuidedPipeline.__name__
# The license of a model follows its training data's (see each dataset's SOURCE.md).
DATA_LICENSES = {"synthetic": "mit", "ham10000": "cc-by-nc-4.0", "bone_marrow": "cc-by-4.0",
                 "dermamnist": "cc-by-4.0", "bloodmnist": "cc-by-4.0"}


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


def class_table_provenance(cfg: dict[str, Any], table_file: Path) -> dict[str, Any]:
    """Where the arm's class table came from: the arm, whether it was frozen, the prototypes file it was
    mapped from (prototype arm) with its sha256, the map, and the sha256 of the table file in the folder."""
    arm = cfg.get("ARM")
    record = {"arm": arm, "frozen": arm == "prototype" and bool(cfg.get("FREEZE_PROTOTYPES", True)),
              "map": cfg.get("CLASS_EMBEDDING_MAP"), "cond_dim": cfg.get("COND_DIM"),
              "table_file": table_file.name, "table_file_sha256": sha256_file(table_file),
              "table_sha256": cfg.get("CLASS_TABLE_SHA256")}
    source = run_layout.prototypes_dir(cfg["RUN_DIR"]) / prototype_files.CLASS_EMBEDDINGS_FILE
    if arm == "prototype" and source.is_file():
        record.update(prototypes_file=f"{source.parent.name}/{source.name}", prototypes_sha256=sha256_file(source))
    return record


def default_sampler() -> dict[str, Any]:
    """The pipeline's default sampler: notebook 05's defaults (a run's own are in ``samples/<arm>/sampling.json``)."""
    return sample.sampler_settings(notebook_parameters.notebook_defaults("05"))


def write_final(final: Path, model, ema: EMAModel | None, scheduler, cfg: dict[str, Any], class_names: list[str],
                summary: dict[str, Any], class_table: Path | None = None) -> Path:
    """Write ``final/`` (the layout in this module's docstring) into a side folder, then swap it in, so a
    kill never leaves half a final model; an existing ``final`` is replaced only when this tool wrote all of
    it (:func:`improve_lib.core.folders.building`: a folder given by a user keeps the user's files).
    ``class_table``: the arm's ``class_table.safetensors`` (copied in for the record). Returns ``final``."""
    final = Path(final)
    with folders.building(final, "writing a model folder") as partial:
        with ema_weights(ema, model):  # the default weights: what the study samples with
            model.save_pretrained(str(partial / "unet"), safe_serialization=True)
        if ema is not None:
            model.save_pretrained(str(partial / "unet"), safe_serialization=True, variant=trained_arm.RAW_VARIANT)
        scheduler.save_pretrained(str(partial / "scheduler"))
        shutil.copyfile(guided_pipeline.__file__, partial / f"{PIPELINE_MODULE}.py")
        table_copy = partial / "class_table.safetensors"
        if class_table is not None and Path(class_table).is_file():
            shutil.copyfile(class_table, table_copy)
        index = {"_class_name": [PIPELINE_MODULE, PIPELINE_CLASS], "_diffusers_version": diffusers.__version__,
                 "unet": ["diffusers", type(model).__name__], "scheduler": ["diffusers", type(scheduler).__name__],
                 "class_names": list(class_names), "null_class_index": unet.null_label(model),
                 "input_mean": [float(v) for v in cfg.get("INPUT_MEAN") or [0.0] * 3],
                 "input_std": [float(v) for v in cfg.get("INPUT_STD") or [1.0] * 3],
                 "sampler": default_sampler(), "weights": "ema" if ema is not None else "raw",
                 "class_table": class_table_provenance(cfg, table_copy) if table_copy.is_file() else {}}
        atomic_write_json(partial / "model_index.json", index)
        atomic_write_json(partial / "class_names.json", class_names)
        # RUN_DIR relative to the folder ("../../.." from models/<arm>/final): the run folder can move
        stored = {**cfg, "RUN_DIR": os.path.relpath(cfg["RUN_DIR"], final.resolve())} if cfg.get("RUN_DIR") else cfg
        atomic_write_text(partial / "train_config.yaml", yaml.safe_dump(stored, sort_keys=True))
        atomic_write_json(partial / "training_summary.json", summary)
        atomic_write_text(partial / "README.md", model_card(index, cfg, summary))
    return final


def _dataset(cfg: dict[str, Any]) -> str:
    path = Path(cfg["RUN_DIR"]) / "params.yaml"
    if path.is_file():
        return str((yaml.safe_load(path.read_text()) or {}).get("DATASET") or "unknown")
    return "unknown"


def card_snippet(arm: str, seed: int, n_classes: int) -> str:
    """The model card's Python example: load the folder without this project and regenerate image 0 of
    every class of the run's samples (run it in the run folder)."""
    seeds = [sample.image_seed(seed, c, 0) for c in range(n_classes)]
    return f'''import json
from pathlib import Path

import torch
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained("models/{arm}/final", trust_remote_code=True)
# The sampler of this run's samples (notebook 05) if they are beside the model; else the pipeline's defaults.
record = Path("samples/{arm}/sampling.json")
sampler = pipe.sampler_arguments(json.loads(record.read_text())) if record.is_file() else {{}}
seeds = {seeds}  # image 0 of each class in samples/{arm}/<class>/0000.png
generators = [torch.Generator().manual_seed(s) for s in seeds]
images = pipe(class_labels=list(range(len(seeds))), generator=generators, **sampler).images
for name, image in zip(pipe.class_names, images):
    image.save(f"{{name}}.png")
'''


def model_card(index: dict[str, Any], cfg: dict[str, Any], summary: dict[str, Any]) -> str:
    """``README.md`` of a model folder: Hub metadata (library, tags, datasets, license) and what a user
    needs to load, sample and judge the model."""
    dataset = _dataset(cfg)
    arm = str(cfg.get("ARM_NAME") or cfg.get("ARM"))
    meta = {"library_name": "diffusers", "license": DATA_LICENSES.get(dataset, "other"),
            "tags": ["diffusers", "class-conditional", "medical-imaging", "research-only", "improve-study",
                     f"arm-{cfg.get('ARM')}"],
            "datasets": [dataset]}
    table = index["class_table"]
    provenance = (f"the prototypes in `{table.get('prototypes_file')}` (sha256 `{table.get('prototypes_sha256')}`), "
                  f"mapped by `{table.get('map')}` to {table.get('cond_dim')} dimensions and frozen"
                  if table.get("prototypes_file") else "randomly initialised and trained with the UNet")
    classes = "\n".join(f"| {i} | {name} |" for i, name in enumerate(index["class_names"]))
    return f"""---
{yaml.safe_dump(meta, sort_keys=False).strip()}
---

# IMPROVE study: {arm} arm, {dataset}

A class-conditional diffusion UNet trained by the IMPROVE study's notebook 04 ({summary.get('steps')} steps,
seed {cfg.get('SEED')}, {cfg.get('RESOLUTION')} px). The study compares two arms that differ only in the
UNet's class table: **prototype** (class prototypes learned on image-encoder embeddings, CLIP in the
paper, then frozen) and **baseline**
(a randomly initialised table, trained). This model's table is {provenance}; `class_table.safetensors`
holds it (sha256 `{table.get('table_file_sha256')}`).

**Intended use: research only, not for diagnosis.** It generates images for studying generative models
of medical images; its images are not patients and must not inform any clinical decision. Trained on
{dataset} (license of the training data: {meta['license']}); small CPU-sized models produce images that
an expert can tell from real ones.

## Use

Run in the run folder (the one holding `models/` and `samples/`); `improve_lib` is not needed:

```python
{card_snippet(arm, int(cfg.get('SEED') or 0), len(index['class_names'])).rstrip()}
```

Classes (`class_labels`; the null, unconditional row of the class table is {index['null_class_index']}):

| index | class |
|---|---|
{classes}

- Guidance: `out = (1 + w) * out(x|y) - w * out(x|null)` on the model's output
  (prediction type `{cfg.get('PREDICTION_TYPE')}`), applied at noise levels `t / (T - 1)` within
  `guidance_interval`; default sampler (notebook 05's): `{json.dumps(index['sampler'])}`.
- Image scaling: images on [-1, 1] are standardised per channel with mean `{index['input_mean']}` and
  std `{index['input_std']}` before the UNet; the pipeline undoes it.
- Weights: `unet/` holds the {'EMA' if index['weights'] == 'ema' else 'raw training'} weights
  {f'(the raw ones: `variant="{trained_arm.RAW_VARIANT}"`)' if index['weights'] == 'ema' else ''}. `train_config.yaml` is the full training
  configuration, `training_summary.json` the run's steps and weight hashes.

## Limitations

A small UNet trained on a few hundred images for minutes on a CPU; samples at {cfg.get('RESOLUTION')} px.
The study's evaluation (train-on-synthetic/test-on-real, fidelity, copy check, plausibility) is in the run
folder's `metrics/` and `tables/`, not in this card.

## Citation

{chr(10).join(f"- {line}" for line in citation.references())}
"""

"""A trained arm's final/ is a diffusers pipeline folder a stranger can load: the model card's own snippet,
run where improve_lib cannot be imported, regenerates the run's samples pixel for pixel."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from improve_lib.conditioning import prototype_files
from improve_lib.core import run_layout
from improve_lib.core.files import sha256_file
from improve_lib.diffusion import sample, trained_arm, unet

pytestmark = pytest.mark.slow


def _snippet(final) -> str:
    card = (final / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: diffusers" in card and "not for diagnosis" in card
    assert "## Citation" in card and "HAM10000 dataset" in card and "IMPROVE: Improving" in card
    return re.search(r"```python\n(.*?)```", card, re.S).group(1)


@pytest.mark.parametrize("arm", ["prototype", "baseline"])
def test_model_card_snippet_regenerates_the_samples_without_improve_lib(smoke_synthetic_run, tmp_path, arm):
    run = smoke_synthetic_run
    # the folders the snippet reads, at the same relative paths, so the shared run stays untouched
    shutil.copytree(run / "models" / arm / "final", tmp_path / "models" / arm / "final")
    (tmp_path / "samples" / arm).mkdir(parents=True)
    shutil.copy(run / "samples" / arm / "sampling.json", tmp_path / "samples" / arm / "sampling.json")
    script = "import sys\nsys.modules['improve_lib'] = None  # this project cannot be imported\n" + _snippet(
        run / "models" / arm / "final")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": ""}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    names = json.loads((run / "models" / arm / "final" / "class_names.json").read_text())
    for name in names:
        ours = np.asarray(Image.open(tmp_path / f"{name}.png")).astype(int)
        theirs = np.asarray(Image.open(run / "samples" / arm / name / "0000.png")).astype(int)
        # The snippet samples one image, notebook 05 a batch of all classes: the convolutions sum in another
        # order on some torch thread counts (one thread: 1 of 3072 values one grey level apart, measured),
        # so a rounding step may flip; anything wrong in weights, seeds, guidance or scaling moves far more.
        differ = ours != theirs
        assert np.abs(ours - theirs).max() <= 1 and differ.mean() <= 0.002, (name, int(differ.sum()))


def test_pipeline_folder_config_provenance_and_weights(smoke_synthetic_run):
    from diffusers import DiffusionPipeline

    run = smoke_synthetic_run
    final = run / "models" / "prototype" / "final"
    pipe = DiffusionPipeline.from_pretrained(str(final), trust_remote_code=True)
    names = json.loads((final / "class_names.json").read_text())
    assert type(pipe).__name__ == "ImproveGuidedPipeline" and pipe.class_names == names
    assert pipe.config.null_class_index == len(names) and pipe.config.weights == "ema"
    emb = pipe.unet.class_embedding
    assert emb.padding_idx == len(names) and not emb.weight.requires_grad  # restored on load
    cfg = trained_arm.trained_config(run, "prototype")
    assert pipe.config.input_mean == pytest.approx(cfg["INPUT_MEAN"]) and pipe.config.sampler["STEPS"] >= 1
    table = pipe.config.class_table
    source = run_layout.prototypes_dir(run) / prototype_files.CLASS_EMBEDDINGS_FILE
    assert table["prototypes_sha256"] == sha256_file(source) and table["frozen"] and table["map"] == cfg["CLASS_EMBEDDING_MAP"]
    assert table["table_file_sha256"] == sha256_file(final / "class_table.safetensors")
    # the table the UNet carries is the recorded one (rows 0..C-1), not a retrained one
    from safetensors.torch import load_file
    assert torch.equal(load_file(str(final / "class_table.safetensors"))["class_table"], emb.weight[:len(names)])
    # default weights: the EMA ones (what the samples use); variant "raw": the training weights
    ema, _, _ = trained_arm.load_trained(run, "prototype", ema=True)
    raw, _, _ = trained_arm.load_trained(run, "prototype", ema=False)
    assert unet.state_dict_sha256(pipe.unet) == unet.state_dict_sha256(ema)
    assert unet.state_dict_sha256(ema) != unet.state_dict_sha256(raw)
    # the pipeline's defaults are notebook 05's; a smaller call runs and checks its arguments
    images = pipe(class_labels=[0], num_inference_steps=2, output_type="np").images
    assert images.shape == (1, cfg["RESOLUTION"], cfg["RESOLUTION"], 3) and images.dtype == np.uint8
    with pytest.raises(ValueError, match="class_labels"):
        pipe(class_labels=[len(names)], num_inference_steps=1)
    assert sample.guided_epsilon is sample.guided_pipeline.guided_output  # one guided loop for both


def test_a_checkpoint_exports_as_a_pipeline_folder(smoke_synthetic_run, tmp_path):
    """`python -m improve_lib export RUN --arm A --step N`: an intermediate checkpoint becomes a folder of
    final/'s layout; the last checkpoint's export carries final/'s weights, an earlier one other weights."""
    from diffusers import DiffusionPipeline

    from improve_lib.core.errors import StudyInputError
    from improve_lib.diffusion import checkpoint_export, checkpoints
    from improve_lib.runs.cli import main

    run = smoke_synthetic_run
    arm_dir = run_layout.arm_dir(run, "prototype")
    steps = [s for s, _, done in checkpoints.list_checkpoints(arm_dir) if done]
    assert len(steps) >= 2, steps
    last = checkpoint_export.export_checkpoint(run, "prototype", out=tmp_path / "last")
    pipe = DiffusionPipeline.from_pretrained(str(last), trust_remote_code=True)
    ema, names, _ = trained_arm.load_trained(run, "prototype", ema=True)
    assert unet.state_dict_sha256(pipe.unet) == unet.state_dict_sha256(ema) and pipe.class_names == names
    emb = pipe.unet.class_embedding
    assert emb.padding_idx == len(names) and not emb.weight.requires_grad
    summary = json.loads((last / "training_summary.json").read_text())
    assert summary["steps"] == steps[-1] and summary["exported_from"] == f"checkpoint-{steps[-1]}"
    assert "not for diagnosis" in (last / "README.md").read_text()
    assert main(["export", str(run), "--arm", "prototype", "--step", str(steps[0]), "--out", str(tmp_path / "early")]) == 0
    early = DiffusionPipeline.from_pretrained(str(tmp_path / "early"), trust_remote_code=True)
    assert unet.state_dict_sha256(early.unet) != unet.state_dict_sha256(ema)
    with pytest.raises(StudyInputError, match=re.escape(f"complete ones: steps {steps}")):
        checkpoint_export.export_checkpoint(run, "prototype", step=steps[-1] + 1000, out=tmp_path / "none")
    assert not (tmp_path / "none").exists() and not (arm_dir / checkpoint_export.EXPORTS_DIR).exists()

"""A run's samples: identical PNG bytes for a seed, one image regenerated alone, checks of the folder."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image
from test_train import CLASSES, make_run, tiny_config

from improve_lib.core.errors import StudyInputError
from improve_lib.diffusion import sample, train

pytestmark = pytest.mark.slow
# notebook 05's settings, given in full (the library has no defaults of its own)
SAMPLER = {"STEPS": 2, "ETA": 0.0, "GUIDANCE_SCALE": 1.8, "GUIDANCE_INTERVAL": [0.0, 1.0],
           "TIMESTEP_SPACING": "leading", "SAMPLE_CLIPPING": "clip"}


def _sample(run, arm, n_per_class, steps=2, guidance_scale=1.8, seed=0, batch_size=64, ema=True):
    settings = {**SAMPLER, "STEPS": steps, "GUIDANCE_SCALE": guidance_scale}
    return sample.sample_arm(run, arm, n_per_class, settings=settings, seed=seed, batch_size=batch_size, ema=ema,
                             progress=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("sample") / "run")
    train.train(tiny_config(run, arm="baseline", MAX_STEPS=2))
    return run


def _bytes(run, arm="baseline"):
    return {p.relative_to(run / "samples"): p.read_bytes() for p in sorted((run / "samples" / arm).rglob("*.png"))}


def test_same_seed_same_png_bytes_and_regenerate_alone(trained, tmp_path):
    t = _sample(trained, "baseline", 3, steps=2, guidance_scale=1.5, seed=7, batch_size=4)
    assert len(t) == 3 * len(CLASSES) and set(t.class_name) == set(CLASSES)
    first = _bytes(trained)
    copy = tmp_path / "copy"
    shutil.copytree(trained, copy, ignore=shutil.ignore_patterns("samples"))
    _sample(copy, "baseline", 3, steps=2, guidance_scale=1.5, seed=7, batch_size=4)
    assert _bytes(copy) == first, "same seed and settings: the PNG bytes must not change"
    other = tmp_path / "other_batch"
    shutil.copytree(trained, other, ignore=shutil.ignore_patterns("samples"))
    _sample(other, "baseline", 3, steps=2, guidance_scale=1.5, seed=7, batch_size=5)
    for rel in first:  # batched kernels round differently: at most one grey level apart
        a = np.asarray(Image.open(trained / "samples" / rel), dtype=int)
        b = np.asarray(Image.open(other / "samples" / rel), dtype=int)
        assert np.abs(a - b).max() <= 1, rel
    alone = sample.regenerate(trained, "baseline", CLASSES[1], 2)
    saved = np.asarray(Image.open(trained / "samples" / "baseline" / CLASSES[1] / "0002.png"), dtype=int)
    fresh = alone.mul(255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy().astype(int)
    assert np.abs(saved - fresh).max() <= 1


def test_changed_settings_or_model_are_refused(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run, ignore=shutil.ignore_patterns("samples"))
    _sample(run, "baseline", 1, steps=2, seed=0)
    with pytest.raises(StudyInputError, match="STEPS"):
        _sample(run, "baseline", 1, steps=3, seed=0)
    train.train(tiny_config(run, arm="baseline", MAX_STEPS=3))  # resumes and trains on: new weights
    with pytest.raises(StudyInputError, match="model_sha256"):
        _sample(run, "baseline", 1, steps=2, seed=0)


def test_read_samples_names_the_missing_class_and_short_class(trained, tmp_path):
    with pytest.raises(StudyInputError, match="05_sample"):
        sample.read_samples(tmp_path, "baseline", CLASSES, 1)
    run = tmp_path / "run"
    shutil.copytree(trained, run, ignore=shutil.ignore_patterns("samples"))
    _sample(run, "baseline", 2, steps=2, seed=0)
    assert len(sample.read_samples(run, "baseline", CLASSES, 2)) == 4
    with pytest.raises(StudyInputError, match="fewer than N_PER_CLASS=3"):
        sample.read_samples(run, "baseline", CLASSES, 3)
    shutil.rmtree(run / "samples" / "baseline" / CLASSES[0])
    with pytest.raises(StudyInputError, match=f"class '{CLASSES[0]}' has no samples"):
        sample.read_samples(run, "baseline", CLASSES, 2)
    with pytest.raises(StudyInputError, match="04_train_diffusion"):
        _sample(run, "prototype", 1, steps=2)


def test_trained_model_loads_with_plain_diffusers(trained):
    from diffusers import UNet2DConditionModel

    model = UNet2DConditionModel.from_pretrained(str(trained / "models" / "baseline" / "final" / "unet"))
    assert model.config.num_class_embeds == len(CLASSES) + 1

"""The generation recipe's options each change what they claim, and the paper's recipe stays selectable.

Targets and weights are checked against their formulas at known timesteps; the sampler's spacing,
clipping and guidance interval against the timesteps and forwards they produce.
"""
from __future__ import annotations

import pytest
import torch

from improve_lib.core import machine
from improve_lib.core.errors import StudyInputError
from improve_lib.diffusion import sample, training_objective
from improve_lib.diffusion.unet import build_unet
from improve_lib.metrics import tone
from improve_lib.runs import profiles

SCHEDULE = {"NUM_TRAIN_TIMESTEPS": 1000, "BETA_SCHEDULE": "linear", "PREDICTION_TYPE": "epsilon",
            "ZERO_TERMINAL_SNR": False}
SAMPLER = {"STEPS": 25, "ETA": 0.0, "GUIDANCE_SCALE": 1.8, "GUIDANCE_INTERVAL": [0.0, 1.0],
           "TIMESTEP_SPACING": "leading", "SAMPLE_CLIPPING": "clip"}


def _abar(sched, t):
    return sched.alphas_cumprod[t].double()


def test_v_prediction_target_is_the_velocity():
    sched = training_objective.noise_scheduler({**SCHEDULE, "PREDICTION_TYPE": "v_prediction"})
    x0, noise = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4)
    t = torch.tensor([0, 500, 999])
    v = training_objective.training_target(sched, x0, noise, t)
    a = _abar(sched, t).float().view(-1, 1, 1, 1)
    assert torch.allclose(v, a.sqrt() * noise - (1 - a).sqrt() * x0, atol=1e-6)
    eps_sched = training_objective.noise_scheduler(SCHEDULE)
    assert torch.equal(training_objective.training_target(eps_sched, x0, noise, t), noise)
    x0_sched = training_objective.noise_scheduler({**SCHEDULE, "PREDICTION_TYPE": "sample"})
    assert torch.equal(training_objective.training_target(x0_sched, x0, noise, t), x0)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_min_snr_weights_at_known_timesteps(kind):
    sched = training_objective.noise_scheduler({**SCHEDULE, "PREDICTION_TYPE": kind})
    t = torch.tensor([10, 300, 900])  # SNR far above, near and far below gamma = 5
    snr = (_abar(sched, t) / (1 - _abar(sched, t))).float()
    assert snr[0] > 5 > snr[2]
    w = training_objective.loss_weights(sched, t, 5.0)
    clipped = torch.minimum(snr, torch.tensor(5.0))
    expected = {"epsilon": clipped / snr, "v_prediction": clipped / (snr + 1), "sample": clipped}[kind]
    assert torch.allclose(w, expected, rtol=1e-5)
    if kind == "epsilon":
        assert w[2] == pytest.approx(1.0) and w[0] == pytest.approx(5 / float(snr[0]), rel=1e-5)
    assert training_objective.loss_weights(sched, t, None) is None


def test_weighted_loss_is_the_weighted_mean_of_per_sample_mse():
    pred, target = torch.zeros(2, 3, 2, 2), torch.ones(2, 3, 2, 2)
    target[1] *= 2  # per-sample MSE 1 and 4
    assert float(training_objective.diffusion_loss(pred, target)) == pytest.approx(2.5)
    assert float(training_objective.diffusion_loss(pred, target, torch.tensor([1.0, 0.5]))) == pytest.approx((1 + 2) / 2)


def test_zero_terminal_snr_schedule_ends_in_pure_noise_and_refuses_epsilon():
    sched = training_objective.noise_scheduler({**SCHEDULE, "PREDICTION_TYPE": "v_prediction", "ZERO_TERMINAL_SNR": True})
    assert float(sched.alphas_cumprod[-1]) < 1e-6
    assert float(training_objective.noise_scheduler(SCHEDULE).alphas_cumprod[-1]) > 1e-5  # DDPM's linear schedule does not
    with pytest.raises(StudyInputError, match="ZERO_TERMINAL_SNR.*PREDICTION_TYPE"):
        training_objective.noise_scheduler({**SCHEDULE, "ZERO_TERMINAL_SNR": True})
    with pytest.raises(StudyInputError, match="PREDICTION_TYPE"):
        training_objective.noise_scheduler({**SCHEDULE, "PREDICTION_TYPE": "score"})


def test_trailing_spacing_starts_at_the_last_step_leading_does_not():
    cfg = training_objective.noise_scheduler(SCHEDULE).config
    leading = sample.ddim_scheduler(cfg, SAMPLER).timesteps
    trailing = sample.ddim_scheduler(cfg, {**SAMPLER, "TIMESTEP_SPACING": "trailing"}).timesteps
    assert int(trailing[0]) == 999 and int(leading[0]) == 960 and len(trailing) == len(leading) == 25


def test_clipping_options_reach_the_scheduler():
    cfg = training_objective.noise_scheduler(SCHEDULE).config
    clip = sample.ddim_scheduler(cfg, SAMPLER, data_range=2.5).config
    assert clip.clip_sample and clip.clip_sample_range == 2.5 and not clip.thresholding
    none = sample.ddim_scheduler(cfg, {**SAMPLER, "SAMPLE_CLIPPING": "none"}).config
    assert not none.clip_sample and not none.thresholding
    dyn = sample.ddim_scheduler(cfg, {**SAMPLER, "SAMPLE_CLIPPING": "dynamic"}).config
    assert dyn.thresholding and not dyn.clip_sample
    with pytest.raises(StudyInputError, match="dynamic"):
        sample.ddim_scheduler(cfg, {**SAMPLER, "SAMPLE_CLIPPING": "dynamic"}, data_range=2.5)


def test_standardisation_round_trip_and_identity_for_none():
    images = (torch.rand(20, 3, 8, 8) * 255).round().to(torch.uint8)
    mean, std = training_objective.input_statistics(images, "standardize")
    x = images.float().div(127.5).sub(1.0)
    z = training_objective.to_model(x, mean, std)
    assert torch.allclose(z.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(z.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3)
    assert torch.allclose(training_objective.from_model(z, mean, std), x, atol=1e-6)
    none = training_objective.input_statistics(images, "none")
    assert torch.equal(training_objective.to_model(x, *none), x)  # the paper's [-1, 1] inputs, bit for bit
    assert training_objective.data_range(*none) == 1.0 and training_objective.data_range(mean, std) > 1.0


class CountingModel(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls, self.config = inner, [], inner.config

    def forward(self, x, t, encoder_hidden_states=None, class_labels=None):
        self.calls.append((int(t), len(x)))
        return self.inner(x, t, encoder_hidden_states=encoder_hidden_states, class_labels=class_labels)


def test_guidance_interval_guides_only_inside_it():
    model = build_unet({"SEED": 0, "RESOLUTION": 16, "BASE_CHANNELS": 8, "CHANNEL_MULT": [1, 2], "LAYERS_PER_BLOCK": 1,
                        "DROPOUT": 0.0, "COND_DIM": 8, "NORM_GROUPS": 8, "ATTENTION": False,
                        "CLASS_EMBEDDING_COMBINE": "concat"}, 2).eval()
    counting = CountingModel(model)
    settings = {**SAMPLER, "STEPS": 10, "GUIDANCE_INTERVAL": [0.3, 0.7], "TIMESTEP_SPACING": "trailing"}
    sample.ddim_sample(counting, [0, 1], scheduler_config=training_objective.noise_scheduler(SCHEDULE).config, seeds=[1, 2],
                       settings=settings)
    for t, batch in counting.calls:
        assert batch == (4 if 0.3 <= t / 999 <= 0.7 else 2), (t, batch)  # [cond; uncond] only inside
    assert {b for _, b in counting.calls} == {2, 4}


def test_sampler_settings_name_the_bad_key():
    assert sample.sampler_settings(SAMPLER)["GUIDANCE_INTERVAL"] == [0.0, 1.0]
    for key, bad in (("GUIDANCE_INTERVAL", [0.8, 0.2]), ("GUIDANCE_INTERVAL", 0.5), ("TIMESTEP_SPACING", "linspace"),
                     ("SAMPLE_CLIPPING", "soft"), ("STEPS", 0), ("ETA", 2.0)):
        with pytest.raises(StudyInputError, match=key):
            sample.sampler_settings({**SAMPLER, key: bad})
    with pytest.raises(StudyInputError, match="SAMPLE_CLIPPING"):
        sample.sampler_settings({k: v for k, v in SAMPLER.items() if k != "SAMPLE_CLIPPING"})


def test_paper_profile_keeps_the_paper_recipe():
    """Whatever the demo's recipe, the resolved paper profile trains and samples as the paper did."""
    p = profiles.resolve_params("paper")
    assert (p["PREDICTION_TYPE"], p["INPUT_NORMALIZATION"], p["ZERO_TERMINAL_SNR"], p["SNR_GAMMA"]) == \
        ("epsilon", "none", False, None)
    assert (p["DROPOUT"], p["FLIP"], p["BETA_SCHEDULE"], p["NUM_TRAIN_TIMESTEPS"]) == (0.1, True, "linear", 1000)
    assert (p["TIMESTEP_SPACING"], p["SAMPLE_CLIPPING"], p["GUIDANCE_INTERVAL"], p["GUIDANCE_SCALE"], p["ETA"]) == \
        ("leading", "clip", [0.0, 1.0], 1.8, 0.0)


def test_channel_statistics_and_tone_summary():
    real = torch.zeros(4, 3, 2, 2)
    real[:, 0] = 1.0  # red channel white: +1 on the [-1, 1] scale
    st = tone.channel_statistics(real)
    assert list(st["channel"]) == ["R", "G", "B"] and st["mean"].tolist() == [1.0, -1.0, -1.0]
    darker = real * 0.5
    s = tone.tone_summary(real, darker)
    assert s["mean_gap"][0] == pytest.approx(-1.0) and s["max_abs_mean_gap"] == pytest.approx(1.0)


def test_mixed_precision_auto_follows_the_hardware(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert machine.mixed_precision("auto", use_cpu=True) == "no"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert machine.mixed_precision("auto", use_cpu=True) == "bf16"
    assert machine.mixed_precision("no", use_cpu=True) == "no"
    assert "AMX" in machine.cpu_capability()


def test_orientations_are_the_eight_symmetries_of_the_square():
    from improve_lib.diffusion import step_draws

    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    assert torch.equal(step_draws.orient(x, None, None), x)
    seen = set()
    for lr in (False, True):
        for ud in (False, True):
            for k in range(4):
                flips, turns = torch.tensor([[lr, ud], [False, False]]), torch.tensor([k, 0])
                y = step_draws.orient(x, flips, turns)
                want = x[0].flip(-1) if lr else x[0]
                want = (want.flip(-2) if ud else want).rot90(k, dims=(-2, -1))
                assert torch.equal(y[0], want) and torch.equal(y[1], x[1])  # per image, the second left alone
                seen.add(tuple(y[0, 0].flatten().tolist()))
    assert len(seen) == 8  # 16 combinations, 8 distinct orientations
    turns = step_draws.quarter_turns(3, 7, 1, 64)
    assert torch.equal(turns, step_draws.quarter_turns(3, 7, 1, 64)) and set(turns.tolist()) == {0, 1, 2, 3}
    assert not torch.equal(turns, step_draws.quarter_turns(3, 7, 0, 64))  # each shard its own turns

"""The class-conditional UNet of both arms, the prototype table and the DDIM/CFG sampler core.

Tiny UNets (channels 8/16, 16 px, 3 classes) keep every test at a few seconds on a CPU.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from improve_lib.conditioning.class_table import class_table_rows
from improve_lib.core.errors import StudyInputError
from improve_lib.diffusion.sample import ddim_sample, guided_epsilon, sample_grid
from improve_lib.diffusion.training_objective import noise_scheduler
from improve_lib.diffusion.unet import (build_unet, count_flops_per_step, freeze_class_table, model_config, null_label,
                                        state_dict_sha256)

C, D, COND = 3, 24, 8
TINY = {"SEED": 7, "RESOLUTION": 16, "BASE_CHANNELS": 8, "CHANNEL_MULT": [1, 2], "LAYERS_PER_BLOCK": 1,
        "DROPOUT": 0.0, "COND_DIM": COND, "NORM_GROUPS": 8, "ATTENTION": False, "CLASS_EMBEDDING_COMBINE": "concat"}


@pytest.fixture(scope="module")
def table():
    rng = np.random.default_rng(0)
    protos = torch.from_numpy(rng.normal(size=(C, D)).astype(np.float32))
    vectors = rng.normal(size=(20, D))
    return class_table_rows(protos, "pca", COND, vectors, seed=0)


@pytest.fixture(scope="module")
def proto_model(table):
    return build_unet(TINY, C, table, freeze=True).eval()


def test_forward_shapes_including_null_label(proto_model):
    x = torch.randn(4, 3, 16, 16)
    labels = torch.tensor([0, 1, 2, null_label(proto_model)])
    out = proto_model(x, torch.tensor([0, 10, 500, 999]), encoder_hidden_states=None, class_labels=labels).sample
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert null_label(proto_model) == C
    # concatenation: the ResNet time projections see [time ; class] = 2 * COND_DIM
    assert proto_model.down_blocks[0].resnets[0].time_emb_proj.in_features == 2 * COND


def test_attention_variant_builds_and_runs():
    model = build_unet({**TINY, "ATTENTION": True}, C)
    assert type(model.down_blocks[0]).__name__ == "AttnDownBlock2D"  # 16 px <= 16: attention everywhere
    out = model(torch.randn(2, 3, 16, 16), 5, encoder_hidden_states=None, class_labels=torch.tensor([0, C])).sample
    assert out.shape == (2, 3, 16, 16)


def test_arms_differ_only_in_the_class_table(table):
    proto = build_unet(TINY, C, table, freeze=True).state_dict()
    base = build_unet(TINY, C, None, freeze=False).state_dict()
    assert proto.keys() == base.keys()
    differing = [k for k in proto if not torch.equal(proto[k], base[k])]
    assert differing == ["class_embedding.weight"]
    assert torch.equal(proto["class_embedding.weight"][:C], table)
    for sd in (proto, base):
        assert torch.count_nonzero(sd["class_embedding.weight"][C]) == 0  # null row zero in BOTH arms
    # the baseline keeps diffusers' N(0, 1) init for the real rows
    assert base["class_embedding.weight"][:C].abs().sum() > 0


def test_prototype_table_frozen_baseline_table_learns_null_row_gets_no_gradient(table):
    proto = build_unet(TINY, C, table, freeze=True)
    base = build_unet(TINY, C, None, freeze=False)
    assert not proto.class_embedding.weight.requires_grad
    assert base.class_embedding.weight.requires_grad
    x, t = torch.randn(6, 3, 16, 16), torch.full((6,), 100)
    labels = torch.tensor([0, 1, 2, C, C, 0])
    for model in (proto, base):
        assert model.class_embedding.padding_idx == C
        model(x, t, encoder_hidden_states=None, class_labels=labels).sample.pow(2).mean().backward()
    assert proto.class_embedding.weight.grad is None
    grad = base.class_embedding.weight.grad
    assert torch.count_nonzero(grad[C]) == 0 and torch.count_nonzero(grad[:C]) > 0
    assert proto.conv_in.weight.grad is not None  # the rest of the prototype arm does learn


def test_refreeze_after_save_pretrained_and_plain_from_pretrained(tmp_path, proto_model):
    from diffusers import UNet2DConditionModel

    proto_model.save_pretrained(tmp_path / "unet")
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = UNet2DConditionModel.from_pretrained(tmp_path / "unet")  # plain diffusers, no project code
    # the diffusers quirk this project works around: loading forgets freezing and the null row's padding
    assert loaded.class_embedding.weight.requires_grad and loaded.class_embedding.padding_idx is None
    freeze_class_table(loaded, frozen=True)
    assert not loaded.class_embedding.weight.requires_grad and loaded.class_embedding.padding_idx == C
    assert state_dict_sha256(loaded) == state_dict_sha256(proto_model)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        a = proto_model(x, 3, encoder_hidden_states=None, class_labels=torch.tensor([1, C])).sample
        b = loaded.eval()(x, 3, encoder_hidden_states=None, class_labels=torch.tensor([1, C])).sample
    assert torch.allclose(a, b)


def test_pca_map_shape_rms_and_determinism():
    rng = np.random.default_rng(1)
    protos, vectors = rng.normal(size=(C, D)), rng.normal(size=(50, D)) * 5 + 2
    t1 = class_table_rows(protos, "pca", COND, vectors, seed=0)
    t2 = class_table_rows(protos, "pca", COND, vectors, seed=0)
    assert t1.shape == (C, COND) and t1.dtype == torch.float32
    assert torch.allclose(t1.pow(2).mean().sqrt(), torch.tensor(1.0), atol=1e-5)
    assert torch.equal(t1, t2)
    none = class_table_rows(protos * 40, "none", None)
    assert none.shape == (C, D) and torch.allclose(none.pow(2).mean().sqrt(), torch.tensor(1.0), atol=1e-5)
    # a global rescale keeps the prototypes' geometry (cosines unchanged)
    cos = torch.nn.functional.cosine_similarity
    assert torch.allclose(cos(none[0], none[1], dim=0),
                          cos(torch.tensor(protos[0]), torch.tensor(protos[1]), dim=0).float(), atol=1e-5)


def test_table_map_errors_name_the_parameter():
    protos = np.ones((C, D)) + np.eye(C, D)
    with pytest.raises(StudyInputError, match="COND_DIM"):
        class_table_rows(protos, "none", COND)  # D != COND_DIM without a map
    with pytest.raises(StudyInputError, match="train"):
        class_table_rows(protos, "pca", COND, None)
    with pytest.raises(StudyInputError, match="COND_DIM"):
        class_table_rows(protos, "pca", 30, np.random.default_rng(0).normal(size=(10, D)))
    with pytest.raises(StudyInputError, match="CLASS_EMBEDDING_MAP"):
        class_table_rows(protos, "umap", COND)
    with pytest.raises(StudyInputError, match="NORM_GROUPS"):
        model_config({**TINY, "NORM_GROUPS": 32})
    with pytest.raises(StudyInputError, match=r"\[3, COND_DIM=8\]"):
        build_unet(TINY, C, torch.zeros(C, D))  # a D-wide table without a map


def test_prototypes_wider_than_the_table_are_handled(table):
    # D=24 prototypes through the PCA map into an 8-wide table; "none" makes the table D wide
    model = build_unet(TINY, C, table, freeze=True)
    assert model.class_embedding.weight.shape == (C + 1, COND)
    wide = class_table_rows(torch.randn(C, D), "none", None)
    model = build_unet({**TINY, "COND_DIM": D}, C, wide, freeze=True)
    assert model.class_embedding.weight.shape == (C + 1, D)


def test_flop_counter():
    flops = count_flops_per_step(build_unet(TINY, C), batch=2, resolution=16)
    assert flops["forward"] > 0 and 2 * flops["forward"] < flops["step"] < 4 * flops["forward"]


# ----------------------------------------------------------------------------------------- sampler

SCHED = dict(noise_scheduler({"NUM_TRAIN_TIMESTEPS": 1000, "BETA_SCHEDULE": "linear", "PREDICTION_TYPE": "epsilon",
                              "ZERO_TERMINAL_SNR": False}).config)
# the paper's sampler (notebook 05's settings before the recipe options): leading steps, x0 clipped, guidance at every step
PAPER_SAMPLER = {"STEPS": 3, "ETA": 0.0, "GUIDANCE_SCALE": 1.5, "GUIDANCE_INTERVAL": [0.0, 1.0],
                 "TIMESTEP_SPACING": "leading", "SAMPLE_CLIPPING": "clip"}


def sampler(**over):
    return {**PAPER_SAMPLER, **over}


def test_batched_cfg_equals_two_pass_formula(proto_model):
    x, y, w = torch.randn(3, 3, 16, 16), torch.tensor([0, 1, 2]), 1.8
    with torch.no_grad():
        batched = guided_epsilon(proto_model, x, torch.tensor(500), y, C, w)
        cond = proto_model(x, 500, encoder_hidden_states=None, class_labels=y).sample
        uncond = proto_model(x, 500, encoder_hidden_states=None, class_labels=torch.full_like(y, C)).sample
        assert torch.allclose(batched, (1 + w) * cond - w * uncond, atol=1e-5)
        assert torch.allclose(guided_epsilon(proto_model, x, 500, y, C, 0.0), cond, atol=1e-6)


class CountingModel(torch.nn.Module):
    """Wraps a UNet and counts forwards: CFG must cost one batched forward per step."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls, self.config = inner, [], inner.config

    def forward(self, x, t, encoder_hidden_states=None, class_labels=None):
        self.calls.append(len(x))
        return self.inner(x, t, encoder_hidden_states=encoder_hidden_states, class_labels=class_labels)


def test_ddim_one_forward_per_step_same_seed_same_output(proto_model):
    counting = CountingModel(proto_model)
    kw = dict(scheduler_config=SCHED, settings=sampler())
    a = ddim_sample(counting, [0, 1, 2], seeds=[5, 6, 7], **kw)
    assert counting.calls == [6, 6, 6]  # [cond; uncond] of 3 images, once per step
    b = ddim_sample(proto_model, [0, 1, 2], seeds=[5, 6, 7], **kw)
    assert a.shape == (3, 3, 16, 16) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b)
    c = ddim_sample(proto_model, [0, 1, 2], seeds=[5, 6, 8], **kw)
    assert torch.equal(a[:2], c[:2]) or torch.allclose(a[:2], c[:2], atol=1e-5)
    assert not torch.allclose(a[2], c[2])


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_single_image_regenerated_alone_equals_its_slot(proto_model, eta):
    kw = dict(scheduler_config=SCHED, settings=sampler(GUIDANCE_SCALE=1.0, ETA=eta))
    batch = ddim_sample(proto_model, [0, 1, 2, 1], seeds=[10, 11, 12, 13], **kw)
    alone = ddim_sample(proto_model, [2], seeds=[12], **kw)
    assert torch.allclose(alone[0], batch[2], atol=1e-5)


def test_sampler_rejects_bad_labels_and_seed_counts(proto_model):
    with pytest.raises(StudyInputError, match="class_labels"):
        ddim_sample(proto_model, [C], seeds=[0], scheduler_config=SCHED, settings=sampler(STEPS=1))
    with pytest.raises(StudyInputError, match="seeds"):
        ddim_sample(proto_model, [0, 1], seeds=[0], scheduler_config=SCHED, settings=sampler(STEPS=1))


def test_sample_grid_one_row_per_class(proto_model):
    grid = sample_grid(proto_model, C, scheduler_config=SCHED, settings=sampler(STEPS=2, GUIDANCE_SCALE=1.0),
                       per_class=2, seed=0)
    assert grid.shape == (3, 2 + C * 18, 2 + 2 * 18)  # make_grid padding 2


def test_added_class_embedding_variant(table):
    """CLASS_EMBEDDING_COMBINE="add": the class vector is added to the time embedding (same table width,
    ResNet time projections see COND_DIM, not 2 * COND_DIM); an unknown mode names the parameter."""
    model = build_unet({**TINY, "CLASS_EMBEDDING_COMBINE": "add"}, C, table, freeze=True).eval()
    assert model.down_blocks[0].resnets[0].time_emb_proj.in_features == COND
    x = torch.randn(2, 3, 16, 16)
    out = [model(x, torch.tensor([5, 5]), encoder_hidden_states=None, class_labels=torch.tensor([c, c])).sample
           for c in (0, 1)]
    assert not torch.allclose(out[0], out[1])  # the class still changes the prediction
    with pytest.raises(StudyInputError, match="CLASS_EMBEDDING_COMBINE"):
        model_config({**TINY, "CLASS_EMBEDDING_COMBINE": "multiply"})

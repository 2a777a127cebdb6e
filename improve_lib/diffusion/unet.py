"""The class-conditional UNet shared by both arms of the study.

One model, two arms (paper section 3, fig. 2):

* **prototype** arm: the class-embedding table holds the class prototypes learned on image embeddings
  (``prototypes/class_embeddings.safetensors``) and is **frozen**;
* **baseline** arm: the same table starts random (diffusers' default ``nn.Embedding`` init, N(0, 1))
  and is learned with the rest of the network.

Both arms use classifier-free guidance, so the table has ``C + 1`` rows: rows ``0..C-1`` are the
classes and row ``C`` is the null condition. The null row is kept at zero in both arms through
``padding_idx=C`` (zero and never updated). It must be the *last* row: the reference ProtoDiffusion code
used ``padding_idx=0`` and thereby zeroed a real class.

The network is diffusers' ``UNet2DConditionModel`` with plain ResNet blocks (``DownBlock2D`` /
``UpBlock2D``, optional self-attention blocks, no cross-attention), ``class_embed_type=None``,
``num_class_embeds=C+1``, ``time_embedding_dim=COND_DIM`` and ``class_embeddings_concat=True``: the
class vector is **concatenated** with the time embedding after the time MLP, which is how the paper's
fig. 2 ("concatenated with the time embedding") is expressed in diffusers; every ResNet block then
projects the ``2 * COND_DIM`` vector to its channels. ``CLASS_EMBEDDING_COMBINE="add"`` (an ablation)
adds it to the time embedding instead (``class_embeddings_concat=False``; same table width). ``UNet2DModel`` cannot do this (it only adds the
class embedding). The model is called with ``encoder_hidden_states=None``.

A prototype of dimension ``D`` (768 for CLIP ViT-L/14, 1280 for EfficientNet-Lite0) is mapped to the
table width ``COND_DIM`` by ``CLASS_EMBEDDING_MAP``: ``"none"`` uses it as is (``COND_DIM = D``, the
paper) and ``"pca"`` projects it with a fixed whitened PCA fitted once on the run's training embeddings,
so that the UNet stays narrow on a CPU while the table stays frozen and both arms stay identical.
"""
from __future__ import annotations

import hashlib
import math
from typing import Any, Mapping

import torch
from diffusers import UNet2DConditionModel
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from improve_lib.core.errors import StudyInputError
from improve_lib.core.values import as_float, as_int, one_of, require

# The model keys of notebook 04's parameters cell (their values live there, nowhere else).
MODEL_KEYS = ("SEED", "RESOLUTION", "BASE_CHANNELS", "CHANNEL_MULT", "LAYERS_PER_BLOCK", "DROPOUT", "COND_DIM",
              "NORM_GROUPS", "ATTENTION", "CLASS_EMBEDDING_COMBINE")
CLASS_EMBEDDING_COMBINES = ("concat", "add")
ATTENTION_MAX_SIZE = 16  # DDPM puts self-attention at the 16x16 feature maps


def model_config(cfg: Mapping[str, Any], cond_dim: int | None = None) -> dict[str, Any]:
    """The model keys of ``cfg`` (all of :data:`MODEL_KEYS`), types and ranges checked.

    ``cond_dim`` (if given) fills a ``COND_DIM`` of None (the prototype width, see
    :func:`improve_lib.conditioning.class_table.arm_class_table`). Raises :class:`StudyInputError` naming the key on a
    missing or bad value.
    """
    require(cfg, MODEL_KEYS, "the model config", "04_train_diffusion")
    out = {k: cfg[k] for k in MODEL_KEYS}
    if out["COND_DIM"] is None:
        out["COND_DIM"] = cond_dim
    for key in ("SEED", "RESOLUTION", "BASE_CHANNELS", "LAYERS_PER_BLOCK", "NORM_GROUPS"):
        out[key] = as_int(out[key], key, minimum=0 if key == "SEED" else 1)
    if out["COND_DIM"] is None:
        raise StudyInputError("COND_DIM is not set and no prototype dimension is known to fill it; "
                              "set COND_DIM (e.g. 128) or CLASS_EMBEDDING_MAP='none' with a prototypes file")
    out["COND_DIM"] = as_int(out["COND_DIM"], "COND_DIM", minimum=1)
    mult = out["CHANNEL_MULT"]
    if isinstance(mult, (int, str)) or not len(mult):
        raise StudyInputError(f"CHANNEL_MULT must be a non-empty list of positive integers, got {mult!r}")
    out["CHANNEL_MULT"] = [as_int(m, "CHANNEL_MULT", minimum=1) for m in mult]
    out["DROPOUT"] = as_float(out["DROPOUT"], "DROPOUT", 0.0, 1.0, high_open=True)
    out["ATTENTION"] = bool(out["ATTENTION"])
    one_of(out["CLASS_EMBEDDING_COMBINE"], "CLASS_EMBEDDING_COMBINE", CLASS_EMBEDDING_COMBINES)
    channels = [out["BASE_CHANNELS"] * m for m in out["CHANNEL_MULT"]]
    bad = [c for c in channels if c % out["NORM_GROUPS"]]
    if bad:
        raise StudyInputError(f"NORM_GROUPS={out['NORM_GROUPS']} must divide every channel count "
                              f"{channels} (BASE_CHANNELS x CHANNEL_MULT); try NORM_GROUPS=8 for tiny models")
    levels = len(channels)
    if out["RESOLUTION"] % (2 ** (levels - 1)):
        raise StudyInputError(f"RESOLUTION={out['RESOLUTION']} must be divisible by 2**(len(CHANNEL_MULT)-1)"
                              f"={2 ** (levels - 1)} so that every level halves it exactly")
    return out


def build_unet(cfg: Mapping[str, Any], num_classes: int, class_table: torch.Tensor | None = None,
               freeze: bool = False):
    """Build the class-conditional ``UNet2DConditionModel`` of either arm.

    Args:
        cfg: the model keys (:data:`MODEL_KEYS`): RESOLUTION, BASE_CHANNELS, CHANNEL_MULT,
            LAYERS_PER_BLOCK, DROPOUT, COND_DIM, NORM_GROUPS, ATTENTION, CLASS_EMBEDDING_COMBINE and SEED.
        num_classes: C; the table gets ``C + 1`` rows, row C being the zero null condition.
        class_table: ``[C, COND_DIM]`` rows copied into the table (prototype arm), or None to keep
            the default N(0, 1) init (baseline arm).
        freeze: make the table non-trainable (prototype arm with FREEZE_PROTOTYPES).

    The weights are drawn under ``cfg["SEED"]`` inside a forked RNG, so two calls with the same config
    give identical weights (both arms differ only in ``class_embedding.weight``) and the caller's
    global RNG is untouched.
    """
    mc = model_config(cfg)
    if num_classes < 1:
        raise StudyInputError(f"num_classes must be >= 1, got {num_classes}")
    channels = [mc["BASE_CHANNELS"] * m for m in mc["CHANNEL_MULT"]]
    attn = [mc["ATTENTION"] and mc["RESOLUTION"] // 2 ** i <= ATTENTION_MAX_SIZE for i in range(len(channels))]
    down = ["AttnDownBlock2D" if a else "DownBlock2D" for a in attn]
    up = ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)]
    # Self-attention heads of (at most) 32 channels. One int for all levels: diffusers hands the up blocks
    # attention_head_dim[i] without reversing the per-level tuple, so a tuple would mismatch them.
    head_dim = math.gcd(32, *channels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(mc["SEED"])
        model = UNet2DConditionModel(
            sample_size=mc["RESOLUTION"], in_channels=3, out_channels=3,
            down_block_types=tuple(down), up_block_types=tuple(up),
            # in UNet2DConditionModel, "UNetMidBlock2D" is ONE ResNet block: diffusers builds it with
            # num_layers=0 and add_attention=False (DDPM had two ResNets around an attention layer)
            mid_block_type="UNetMidBlock2D",
            block_out_channels=tuple(channels), layers_per_block=mc["LAYERS_PER_BLOCK"],
            dropout=mc["DROPOUT"], norm_num_groups=mc["NORM_GROUPS"], attention_head_dim=head_dim,
            class_embed_type=None, num_class_embeds=num_classes + 1,
            class_embeddings_concat=mc["CLASS_EMBEDDING_COMBINE"] == "concat",
            time_embedding_dim=mc["COND_DIM"],
        )
    if class_table is not None:
        table = torch.as_tensor(class_table, dtype=torch.float32)
        if tuple(table.shape) != (num_classes, mc["COND_DIM"]):
            raise StudyInputError(f"class_table has shape {tuple(table.shape)}; expected "
                                  f"[{num_classes}, COND_DIM={mc['COND_DIM']}]")
        with torch.no_grad():
            model.class_embedding.weight[:num_classes].copy_(table)
    return freeze_class_table(model, frozen=freeze)


def freeze_class_table(model, frozen: bool = True):
    """(Re)establish the class table's invariants; call after building and after every load.

    The last row (the CFG null condition) becomes ``padding_idx``: zero, and never given a gradient.
    With ``frozen`` the whole table gets ``requires_grad=False``. Both are needed after
    ``from_pretrained``, which rebuilds a plain ``nn.Embedding`` (no ``padding_idx``) with
    ``requires_grad=True``. Setting the attribute (rather than building a new ``nn.Embedding``) keeps the
    parameter object, so optimizers and EMA that already hold it stay valid, and draws no random numbers.
    Returns ``model``.
    """
    emb = getattr(model, "class_embedding", None)
    if not isinstance(emb, nn.Embedding):
        raise StudyInputError("model has no nn.Embedding class table (class_embedding); "
                              "build it with improve_lib.diffusion.unet.build_unet")
    emb.padding_idx = emb.num_embeddings - 1
    with torch.no_grad():
        emb.weight[emb.padding_idx].zero_()
    emb.weight.requires_grad_(not frozen)
    return model


def null_label(model) -> int:
    """The class index of the CFG null condition (the table's last row)."""
    return int(model.config.num_class_embeds) - 1


def state_dict_sha256(model) -> str:
    """sha256 over the model's state dict (sorted names, dtypes, shapes and bytes): equal iff equal weights."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        # flattened first: a channels_last weight of a 1x1 convolution counts as contiguous with stride(-1) != 1
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def count_flops_per_step(model, batch: int, resolution: int) -> dict[str, int]:
    """FLOPs of one training step (forward + backward) at ``batch`` x ``resolution``, measured.

    Uses ``torch.utils.flop_counter.FlopCounterMode`` on a real forward and backward pass (matmuls and
    convolutions; norms and activations are not counted). Returns ``{"forward": f, "step": f+b}``;
    the step is typically ~3x the forward. Gradients are cleared afterwards.
    """
    device = next(model.parameters()).device
    x = torch.randn(batch, 3, resolution, resolution, device=device)
    t = torch.randint(0, 1000, (batch,), device=device)
    y = torch.zeros(batch, dtype=torch.long, device=device)
    with FlopCounterMode(display=False) as fwd:
        out = model(x, t, encoder_hidden_states=None, class_labels=y).sample
    with FlopCounterMode(display=False) as bwd:
        out.float().pow(2).mean().backward()
    model.zero_grad(set_to_none=True)
    f, b = fwd.get_total_flops(), bwd.get_total_flops()
    return {"forward": int(f), "step": int(f + b)}


# ----------------------------------------------------------------------------------- a trained arm


# ----------------------------------------------------------------------------------- the class table



"""Class-conditional DDIM with classifier-free guidance: the study's sampler, and the diffusers pipeline
that ships it inside every trained model folder.

This file imports only torch and diffusers, never ``improve_lib``: :func:`improve_lib.diffusion.model_folder.write_final`
copies it into ``models/<arm>/final/`` as ``pipeline_improve.py``, and ``model_index.json`` names its class,
so a user without this project loads a trained arm the diffusers way::

    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained("models/prototype/final", trust_remote_code=True)
    images = pipe(class_labels=[0, 1, 2]).images

``improve_lib.diffusion.sample`` runs the same :func:`denoise` loop, so the pipeline's images are the run's samples
pixel for pixel (tested in a process where ``improve_lib`` cannot be imported).

Guidance follows the paper's reference code: ``out = (1 + w) * out(x|y) - w * out(x|null)`` on the model's
output (the noise for an epsilon model, the velocity for a v model), with the conditional and the
unconditional pass batched into one forward; ``w = 0`` is purely conditional. ``guidance_interval`` ``[lo,
hi]`` applies it only at noise levels ``t / (T - 1)`` in that range (Kynkaanniemi et al. 2024; ``[0, 1]``
is every step, the paper). The model may work on standardised images (``input_mean``/``input_std``, per
channel, of images on the [-1, 1] scale); x0 is then clipped to that space's range and the output mapped
back. The null condition is the class table's last row (``null_class_index``).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
from diffusers import DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from PIL import Image

TIMESTEP_SPACINGS = ("leading", "trailing")
CLIPPINGS = ("clip", "dynamic", "none")
# Dynamic thresholding (Imagen) as DeepFloyd IF sets it in diffusers: the 99.5th percentile of |x0|, at most 1.5.
DYNAMIC_THRESHOLD = {"dynamic_thresholding_ratio": 0.995, "sample_max_value": 1.5}


def channel_view(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """Per-channel ``values`` shaped ``[1, C, 1, 1]`` in ``like``'s dtype and device."""
    return torch.as_tensor(values, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)


def from_model(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """The model's (standardised) space back to the [-1, 1] image scale."""
    return x * channel_view(std, x) + channel_view(mean, x)


def data_range(mean: Sequence[float], std: Sequence[float]) -> float:
    """The largest |value| an image in [-1, 1] takes in the model's space (where x0 is clipped)."""
    return max(max(abs(-1.0 - m), abs(1.0 - m)) / s for m, s in zip(mean, std))


def ddim_scheduler(scheduler_config: Mapping[str, Any], steps: int, timestep_spacing: str, clipping: str,
                   data_range: float = 1.0) -> DDIMScheduler:
    """A ``DDIMScheduler`` on the training schedule of ``scheduler_config`` (a ``DDPMScheduler``'s config:
    betas, prediction type, zero terminal SNR) with the sampler's timestep spacing and x0 clipping
    (``data_range``: the largest |value| of an image in the model's space), set to ``steps`` steps."""
    if timestep_spacing not in TIMESTEP_SPACINGS:
        raise ValueError(f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {timestep_spacing!r}")
    if clipping not in CLIPPINGS:
        raise ValueError(f"clipping must be one of {CLIPPINGS}, got {clipping!r}")
    if clipping == "dynamic" and abs(data_range - 1.0) > 1e-6:
        raise ValueError("clipping='dynamic' (Imagen's thresholding) assumes images in [-1, 1]; "
                         "a model on standardised inputs needs 'clip' or 'none'")
    sched = DDIMScheduler.from_config(dict(scheduler_config), timestep_spacing=timestep_spacing,
                                      clip_sample=clipping == "clip", clip_sample_range=float(data_range),
                                      thresholding=clipping == "dynamic", **DYNAMIC_THRESHOLD)
    sched.set_timesteps(int(steps))
    return sched


def guided_output(model, x: torch.Tensor, t: torch.Tensor | int, class_labels: torch.Tensor,
                  null_label: int, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guided model output ``(1 + w) * out(x|y) - w * out(x|null)``: both passes in ONE
    forward over ``[x; x]`` with labels ``[y; null]``; with ``guidance_scale == 0`` only the conditional."""
    w = float(guidance_scale)
    if w == 0.0:
        return model(x, t, encoder_hidden_states=None, class_labels=class_labels).sample
    labels = torch.cat([class_labels, torch.full_like(class_labels, int(null_label))])
    out = model(torch.cat([x, x]), t, encoder_hidden_states=None, class_labels=labels).sample
    out_cond, out_uncond = out.chunk(2)
    return (1.0 + w) * out_cond - w * out_uncond


def image_noise(generators: torch.Generator | Sequence[torch.Generator], shape: tuple[int, ...]) -> torch.Tensor:
    """Gaussian noise of ``shape`` on the CPU (the same seed gives the same noise on any device): from one
    generator per image (image i independent of the batch) or one generator for the whole batch."""
    if isinstance(generators, torch.Generator):
        return torch.randn(shape, generator=generators)
    if not generators:
        return torch.empty(shape)
    return torch.stack([torch.randn(shape[1:], generator=g) for g in generators])


@torch.no_grad()
def denoise(model, class_labels: torch.Tensor, generators, scheduler: DDIMScheduler, *, guidance_scale: float,
            guidance_interval: Sequence[float], eta: float, null_label: int, input_mean: Sequence[float],
            input_std: Sequence[float], resolution: int, progress: Callable | None = None) -> torch.Tensor:
    """The guided DDIM loop: noise from ``generators`` to images ``[B, 3, R, R]`` in [0, 1] (float32, CPU).

    ``scheduler`` comes from :func:`ddim_scheduler` (its timesteps set); ``progress`` optionally wraps the
    timesteps (a progress bar)."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    shape = (len(class_labels), 3, int(resolution), int(resolution))
    last = scheduler.config.num_train_timesteps - 1
    lo, hi = (float(v) for v in guidance_interval)
    was_training = model.training
    model.eval()
    x = image_noise(generators, shape).to(device=device, dtype=dtype)
    labels = class_labels.to(device)
    timesteps = progress(scheduler.timesteps) if progress else scheduler.timesteps
    try:
        for t in timesteps:
            w = guidance_scale if lo <= float(t) / last <= hi else 0.0
            out = guided_output(model, x, t.to(device), labels, null_label, w)
            noise = image_noise(generators, shape).to(device=device, dtype=dtype) if eta > 0 else None
            x = scheduler.step(out, t, x, eta=eta, variance_noise=noise).prev_sample
    finally:
        model.train(was_training)
    return from_model(x.float().cpu(), input_mean, input_std).clamp(-1, 1).add(1).div(2)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """``[..., 3, H, W]`` in [0, 1] to 8-bit ``[..., H, W, 3]``, rounded as the study writes its PNGs."""
    return images.detach().float().clamp(0, 1).mul(255).round().byte().movedim(-3, -1).cpu()


class ImproveGuidedPipeline(DiffusionPipeline):
    """A class-conditional UNet of the IMPROVE study with its training noise schedule, sampled by guided DDIM.

    The config (``model_index.json``) holds what a user needs beside the weights: ``class_names`` (class
    ``i`` is row ``i`` of the UNet's class table), ``null_class_index`` (the unconditional row),
    ``input_mean``/``input_std`` (the model's image scaling), ``sampler`` (the default sampler: notebook 05's
    defaults), ``class_table`` (where the table came from: the arm, the prototypes file and map, sha256) and
    ``weights`` (``"ema"``: the UNet's default weights are the EMA, the raw ones are ``variant="raw"``).
    On load the null row is the embedding's ``padding_idx`` again and the table is frozen (``from_pretrained``
    forgets both).
    """

    model_cpu_offload_seq = "unet"

    def __init__(self, unet: UNet2DConditionModel, scheduler, class_names: list[str] | None = None,
                 null_class_index: int | None = None, input_mean: list[float] | None = None,
                 input_std: list[float] | None = None, sampler: dict[str, Any] | None = None,
                 class_table: dict[str, Any] | None = None, weights: str | None = None):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        null = int(unet.config.num_class_embeds) - 1 if null_class_index is None else int(null_class_index)
        self.register_to_config(class_names=list(class_names or [str(i) for i in range(null)]),
                                null_class_index=null, input_mean=list(input_mean or [0.0, 0.0, 0.0]),
                                input_std=list(input_std or [1.0, 1.0, 1.0]), sampler=dict(sampler or {}),
                                class_table=dict(class_table or {}), weights=weights)
        emb = unet.class_embedding
        emb.padding_idx = null
        emb.weight.requires_grad_(False)

    @property
    def class_names(self) -> list[str]:
        """Class ``i``'s name; ``class_labels`` of :meth:`__call__` index this list."""
        return list(self.config.class_names)

    @staticmethod
    def sampler_arguments(study_settings: Mapping[str, Any]) -> dict[str, Any]:
        """The study's sampler settings (notebook 05's names, e.g. ``samples/<arm>/sampling.json``) as
        arguments of :meth:`__call__`."""
        return {"num_inference_steps": int(study_settings["STEPS"]), "eta": float(study_settings["ETA"]),
                "guidance_scale": float(study_settings["GUIDANCE_SCALE"]),
                "guidance_interval": [float(v) for v in study_settings["GUIDANCE_INTERVAL"]],
                "timestep_spacing": str(study_settings["TIMESTEP_SPACING"]),
                "clipping": str(study_settings["SAMPLE_CLIPPING"])}

    @torch.no_grad()
    def __call__(self, class_labels: Sequence[int] | int | None = None,
                 generator: torch.Generator | Sequence[torch.Generator] | None = None,
                 num_inference_steps: int | None = None, guidance_scale: float | None = None, eta: float | None = None,
                 guidance_interval: Sequence[float] | None = None, timestep_spacing: str | None = None,
                 clipping: str | None = None, output_type: str = "pil", return_dict: bool = True):
        """Generate one image per entry of ``class_labels`` (default: one per class).

        Args:
            class_labels: class indices (``self.class_names``), or one int.
            generator: one ``torch.Generator`` per image (each image then depends only on its own seed, as
                in the study's samples) or one for the batch; CPU generators give the same noise on any device.
            num_inference_steps, guidance_scale, eta, guidance_interval, timestep_spacing, clipping: the
                sampler; each None takes ``self.config.sampler`` (see :meth:`sampler_arguments`).
            output_type: ``"pil"``, ``"np"`` (uint8 ``[B, H, W, 3]``) or ``"pt"`` (float ``[B, 3, H, W]`` in [0, 1]).
        """
        defaults = self.sampler_arguments(self.config.sampler) if self.config.sampler else {}
        given = {"num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale, "eta": eta,
                 "guidance_interval": guidance_interval, "timestep_spacing": timestep_spacing, "clipping": clipping}
        args = {**defaults, **{k: v for k, v in given.items() if v is not None}}
        missing = sorted(set(given) - set(args))
        if missing:
            raise ValueError(f"no default sampler in this model's config: pass {missing}")
        if class_labels is None:
            class_labels = list(range(len(self.class_names)))
        labels = torch.as_tensor([class_labels] if isinstance(class_labels, int) else list(class_labels),
                                 dtype=torch.long).reshape(-1)
        null = int(self.config.null_class_index)
        if len(labels) and (labels.min() < 0 or labels.max() >= null):
            raise ValueError(f"class_labels must be in 0..{null - 1} ({self.class_names}), got {labels.tolist()}")
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        elif not isinstance(generator, torch.Generator) and len(generator) != len(labels):
            raise ValueError(f"got {len(generator)} generators for {len(labels)} images; give one per image or one")
        mean, std = self.config.input_mean, self.config.input_std
        sched = ddim_scheduler(self.scheduler.config, args["num_inference_steps"], args["timestep_spacing"],
                               args["clipping"], data_range(mean, std))
        images = denoise(self.unet, labels, generator, sched, guidance_scale=float(args["guidance_scale"]),
                         guidance_interval=args["guidance_interval"], eta=float(args["eta"]), null_label=null,
                         input_mean=mean, input_std=std, resolution=int(self.unet.config.sample_size),
                         progress=self.progress_bar)
        if output_type == "pt":
            out = images
        elif output_type in ("np", "pil"):
            out = to_uint8(images).numpy()
            if output_type == "pil":
                out = [Image.fromarray(a) for a in out]
        else:
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")
        return ImagePipelineOutput(images=out) if return_dict else (out,)

"""The one sampling loop for txt2img, img2img, inpaint and the hires pass.

Built on diffusers' model components and schedulers, in the same order of arithmetic as diffusers' own pipelines
(so that the plain case reproduces them to the pixel), with per-step control the pipelines don't give: a step
callback for progress and live previews, interrupt/skip, and hooks for per-step conditioning and extensions.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import torch

from modules.sampling.conditioning import Conditioning


class Interrupted(Exception):
    """The user pressed Interrupt: stop and keep what is finished. `latents`: the batch as far as it got (the
    sampler's estimate of the finished picture where it gives one), which A1111 shows as the incomplete picture."""

    def __init__(self, latents=None):
        super().__init__("interrupted")
        self.latents = latents


class Skipped(Exception):
    """The user pressed Skip: drop the current batch and go on with the next."""


@dataclass
class InpaintLatents:
    """What inpainting adds to the loop.

    mask: (B,1,h,w) latent-resolution mask, 1 = repaint. For 9-channel models `masked_image_latents` is fed to the
    UNet; for 4-channel models the known region is re-noised from `image_latents` with `noise` after every step.
    """

    mask: torch.Tensor
    masked_image_latents: torch.Tensor | None = None
    image_latents: torch.Tensor | None = None
    noise: torch.Tensor | None = None
    image_first: bool = False  # Flux Fill: [latents, masked image, mask] (its mask is the pixel mask, folded)

    def channels(self, mask: torch.Tensor, masked: torch.Tensor) -> list[torch.Tensor]:
        return [masked, mask] if self.image_first else [mask, masked]


@dataclass
class StepInfo:
    step: int  # 1-based count of finished steps
    total: int
    latents: torch.Tensor
    timestep: torch.Tensor
    denoised: torch.Tensor | None = None  # the scheduler's estimate of the finished latents, where it gives one


class SamplingHooks:
    """Per-step extension points (A1111's cfg_denoiser, cfg_denoised and cfg_after_cfg callbacks).

    Our loop predicts noise (or v) with diffusers' schedulers where A1111's k-diffusion denoiser works on
    denoised x0; hooks see the model output in the scheduler's own prediction space and `sigma` from the
    scheduler's sigma table where it has one (else the timestep)."""

    def before_model(self, x: torch.Tensor, sigma, step: int, total: int, cond: Conditioning,
                     uncond: Conditioning | None, image_cond) -> tuple[torch.Tensor, Conditioning,
                                                                       Conditioning | None]:
        return x, cond, uncond

    def after_model(self, out: torch.Tensor, step: int, total: int) -> torch.Tensor:
        return out

    def after_cfg(self, noise_pred: torch.Tensor, step: int, total: int) -> torch.Tensor:
        return noise_pred


@dataclass
class ModelSwitch:
    """Go on with another model part-way through (A1111's refiner): before step `step` (0-based) the loop hands
    the job and its latents to `swap`, which returns the job to continue with (another UNet, conditioning encoded by
    that model's own text encoders, its time ids) and the latents in its dtype. Scheduler, generators, timesteps
    and step callbacks carry on, so progress and interrupt see one run."""

    step: int
    swap: Callable[["SamplingJob", torch.Tensor], tuple["SamplingJob", torch.Tensor]]


@dataclass
class SamplingJob:
    unet: torch.nn.Module
    scheduler: object
    timesteps: torch.Tensor
    latents: torch.Tensor
    cond: Conditioning
    uncond: Conditioning | None
    cfg_scale: float
    step_kwargs: dict = field(default_factory=dict)
    time_ids: torch.Tensor | None = None
    uncond_time_ids: torch.Tensor | None = None
    inpaint: InpaintLatents | None = None
    conditioning_at: Callable[[int], tuple[Conditioning, Conditioning | None]] | None = None
    on_step: Callable[[StepInfo], None] | None = None
    cfg_hooks: list[Callable] = field(default_factory=list)
    hooks: SamplingHooks | None = None
    add_noise: Callable | None = None  # (x0, noise, timesteps) → noised; default the scheduler's (flow: scale_noise)
    controls: list = field(default_factory=list)  # controlnet.units.ActiveControl: residuals added to the UNet
    control_latents: torch.Tensor | None = None  # (B, C, h, w) read next to the latents (Flux.1 Depth/Canny,
    # InstructPix2Pix's picture)
    image_cfg_scale: float | None = None  # InstructPix2Pix's Image CFG scale (None or 1: the picture in every row)
    upcast: bool = False  # --upcast-sampling: latents, scheduler and CFG in fp32, the UNet's input cast to its dtype
    switch: ModelSwitch | None = None  # the refiner: another model from a given step on
    # A1111's ways to skip the negative prompt's pass on some steps (the picture is the prompt's prediction there):
    # "Negative Guidance minimum sigma" (every other step below that sigma; all such steps with `s_min_uncond_all`)
    # and "Ignore negative prompt during early sampling" (the first fraction of the steps)
    s_min_uncond: float = 0.0
    s_min_uncond_all: bool = False
    skip_early_cond: float = 0.0
    skipped_uncond: dict = field(default_factory=dict)  # the infotext keys of the rules that skipped a step

    @property
    def use_cfg(self) -> bool:
        return self.uncond is not None and self.cfg_scale > 1.0

    @property
    def edit_cfg(self) -> bool:
        """InstructPix2Pix's three-way guidance (A1111's `is_edit_model`): a third row, the negative prompt without
        the picture, whenever the Image CFG scale is not 1 (at 1 the result equals plain CFG)."""
        return (self.image_cfg_scale is not None and self.image_cfg_scale != 1.0 and self.uncond is not None
                and self.control_latents is not None)


def _unet_inputs(job: SamplingJob, cond: Conditioning, uncond: Conditioning | None):
    if job.use_cfg or job.edit_cfg:
        n = 2 if job.edit_cfg else 1  # uncond rows per picture
        embeds = torch.cat([uncond.embeds] * n + [cond.embeds])
        pooled = None if cond.pooled is None else torch.cat([uncond.pooled] * n + [cond.pooled])
        time_ids = None if job.time_ids is None else torch.cat([job.uncond_time_ids] * n + [job.time_ids])
    else:
        embeds, pooled, time_ids = cond.embeds, cond.pooled, job.time_ids
    added = None if pooled is None else {"text_embeds": pooled, "time_ids": time_ids}
    return embeds, added


def _skips_uncond(job: SamplingJob, step: int, t) -> bool:
    """Whether this step leaves the negative prompt out (A1111's skip_uncond: the CFG result is then the prompt's
    own prediction, as if uncond = cond)."""
    if not job.use_cfg or job.edit_cfg:
        return False
    if job.skip_early_cond and step / len(job.timesteps) <= job.skip_early_cond:
        job.skipped_uncond["Skip Early CFG"] = job.skip_early_cond
        return True
    if job.s_min_uncond > 0 and (step % 2 or job.s_min_uncond_all) and float(_sigma(job, step, t)) < job.s_min_uncond:
        job.skipped_uncond["NGMS"] = job.s_min_uncond
        if job.s_min_uncond_all:
            job.skipped_uncond["NGMS all steps"] = True
        return True
    return False


def denoise(job: SamplingJob, latents: torch.Tensor, t, step: int) -> torch.Tensor:
    """One classifier-free-guided UNet evaluation (diffusers' order: uncond + g * (cond - uncond))."""
    cond, uncond = job.conditioning_at(step) if job.conditioning_at else (job.cond, job.uncond)
    if _skips_uncond(job, step, t):
        job, uncond = dataclasses.replace(job, uncond=None), None
    total = len(job.timesteps)
    if job.hooks is not None and not getattr(cond, "owners", None):
        image_cond = job.inpaint.masked_image_latents if job.inpaint is not None else job.control_latents
        latents, cond, uncond = job.hooks.before_model(latents, _sigma(job, step, t), step, total, cond, uncond,
                                                       image_cond)
    if getattr(cond, "owners", None):
        if job.edit_cfg:  # A1111's assertion
            raise ValueError("AND is not supported for InstructPix2Pix checkpoint (unless using Image CFG scale = 1.0)")
        return _after_cfg(job, _denoise_multi(job, latents, t, step, cond, uncond), step)
    rows = 3 if job.edit_cfg else 2 if job.use_cfg else 1  # [uncond(, uncond without the picture), cond]
    uncond_rows = latents.shape[0] * (rows - 1)
    embeds, added = _unet_inputs(job, cond, uncond)
    embeds, added = _revision(job, embeds, added, step, uncond_rows)
    x = torch.cat([latents] * rows) if rows > 1 else latents
    x = _to_model(job, _scale_input(job.scheduler, x, t))
    batch = torch.arange(latents.shape[0], device=latents.device)
    control = _control(job, x, t, embeds, added, step, torch.cat([batch] * rows), uncond_rows)
    added = _with_image_prompts(job, control, added)
    if job.inpaint is not None and job.inpaint.masked_image_latents is not None:
        mask, masked = job.inpaint.mask, job.inpaint.masked_image_latents
        if job.use_cfg:
            mask, masked = torch.cat([mask] * 2), torch.cat([masked] * 2)
        x = torch.cat([x, *job.inpaint.channels(mask, masked)], dim=1)
    if job.control_latents is not None:
        read = [job.control_latents] * rows
        if job.edit_cfg:
            read[1] = torch.zeros_like(read[1])
        x = torch.cat([x, torch.cat(read).to(x.dtype)], dim=1)
    noise_pred = job.unet(x, t, encoder_hidden_states=embeds, added_cond_kwargs=added, return_dict=False,
                          **control)[0].to(latents.dtype)
    if job.hooks is not None:
        noise_pred = job.hooks.after_model(noise_pred, step, total)
    if job.edit_cfg:  # diffusers' InstructPix2Pix order of arithmetic (A1111's combine_denoised_for_edit_model)
        noise_image, noise_uncond, noise_cond = noise_pred.chunk(3)
        noise_pred = (noise_uncond + job.cfg_scale * (noise_cond - noise_image)
                      + job.image_cfg_scale * (noise_image - noise_uncond))
    elif job.use_cfg:
        noise_uncond, noise_cond = noise_pred.chunk(2)
        noise_pred = noise_uncond + job.cfg_scale * (noise_cond - noise_uncond)
    for hook in job.cfg_hooks:
        noise_pred = hook(noise_pred, latents, t, step) or noise_pred
    return _after_cfg(job, noise_pred, step)


def _revision(job: SamplingJob, embeds, added, step: int, uncond_rows: int):
    """ReVision units: the picture's embedding as the prompt rows' pooled embedding (and, asked, no text); T2I style
    units: their tokens appended to the context."""
    if not job.controls:
        return embeds, added
    from modules.controlnet import revision, t2i_style

    units = [c.unit for c in job.controls if c.enabled]
    embeds = t2i_style.apply(units, step, len(job.timesteps), embeds, uncond_rows)  # style tokens join the text
    return revision.apply(units, step, len(job.timesteps), embeds, added, uncond_rows)


def _control(job: SamplingJob, x: torch.Tensor, t, embeds, added, step: int, rows: torch.Tensor,
             uncond_rows: int) -> dict:
    """ControlNet residuals for this step (the ControlNet sees the UNet's latents before inpainting channels;
    `rows[r]` is the picture UNet row r belongs to)."""
    if not job.controls:
        return {}
    from modules.controlnet.units import residuals

    return residuals(job.controls, x, t, embeds, added, rows, uncond_rows, step, len(job.timesteps))


def _with_image_prompts(job: SamplingJob, control: dict, added: dict | None) -> dict | None:
    """IP-Adapter units: their image tokens go to the UNet with the added conditioning, their weights (0 outside
    a unit's guidance window) into its IP attention layers."""
    image_prompts = control.pop("ip_adapter", None)
    if image_prompts is None:
        return added
    from modules.controlnet.ip_adapter import set_scales

    embeds, scales = image_prompts
    set_scales(job.unet, scales)
    return {**(added or {}), "image_embeds": embeds}


def _scale_input(scheduler, x: torch.Tensor, t) -> torch.Tensor:
    """The scheduler's input scaling; flow-matching schedulers have none (their input is the latent itself)."""
    scale = getattr(scheduler, "scale_model_input", None)
    return scale(x, t) if scale is not None else x


def _to_model(job: SamplingJob, x: torch.Tensor) -> torch.Tensor:
    """The UNet's input in its own dtype (only differs under --upcast-sampling, where the latents are fp32)."""
    return x.to(job.unet.dtype) if job.upcast else x


def _sigma(job: SamplingJob, step: int, t):
    sigmas = getattr(job.scheduler, "sigmas", None)
    index = getattr(job.scheduler, "step_index", None)
    if sigmas is not None and index is not None and index < len(sigmas):
        return sigmas[index]
    return t


def _after_cfg(job: SamplingJob, noise_pred: torch.Tensor, step: int) -> torch.Tensor:
    if job.hooks is None:
        return noise_pred
    return job.hooks.after_cfg(noise_pred, step, len(job.timesteps))


def _denoise_multi(job: SamplingJob, latents: torch.Tensor, t, step: int, cond, uncond) -> torch.Tensor:
    """`AND` prompts (a MultiConditioning): one UNet row per prompt part, combined as A1111's CFGDenoiser:
    noise[b] = uncond[b] + sum_k w_k * cfg * (cond_k - uncond[b]) over the parts k of image b."""
    owners = torch.tensor(cond.owners, device=latents.device)
    weights = cond.weights
    batch = latents.shape[0]
    use_cfg = job.use_cfg
    rows = [latents[owners]]
    embeds, pooled = [cond.embeds], [cond.pooled]
    time_ids = None if job.time_ids is None else [job.time_ids[owners]]
    if use_cfg:
        rows.insert(0, latents)
        embeds.insert(0, uncond.embeds)
        pooled.insert(0, uncond.pooled)
        if time_ids is not None:
            time_ids.insert(0, job.uncond_time_ids)
    x = _to_model(job, _scale_input(job.scheduler, torch.cat(rows), t))
    added = None if cond.pooled is None else {"text_embeds": torch.cat(pooled),
                                              "time_ids": None if time_ids is None else torch.cat(time_ids)}
    embeds, added = _revision(job, torch.cat(embeds), added, step, batch if use_cfg else 0)
    every = torch.arange(batch, device=latents.device)
    control = _control(job, x, t, embeds, added, step,
                       torch.cat([every, owners]) if use_cfg else owners, batch if use_cfg else 0)
    added = _with_image_prompts(job, control, added)
    if job.inpaint is not None and job.inpaint.masked_image_latents is not None:
        mask, masked = job.inpaint.mask[owners], job.inpaint.masked_image_latents[owners]
        if use_cfg:
            mask = torch.cat([job.inpaint.mask, mask])
            masked = torch.cat([job.inpaint.masked_image_latents, masked])
        x = torch.cat([x, *job.inpaint.channels(mask, masked)], dim=1)
    if job.control_latents is not None:
        read = job.control_latents[owners]
        x = torch.cat([x, torch.cat([job.control_latents, read]) if use_cfg else read], dim=1)
    out = job.unet(x, t, encoder_hidden_states=embeds, added_cond_kwargs=added, return_dict=False,
                   **control)[0].to(latents.dtype)
    if use_cfg:
        noise_uncond, noise_cond = out[:batch], out[batch:]
        noise_pred = noise_uncond.clone()
        for k, (b, w) in enumerate(zip(cond.owners, weights)):
            noise_pred[b] += (noise_cond[k] - noise_uncond[b]) * (w * job.cfg_scale)
    else:  # no uncond to guide against: the weighted mean of the parts
        noise_pred = torch.zeros_like(latents, dtype=out.dtype)
        total = [0.0] * batch
        for k, (b, w) in enumerate(zip(cond.owners, weights)):
            noise_pred[b] += out[k] * w
            total[b] += w
        for b in range(batch):
            if total[b]:
                noise_pred[b] /= total[b]
    for hook in job.cfg_hooks:
        noise_pred = hook(noise_pred, latents, t, step) or noise_pred
    return noise_pred


@torch.inference_mode()
def sample(job: SamplingJob) -> torch.Tensor:
    """Run the scheduler over `job.timesteps` and return the final latents."""
    latents = job.latents.float() if job.upcast else job.latents
    timesteps = job.timesteps
    total = len(timesteps)
    inpaint4 = job.inpaint is not None and job.inpaint.masked_image_latents is None
    for i, t in enumerate(timesteps):
        if job.switch is not None and i == job.switch.step:
            job, latents = job.switch.swap(job, latents)
        noise_pred = denoise(job, latents, t, i)
        stepped = job.scheduler.step(noise_pred, t, latents, **job.step_kwargs, return_dict=True)
        latents = stepped.prev_sample
        if inpaint4:
            known = job.inpaint.image_latents
            if i < total - 1:
                add_noise = job.add_noise or job.scheduler.add_noise
                known = add_noise(known, job.inpaint.noise, torch.tensor([timesteps[i + 1]]))
            latents = (1 - job.inpaint.mask) * known + job.inpaint.mask * latents
        if job.on_step is not None:
            job.on_step(StepInfo(step=i + 1, total=total, latents=latents, timestep=t,
                                 denoised=getattr(stepped, "pred_original_sample", None)))
    return latents

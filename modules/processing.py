"""Turn a typed request into finished images: seeds, conditioning, the sampling loop, decoding, saving, infotext.

txt2img, img2img, inpaint and the hires pass all go through `_sample_batch` and the one loop in
`modules.sampling.loop`. Random draws happen in the same order as diffusers' own pipelines, which is what the
parity tests check; A1111's seed semantics (image i of a batch == a single run with seed+i) follow from drawing every
image's noise from its own generator.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from modules import images as images_mod
from modules import face_restoration
from modules import infotext as infotext_mod
from modules import color_correction, masking, preview, prompt_comments, rng, token_merging
from modules.jobs import JobState
from modules.models.loader import LoadedModel
from modules.networks import extra_networks
from modules.request_types import GenerationRequest, Img2ImgRequest, RequestError, Txt2ImgRequest
from modules.resize import LATENT_RESIZE, resize_image
from modules.sampling import conditioning as cond_mod
from modules.sampling import samplers
from modules.sampling import loop as loop_hooks
from modules.sampling.flow_denoiser import denoiser_for
from modules.sampling.loop import InpaintLatents, Interrupted, ModelSwitch, SamplingJob, Skipped, StepInfo, sample
from modules.version import VERSION

log = logging.getLogger(__name__)

LATENT_UPSCALE_MODES = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
PIXEL_UPSCALERS = {"Lanczos": Image.Resampling.LANCZOS, "Nearest": Image.Resampling.NEAREST, "None": None}
MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")


@dataclass
class OutputDirs:
    samples: Path
    grids: Path
    save: images_mod.SaveOptions | None = None  # the settings' names, subfolders, quality… for pictures
    grid_save: images_mod.SaveOptions | None = None  # … and for grids
    detected_maps: Path | None = None  # ControlNet maps are saved here (per preprocessor) when the setting asks
    init_images: Path | None = None  # img2img's init pictures, when the setting save_init_img asks


@dataclass
class RunState:
    """The parts of a job that extensions may change before and between batches (A1111's `p.all_prompts`,
    `p.all_seeds`, `p.n_iter`, `p.extra_generation_params`, …). `_run` reads them back after every hook."""

    all_prompts: list[str]
    all_negative_prompts: list[str]
    all_seeds: list[int]
    all_subseeds: list[int]
    batch_size: int
    n_iter: int
    extra: dict[str, Any]
    iteration: int = 0
    prompts: list[str] = field(default_factory=list)
    negative_prompts: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    subseeds: list[int] = field(default_factory=list)


class ProcessingHooks:
    """Where extensions take part in a generation (implemented by `modules.scripts`); these defaults do nothing,
    so a job without extensions runs exactly as before."""

    def process(self, run: RunState) -> None:
        """Prompts and seeds of the whole job are known; nothing has been sampled yet."""

    def before_batch(self, run: RunState) -> None:
        """`run.prompts`/`seeds` of batch `run.iteration` are set; they may be edited in place."""

    def process_batch(self, run: RunState) -> None:
        """Extra networks of this batch are active; sampling starts next."""

    def sampling(self) -> "loop_hooks.SamplingHooks | None":
        """Per-step hooks for the sampling loop (A1111's cfg_denoiser callbacks), or None."""
        return None

    def after_batch(self, run: RunState, images: list[Image.Image]) -> list[Image.Image]:
        """The batch's decoded pictures; may return replacements."""
        return images

    def image(self, run: RunState, index: int, image: Image.Image) -> Image.Image:
        """One decoded picture (faces restored), before img2img's colour correction and overlay; may return a
        replacement."""
        return image

    def mask_overlay(self, run: RunState, index: int, mask: Image.Image | None,
                     original: Image.Image | None) -> tuple[Image.Image | None, Image.Image | None]:
        """Inpainting: the mask and the original composited over the picture; may return replacements."""
        return mask, original

    def after_composite(self, run: RunState, index: int, image: Image.Image) -> Image.Image:
        """One finished picture before it is saved; may return a replacement."""
        return image

    def before_hires(self, run: RunState) -> None:
        """The first pass is done; the hires pass starts next."""

    def save_image(self, save: Callable[..., Path], image: Image.Image, infotext: str | None, **kw) -> Path:
        """Save one picture (extensions see it before and after, and may change its metadata)."""
        return save(image, infotext=infotext, **kw)


NO_HOOKS = ProcessingHooks()


@dataclass
class ProcessingContext:
    """What one generation needs besides the request: the model, effective options, where to save, progress."""

    model: LoadedModel
    options: dict[str, Any]
    outputs: OutputDirs | None
    state: JobState = field(default_factory=JobState)
    preview: Callable[[torch.Tensor], Image.Image] | None = None
    embeddings: Any = None  # modules.networks.embeddings.EmbeddingDatabase (textual inversion), if any
    loras: Any = None  # modules.networks.lora.LoraRegistry
    hooks: ProcessingHooks = NO_HOOKS
    upscale: Callable[[Image.Image, str, int, int], Image.Image] | None = None  # pixel upscaler by name, if any
    upscalers: Any = None  # modules.upscaling.UpscalerRegistry: hires fix's model upscalers (ESRGAN…) by name
    control_units: list = field(default_factory=list)  # modules.controlnet.units.ControlUnit, applied every batch
    hypernetworks: Any = None  # modules.networks.hypernetworks.HypernetworkRegistry (models/hypernetworks)
    controlnets: Any = None  # modules.controlnet.models.ControlNetLibrary: the models request units name
    annotator_dir: Path | None = None  # ControlNet preprocessor weights (models/ControlNetPreprocessor)
    models: Any = None  # modules.models.manager.ModelManager: where the refiner checkpoint is found and loaded
    face_restorers: Any = None  # modules.face_restoration.FaceRestorers: restore_faces (GFPGAN, CodeFormer)

    def opt(self, name: str, default: Any = None) -> Any:
        return self.options.get(name, default)


@dataclass
class GenerationResult:
    """What A1111's `Processed` carries, typed."""

    images: list[Image.Image]
    infotexts: list[str]
    all_prompts: list[str]
    all_negative_prompts: list[str]
    all_seeds: list[int]
    all_subseeds: list[int]
    seed: int
    subseed: int
    subseed_strength: float
    width: int
    height: int
    sampler_name: str
    scheduler: str
    cfg_scale: float
    steps: int
    batch_size: int
    n_iter: int
    denoising_strength: float | None
    sd_model_name: str
    sd_model_hash: str | None
    sd_vae_name: str | None
    sd_vae_hash: str | None
    clip_skip: int
    prompt: str
    negative_prompt: str
    extra_generation_params: dict[str, Any] = field(default_factory=dict)
    index_of_first_image: int = 0
    saved_paths: list[Path] = field(default_factory=list)
    saved_infotexts: list[str] = field(default_factory=list)  # each saved picture's infotext (the history indexes it)
    grid_path: Path | None = None
    interrupted: bool = False
    skipped_batches: int = 0
    elapsed: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def info(self) -> str:
        return self.infotexts[0] if self.infotexts else ""

    def js(self) -> dict[str, Any]:
        """A1111's `Processed.js()` dictionary (the HTTP API's `info`): `prompt` is the first prompt as generated,
        after scripts (wildcards, dynamic prompts) rewrote `all_prompts`."""
        return {
            "prompt": self.all_prompts[0] if self.all_prompts else self.prompt,
            "all_prompts": self.all_prompts,
            "negative_prompt": self.all_negative_prompts[0] if self.all_negative_prompts else self.negative_prompt,
            "all_negative_prompts": self.all_negative_prompts,
            "seed": self.seed,
            "all_seeds": self.all_seeds,
            "subseed": self.subseed,
            "all_subseeds": self.all_subseeds,
            "subseed_strength": self.subseed_strength,
            "width": self.width,
            "height": self.height,
            "sampler_name": self.sampler_name,
            "scheduler": self.scheduler,
            "cfg_scale": self.cfg_scale,
            "steps": self.steps,
            "batch_size": self.batch_size,
            "n_iter": self.n_iter,
            "denoising_strength": self.denoising_strength,
            "sd_model_name": self.sd_model_name,
            "sd_model_hash": self.sd_model_hash,
            "sd_vae_name": self.sd_vae_name,
            "sd_vae_hash": self.sd_vae_hash,
            "clip_skip": self.clip_skip,
            "extra_generation_params": self.extra_generation_params,
            "index_of_first_image": self.index_of_first_image,
            "infotexts": self.infotexts,
            "styles": [],
            "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
            "is_using_inpainting_conditioning": False,
            "version": VERSION,
            "warnings": list(self.warnings),  # e.g. a LoRA that was refused (not applied, not in the infotext)
        }


# ---------------------------------------------------------------------------------------------------------------
# Small pieces


def _resolve_sampler(name: str | None, scheduler: str | None):
    try:
        return samplers.resolve(name, scheduler)
    except ValueError as e:
        raise RequestError(str(e)) from None


def _flow_bundle(model: LoadedModel, sampler: str | None, schedule: str | None, shift: float | None):
    from modules.sampling import flow_samplers

    try:
        return flow_samplers.build_flow_scheduler(sampler, schedule, model.scheduler_config, shift=shift)
    except ValueError as e:
        raise RequestError(f"{model.spec.label}: {e}") from None


def _round8(v: int, factor: int) -> int:
    return max(factor, int(v) // factor * factor)


def image_processor(model: LoadedModel):
    from diffusers.image_processor import VaeImageProcessor

    return VaeImageProcessor(vae_scale_factor=model.vae_scale_factor)


def mask_processor(model: LoadedModel, binarize: bool = True):
    from diffusers.image_processor import VaeImageProcessor

    return VaeImageProcessor(vae_scale_factor=model.vae_scale_factor, do_normalize=False, do_binarize=binarize,
                             do_convert_grayscale=True)


def decode(model: LoadedModel, latents: torch.Tensor) -> torch.Tensor:
    """Latents → images in [-1, 1]; a fp16 VAE that overflows to NaN is retried in fp32 (bfloat16, or refused, as
    A1111's settings say: the model manager puts their choice in `model.extra`)."""
    vae = model.vae
    scaled = latents / vae.config.scaling_factor
    if getattr(vae.config, "shift_factor", None):  # Flux/SD3 VAEs: latents are shifted, then scaled
        scaled = scaled + vae.config.shift_factor
    with torch.inference_mode():
        out = vae.decode(scaled.to(vae.dtype), return_dict=False)[0]
        if vae.dtype == torch.float16 and torch.isnan(out).any():
            retry = model.extra.get("vae_nan_retry", "float32")  # A1111's auto_vae_precision(_bfloat16) settings
            if retry is None:
                raise RequestError("A tensor with all NaNs was produced in VAE: its 16-bit weights overflowed. Turn "
                                   "on the setting \"Automatically revert VAE to 32-bit floats\" or start with "
                                   "--no-half-vae")
            dtype = getattr(torch, retry)
            if not getattr(vae, "_nan_reported", False):  # said once per VAE, not on every picture
                log.warning("VAE produced NaNs in fp16; decoding in %s when it does (--no-half-vae: always fp32)",
                            retry)
                vae._nan_reported = True
            vae.to(dtype)
            out = vae.decode(scaled.to(dtype), return_dict=False)[0]
            vae.to(torch.float16)
    return out.float()


def encode(model: LoadedModel, pixels: torch.Tensor, generators) -> torch.Tensor:
    """Images in [-1, 1] (B,3,H,W) → scaled latents, each image sampled with its own generator (diffusers' order)."""
    vae = model.vae
    out = []
    with torch.inference_mode():
        for i in range(pixels.shape[0]):
            dist = vae.encode(pixels[i:i + 1].to(device=model.device, dtype=vae.dtype)).latent_dist
            g = generators[i] if generators else None
            out.append(dist.sample(generator=g))
    latents = torch.cat(out)
    if getattr(vae.config, "shift_factor", None):
        latents = latents - vae.config.shift_factor
    return (vae.config.scaling_factor * latents).to(model.dtype)


def is_flux_fill(model: LoadedModel) -> bool:
    return model.family == "flux" and model.spec.inpainting


def fold_mask(pixel_mask: torch.Tensor, f: int) -> torch.Tensor:
    """(B,1,H,W) pixel mask → (B, f·f, H/f, W/f): each latent pixel's f×f mask pixels as channels, the way Flux
    Fill reads its mask (FluxFillPipeline.prepare_mask_latents)."""
    b, _, height, width = pixel_mask.shape
    h, w = height // f, width // f
    m = pixel_mask[:, 0].reshape(b, h, f, w, f).permute(0, 2, 4, 1, 3)
    return m.reshape(b, f * f, h, w)


def unmasked_conditioning(model: LoadedModel, batch: int, width: int, height: int) -> InpaintLatents:
    """An inpainting model used without a mask (txt2img, plain img2img): A1111 conditions it on a mask of ones and
    the latents of a mid-grey picture, i.e. "repaint everything" (Flux Fill: the same in its own layout)."""
    f = model.vae_scale_factor
    grey = torch.zeros((1, 3, height, width), device=model.device, dtype=model.vae.dtype)
    with torch.inference_mode():
        latents = model.vae.encode(grey).latent_dist.mode()
    if getattr(model.vae.config, "shift_factor", None):
        latents = latents - model.vae.config.shift_factor
    latents = (latents * model.vae.config.scaling_factor).to(model.dtype).repeat(batch, 1, 1, 1)
    if is_flux_fill(model):
        ones = torch.ones((batch, 1, height, width), device=model.device, dtype=model.dtype)
        return InpaintLatents(mask=fold_mask(ones, f), masked_image_latents=latents, image_first=True)
    mask = torch.ones((batch, 1, height // f, width // f), device=model.device, dtype=model.dtype)
    return InpaintLatents(mask=mask, masked_image_latents=latents)


def _advance(generators, shape) -> None:
    """Consume one latent-sized draw per generator, where diffusers' inpaint pipeline encodes a masked image."""
    for g in generators or []:
        torch.randn(shape, generator=g, device=g.device)


def _timesteps(scheduler, total: int, run: int, device, image_seq_len: int | None = None,
               family: str | None = None) -> torch.Tensor:
    """The last `run` of `total` scheduler steps (diffusers' get_timesteps arithmetic); flow-matching schedules
    (`image_seq_len` given) as the Flux/SD3 pipelines set them."""
    if image_seq_len is None:
        scheduler.set_timesteps(total, device=device)
    else:
        from modules.sampling.flow_samplers import set_flow_timesteps

        set_flow_timesteps(scheduler, total, image_seq_len, device, family=family)
    t_start = max(total - run, 0)
    order = getattr(scheduler, "order", 1)
    ts = scheduler.timesteps[t_start * order:]
    if t_start and hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(t_start * order)
    return ts


def img2img_steps(steps: int, strength: float, fix_steps: bool) -> tuple[int, int]:
    """(schedule length, steps actually run): A1111 runs int(steps*strength) of `steps`, or with
    `img2img_fix_steps` (and in the hires pass) exactly `steps` of a longer schedule."""
    if fix_steps:
        total = int(steps / min(strength, 0.999)) if strength > 0 else 0
        return max(total, steps), steps if strength > 0 else 0
    return steps, min(int(steps * strength), steps)


# ---------------------------------------------------------------------------------------------------------------
# One batch through the loop


@dataclass
class BatchPlan:
    """Everything `_sample_batch` needs for one batch (seeds, conditioning, where the latents start)."""

    seeds: list[int]
    subseeds: list[int]
    width: int
    height: int
    total_steps: int
    run_steps: int
    init_latents: torch.Tensor | None = None
    inpaint: dict | None = None
    always_add_noise: bool = True
    hires: bool = False  # the hires fix's second pass


def refiner_switch_step(scheduler, timesteps, switch_at: float, by_steps: bool = False) -> int | None:
    """The 0-based step from which the refiner samples, or None (it never does). A1111 switches at the first
    denoiser call whose completed fraction reaches `switch_at`: by default the fraction of the model's 1000
    training timesteps already passed, `(999 - t) / 1000` with `t` the training timestep whose sigma is nearest
    the step's; with "Switch to refiner by sampling steps", the steps done out of the steps run."""
    n = len(timesteps)
    sigmas = getattr(scheduler, "sigmas", None)
    table = None
    alphas = getattr(scheduler, "alphas_cumprod", None)
    if sigmas is not None and alphas is not None and len(sigmas) >= len(scheduler.timesteps):
        table = ((1 - alphas) / alphas) ** 0.5
        begin = len(scheduler.timesteps) - n
    for i in range(n):
        if by_steps:
            done = i / n
        else:
            if table is not None:
                sigma = float(sigmas[begin + i])
                index = int(torch.argmin((table.to(torch.float64) - sigma).abs()))
            else:  # schedulers without a sigma table (DDIM): the timestep itself
                index = int(round(float(timesteps[i])))
            done = (999 - index) / 1000
        if done >= switch_at:
            return i
    return None


class Generation:
    """One request being processed; holds the per-request pieces shared by all its batches."""

    def __init__(self, ctx: ProcessingContext, req: GenerationRequest):
        self.ctx, self.req, self.model = ctx, req, ctx.model
        self.flow_shift = float(ctx.opt("flow_shift", 0) or 0) or None  # 0: the model's own shift
        self.sampler, self.schedule = self.resolve_sampler(req.effective_sampler, req.scheduler)
        self.clip_skip = int(ctx.opt("CLIP_stop_at_last_layers", 1) or 1)
        self.strip_comments = prompt_comments.enabled(ctx.opt)
        self.randn_source = ctx.opt("randn_source", "GPU")
        self.ensd = int(ctx.opt("eta_noise_seed_delta", 0) or 0)
        self._cond_cache: dict[tuple, cond_mod.Conditioning] = {}
        self.text_options = cond_mod.TextOptions.from_options(ctx.opt)
        self.use_old_scheduling = bool(ctx.opt("use_old_scheduling", False))
        self.skipped_uncond: dict[str, Any] = {}  # NGMS / Skip Early CFG when they left a negative pass out
        self.embeddings = ctx.embeddings
        self.hooks = ctx.hooks
        self.run: RunState | None = None
        if self.embeddings is not None:
            # new or changed files picked up and checked against this model
            self.embeddings.load(self.model, bool(ctx.opt("textual_inversion_print_at_load", False)))
        self.used_embeddings: dict = {}  # name → Embedding, for "TI hashes"
        texts = [req.prompt or "", req.negative_prompt or "", getattr(req, "hr_prompt", "") or "",
                 getattr(req, "hr_negative_prompt", "") or ""]
        self.prompt_params: dict[str, Any] = {}
        if self.text_options.emphasis != "Original" and any("(" in t or "[" in t for t in texts):
            self.prompt_params["Emphasis"] = self.text_options.emphasis
        from modules.controlnet.prepare import PreparedControls

        self.controls = PreparedControls()
        self.control_units = list(ctx.control_units)
        self._reference = None  # the reference units' hooks while the request runs (image_prompts)
        self._control_hooks: list = []  # hypernetwork hooks on the ControlNets while the request runs
        self.refiner_info = self._refiner_checkpoint()  # A1111's refiner: found now, loaded when sampling reaches it
        self.hr_checkpoint_info = self._hr_checkpoint()  # A1111's hires checkpoint: found now, loaded for that pass
        self.final_model = self.model  # the model that finished the last sampling (decodes it, as A1111)

    def prepare_controls(self, crop: tuple[int, int, int, int] | None = None) -> None:
        """The request's ControlNet units, preprocessed and loaded before any sampling (errors name the unit).
        `crop`: img2img's "Only masked" region (x, y, w, h) of the picture, which units' inputs are cut to too."""
        self.controls = self._prepare_controls(crop)
        self.control_units = list(self.ctx.control_units) + self.controls.units
        if not (self.req.prompt or "").strip() and not (self.req.negative_prompt or "").strip():
            for u in self.control_units:  # the extension: ReVision with no prompt at all uses the picture alone
                if u.kind == "revision":
                    u.model.ignore_prompt = True

    def _prepare_controls(self, crop):
        from modules.controlnet.prepare import PreparedControls, prepare

        req, ctx = self.req, self.ctx
        if not any(u.enabled for u in req.controlnet_units):
            return PreparedControls()
        structure = self.model.spec.variant == "Flux.1 Depth"  # the checkpoint itself reads its unit's map
        if ctx.controlnets is None and not structure:
            raise RequestError("ControlNet models are not available here (no models/ControlNet library)")
        m = self.model.size_multiple
        inits = getattr(req, "init_images", None) or [None]
        return prepare(req.controlnet_units, library=ctx.controlnets, model=self.model,
                       width=_round8(req.width, m), height=_round8(req.height, m), init_image=inits[0],
                       init_mask=getattr(req, "mask", None), annotator_dir=ctx.annotator_dir,
                       skip_failed=bool(ctx.opt("controlnet_skip_failed_units", False)), crop=crop,
                       structure=structure)

    def resolve_sampler(self, name: str | None, schedule: str | None):
        """(sampler, schedule type) for this model's family; an unknown or unsuitable name is a RequestError now,
        with the names that work, rather than at the first step."""
        if self.model.is_flow:
            bundle = _flow_bundle(self.model, name, schedule, self.flow_shift)
            return bundle.sampler, bundle.schedule
        return _resolve_sampler(name, schedule)

    # -- conditioning ------------------------------------------------------------------------------------------

    def conditioning(self, prompts: list[str], model: LoadedModel | None = None) -> cond_mod.Conditioning:
        """`model`: another model's text encoders (the refiner's); by default the request's model."""
        model = model or self.model
        key = (tuple(prompts), self.clip_skip, id(model))
        if key not in self._cond_cache:
            other = model is not self.model and self.embeddings is not None
            if other:
                self.embeddings.load(model)  # the embeddings that fit the refiner's encoders
            try:
                encoded = cond_mod.encode(model, prompts, self.clip_skip, options=self.text_options,
                                          embeddings=self.embeddings, used=self.used_embeddings)
            finally:
                if other:
                    self.embeddings.load(self.model)
            self._cond_cache = {key: encoded, **self._cond_cache}
            if len(self._cond_cache) > 16:
                self._cond_cache.pop(next(reversed(self._cond_cache)))
        return self._cond_cache[key]

    @property
    def uses_negative(self) -> bool:
        """Flux/SD3 at CFG scale 1 run without guidance: the negative prompt is not even encoded (their pipelines'
        rule; SD1/SDXL keep A1111's, which always encodes it)."""
        return not (self.model.is_flow and self.req.cfg_scale <= 1)

    def prompt_schedule(self, prompts: list[str], negatives: list[str], hires: bool = False,
                        model: LoadedModel | None = None) -> cond_mod.PromptSchedule:
        """Per-step conditioning for one batch: A1111's schedules over the request's steps (in the hires pass: the
        first pass's steps as base and the hires steps, so `[a:b:1.5]`-style fractions and step numbers past the first
        pass apply there)."""
        req = self.req
        hires_steps = (getattr(req, "hr_second_pass_steps", 0) or req.steps) if hires else None
        encode = self.conditioning if model is None else functools.partial(self.conditioning, model=model)
        return cond_mod.PromptSchedule(encode, prompts, negatives, req.steps, hires_steps,
                                       self.use_old_scheduling, with_uncond=self.uses_negative)

    # -- sampling ----------------------------------------------------------------------------------------------

    def make_rng(self, plan: BatchPlan, latent_shape) -> rng.ImageRNG:
        req = self.req
        return rng.ImageRNG(
            latent_shape, plan.seeds, plan.subseeds, req.subseed_strength,
            req.seed_resize_from_h if req.seed_resize_from_h > 0 else 0,
            req.seed_resize_from_w if req.seed_resize_from_w > 0 else 0,
            source=self.randn_source, device=self.model.device, eta_noise_seed_delta=self.ensd,
            latent_factor=self.model.vae_scale_factor,
        )

    def sample_batch(self, plan: BatchPlan, prompts: list[str], negatives: list[str],
                     sampler=None, schedule=None, encode_pixels: torch.Tensor | None = None,
                     model: LoadedModel | None = None) -> torch.Tensor:
        """Run one batch and return its final latents. `encode_pixels` (img2img) is encoded with each image's
        generator before the noise is drawn, as diffusers' img2img/inpaint pipelines do. `model`: another
        checkpoint for this pass (the hires checkpoint: its UNet, text encoders and VAE), else the request's."""
        model, req = model or self.model, self.req
        sampler, schedule = sampler or self.sampler, schedule or self.schedule
        f = model.vae_scale_factor
        channels = model.vae.config.latent_channels
        shape = (channels, plan.height // f, plan.width // f)
        flow = model.is_flow
        if flow:
            bundle = _flow_bundle(model, sampler.name, schedule.label, self.flow_shift)
            seq_len = (plan.height // f // 2) * (plan.width // f // 2)
        else:
            zero_snr = self.ctx.opt("sd_noise_schedule", "Default") == "Zero Terminal SNR"
            bundle = samplers.build_scheduler(sampler, schedule, model.scheduler_config, seed=plan.seeds[0],
                                              zero_terminal_snr=zero_snr)
            if zero_snr and getattr(bundle.scheduler.config, "rescale_betas_zero_snr", False):
                self.run.extra["Noise Schedule"] = "Zero Terminal SNR"  # (Heun, LMS, DPM++ SDE: not in diffusers)
            seq_len = None
        scheduler = bundle.scheduler
        timesteps = _timesteps(scheduler, plan.total_steps, plan.run_steps, model.device, seq_len, model.family)
        image_rng = self.make_rng(plan, shape)
        # The NV source has no torch generators; step noise then comes from CPU generators of the same seeds.
        gens = image_rng.generators or [torch.Generator("cpu").manual_seed(s) for s in plan.seeds]
        controls = self._controls(plan, gens)
        control_latents = self._structure_latents(plan, gens)  # Flux.1 Depth/Canny: before the noise, as the pipeline
        if model.spec.instruct_pix2pix:
            control_latents = self._edit_latents(plan, encode_pixels)

        inpaint = plan.inpaint
        image_latents = plan.init_latents
        strength_max = plan.run_steps >= plan.total_steps and not plan.always_add_noise
        fill = is_flux_fill(model)  # FluxFillPipeline encodes the picture even when it starts from pure noise
        if encode_pixels is not None and not (strength_max and inpaint is not None and model.spec.inpainting
                                              and not fill):
            image_latents = encode(model, encode_pixels, gens)
            if inpaint is not None and inpaint.get("post_encode"):
                image_latents = inpaint["post_encode"](image_latents)
        noise = image_rng.first().to(model.dtype)

        add_noise = getattr(scheduler, "add_noise", None)
        if flow:
            from modules.sampling.flow_samplers import add_flow_noise

            add_noise = functools.partial(add_flow_noise, scheduler)
        if image_latents is None or strength_max:
            sigma = getattr(scheduler, "init_noise_sigma", None)
            latents = noise * (1.0 if sigma is None else sigma)
        else:
            latent_timestep = timesteps[:1].repeat(len(plan.seeds))
            latents = add_noise(image_latents, noise, latent_timestep)
            extra = float(self.ctx.opt("img2img_extra_noise", 0.0) or 0.0)
            if extra > 0 and not flow:
                latents = latents + noise * extra * _noise_scale(scheduler, timesteps[0])
                self.run.extra["Extra noise"] = extra

        inpaint_latents = None
        if inpaint is not None:
            mask = inpaint["latent_mask"].to(device=model.device, dtype=model.dtype)
            if fill:
                masked = encode(model, inpaint["masked_pixels"], gens)
                folded = fold_mask(inpaint["pixel_mask"].to(device=model.device, dtype=model.dtype), f)
                inpaint_latents = InpaintLatents(mask=folded, masked_image_latents=masked, image_first=True)
            elif model.spec.inpainting:
                masked = encode(model, inpaint["masked_pixels"], gens)
                inpaint_latents = InpaintLatents(mask=mask, masked_image_latents=masked)
            else:
                _advance(gens, (1,) + shape)
                inpaint_latents = InpaintLatents(mask=mask, image_latents=image_latents, noise=noise)
        elif model.spec.inpainting:
            inpaint_latents = unmasked_conditioning(model, len(plan.seeds), plan.width, plan.height)

        hires = isinstance(req, Txt2ImgRequest) and req.enable_hr and (
            plan.init_latents is not None or encode_pixels is not None)  # txt2img's second sampling is hires
        merging = 0.0 if flow else token_merging.apply(model.unet, token_merging.ratio_for(req, self.ctx.opt, hires))
        if merging:
            self.run.extra["Token merging ratio hr" if hires else "Token merging ratio"] = merging
        prompt_schedule = self.prompt_schedule(prompts, negatives, hires=hires,
                                               model=model if model is not self.model else None)
        cond, uncond = prompt_schedule.at(0)
        job = SamplingJob(
            unet=denoiser_for(model, req.distilled_cfg_scale) if flow else model.unet, scheduler=scheduler,
            timesteps=timesteps, latents=latents, cond=cond, uncond=uncond, cfg_scale=req.cfg_scale,
            step_kwargs=bundle.step_kwargs(generator=self._step_generators(gens), eta=self._eta(bundle),
                                           **self._churn(bundle)),
            inpaint=inpaint_latents, on_step=self._on_step,
            conditioning_at=prompt_schedule.at if prompt_schedule.varies else None, hooks=self.hooks.sampling(),
            add_noise=add_noise if flow else None, controls=controls, control_latents=control_latents,
            upcast=model.device_config.upcast_sampling and not flow, image_cfg_scale=self.image_cfg_scale,
            s_min_uncond=float(req.s_min_uncond if req.s_min_uncond is not None
                               else self.ctx.opt("s_min_uncond", 0.0) or 0.0),
            s_min_uncond_all=bool(self.ctx.opt("s_min_uncond_all", False)),
            skip_early_cond=float(self.ctx.opt("skip_early_cond", 0.0) or 0.0),
            skipped_uncond=self.skipped_uncond,
        )
        job.time_ids, job.uncond_time_ids = self._time_ids(model, plan)
        self.final_model = model
        if self.refiner_info is not None and self._refiner_in_pass(hires):
            job.switch = self._refiner_switch(plan, scheduler, timesteps, prompts, negatives, hires)
        state = self.ctx.state
        state.sampling_steps = len(timesteps)
        state.sampling_step = 0
        if len(timesteps) == 0:
            return image_latents if image_latents is not None else latents
        return sample(job)

    def _churn(self, bundle) -> dict:
        """A1111's sigma churn, tmin, tmax and noise (the request's, else the settings') for the samplers whose step
        takes them (Euler here); named in the infotext when they differ from the defaults."""
        defaults = {"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": 0.0, "s_noise": 1.0}
        labels = {"s_churn": "Sigma churn", "s_tmin": "Sigma tmin", "s_tmax": "Sigma tmax", "s_noise": "Sigma noise"}
        accepted = samplers.step_kwargs(bundle.scheduler, **{k: 0.0 for k in defaults})
        out = {}
        for key, default in defaults.items():
            own = getattr(self.req, key, None)
            value = float(own if own is not None else self.ctx.opt(key, default) or 0.0)
            if key not in accepted:
                continue
            out[key] = float("inf") if key == "s_tmax" and value == 0 else value
            if value != default:
                self.run.extra[labels[key]] = value
        return out

    def _step_generators(self, gens: list):
        """The sampler's per-step noise: each picture's own generator, so a picture of a batch equals the one made
        alone (A1111's "Make K-diffusion samplers produce same images in a batch as when making a single image",
        on by default); off, the batch draws from its first picture's generator at once."""
        return gens if len(gens) < 2 or self.ctx.opt("enable_batch_seeds", True) else gens[0]

    def _time_ids(self, model: LoadedModel, plan: BatchPlan):
        """SDXL's size/crop conditioning (cond, uncond); the refiner's carries the aesthetic scores instead of the
        target size (A1111's SDXL high/low aesthetic score settings)."""
        if not model.is_sdxl:
            return None, None
        aest = model.family == "sdxl_refiner"
        crop = (int(self.ctx.opt("sdxl_crop_top", 0) or 0), int(self.ctx.opt("sdxl_crop_left", 0) or 0))
        high = float(self.ctx.opt("sdxl_refiner_high_aesthetic_score", 6.0)) if aest else None
        low = float(self.ctx.opt("sdxl_refiner_low_aesthetic_score", 2.5)) if aest else None
        return (cond_mod.sdxl_time_ids(model, plan.width, plan.height, crop=crop, aesthetic=high, batch=len(plan.seeds)),
                cond_mod.sdxl_time_ids(model, plan.width, plan.height, crop=crop, aesthetic=low, batch=len(plan.seeds)))

    # -- the refiner (A1111 1.6: sd_samplers_common.apply_refiner) ----------------------------------------------

    def _refiner_checkpoint(self):
        """The refiner's CheckpointInfo, or None when the request has none: A1111 looks the title up before anything
        runs (unknown → an error naming the field), then uses it only for a switch point inside (0, 1) and a
        checkpoint other than the one in use."""
        req = self.req
        title = req.refiner_checkpoint
        if title in (None, "", "None", "none"):
            return None
        if self.ctx.models is None:
            raise RequestError("refiner_checkpoint: no checkpoints to load a refiner from here")
        from modules.models.manager import ModelNotFoundError

        try:
            info = self.ctx.models.resolve(str(title))
        except ModelNotFoundError as e:
            raise RequestError(f"refiner_checkpoint: {e}") from None
        at = req.refiner_switch_at
        if at is not None and not 0 <= at <= 1:
            raise RequestError(f"refiner_switch_at must be between 0 and 1, got {at}")
        if at is None or at >= 1 or str(info.filename) == str(self.model.filename):
            return None  # 1 never switches; the model in use needs no switch
        if self.model.is_flow:
            raise RequestError(f"refiner_checkpoint: {self.model.spec.label} models take no refiner here")
        return info

    def _refiner_in_pass(self, hires: bool) -> bool:
        """With hires fix on, the setting "Hires fix: which pass to enable refiner for" picks the passes."""
        req = self.req
        if not (isinstance(req, Txt2ImgRequest) and req.enable_hr):
            return True
        which = self.ctx.opt("hires_fix_refiner_pass", "second pass") or "second pass"
        return which == "both passes" or (which == "first pass") != hires

    def _refiner_switch(self, plan: BatchPlan, scheduler, timesteps, prompts, negatives, hires: bool):
        by_steps = bool(self.ctx.opt("refiner_switch_by_sample_steps", False))
        at = refiner_switch_step(scheduler, timesteps, float(self.req.refiner_switch_at), by_steps)
        if at is None:
            return None

        def swap(job: SamplingJob, latents: torch.Tensor):
            refiner = self._load_refiner()
            self._refiner_infotext(by_steps, hires)
            schedule = self.prompt_schedule(prompts, negatives, hires=hires, model=refiner)
            cond, uncond = schedule.at(0)
            time_ids, uncond_time_ids = self._time_ids(refiner, plan)
            new = dataclasses.replace(
                job, unet=refiner.unet, cond=cond, uncond=uncond, time_ids=time_ids, uncond_time_ids=uncond_time_ids,
                conditioning_at=schedule.at if schedule.varies else None, inpaint=self._refiner_inpaint(job, refiner,
                                                                                                        plan),
                controls=[], control_latents=None, switch=None,
                upcast=refiner.device_config.upcast_sampling)
            self.final_model = refiner
            return new, latents if new.upcast else latents.to(device=refiner.device, dtype=refiner.dtype)

        return ModelSwitch(at, swap)

    def _load_refiner(self) -> LoadedModel:
        refiner = self._load_checkpoint(self.refiner_info, "refiner")
        if refiner.is_flow:
            raise RequestError(f"refiner_checkpoint: {refiner.title} is a {refiner.spec.label} model; "
                               "a refiner must be an SD1.x/SD2.x/SDXL checkpoint")
        return refiner

    def _load_checkpoint(self, info, what: str) -> LoadedModel:
        """Another checkpoint for part of the job (the refiner, the hires checkpoint), through the model manager:
        its cache limit unloads the base as A1111 does; the next job loads its own model again."""
        state = self.ctx.state
        previous, state.textinfo = state.textinfo, f"Loading {what} {info.title}"
        try:
            model = self.ctx.models.get(info.title, remember=False)
        finally:
            state.textinfo = previous
        self._networks_onto(model, what)
        return model

    def _networks_onto(self, model: LoadedModel, what: str) -> None:
        """The job's LoRAs onto a checkpoint that takes over (A1111 applies them to whichever model is loaded);
        an empty set restores weights an earlier job left patched. What fits nothing is a warning."""
        activation = getattr(self, "networks", None)
        if activation is None:
            return
        from modules.networks import lora

        copies = [dataclasses.replace(net, applied=True) for net in activation.networks]
        for warning in lora.apply_networks(model, copies):
            activation.warnings.append(f"{what} {model.title}: {warning}")

    # -- the hires checkpoint (A1111 1.6: StableDiffusionProcessingTxt2Img.hr_checkpoint_info) --------------------

    def _hr_checkpoint(self):
        """The hires pass's CheckpointInfo, or None ("Use same checkpoint"): looked up before anything runs, an
        unknown title is an error naming the field (A1111 checks it only with hires fix on)."""
        req = self.req
        title = getattr(req, "hr_checkpoint_name", None)
        if not getattr(req, "enable_hr", False) or title in (None, "", "None", "none", "Use same checkpoint"):
            return None
        if self.ctx.models is None:
            raise RequestError("hr_checkpoint_name: no checkpoints to load a hires checkpoint from here")
        from modules.models.manager import ModelNotFoundError

        try:
            return self.ctx.models.resolve(str(title))
        except ModelNotFoundError as e:
            raise RequestError(f"hr_checkpoint_name: {e}") from None

    def hires_model(self) -> LoadedModel:
        """The model of the hires pass: the request's, or the hires checkpoint loaded now (A1111 reloads weights
        between the passes; its VAE then encodes and decodes the pass, its text encoders read the hires prompts)."""
        info = self.hr_checkpoint_info
        if info is None or str(info.filename) == str(self.model.filename):
            return self.model
        model = self._load_checkpoint(info, "hires checkpoint")
        base = self.model
        if model.is_flow != base.is_flow or (model.is_flow and model.family != base.family) or \
                model.vae.config.latent_channels != base.vae.config.latent_channels:
            raise RequestError(f"hr_checkpoint_name: {model.title} ({model.spec.label}) cannot take over from "
                               f"{base.title} ({base.spec.label}): their latents differ")
        return model

    def _refiner_inpaint(self, job: SamplingJob, refiner: LoadedModel, plan: BatchPlan) -> InpaintLatents | None:
        """What the refiner's UNet reads next to the latents: an inpainting refiner without a mask gets A1111's
        "repaint everything" conditioning; with a mask both models must be of the same kind."""
        base = self.model
        if plan.inpaint is None:  # txt2img / plain img2img
            if refiner.spec.inpainting:
                return unmasked_conditioning(refiner, len(plan.seeds), plan.width, plan.height)
            return None
        if refiner.spec.inpainting != base.spec.inpainting:
            raise RequestError(f"refiner_checkpoint: {refiner.title} and {base.title} must both be inpainting "
                               "models, or neither, to inpaint with a mask")
        return job.inpaint

    def _refiner_infotext(self, by_steps: bool, hires: bool) -> None:
        extra = self.run.extra if self.run is not None else {}
        extra["Refiner"] = self.refiner_info.short_title
        extra["Refiner switch at"] = self.req.refiner_switch_at
        if by_steps:
            extra["Refiner switch by sampling steps"] = True
        which = self.ctx.opt("hires_fix_refiner_pass", "second pass") or "second pass"
        if getattr(self.req, "enable_hr", False) and which != "second pass":
            extra["Hires refiner"] = which

    def _controls(self, plan: BatchPlan, generators) -> list:
        """The ControlNet units used in this pass, with their maps at its size. A Flux ControlNet's map is encoded
        by the VAE with each image's generator (called before the noise is drawn, as FluxControlNetPipeline)."""
        if not self.control_units:
            return []
        model = self.model
        flow_kind = {"flux": "flux", "sd3": "sd3"}.get(model.family) if model.is_flow else None
        if flow_kind is not None and any(u.kind not in (flow_kind, "structure") for u in self.control_units):
            raise RequestError(f"{model.spec.label}: only {'Flux' if flow_kind == 'flux' else 'SD3'} ControlNets "
                               "guide this model family")
        if not model.is_flow and any(u.kind in ("flux", "sd3") for u in self.control_units):
            raise RequestError(f"{model.title}: a Flux or SD3 ControlNet cannot guide an SD1.x/SDXL checkpoint")
        from modules.controlnet.units import ActiveControl
        from modules.sampling.flow_denoiser import pack

        out = []
        for index, u in enumerate(self.control_units):
            if u.kind == "structure" or not (u.used_in(plan.hires) or u.kind in ("ip_adapter", "pulid")):
                continue
            if u.kind == "reference":  # its picture's latents at this pass's size, and its own noise
                noise = torch.Generator().manual_seed((plan.seeds[0] * 1_000_003 + 7919 * (index + 1)) % 2 ** 63)
                pixels = u.tensor(plan.width, plan.height, 1, model.device, model.dtype)
                out.append(ActiveControl(u, encode(model, pixels, [noise]), hires=plan.hires,
                                         injection=self._reference, generator=noise))
                continue
            image = u.tensor(plan.width, plan.height, len(plan.seeds), model.device, model.dtype)
            if u.kind == "flux" and u.model.input_hint_block is None:  # InstantX-style: packed VAE latents
                image = pack(encode(model, image, generators))
            elif u.kind == "sd3":  # the map's latents (its own noise: the pipeline leaves the images' generators)
                noise = torch.Generator().manual_seed((plan.seeds[0] * 1_000_003 + 104_729 * (index + 1)) % 2 ** 63)
                image = encode(model, image[:1], [noise]).expand(len(plan.seeds), -1, -1, -1)
                if u.model.config.force_zeros_for_pooled_projection:  # InstantX's: latents without the VAE's shift
                    image = image + model.vae.config.scaling_factor * (model.vae.config.shift_factor or 0.0)
            out.append(ActiveControl(u, image, hires=plan.hires, enabled=u.used_in(plan.hires)))
        return out

    @property
    def image_cfg_scale(self) -> float | None:
        """InstructPix2Pix's Image CFG scale: img2img's, on such a model only (A1111 sets it to None otherwise;
        txt2img has none: plain CFG with the blank picture in both rows)."""
        return getattr(self.req, "image_cfg_scale", None) if self.model.spec.instruct_pix2pix else None

    def _edit_latents(self, plan: BatchPlan, pixels: torch.Tensor | None) -> torch.Tensor:
        """What an InstructPix2Pix model reads next to the latents: the picture's VAE latents, the distribution's
        mode, unscaled (as the model was trained, diffusers' pipeline and A1111 up to 1.5; A1111 1.6+ passes them
        sampled and scaled, which the model never saw). txt2img (and a latent hires pass): A1111's blank mid-grey
        picture."""
        model = self.model
        if pixels is None:
            pixels = torch.zeros((len(plan.seeds), 3, plan.height, plan.width))
        vae = model.vae
        with torch.inference_mode():
            latents = vae.encode(pixels.to(device=model.device, dtype=vae.dtype)).latent_dist.mode()
        return latents.to(model.dtype)

    def _structure_latents(self, plan: BatchPlan, generators) -> torch.Tensor | None:
        """A Flux.1 Depth/Canny checkpoint's control image (its unit's map) as VAE latents at this pass's size,
        each image's encoded with its own generator (FluxControlPipeline), read next to the latents every step."""
        if self.model.spec.variant != "Flux.1 Depth":
            return None
        unit = next((u for u in self.control_units if u.kind == "structure"), None)
        if unit is None:
            raise RequestError(f"{self.model.title} is a Flux.1 Depth/Canny model: it draws from a control image. "
                               "Add a ControlNet unit with its preprocessor (depth_* for Depth, canny for Canny) or "
                               "a ready map (preprocessor none) and model None")
        pixels = unit.tensor(plan.width, plan.height, len(plan.seeds), self.model.device, self.model.dtype)
        return encode(self.model, pixels, generators)

    @contextlib.contextmanager
    def image_prompts(self):
        """The IP-Adapter units' layers and the reference units' hooks on the UNet while this request runs
        (removed afterwards)."""
        from modules.controlnet import ip_adapter, pulid, reference

        with ip_adapter.attached(self.model.unet, [u.model for u in self.control_units if u.kind == "ip_adapter"]), \
                pulid.attached(self.model.unet, [u.model for u in self.control_units if u.kind == "pulid"]), \
                reference.attached(self.model, self.control_units) as injection:
            self._reference = injection
            try:
                yield
            finally:
                self._reference = None
                for handle in self._control_hooks:
                    handle.remove()
                self._control_hooks = []

    def hypernetworks_into_controls(self) -> None:
        """The active hypernetworks also act in the ControlNets' attention while this request runs (A1111's
        hijack reaches them too); taken off when it ends (image_prompts)."""
        from modules.networks import hypernetworks

        nets = [u.model for u in self.control_units if u.kind in ("controlnet", "union")]
        if nets and not self.model.is_flow:
            self._control_hooks.extend(hypernetworks.hook_into(nets, self.model))

    def _eta(self, bundle) -> float | None:
        if self.req.eta is not None:
            return self.req.eta
        if bundle.accepts_eta:
            return float(self.ctx.opt("eta_ddim", 0.0) or 0.0)
        return None

    def incomplete_pictures(self, latents: torch.Tensor) -> list[Image.Image]:
        """An interrupted batch as far as it got (A1111 shows it, saved only with "Save incomplete images"): decoded
        by the VAE, or with "Return image with chosen live preview method on interrupt" by the live preview's
        cheap approximation."""
        model = self.final_model
        if self.ctx.opt("live_preview_fast_interrupt", False) and self.ctx.opt("show_progress_type",
                                                                                "Approx NN") != "Full":
            f = model.vae_scale_factor
            return [preview.cheap_approximation(x, family=model.family).resize(
                (x.shape[-1] * f, x.shape[-2] * f), Image.Resampling.BILINEAR) for x in latents]
        return _to_pil(model, decode(model, latents.to(model.dtype)))

    def _preview(self, latents: torch.Tensor) -> Image.Image:
        """The live preview, as A1111's settings ask: "Live preview method" Full decodes with the model's VAE, the
        others use the cheap per-family approximation (the Approx NN and TAESD weights are not bundled); "Show
        previews of all images generated in a batch as a grid" shows every picture of the batch."""
        picked = latents if self.ctx.opt("show_progress_grid", True) else latents[:1]
        if self.ctx.opt("show_progress_type", "Approx NN") == "Full":
            pictures = _to_pil(self.model, decode(self.model, picked))
        else:
            pictures = [preview.cheap_approximation(x, family=self.model.family) for x in picked]
        return pictures[0] if len(pictures) == 1 else images_mod.image_grid(pictures, batch_size=len(pictures))

    def _on_step(self, info: StepInfo) -> None:
        state = self.ctx.state
        state.sampling_step = info.step
        state.current_latent = info.latents
        every = int(self.ctx.opt("show_progress_every_n_steps", 10) or 0)
        if self.ctx.opt("live_previews_enable", True) and every > 0 and info.step % every == 0:
            state.current_image = self._preview(info.latents)
            state.current_image_step = info.step
        if state.interrupted:
            raise Interrupted(info.denoised if info.denoised is not None else info.latents)
        if state.skipped:
            raise Skipped()


# ---------------------------------------------------------------------------------------------------------------
# Infotext


def infotext_params(gen: Generation, index: int, all_seeds, all_subseeds, width: int, height: int,
                    extra: dict[str, Any], denoising: float | None = None) -> dict[str, Any]:
    req, model = gen.req, gen.model
    params: dict[str, Any] = {
        "Steps": req.steps,
        "Sampler": gen.sampler.name,
        "Schedule type": gen.schedule.label,
        "CFG scale": req.cfg_scale,
        "Image CFG scale": gen.image_cfg_scale,
        "Seed": all_seeds[index],
        "Size": f"{width}x{height}",
    }
    opt = gen.ctx.opt  # A1111's "Add … to generation information" settings (None: the key is left out)
    params["Model hash"] = model.shorthash if opt("add_model_hash_to_info", True) else None
    params["Model"] = (Path(model.name).stem if not model.filename.is_dir() else model.name) \
        if opt("add_model_name_to_info", True) else None
    params["VAE hash"] = model.vae_hash if opt("add_vae_hash_to_info", True) else None
    params["VAE"] = model.vae_name if opt("add_vae_name_to_info", True) else None
    if req.subseed_strength > 0:
        params["Variation seed"] = all_subseeds[index]
        params["Variation seed strength"] = req.subseed_strength
    if req.seed_resize_from_w > 0 and req.seed_resize_from_h > 0:
        params["Seed resize from"] = f"{req.seed_resize_from_w}x{req.seed_resize_from_h}"
    params["Denoising strength"] = denoising
    if model.is_flow:
        if model.family == "flux" and model.unet.config.guidance_embeds:
            params["Distilled CFG Scale"] = req.distilled_cfg_scale
        if gen.flow_shift:
            params["Shift"] = gen.flow_shift
        if model.family == "sd3" and not gen.text_options.use_t5:
            params["T5"] = False
    if gen.clip_skip > 1:
        params["Clip skip"] = gen.clip_skip
    if gen.ensd:
        params["ENSD"] = gen.ensd
    if gen.randn_source != "GPU":
        params["RNG"] = gen.randn_source
    params.update(extra)
    if gen.used_embeddings and gen.ctx.opt("textual_inversion_add_hashes_to_infotext", True):
        from modules.networks.embeddings import ti_hashes

        params["TI hashes"] = ti_hashes(gen.used_embeddings)
    params.update(gen.prompt_params)
    params["Version"] = VERSION if opt("add_version_to_infotext", True) else None
    return params


# ---------------------------------------------------------------------------------------------------------------
# Request → result


def _seeds(req: GenerationRequest) -> tuple[int, int, list[int], list[int]]:
    seed = rng.resolve_seed(req.seed)
    subseed = rng.resolve_seed(req.subseed)
    all_seeds, all_subseeds = rng.batch_seeds(seed, subseed, req.subseed_strength, req.batch_size * req.n_iter)
    return seed, subseed, all_seeds, all_subseeds


def _run(ctx: ProcessingContext, gen: Generation, batch_fn, width: int, height: int, extra: dict[str, Any],
         denoising: float | None, finish: "Img2ImgFinish | None" = None) -> GenerationResult:
    loaded = (lambda: [gen.model, *ctx.models.loaded]) if ctx.models is not None else (lambda: [gen.model])
    with gen.image_prompts(), token_merging.removed_after(loaded):
        return _run_batches(ctx, gen, batch_fn, width, height, extra, denoising, finish)


def _run_batches(ctx: ProcessingContext, gen: Generation, batch_fn, width: int, height: int, extra: dict[str, Any],
                 denoising: float | None, finish: "Img2ImgFinish | None") -> GenerationResult:
    """The batch loop shared by txt2img and img2img: n_iter batches, progress, saving, interrupt/skip, grid."""
    req, model, state, hooks = gen.req, gen.model, ctx.state, ctx.hooks
    started = time.time()
    seed, subseed, all_seeds, all_subseeds = _seeds(req)
    total = req.batch_size * req.n_iter
    run = RunState([req.prompt] * total, [req.negative_prompt] * total, all_seeds, all_subseeds, req.batch_size,
                   req.n_iter, dict(extra))
    hooks.process(run)
    if gen.strip_comments:  # A1111's Comments script, in the same phase (scripts' `process`)
        run.all_prompts = [prompt_comments.strip_comments(p) for p in run.all_prompts]
        run.all_negative_prompts = [prompt_comments.strip_comments(p) for p in run.all_negative_prompts]
    gen.run = run
    all_prompts, all_negatives = run.all_prompts, run.all_negative_prompts
    saves = ctx.outputs is not None and not req.do_not_save_samples and ctx.opt("samples_save", True)
    fmt = ctx.opt("samples_format", "png")
    networks = extra_networks.activate(ctx, model, all_prompts)  # tags stripped; LoRAs patched in (or removed)
    gen.networks = networks  # a refiner / hires checkpoint taking over gets them too
    gen.hypernetworks_into_controls()
    run.extra.update(networks.infotext)
    run.extra.update(gen.controls.infotext)
    networks.warnings.extend(gen.controls.warnings)
    faces = face_restoration.for_request(ctx, req)  # restore_faces: its files checked before sampling
    if faces is not None:
        run.extra.update(faces.infotext)
    if model.is_flow and not gen.uses_negative and any(n.strip() for n in all_negatives):
        networks.warnings.append(f"CFG scale {req.cfg_scale:g}: the negative prompt is not used ({model.spec.label} "
                                 "runs without real guidance at CFG scale 1; raise it above 1 to use the negative "
                                 "prompt)")

    result = GenerationResult(
        images=[], infotexts=[], all_prompts=all_prompts, all_negative_prompts=all_negatives,
        all_seeds=run.all_seeds, all_subseeds=run.all_subseeds, seed=run.all_seeds[0] if run.all_seeds else seed,
        subseed=run.all_subseeds[0] if run.all_subseeds else subseed, subseed_strength=req.subseed_strength,
        width=width, height=height, sampler_name=gen.sampler.name, scheduler=gen.schedule.label,
        cfg_scale=req.cfg_scale, steps=req.steps, batch_size=run.batch_size, n_iter=run.n_iter,
        denoising_strength=denoising, sd_model_name=Path(model.name).stem, sd_model_hash=model.shorthash,
        sd_vae_name=model.vae_name, sd_vae_hash=model.vae_hash, clip_skip=gen.clip_skip, prompt=req.prompt,
        negative_prompt=req.negative_prompt, extra_generation_params=run.extra, warnings=list(networks.warnings),
    )
    state.job_count = max(state.job_count, state.job_no + run.n_iter)  # a script may have set the whole total
    for n in range(run.n_iter):
        if state.interrupted or state.stopping:  # stopping: asked to stop once the last batch finished
            result.interrupted = True
            break
        lo, hi = n * run.batch_size, (n + 1) * run.batch_size
        run.iteration = n
        run.prompts, run.negative_prompts = list(networks.prompts[lo:hi]), list(all_negatives[lo:hi])
        run.seeds, run.subseeds = list(run.all_seeds[lo:hi]), list(run.all_subseeds[lo:hi])
        hooks.before_batch(run)
        if not run.prompts:
            break
        hooks.process_batch(run)
        incomplete = False
        try:
            pictures = batch_fn(n, run.seeds, run.subseeds, run.prompts, run.negative_prompts)
        except Skipped:
            result.skipped_batches += 1
            state.next_job()
            continue
        except Interrupted as e:
            result.interrupted = True
            if e.latents is None:
                break
            pictures, incomplete = gen.incomplete_pictures(e.latents), True
        run.extra.update(gen.skipped_uncond)
        pictures = hooks.after_batch(run, pictures)
        save = saves and (not incomplete or ctx.opt("save_incomplete_images", False))  # A1111's rule
        for i, image in enumerate(pictures):
            index = lo + i

            def text_now() -> str:
                return infotext_mod.create_infotext(all_prompts[index], all_negatives[index], infotext_params(
                    gen, index, run.all_seeds, run.all_subseeds, width, height, run.extra, denoising))

            if faces is not None:  # A1111: after decoding, before postprocess_image and saving
                if save and ctx.opt("save_images_before_face_restoration", False):
                    _save_sample(gen, index, image, text_now(), "-before-face-restoration", denoising)
                image = faces(image)
            image = hooks.image(run, i, image)
            denoised = mask = None
            if finish is not None:
                mask, original = hooks.mask_overlay(run, i, *finish.mask_and_overlay(index))
                if finish.corrections:
                    if save and ctx.opt("save_images_before_color_correction", False):
                        _save_sample(gen, index, finish.composite(image, mask, original)[0], text_now(),
                                     "-before-color-correction", denoising)
                    image = finish.correct(index, image)
                image, denoised = finish.composite(image, mask, original)
            image = hooks.after_composite(run, i, image)
            text = text_now()
            result.images.append(image)
            result.infotexts.append(text)
            if save:
                path = hooks.save_image(images_mod.save_sample, image,
                                        text if ctx.opt("enable_pnginfo", True) else None,
                                        directory=ctx.outputs.samples, seed=run.all_seeds[index], fmt=fmt,
                                        options=ctx.outputs.save,
                                        fields=name_fields(gen, index, image, denoising))
                if ctx.opt("save_txt", False):  # A1111: the parameters in a text file of the picture's name
                    images_mod.save_parameters_file(path, text)
                result.saved_paths.append(path)
                result.saved_infotexts.append(text)
            if mask is not None:
                _mask_outputs(gen, result, index, mask, denoised, text, save, denoising)
        state.next_job()
        if incomplete:
            break

    _grid(ctx, req, result)
    _detected_maps(ctx, gen, result)
    result.elapsed = time.time() - started
    return result


def name_fields(gen: Generation, index: int, image: Image.Image | None, denoising: float | None = None):
    """What picture `index` of the job can be named by (the settings' file and folder name patterns)."""
    run, req, model = gen.run, gen.req, gen.model
    return images_mod.NameFields(
        seed=run.all_seeds[index], prompt=run.all_prompts[index], negative_prompt=run.all_negative_prompts[index],
        styles=list(req.styles or []), style_prompts=list(gen.ctx.outputs.save.style_prompts)
        if gen.ctx.outputs is not None and gen.ctx.outputs.save is not None else [],
        steps=req.steps, cfg_scale=req.cfg_scale, width=req.width, height=req.height, sampler=gen.sampler.name,
        scheduler=gen.schedule.label, model_name=Path(model.name).stem, model_hash=model.shorthash or "",
        vae_name=model.vae_name, clip_skip=gen.clip_skip, denoising_strength=denoising, all_seeds=run.all_seeds,
        batch_size=run.batch_size, n_iter=run.n_iter, batch_index=index % run.batch_size,
        iteration=index // run.batch_size, job_timestamp=gen.ctx.state.job_timestamp, image=image)


def result_name_fields(result: GenerationResult, index: int, image: Image.Image | None):
    """What picture `index` of a finished job can be named by: its grid (index 0), or the pictures a cluster worker
    made, saved again here."""
    batch = max(result.batch_size, 1)
    return images_mod.NameFields(
        seed=result.all_seeds[index] if index < len(result.all_seeds) else result.seed,
        prompt=result.all_prompts[index] if index < len(result.all_prompts) else result.prompt,
        negative_prompt=result.negative_prompt, steps=result.steps, cfg_scale=result.cfg_scale, width=result.width,
        height=result.height, sampler=result.sampler_name, scheduler=result.scheduler or "",
        model_name=result.sd_model_name or "", model_hash=result.sd_model_hash or "", all_seeds=list(result.all_seeds),
        batch_size=batch, n_iter=result.n_iter, batch_index=index % batch, iteration=index // batch, image=image)


def _save_sample(gen: Generation, index: int, image: Image.Image, text: str, suffix: str,
                 denoising: float | None) -> Path:
    """One of picture `index`'s extra files (before face restoration, the mask, …): named as the picture is, with
    A1111's suffix."""
    ctx = gen.ctx
    return images_mod.save_sample(image, ctx.outputs.samples, gen.run.all_seeds[index], text,
                                  ctx.opt("samples_format", "png"), suffix, options=ctx.outputs.save,
                                  fields=name_fields(gen, index, image, denoising))


def _mask_outputs(gen: Generation, result: GenerationResult, index: int, mask: Image.Image, denoised: Image.Image,
                  text: str, save: bool, denoising: float | None) -> None:
    """Inpainting's mask and masked composite, as A1111: saved beside the picture (save_mask, save_mask_composite,
    when the job saves) and shown after it (return_mask, return_mask_composite)."""
    ctx = gen.ctx
    wanted = {"mask": ("save_mask", "return_mask"), "mask-composite": ("save_mask_composite", "return_mask_composite")}
    for suffix, (save_key, return_key) in wanted.items():
        to_save, to_return = save and ctx.opt(save_key, False), ctx.opt(return_key, False)
        if not (to_save or to_return):
            continue
        picture = mask.convert("RGB") if suffix == "mask" else mask_composite(denoised, mask)
        if to_save:
            _save_sample(gen, index, picture, text, f"-{suffix}", denoising)
        if to_return:
            result.images.append(picture)
            result.infotexts.append(text)


def _detected_maps(ctx: ProcessingContext, gen: Generation, result: GenerationResult) -> None:
    """The ControlNet units' detected maps follow the pictures (the extension's behaviour; its option
    "control_net_no_detectmap" turns that off); each carries the generation's infotext."""
    maps = gen.controls.detected_maps
    if not maps or not result.images:
        return
    if ctx.outputs is not None and ctx.outputs.detected_maps is not None:
        for (module, image) in zip(gen.controls.map_modules, maps):
            images_mod.save_sample(image, ctx.outputs.detected_maps / module, result.seed, None)
    if ctx.opt("control_net_no_detectmap", False):
        return
    result.images.extend(maps)
    result.infotexts.extend([result.infotexts[-1]] * len(maps))


def _grid(ctx: ProcessingContext, req: GenerationRequest, result: GenerationResult) -> None:
    """A1111 makes a grid for a multi-image job (for any job where `grid_only_if_multiple` is off); returned first
    (index_of_first_image = 1) and saved."""
    if not result.images or (len(result.images) < 2 and ctx.opt("grid_only_if_multiple", True)):
        return
    if req.do_not_save_grid:  # A1111: neither saved nor returned (the API sets it unless save_images)
        return
    want_return = ctx.opt("return_grid", True)
    want_save = ctx.outputs is not None and ctx.opt("grid_save", True)
    if not (want_return or want_save):
        return
    grid = images_mod.image_grid(result.images, batch_size=req.batch_size, n_rows=int(ctx.opt("n_rows", -1)),
                                 prevent_empty_spots=bool(ctx.opt("grid_prevent_empty_spots", False)))
    text = result.infotexts[0]
    if want_save:
        result.grid_path = images_mod.save_grid(grid, ctx.outputs.grids, text if ctx.opt("enable_pnginfo", True)
                                                else None, ctx.opt("grid_format", "png"),
                                                options=ctx.outputs.grid_save,
                                                fields=result_name_fields(result, 0, grid))
    if want_return:
        result.images.insert(0, grid)
        result.infotexts.insert(0, text)
        result.index_of_first_image = 1


def _to_pil(model: LoadedModel, pixels: torch.Tensor) -> list[Image.Image]:
    return image_processor(model).postprocess(pixels, output_type="pil")


def txt2img(ctx: ProcessingContext, req: Txt2ImgRequest) -> GenerationResult:
    model = ctx.model
    gen = Generation(ctx, req)
    gen.prepare_controls()
    m = model.size_multiple
    width, height = _round8(req.width, m), _round8(req.height, m)
    extra: dict[str, Any] = {}
    hires = HiresPlan.from_request(req, width, height, m, ctx.upscalers) if req.enable_hr else None
    if hires is not None:
        if gen.hr_checkpoint_info is not None:  # A1111 records it whenever one is named, first of the hires keys
            extra["Hires checkpoint"] = gen.hr_checkpoint_info.short_title
        extra.update(hires.infotext())

    def batch(n, seeds, subseeds, prompts, negatives):
        plan = BatchPlan(seeds, subseeds, width, height, req.steps, req.steps)
        latents = gen.sample_batch(plan, prompts, negatives)
        if hires is not None:
            return hires.run(gen, latents, seeds, subseeds, prompts, negatives)
        return _to_pil(model, decode(gen.final_model, latents))

    return _run(ctx, gen, batch, width, height, extra, hires.denoising if hires else None)


@dataclass
class HiresPlan:
    target_w: int
    target_h: int
    upscaler: str
    steps: int
    denoising: float
    scale: float
    resize_x: int
    resize_y: int
    crop: tuple[int, int] | None = None

    @classmethod
    def from_request(cls, req: Txt2ImgRequest, width: int, height: int, f: int, upscalers=None) -> "HiresPlan":
        """`upscalers` (a modules.upscaling.UpscalerRegistry) adds the model upscalers to the valid names."""
        upscaler = req.hr_upscaler or "Latent"
        pixel = upscalers.names() if upscalers is not None else list(PIXEL_UPSCALERS)
        if upscaler not in LATENT_UPSCALE_MODES and upscaler not in pixel:
            valid = ", ".join([*LATENT_UPSCALE_MODES, *pixel])
            raise RequestError(f"hr_upscaler {upscaler!r} is not available; valid: {valid}")
        rx, ry = req.hr_resize_x, req.hr_resize_y
        crop = None
        if rx == 0 and ry == 0:
            tw, th = int(width * req.hr_scale), int(height * req.hr_scale)
        elif ry == 0:
            tw, th = rx, rx * height // width
        elif rx == 0:
            tw, th = ry * width // height, ry
        else:
            tw, th = rx, ry
            src_ratio, dst_ratio = width / height, rx / ry
            if src_ratio < dst_ratio:
                cover = (rx, rx * height // width)
            else:
                cover = (ry * width // height, ry)
            crop = cover
        steps = req.hr_second_pass_steps or req.steps
        denoising = req.denoising_strength if req.denoising_strength is not None else 0.7
        return cls(_round8(tw, f), _round8(th, f), upscaler, steps, denoising, req.hr_scale, rx, ry, crop)

    def infotext(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.resize_x or self.resize_y:
            out["Hires resize"] = f"{self.target_w}x{self.target_h}"
        else:
            out["Hires upscale"] = self.scale
        out["Hires steps"] = self.steps
        out["Hires upscaler"] = self.upscaler
        return out

    def _resize_latents(self, latents: torch.Tensor, f: int) -> torch.Tensor:
        mode, antialias = LATENT_UPSCALE_MODES[self.upscaler]
        if self.crop is None:
            return torch.nn.functional.interpolate(latents.float(), size=(self.target_h // f, self.target_w // f),
                                                   mode=mode, antialias=antialias).to(latents.dtype)
        cw, ch = self.crop
        big = torch.nn.functional.interpolate(latents.float(), size=(ch // f, cw // f), mode=mode,
                                              antialias=antialias).to(latents.dtype)
        top, left = (ch // f - self.target_h // f) // 2, (cw // f - self.target_w // f) // 2
        return big[:, :, top:top + self.target_h // f, left:left + self.target_w // f]

    def _resize_pixels(self, image: Image.Image, ctx: ProcessingContext) -> Image.Image:
        """Built-in resamplers here; model upscalers through the registry (native scale, then Lanczos, tiled by the
        job's ESRGAN_tile options)."""
        size = self.crop or (self.target_w, self.target_h)
        if self.upscaler in PIXEL_UPSCALERS or ctx.upscalers is None:
            big = image.resize(size, PIXEL_UPSCALERS.get(self.upscaler) or Image.Resampling.LANCZOS)
        else:
            big = ctx.upscalers.upscale_to(image, self.upscaler, *size, tile=ctx.opt("ESRGAN_tile"),
                                           overlap=ctx.opt("ESRGAN_tile_overlap"))
        if self.crop is None:
            return big
        left, top = (self.crop[0] - self.target_w) // 2, (self.crop[1] - self.target_h) // 2
        return big.crop((left, top, left + self.target_w, top + self.target_h))

    def run(self, gen: Generation, latents, seeds, subseeds, prompts, negatives) -> list[Image.Image]:
        """Upscale the first pass and run it again as img2img with the same seeds (A1111's hires fix)."""
        model, req = gen.model, gen.req
        f = model.vae_scale_factor
        total, run = img2img_steps(self.steps, self.denoising, fix_steps=True)
        plan = BatchPlan(seeds, subseeds, self.target_w, self.target_h, total, run, hires=True)
        hr_prompts = [req.hr_prompt] * len(prompts) if req.hr_prompt else prompts
        hr_negatives = [req.hr_negative_prompt] * len(negatives) if req.hr_negative_prompt else negatives
        if gen.strip_comments:
            hr_prompts = [prompt_comments.strip_comments(p) for p in hr_prompts]
            hr_negatives = [prompt_comments.strip_comments(p) for p in hr_negatives]
        sampler, schedule = gen.sampler, gen.schedule
        if req.hr_sampler_name or req.hr_scheduler:
            sampler, schedule = gen.resolve_sampler(req.hr_sampler_name or gen.sampler.name,
                                                    req.hr_scheduler or gen.schedule.label)
        latent = self.upscaler in LATENT_UPSCALE_MODES
        first = None if latent else _to_pil(model, decode(gen.final_model, latents))  # before any swap (A1111)
        ctx = gen.ctx
        if ctx.outputs is not None and not req.do_not_save_samples and ctx.opt("samples_save", True) \
                and ctx.opt("save_images_before_highres_fix", False):
            self._save_first_pass(gen, first or _to_pil(model, decode(gen.final_model, latents)))
        hr_model = gen.hires_model()
        gen.ctx.state.textinfo = "Hires pass"
        gen.hooks.before_hires(gen.run)
        if latent:
            plan.init_latents = self._resize_latents(latents, f).to(device=hr_model.device, dtype=hr_model.dtype)
            out = gen.sample_batch(plan, hr_prompts, hr_negatives, sampler, schedule, model=hr_model)
        else:
            pixels = image_processor(hr_model).preprocess([self._resize_pixels(im, gen.ctx) for im in first])
            out = gen.sample_batch(plan, hr_prompts, hr_negatives, sampler, schedule, encode_pixels=pixels,
                                   model=hr_model)
        return _to_pil(model, decode(gen.final_model, out))

    def _save_first_pass(self, gen: Generation, pictures: list[Image.Image]) -> None:
        """A1111's "Save a copy of image before applying highres fix": NNNNN-SEED-before-highres-fix, with the
        picture's own infotext."""
        run = gen.run
        for i, image in enumerate(pictures):
            index = run.iteration * run.batch_size + i
            params = infotext_params(gen, index, run.all_seeds, run.all_subseeds, self.target_w, self.target_h,
                                     run.extra, self.denoising)
            text = infotext_mod.create_infotext(run.all_prompts[index], run.all_negative_prompts[index], params)
            _save_sample(gen, index, image, text, "-before-highres-fix", self.denoising)


# ---------------------------------------------------------------------------------------------------------------
# img2img and inpaint


def _flatten(image: Image.Image, background: str) -> Image.Image:
    """Transparent init images are put on the img2img background colour (A1111's images.flatten)."""
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        bg = Image.new("RGBA", image.size, background)
        bg.alpha_composite(image)
        return bg.convert("RGB")
    return image.convert("RGB")


@dataclass
class InpaintSetup:
    mask_for_overlay: Image.Image
    overlay_source: list[Image.Image]
    processing_mask: Image.Image
    paste_to: tuple[int, int, int, int] | None


def img2img(ctx: ProcessingContext, req: Img2ImgRequest) -> GenerationResult:
    model = ctx.model
    gen = Generation(ctx, req)
    m = model.size_multiple
    width, height = _round8(req.width, m), _round8(req.height, m)
    background = ctx.opt("img2img_background_color", "#ffffff")
    extra: dict[str, Any] = {}
    if ctx.outputs is not None and ctx.outputs.init_images is not None and ctx.opt("save_init_img", False):
        for im in req.init_images:  # as A1111: each as given (before flattening), named by its hash
            _, extra["Init image hash"] = images_mod.save_init_image(im, ctx.outputs.init_images,
                                                                     ctx.opt("samples_format", "png"))
    inits = [_flatten(im, background) for im in req.init_images]
    upscale = _img2img_upscaler(ctx)
    setup = None
    if req.mask is not None:
        setup = _inpaint_setup(req, inits, width, height, upscale)
        extra.update({"Mask blur": req.mask_blur_x})
        if setup.paste_to is not None:
            extra["Inpaint area"] = "Only masked"
            extra["Masked area padding"] = req.inpaint_full_res_padding
        extra["Masked content"] = MASKED_CONTENT[req.inpainting_fill]
        if req.inpainting_mask_invert:
            extra["Mask mode"] = "Inpaint not masked"
    gen.prepare_controls(setup.paste_to if setup is not None else None)
    if req.resize_mode == LATENT_RESIZE and setup is None:
        fitted = [im.resize((_round8(im.width, m), _round8(im.height, m)), Image.Resampling.LANCZOS) for im in inits]
    elif setup is not None and setup.paste_to is None:
        fitted = list(setup.overlay_source)  # the whole picture at the generation's size, resized once
    else:
        fitted = [_fit_init(im, req, setup, width, height, upscale) for im in inits]
    prepared = fitted
    if setup is not None and req.inpainting_fill == 0:
        prepared = [masking.fill(im, setup.processing_mask) for im in fitted]
    corrections = None
    if ctx.opt("img2img_color_correction", False):  # towards the init as sampling starts from it, before any fill
        corrections = [color_correction.target(im) for im in fitted]
    finish = Img2ImgFinish(setup, corrections, bool(ctx.opt("overlay_inpaint", True)))
    total, run = img2img_steps(req.steps, req.denoising_strength, bool(ctx.opt("img2img_fix_steps", False)))
    processor = image_processor(model)

    def batch(n, seeds, subseeds, prompts, negatives):
        k = len(seeds)
        picked = [prepared[(n * k + i) % len(prepared)] for i in range(k)]
        pixels = processor.preprocess(picked)
        plan = BatchPlan(seeds, subseeds, width, height, total, run, always_add_noise=setup is None)
        if req.resize_mode == LATENT_RESIZE and setup is None:
            plan.init_latents = _latent_resize_init(gen, pixels, seeds, subseeds, width, height)
            latents = gen.sample_batch(plan, prompts, negatives)
        else:
            if setup is not None:
                plan.inpaint = _inpaint_tensors(gen, req, setup, pixels, seeds, width, height)
            latents = gen.sample_batch(plan, prompts, negatives, encode_pixels=pixels)
        return _to_pil(model, decode(gen.final_model, latents))

    return _run(ctx, gen, batch, width, height, extra, req.denoising_strength, finish)


def _noise_scale(scheduler, t) -> float:
    """How much of the noise one unit of A1111's "Extra noise multiplier" adds at timestep `t`: a unit of the
    sigma scale for k-diffusion-style schedulers, sqrt(ᾱ_t) for the timestep ones (as A1111's DDIM/PLMS)."""
    if getattr(scheduler, "sigmas", None) is not None and float(getattr(scheduler, "init_noise_sigma", 1.0)) > 1.0:
        return 1.0
    alphas = getattr(scheduler, "alphas_cumprod", None)
    return float(alphas[int(t)].sqrt()) if alphas is not None else 1.0


def _latent_resize_init(gen: Generation, pixels, seeds, subseeds, width, height) -> torch.Tensor:
    """Resize mode 3: encode at the image's own size, then resize the latents (bilinear, as A1111)."""
    model = gen.model
    f = model.vae_scale_factor
    image_rng = gen.make_rng(BatchPlan(seeds, subseeds, pixels.shape[-1], pixels.shape[-2], 1, 1),
                             (model.vae.config.latent_channels, pixels.shape[-2] // f, pixels.shape[-1] // f))
    latents = encode(model, pixels, image_rng.generators)
    return torch.nn.functional.interpolate(latents.float(), size=(height // f, width // f), mode="bilinear").to(
        model.dtype)


def _img2img_upscaler(ctx: ProcessingContext):
    """A1111's "Upscaler for img2img": init pictures smaller than the generation grow through that upscaler
    instead of Lanczos (None when unset or "None")."""
    name = ctx.opt("upscaler_for_img2img", None)
    if not name or name == "None" or ctx.upscale is None:
        return None
    if ctx.upscalers is not None and name not in ctx.upscalers:  # said before sampling, as a bad request
        raise RequestError(f"upscaler_for_img2img: upscaler {name!r} not found; available: "
                           f"{', '.join(ctx.upscalers.names())}")
    return lambda image, w, h: ctx.upscale(image, name, w, h)


def _inpaint_setup(req: Img2ImgRequest, inits: list[Image.Image], width: int, height: int,
                   upscale=None) -> InpaintSetup:
    size = inits[0].size
    mask = masking.prepare_mask(req.mask, size, bool(req.inpainting_mask_invert), req.mask_blur_x, req.mask_blur_y)
    if req.inpaint_full_res:
        region = masking.crop_region(mask, req.inpaint_full_res_padding)
        if region is not None:
            region = masking.expand_crop_region(region, width, height, mask.width, mask.height)
            x1, y1, x2, y2 = region
            processing_mask = resize_image(2, mask.crop(region), width, height)
            return InpaintSetup(mask, inits, processing_mask, (x1, y1, x2 - x1, y2 - y1))
        log.warning("Only masked: the mask is blank, inpainting the whole picture")
    resized = resize_image(req.resize_mode, mask, width, height)
    overlay_mask = Image.fromarray(np.clip(np.asarray(resized, dtype=np.float32) * 2, 0, 255).astype(np.uint8))
    sources = [resize_image(req.resize_mode, im, width, height, upscale) for im in inits]
    return InpaintSetup(overlay_mask, sources, resized, None)


def _fit_init(image: Image.Image, req: Img2ImgRequest, setup: InpaintSetup | None, width: int,
              height: int, upscale=None) -> Image.Image:
    """An init picture at the generation's size: resized by the resize mode, or its masked region for "Only
    masked"."""
    if setup is not None and setup.paste_to is not None:
        x, y, w, h = setup.paste_to
        return resize_image(2, image.crop((x, y, x + w, y + h)), width, height, upscale)
    return resize_image(req.resize_mode, image, width, height, upscale)


def _inpaint_tensors(gen: Generation, req: Img2ImgRequest, setup: InpaintSetup, pixels: torch.Tensor,
                     seeds: list[int], width: int, height: int) -> dict:
    """Latent mask and masked image as diffusers' inpaint pipeline builds them; masked content 2/3 as A1111."""
    model = gen.model
    f = model.vae_scale_factor
    mask_condition = mask_processor(model).preprocess(setup.processing_mask, height=height, width=width)
    mask_condition = mask_condition.repeat(pixels.shape[0], 1, 1, 1)
    masked_pixels = pixels * (mask_condition < 0.5)
    weight = float(gen.ctx.opt("inpainting_mask_weight", 1.0))
    if weight != 1.0 and (model.spec.inpainting or is_flux_fill(model)):  # A1111's "Inpainting conditioning mask
        masked_pixels = torch.lerp(pixels, masked_pixels, weight)  # strength": 0 shows the model the whole picture
        gen.run.extra["Conditional mask weight"] = weight
    if req.mask_round:
        latent_source = mask_condition
    else:  # A1111's mask_round off: the blurred mask's soft edge blends the latents
        latent_source = mask_processor(model, binarize=False).preprocess(setup.processing_mask, height=height,
                                                                        width=width).repeat(pixels.shape[0], 1, 1, 1)
    latent_mask = torch.nn.functional.interpolate(latent_source, size=(height // f, width // f))

    post = None
    if req.inpainting_fill in (2, 3):
        def post(latents: torch.Tensor) -> torch.Tensor:
            m = latent_mask.to(device=latents.device, dtype=latents.dtype)
            if req.inpainting_fill == 3:
                return latents * (1 - m)
            fresh = rng.ImageRNG(latents.shape[1:], seeds, source=gen.randn_source, device=model.device,
                                 latent_factor=f).first().to(latents.dtype)
            return latents * (1 - m) + fresh * m
    return {"latent_mask": latent_mask, "masked_pixels": masked_pixels, "post_encode": post,
            "pixel_mask": (mask_condition >= 0.5).to(pixels.dtype)}


@dataclass
class Img2ImgFinish:
    """What img2img does to each picture after face restoration and the scripts' postprocess_image, in A1111's
    order: colour correction (`corrections`: one target per init picture), then the inpainting overlay."""

    setup: InpaintSetup | None
    corrections: list[np.ndarray] | None = None
    overlay: bool = True  # setting overlay_inpaint: the untouched original composited over the result

    def mask_and_overlay(self, index: int) -> tuple[Image.Image | None, Image.Image | None]:
        """(mask_for_overlay, the original under it) of picture `index`, as scripts' postprocess_maskoverlay get
        them."""
        if self.setup is None:
            return None, None
        original = self.setup.overlay_source[index % len(self.setup.overlay_source)] if self.overlay else None
        return self.setup.mask_for_overlay, original

    def correct(self, index: int, image: Image.Image) -> Image.Image:
        return color_correction.apply(self.corrections[index % len(self.corrections)], image)

    def composite(self, image: Image.Image, mask: Image.Image | None,
                  original: Image.Image | None) -> tuple[Image.Image, Image.Image]:
        """(the picture with the original over what was not to change, the picture before that) — A1111's
        apply_overlay: an "Only masked" result is pasted back into the whole picture first; with no original
        (overlay_inpaint off) the result is given as sampled."""
        if original is None or mask is None or self.setup is None:
            return image, image
        if self.setup.paste_to is not None:
            x, y, w, h = self.setup.paste_to
            base = original.convert("RGB").copy()
            base.paste(resize_image(1, image, w, h), (x, y))
            image = base
        return masking.composite(original, image, mask), image


def mask_composite(denoised: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's "masked composite": the generated picture where the mask is, transparent elsewhere."""
    alpha = resize_image(2, mask, denoised.width, denoised.height).convert("L")
    out = denoised.convert("RGBA")
    out.putalpha(alpha)
    return out


def run_request(ctx: ProcessingContext, req: GenerationRequest) -> GenerationResult:
    if isinstance(req, Img2ImgRequest):
        return img2img(ctx, req)
    if isinstance(req, Txt2ImgRequest):
        return txt2img(ctx, req)
    raise RequestError(f"unknown request type {type(req).__name__}")


__all__ = ["GenerationResult", "ProcessingContext", "OutputDirs", "txt2img", "img2img", "run_request",
           "RequestError", "Txt2ImgRequest", "Img2ImgRequest"]


_COMPAT_NAMES = ("StableDiffusionProcessing", "StableDiffusionProcessingTxt2Img", "StableDiffusionProcessingImg2Img",
                 "Processed", "process_images", "fix_seed", "get_fixed_seed", "create_infotext")


def __getattr__(name: str):
    """A1111's names (`process_images`, `Processed`, `p` classes) for extensions, from modules/processing_compat."""
    if name in _COMPAT_NAMES:
        from modules import processing_compat

        return getattr(processing_compat, name)
    from modules import a1111

    return a1111.names_from(__name__)(name)

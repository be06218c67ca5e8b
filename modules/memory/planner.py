"""The memory plan: which weights stay on the GPU for a job, decided from numbers alone (free device memory, the
parts' sizes, the job's activation estimate), so it is unit-tested on tables and explained to the user.

Modes, cheapest first in time, dearest in memory:
- ``resident``: every part on the device (peak = all weights + the largest part's activations);
- ``model``: one part at a time (text encoders, denoiser, VAE moved in and out around their use; peak = the
  largest part + its activations) — A1111's ``--medvram``;
- ``sequential``: the denoiser and the others streamed block by block (peak = the largest block + activations) —
  A1111's ``--lowvram``.
The VAE is tiled when even its own decode would not fit.
"""
from __future__ import annotations

from dataclasses import dataclass, field

MODES = ("resident", "model", "sequential")
MODE_NAMES = {"resident": "everything on the GPU", "model": "model offload (one part at a time)",
              "sequential": "sequential offload (block by block)"}
MARGIN = 0.10  # kept free for the allocator's fragmentation and the odd temporary
GIB = 1 << 30

# Activations per latent pixel and row, in units of the denoiser's first width × element size: calibrated so that
# SD1.5 at 512² (CFG, fp16, SDPA) plans ~0.5 GiB and SDXL at 1024² ~2 GiB, above what they measure.
DENOISER_ACTIVATION_FACTOR = 100
VAE_ACTIVATION_FACTOR = 10  # decoder at full resolution: 128 channels × ~10 live tensors
VAE_TILE = 512  # pixels per tile side when tiled (the decoder's activations then scale with the tile, not the image)


@dataclass(frozen=True)
class PartSize:
    """One part of a model (``unet``/``transformer``, ``text_encoder``…, ``vae``): its weights and its largest
    block (what sequential offload holds at once)."""

    name: str
    weight_bytes: int
    largest_block_bytes: int


@dataclass(frozen=True)
class JobSize:
    """What the job asks for, as far as memory goes."""

    width: int
    height: int
    batch: int = 1
    cfg: bool = True
    element_bytes: int = 2  # fp16/bf16 activations; 4 for fp32

    @property
    def rows(self) -> int:
        return self.batch * (2 if self.cfg else 1)


@dataclass(frozen=True)
class MemoryPlan:
    mode: str
    predicted_peak: int
    free: int | None  # bytes the device had free for us; None where memory is not the GPU's (CPU, MPS)
    vae_tiled: bool = False
    reason: str = ""
    peaks: dict = field(default_factory=dict)  # the predicted peak of each mode considered

    def describe(self) -> str:
        text = MODE_NAMES[self.mode]
        if self.free is not None:
            text += f", predicted peak {self.predicted_peak / GIB:.1f} GiB of {self.free / GIB:.1f} GiB free"
        if self.vae_tiled:
            text += ", VAE tiled"
        return text + (f" ({self.reason})" if self.reason else "")


def denoiser_activation(job: JobSize, first_width: int, latent_scale: int = 8) -> int:
    """Bytes a UNet/transformer step needs beside its weights (latent pixels × rows × first width × factor)."""
    latent_px = (job.width // latent_scale) * (job.height // latent_scale)
    return job.rows * latent_px * first_width * job.element_bytes * DENOISER_ACTIVATION_FACTOR


def vae_activation(job: JobSize, tiled: bool = False) -> int:
    """Bytes the VAE's decode needs at the job's size (per picture: the engine decodes one at a time), or per
    tile."""
    w, h = (min(job.width, VAE_TILE), min(job.height, VAE_TILE)) if tiled else (job.width, job.height)
    return w * h * 128 * job.element_bytes * VAE_ACTIVATION_FACTOR


def peak_of(mode: str, parts: list[PartSize], activation: dict[str, int]) -> int:
    """The predicted peak of `mode`: weights held at once plus the activations of the part computing."""
    if not parts:
        return 0
    act = {p.name: activation.get(p.name, 0) for p in parts}
    if mode == "resident":
        return sum(p.weight_bytes for p in parts) + max(act.values())
    if mode == "model":
        return max(p.weight_bytes + act[p.name] for p in parts)
    return max(p.largest_block_bytes + act[p.name] for p in parts)


def plan(parts: list[PartSize], job: JobSize, free: int | None, *, denoiser: str = "unet", first_width: int = 320,
         latent_scale: int = 8, forced: str | None = None, forced_reason: str = "",
         weights_budget: int | None = None, force_vae_tiling: bool = False) -> MemoryPlan:
    """Choose the mode for `job`: the first of resident/model/sequential whose predicted peak (plus a 10 % margin)
    fits `free`; `forced` (a flag) wins; `weights_budget` (Forge's "GPU Weights") bounds the weights alone.
    Where nothing fits, sequential with tiling, the least memory there is, with the reason said."""
    activation = {p.name: 0 for p in parts}
    if denoiser in activation:
        activation[denoiser] = denoiser_activation(job, first_width, latent_scale)
    has_vae = "vae" in activation
    tiled = force_vae_tiling
    if has_vae:
        activation["vae"] = vae_activation(job, tiled)
    peaks = {mode: peak_of(mode, parts, activation) for mode in MODES}

    if forced in MODES:
        mode, reason = forced, forced_reason or f"{forced} asked for"
    elif weights_budget is not None:
        total = sum(p.weight_bytes for p in parts)
        largest = max((p.weight_bytes for p in parts), default=0)
        mode = "resident" if total <= weights_budget else ("model" if largest <= weights_budget else "sequential")
        reason = f"GPU weights {weights_budget >> 20} MB"
    elif free is None:
        mode, reason = "resident", ""
    else:
        mode = next((m for m in MODES if peaks[m] * (1 + MARGIN) <= free), None)
        reason = ""
        if mode is None:
            mode, reason = "sequential", "predicted to exceed free memory even block by block"
    if has_vae and free is not None and not tiled:
        # the VAE's decode alone (its weights, or its largest block, plus full-size activations) must fit
        held = next(p.largest_block_bytes if mode == "sequential" else p.weight_bytes for p in parts
                    if p.name == "vae")
        others = 0 if mode != "resident" else sum(p.weight_bytes for p in parts if p.name != "vae")
        if (held + others + activation["vae"]) * (1 + MARGIN) > free:
            tiled = True
            activation["vae"] = vae_activation(job, tiled=True)
            peaks = {m: peak_of(m, parts, activation) for m in MODES}
    return MemoryPlan(mode=mode, predicted_peak=peaks[mode], free=free, vae_tiled=tiled, reason=reason,
                      peaks=peaks)


def next_mode(mode: str) -> str | None:
    """The mode that needs less memory than `mode` (None after sequential): what an out-of-memory error suggests."""
    i = MODES.index(mode)
    return MODES[i + 1] if i + 1 < len(MODES) else None

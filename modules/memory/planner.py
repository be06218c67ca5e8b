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
TILE_OVERLAP = 0.25  # of a tile, blended with its neighbours


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
    vae_tile: int = VAE_TILE  # tile side in pixels when tiled
    vae_tiles: int = 0  # tiles one picture's decode takes when tiled


    def describe(self) -> str:
        text = MODE_NAMES[self.mode]
        if self.free is not None:
            text += f", predicted peak {self.predicted_peak / GIB:.1f} GiB of {self.free / GIB:.1f} GiB free"
        if self.vae_tiled:
            text += f", VAE in {self.vae_tiles} tiles of {self.vae_tile} px"
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


def tile_count(width: int, height: int, tile: int = VAE_TILE, overlap: float = TILE_OVERLAP,
               scale: int = 8) -> int:
    """Tiles of `tile` pixels, overlapping by `overlap` of a tile (blended, so no seam shows), that cover a
    width × height picture: diffusers' tiled VAE walks the latent in steps of tile·(1 − overlap)."""
    step = max(1, int(tile // scale * (1 - overlap)))
    rows, cols = -(-(height // scale) // step), -(-(width // scale) // step)
    return rows * cols


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
    whole, tiles = dict(activation), dict(activation)
    if "vae" in activation:
        whole["vae"], tiles["vae"] = vae_activation(job), vae_activation(job, tiled=True)
    peaks_whole = {mode: peak_of(mode, parts, whole) for mode in MODES}
    peaks_tiled = {mode: peak_of(mode, parts, tiles) for mode in MODES}
    tiled = force_vae_tiling and "vae" in activation

    def fits(peak: int) -> bool:
        return free is None or peak * (1 + MARGIN) <= free

    if forced in MODES:
        mode, reason = forced, forced_reason or f"{forced} asked for"
        tiled = tiled or (not fits(peaks_whole[mode]) and "vae" in activation)
    elif weights_budget is not None:
        total = sum(p.weight_bytes for p in parts)
        largest = max((p.weight_bytes for p in parts), default=0)
        mode = "resident" if total <= weights_budget else ("model" if largest <= weights_budget else "sequential")
        reason = f"GPU weights {weights_budget >> 20} MB"
        tiled = tiled or (not fits(peaks_whole[mode]) and "vae" in activation)
    else:
        # the cheapest mode that fits, the VAE whole or else in tiles (tiling costs far less time than offload)
        reason = ""
        choice = next(((m, t) for m in MODES for t in ((False, True) if "vae" in activation else (False,))
                       if fits((peaks_tiled if t or tiled else peaks_whole)[m])), None)
        if choice is None:
            mode, reason, tiled = "sequential", "predicted to exceed free memory even block by block", "vae" in activation
        else:
            mode, tiled = choice[0], tiled or choice[1]
    peaks = peaks_tiled if tiled else peaks_whole
    return MemoryPlan(mode=mode, predicted_peak=peaks[mode], free=free, vae_tiled=tiled, reason=reason,
                      peaks=peaks, vae_tiles=tile_count(job.width, job.height) if tiled else 0)


def next_mode(mode: str) -> str | None:
    """The mode that needs less memory than `mode` (None after sequential): what an out-of-memory error suggests."""
    i = MODES.index(mode)
    return MODES[i + 1] if i + 1 < len(MODES) else None

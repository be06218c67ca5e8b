"""Seeds and initial noise the way A1111 makes them, so a seed gives the same noise as in A1111.

- ``resolve_seed`` / ``batch_seeds``: A1111's ``get_fixed_seed`` and ``all_seeds`` / ``all_subseeds`` rules.
- ``slerp``: A1111's variation-seed interpolation, quirk included.
- ``ImageRNG``: per-image generators, variation seeds, "resize seed from", ENSD, and the three random number sources
  ("GPU", "CPU", "NV").

A1111 compatibility: ``modules.rng.ImageRNG``, ``slerp`` and ``modules.rng_philox`` have A1111's names and behaviour;
unlike A1111 nothing here reads global options or touches torch's global RNG: the source, device and ENSD are
constructor arguments.
"""

from __future__ import annotations

import random
from typing import Iterable, Sequence

import torch

from modules import rng_philox

__all__ = ["resolve_seed", "batch_seeds", "slerp", "create_generator", "randn", "ImageRNG", "SOURCES"]

SOURCES = ("GPU", "CPU", "NV")
SEED_MAX = 4294967294  # random seeds are drawn from range(SEED_MAX), as A1111


def resolve_seed(seed) -> int:
    """A1111's ``get_fixed_seed``: -1, None, "" or a non-numeric string → a random seed in [0, 4294967294);
    otherwise ``int(seed)``."""
    if seed is None or seed == "":
        seed = -1
    elif isinstance(seed, str):
        try:
            seed = int(seed.strip())
        except ValueError:
            seed = -1
    seed = int(seed)
    if seed == -1:
        return int(random.randrange(SEED_MAX))
    return seed


def batch_seeds(seed, subseed, subseed_strength: float, n: int) -> tuple[list[int], list[int]]:
    """Seeds and subseeds for ``n`` images (all batches of a job), as A1111's ``process_images_inner``:

    seeds are ``seed + i`` unless variation is on (``subseed_strength != 0``), in which case every image keeps
    ``seed``; subseeds are always ``subseed + i``. -1 is resolved first. A list is taken as given (A1111 accepts
    per-image seed lists).
    """
    if isinstance(seed, (list, tuple)):
        seeds = [int(s) for s in seed]
    else:
        base = resolve_seed(seed)
        seeds = [base + (i if subseed_strength == 0 else 0) for i in range(n)]
    if isinstance(subseed, (list, tuple)):
        subseeds = [int(s) for s in subseed]
    else:
        sub = resolve_seed(subseed)
        subseeds = [sub + i for i in range(n)]
    return seeds, subseeds


def slerp(val, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111's spherical interpolation for variation seeds (on one image's (C, H, W) noise: norms over dim 1).

    Quirk kept from A1111: when the inputs are nearly parallel (mean dot > 0.9995) the linear fallback returns
    ``low * val + high * (1 - val)``: weights swapped relative to the spherical branch.
    """
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)

    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)

    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (torch.sin(val * omega) / so).unsqueeze(1) * high


def _normalize_source(source: str) -> str:
    s = str(source or "GPU").strip().upper()
    if s not in SOURCES:
        raise ValueError(f"Unknown random number source {source!r}; valid: {', '.join(SOURCES)}")
    return s


def _generator_device(source: str, device: torch.device) -> torch.device:
    # A1111: "CPU", and MPS whatever the option, draw on the CPU; "GPU" draws on the compute device.
    if source == "CPU" or device.type == "mps":
        return torch.device("cpu")
    return device


def create_generator(seed: int, source: str = "GPU", device="cpu"):
    """A generator seeded with ``seed``: a torch.Generator (GPU: on ``device``; CPU: on the CPU) or, for "NV",
    an ``rng_philox.Generator``."""
    source = _normalize_source(source)
    if source == "NV":
        return rng_philox.Generator(int(seed))
    return torch.Generator(_generator_device(source, torch.device(device))).manual_seed(int(seed))


def randn(generator, shape: Sequence[int], device="cpu") -> torch.Tensor:
    """The next float32 normal tensor of ``shape`` from ``generator``, moved to ``device``."""
    shape = tuple(int(s) for s in shape)
    if isinstance(generator, rng_philox.Generator):
        return torch.asarray(generator.randn(shape)).to(device)
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


class ImageRNG:
    """Per-image noise for one batch, as A1111's ``modules/rng.py::ImageRNG``.

    ``shape`` is one image's latent shape (C, H, W); ``seeds`` (and ``subseeds``) hold one entry per image.
    ``first()`` gives the initial noise, ``next()`` further noise (A1111 feeds it to ancestral samplers). Image i of
    a batch gets exactly the noise of a single-image run with seed ``seeds[i]``.

    ``source``: "GPU" (a torch.Generator on ``device``), "CPU" (a CPU torch.Generator; the result is moved to
    ``device``) or "NV" (A1111's NumPy Philox port, CUDA-identical noise on any hardware).
    ``eta_noise_seed_delta`` (ENSD): when non-zero, after the first draw each image's generator is re-seeded with
    ``seed + ENSD``, so the noise of later steps changes and the initial noise does not.
    ``seed_resize_from_h/w`` (pixels): noise is made at that size and pasted, centred, into full-size noise.

    ``generators`` is the per-image torch.Generator list for diffusers' ``scheduler.step(..., generator=list)``;
    its draws equal ``next()``'s. With the "NV" source there are no torch generators and ``generators`` is None:
    take step noise from ``next()`` instead (e.g. as ``variance_noise`` where the scheduler accepts it).
    """

    def __init__(
        self,
        shape: Sequence[int],
        seeds: Iterable[int],
        subseeds: Iterable[int] | None = None,
        subseed_strength: float = 0.0,
        seed_resize_from_h: int = 0,
        seed_resize_from_w: int = 0,
        *,
        source: str = "GPU",
        device="cpu",
        eta_noise_seed_delta: int = 0,
        dtype: torch.dtype = torch.float32,
        latent_factor: int = 8,
    ):
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) != 3:
            raise ValueError(f"ImageRNG shape is one image's latent shape (C, H, W), got {self.shape}")
        self.seeds = [int(s) for s in seeds]
        if not self.seeds:
            raise ValueError("ImageRNG needs at least one seed")
        self.subseeds = None if subseeds is None else [int(s) for s in subseeds]
        self.subseed_strength = float(subseed_strength or 0.0)
        self.seed_resize_from_h = int(seed_resize_from_h or 0)
        self.seed_resize_from_w = int(seed_resize_from_w or 0)
        self.source = _normalize_source(source)
        self.device = torch.device(device)
        self.eta_noise_seed_delta = int(eta_noise_seed_delta or 0)
        self.dtype = dtype
        self.latent_factor = int(latent_factor)

        self._generators = [self._create(seed) for seed in self.seeds]
        self.is_first = True

    # -- helpers -------------------------------------------------------------------------------------------------

    def _create(self, seed: int):
        return create_generator(seed, self.source, self.device)

    def _randn_seed(self, seed: int, shape) -> torch.Tensor:
        """First noise of a fresh generator seeded with ``seed`` (A1111's ``randn(seed, shape)``)."""
        return randn(self._create(seed), shape, self.device)

    def _out(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(xs).to(device=self.device, dtype=self.dtype)

    # -- public --------------------------------------------------------------------------------------------------

    @property
    def batch_size(self) -> int:
        return len(self.seeds)

    @property
    def generators(self) -> list[torch.Generator] | None:
        """Per-image torch generators (current state; re-seeded by ENSD after ``first()``); None for "NV"."""
        if self.source == "NV":
            return None
        return self._generators

    def first(self) -> torch.Tensor:
        """Initial noise, shape (B, C, H, W)."""
        self.is_first = False
        shape = self.shape
        resized = self.seed_resize_from_h > 0 and self.seed_resize_from_w > 0
        noise_shape = (
            (shape[0], self.seed_resize_from_h // self.latent_factor, self.seed_resize_from_w // self.latent_factor)
            if resized
            else shape
        )

        xs = []
        for i, (seed, generator) in enumerate(zip(self.seeds, self._generators)):
            subnoise = None
            if self.subseeds is not None and self.subseed_strength != 0:
                subseed = 0 if i >= len(self.subseeds) else self.subseeds[i]
                subnoise = self._randn_seed(subseed, noise_shape)

            if noise_shape != shape:
                noise = self._randn_seed(seed, noise_shape)
            else:
                noise = randn(generator, shape, self.device)

            if subnoise is not None:
                noise = slerp(self.subseed_strength, noise, subnoise)

            if noise_shape != shape:
                x = randn(generator, shape, self.device)
                dx = (shape[2] - noise_shape[2]) // 2
                dy = (shape[1] - noise_shape[1]) // 2
                w = noise_shape[2] if dx >= 0 else noise_shape[2] + 2 * dx
                h = noise_shape[1] if dy >= 0 else noise_shape[1] + 2 * dy
                tx = 0 if dx < 0 else dx
                ty = 0 if dy < 0 else dy
                dx = max(-dx, 0)
                dy = max(-dy, 0)
                x[:, ty:ty + h, tx:tx + w] = noise[:, dy:dy + h, dx:dx + w]
                noise = x

            xs.append(noise)

        if self.eta_noise_seed_delta:
            self._generators = [self._create(seed + self.eta_noise_seed_delta) for seed in self.seeds]

        return self._out(xs)

    def next(self) -> torch.Tensor:
        """Next noise, shape (B, C, H, W): ``first()`` on the first call (as A1111), then a draw from each image's
        generator."""
        if self.is_first:
            return self.first()
        return self._out([randn(g, self.shape, self.device) for g in self._generators])

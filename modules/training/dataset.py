"""Training images: the folder, captions (kohya's `image.txt`, else A1111's filename words), prompt templates
(`[name]`, `[filewords]`), aspect-ratio buckets, and the latents the VAE makes of them once (the VAE is frozen)."""
from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from modules.training.common import TrainingError, is_out_of_memory

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
TEMPLATE_DIR_NAME = "textual_inversion_templates"  # A1111's folder of template files in the data dir

# A1111's shipped templates, shortened (one prompt per line; a random line per image and step).
BUILTIN_TEMPLATES = {
    "none": "picture",
    "subject": "a photo of a [name]\na rendering of a [name]\na close-up photo of a [name]\na good photo of a [name]",
    "subject_filewords": "a photo of a [name], [filewords]\na rendering of a [name], [filewords]\n"
                         "a close-up photo of a [name], [filewords]\na good photo of a [name], [filewords]",
    "style": "a painting, art by [name]\na rendering, art by [name]\na picture, art by [name]",
    "style_filewords": "a painting of [filewords], art by [name]\na rendering of [filewords], art by [name]\n"
                       "a picture of [filewords], art by [name]",
    "filewords": "[filewords]",
}
_NUMBERS_AT_START = re.compile(r"^[-\d]+\s*")


@dataclass
class TrainingImage:
    path: Path
    caption: str  # what [filewords] becomes


def caption_for(path: Path, caption_extension: str = ".txt") -> str:
    """`image.txt` beside the image (kohya), else the file name without leading numbers (A1111)."""
    ext = caption_extension if caption_extension.startswith(".") else "." + caption_extension
    for candidate in (path.with_suffix(ext), path.with_suffix(".caption"), path.with_suffix(".txt")):
        if candidate.is_file():
            try:
                return " ".join(candidate.read_text(encoding="utf-8").split())
            except (OSError, UnicodeDecodeError) as e:
                raise TrainingError(f"cannot read caption {candidate.name}: {e}") from None
    return _NUMBERS_AT_START.sub("", path.stem).replace("_", " ").strip()


def scan_folder(folder: str | Path, caption_extension: str = ".txt") -> list[TrainingImage]:
    root = Path(folder).expanduser() if folder else None
    if root is None or not root.is_dir():
        raise TrainingError(f"dataset folder {folder!r} does not exist")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise TrainingError(f"no images in {root} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    for p in files:  # headers only: a non-image is reported before any training work starts
        try:
            with Image.open(p):
                pass
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
            raise TrainingError(f"cannot read image {p.name}: {e}") from None
    return [TrainingImage(p, caption_for(p, caption_extension)) for p in files]


def tag_frequency(images: list[TrainingImage]) -> dict[str, int]:
    """How often each comma-separated tag appears in the captions (kohya's `ss_tag_frequency` for one folder)."""
    counts: Counter[str] = Counter()
    for im in images:
        counts.update(t.strip() for t in im.caption.split(",") if t.strip())
    return dict(counts)


# ---------------------------------------------------------------------------------------------------------------
# Templates


@dataclass
class CaptionTemplate:
    lines: list[str]

    @classmethod
    def resolve(cls, spec: str, template_dirs: list[Path] = ()) -> "CaptionTemplate | None":
        """A file (path, or a name in A1111's `textual_inversion_templates`), a built-in name, or the text itself."""
        spec = (spec or "").strip()
        if not spec:
            return None
        candidates = [Path(spec).expanduser()] + [d / spec for d in template_dirs] + \
                     [d / f"{spec}.txt" for d in template_dirs]
        text = None
        for c in candidates:
            try:
                found = c.is_file()
            except OSError:  # template text too long to be a file name
                found = False
            if found:
                try:
                    text = c.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError) as e:
                    raise TrainingError(f"cannot read template {c}: {e}") from None
                break
        if text is None:
            text = BUILTIN_TEMPLATES.get(spec.removesuffix(".txt"), spec)
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        if not lines:
            raise TrainingError(f"template {spec!r} is empty")
        return cls(lines)

    def fill(self, name: str, filewords: str, rng: random.Random) -> str:
        line = rng.choice(self.lines)
        return line.replace("[name]", name).replace("[filewords]", filewords)


def template_names(template_dirs: list[Path]) -> list[str]:
    names = list(BUILTIN_TEMPLATES)
    for d in template_dirs:
        if d.is_dir():
            names += sorted(p.name for p in d.glob("*.txt"))
    return names


# ---------------------------------------------------------------------------------------------------------------
# Buckets and pixels


def bucket_sizes(resolution: int, step: int, max_ratio: float = 2.0) -> list[tuple[int, int]]:
    """kohya's buckets: (width, height) multiples of `step`, area at most resolution², each side at least half the
    resolution, aspect ratio at most `max_ratio`."""
    step = max(1, min(step, resolution))
    area = resolution * resolution
    shortest = max(step, resolution // 2 // step * step)
    sizes = {(resolution // step * step, resolution // step * step)}
    for w in range(shortest, int(resolution * max_ratio) + 1, step):
        h = min(area // w // step * step, int(w * max_ratio) // step * step)
        if h >= shortest and max(w, h) / min(w, h) <= max_ratio:
            sizes.add((w, h))
            sizes.add((h, w))
    return sorted(sizes)


def nearest_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    ratio = np.log(width / height)
    return min(buckets, key=lambda b: (abs(np.log(b[0] / b[1]) - ratio), -b[0] * b[1]))


def open_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise TrainingError(f"cannot read image {path.name}: {e}") from None


def to_pixels(image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """Resize to cover `size`, centre-crop, scale to [-1, 1]: a (3, h, w) float tensor."""
    w, h = size
    scale = max(w / image.width, h / image.height)
    rw, rh = max(w, round(image.width * scale)), max(h, round(image.height * scale))
    image = image.resize((rw, rh), Image.Resampling.LANCZOS)
    left, top = (rw - w) // 2, (rh - h) // 2
    image = image.crop((left, top, left + w, top + h))
    arr = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


# ---------------------------------------------------------------------------------------------------------------
# Latents


@dataclass
class LatentBucket:
    size: tuple[int, int]  # (width, height) in pixels
    latents: list[torch.Tensor] = field(default_factory=list)  # each (C, h, w)
    captions: list[str] = field(default_factory=list)


@dataclass
class LatentDataset:
    buckets: list[LatentBucket]

    def __len__(self) -> int:
        return sum(len(b.latents) for b in self.buckets)

    def batch(self, batch_size: int, generator: torch.Generator) -> tuple[LatentBucket, torch.Tensor, list[str]]:
        """A random batch from one bucket (picked in proportion to its images), without repeats within the batch."""
        counts = torch.tensor([len(b.latents) for b in self.buckets], dtype=torch.float64)
        bucket = self.buckets[int(torch.multinomial(counts, 1, generator=generator))]
        order = torch.randperm(len(bucket.latents), generator=generator)[:batch_size].tolist()
        return bucket, torch.stack([bucket.latents[i] for i in order]), [bucket.captions[i] for i in order]

    def bucket_info(self) -> dict:
        return {"buckets": {str(i): {"resolution": list(b.size), "count": len(b.latents)}
                            for i, b in enumerate(self.buckets)}}


@torch.no_grad()
def encode_images(model, images: list[TrainingImage], resolution: int, enable_buckets: bool, bucket_step: int,
                  generator: torch.Generator) -> LatentDataset:
    """Read, bucket and VAE-encode every image once (scaled the way the sampler expects latents)."""
    factor = model.vae_scale_factor
    step = max(bucket_step, factor * 2)
    buckets = bucket_sizes(resolution, step) if enable_buckets else [(resolution, resolution)]
    by_size: dict[tuple[int, int], LatentBucket] = {}
    vae = model.vae
    scale = vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    vae_dtype = next(vae.parameters()).dtype
    for item in images:
        image = open_image(item.path)
        size = nearest_bucket(image.width, image.height, buckets)
        pixels = to_pixels(image, size).unsqueeze(0).to(model.device, vae_dtype)
        try:
            dist = vae.encode(pixels).latent_dist
        except (RuntimeError, MemoryError) as e:
            if is_out_of_memory(e):
                raise TrainingError(f"out of memory encoding {item.path.name} at {size[0]}x{size[1]}: lower the "
                                    "resolution") from None
            raise
        noise = torch.randn(dist.mean.shape, generator=generator, dtype=torch.float32).to(dist.mean.device,
                                                                                           dist.mean.dtype)
        latent = ((dist.mean + dist.std * noise) - shift) * scale
        if not torch.isfinite(latent).all():
            raise TrainingError(f"the VAE gave NaN/inf latents for {item.path.name} (try --no-half-vae)")
        bucket = by_size.setdefault(size, LatentBucket(size))
        bucket.latents.append(latent[0].float())
        bucket.captions.append(item.caption)
    return LatentDataset(sorted(by_size.values(), key=lambda b: b.size))


__all__ = ["TrainingImage", "scan_folder", "caption_for", "tag_frequency", "CaptionTemplate", "template_names",
           "BUILTIN_TEMPLATES", "bucket_sizes", "nearest_bucket", "open_image", "to_pixels", "LatentDataset",
           "LatentBucket", "encode_images", "TEMPLATE_DIR_NAME"]

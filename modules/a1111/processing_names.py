"""A1111's `modules.processing` helpers beyond the p objects: seeded noise and img2img colour correction."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageCms

__all__ = ["process_images_inner", "create_binary_mask", "create_random_tensors", "setup_color_correction", "apply_color_correction", "apply_overlay",
           "opt_C", "opt_f", "decode_latent_batch", "images_tensor_to_samples"]

def process_images_inner(p):
    """A1111's inner generation (without the scripts' before_process/postprocess); here the same engine run."""
    from modules.processing_compat import ScriptHooks, fix_seed

    fix_seed(p)
    return p.engine.process(p.request, hooks=ScriptHooks(p))


def create_binary_mask(image, round=True):  # noqa: A002 - A1111's name
    """An "L" mask from an image: its alpha channel when it has a meaningful one, else its grey levels;
    thresholded at half unless `round` is False."""
    if image.mode == "RGBA" and image.getextrema()[-1] != (255, 255):
        image = image.split()[-1].convert("L")
        if round:
            image = image.point(lambda x: 255 if x > 128 else 0)
    else:
        image = image.convert("L")
    return image


opt_C = 4
opt_f = 8


def create_random_tensors(shape, seeds, subseeds=None, subseed_strength=0.0, seed_resize_from_h=0,
                          seed_resize_from_w=0, p=None):
    """Initial noise for `seeds` (one image each), with variation seeds and resize-from, from our A1111 RNG."""
    import torch

    from modules import rng
    from modules.a1111._engine import engine_or_none

    e = engine_or_none()
    source = e.settings.get("randn_source", "GPU") if e is not None else "GPU"
    device = e.device_config.device if e is not None else torch.device("cpu")
    c, h, w = shape
    generator = rng.ImageRNG((c, h, w), list(seeds), subseeds=list(subseeds) if subseeds else None,
                             subseed_strength=float(subseed_strength or 0.0),
                             seed_resize_from_h=int(seed_resize_from_h or 0),
                             seed_resize_from_w=int(seed_resize_from_w or 0), source=source, device=device)
    return generator.first()


_SRGB = ImageCms.createProfile("sRGB")
_LAB = ImageCms.createProfile("LAB")
_TO_LAB = ImageCms.buildTransformFromOpenProfiles(_SRGB, _LAB, "RGB", "LAB")
_TO_RGB = ImageCms.buildTransformFromOpenProfiles(_LAB, _SRGB, "LAB", "RGB")


def setup_color_correction(image: Image.Image) -> np.ndarray:
    """The target colours of an img2img source: its LAB pixels."""
    return np.asarray(ImageCms.applyTransform(image.convert("RGB"), _TO_LAB))


def _match_channel(source: np.ndarray, reference: np.ndarray) -> np.ndarray:
    s_values, s_idx, s_counts = np.unique(source.ravel(), return_inverse=True, return_counts=True)
    r_values, r_counts = np.unique(reference.ravel(), return_counts=True)
    s_quantiles = np.cumsum(s_counts) / source.size
    r_quantiles = np.cumsum(r_counts) / reference.size
    return np.interp(s_quantiles, r_quantiles, r_values)[s_idx].reshape(source.shape)


def apply_color_correction(correction: np.ndarray, original_image: Image.Image) -> Image.Image:
    """The image's colour histograms (a, b) matched to the target's; its own lightness kept (A1111 matches in LAB
    and keeps the original's luminosity)."""
    lab = np.asarray(ImageCms.applyTransform(original_image.convert("RGB"), _TO_LAB)).copy()
    for channel in (1, 2):
        lab[..., channel] = np.clip(_match_channel(lab[..., channel], correction[..., channel]), 0, 255)
    return ImageCms.applyTransform(Image.fromarray(lab.astype(np.uint8), "LAB"), _TO_RGB)


def apply_overlay(image, paste_loc, overlay):
    """Paste the generated image back at `paste_loc` (x, y, w, h) and put `overlay` over it (inpainting)."""
    if paste_loc is not None:
        x, y, w, h = paste_loc
        base = Image.new("RGBA", (overlay.width, overlay.height))
        base.paste(image.resize((w, h), Image.Resampling.LANCZOS), (x, y))
        image = base
    if overlay is not None:
        image = image.convert("RGBA")
        image.alpha_composite(overlay.convert("RGBA"))
        image = image.convert("RGB")
    return image


def decode_latent_batch(model, batch, target_device=None, check_for_nans=False):
    return model.decode_first_stage(batch)


def images_tensor_to_samples(image, approximation=None, model=None):
    from modules.a1111.sd_model import view
    from modules import shared

    model = view(model) if model is not None else shared.sd_model
    return model.get_first_stage_encoding(model.encode_first_stage(image * 2 - 1))

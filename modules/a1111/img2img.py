"""A1111's `modules.img2img`: batch processing of a folder through the engine (what extensions reuse)."""
from __future__ import annotations

import os

from modules.a1111.unsupported import unsupported


def process_batch(p, input_dir, output_dir, inpaint_mask_dir, args, to_scale=False, scale_by=1.0,
                  use_png_info=False, png_info_props=None, png_info_dir=None):
    """img2img each image of `input_dir` with `p`'s settings; images are saved to `output_dir` if given."""
    from PIL import Image

    from modules.processing_compat import process_images

    files = sorted(f for f in os.listdir(input_dir) if not f.startswith("."))
    results = []
    for name in files:
        path = os.path.join(input_dir, name)
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except OSError:
            continue
        p.init_images = [image]
        if output_dir:
            p.outpath_samples = output_dir
        results.append(process_images(p))
    return results


img2img = unsupported("img2img.img2img", "the UI's own img2img handler; call process_images with a p object")

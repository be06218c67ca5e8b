"""SD upscale (A1111's built-in img2img script): upscale the picture, redraw it tile by tile with img2img at the
request's denoising strength, and blend the tiles back over their overlaps."""
import math

import gradio as gr
from PIL import Image, ImageColor

from modules import images, scripts, shared
from modules.processing import Processed, fix_seed, process_images
from modules.request_types import RequestError


def flatten(img: Image.Image, color: str) -> Image.Image:
    """Transparent parts over the `img2img_background_color` (A1111's images.flatten)."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        background = Image.new("RGBA", img.size, ImageColor.getcolor(color, "RGBA"))
        return Image.alpha_composite(background, img.convert("RGBA")).convert("RGB")
    return img.convert("RGB")


class Script(scripts.Script):
    def title(self):
        return "SD upscale"

    def show(self, is_img2img):
        return is_img2img

    def ui(self, is_img2img):
        names = [u.name for u in shared.sd_upscalers]
        info = gr.HTML("<p style=\"margin-bottom:0.75em\">Will upscale the image by the selected scale factor; use "
                       "width and height sliders to set tile size</p>")
        overlap = gr.Slider(minimum=0, maximum=256, step=16, label="Tile overlap", value=64,
                            elem_id=self.elem_id("overlap"))
        scale_factor = gr.Slider(minimum=1.0, maximum=4.0, step=0.05, label="Scale Factor", value=2.0,
                                 elem_id=self.elem_id("scale_factor"))
        upscaler_index = gr.Radio(label="Upscaler", choices=names, value=names[0] if names else None, type="index",
                                  elem_id=self.elem_id("upscaler_index"))
        return [info, overlap, upscaler_index, scale_factor]

    def run(self, p, _, overlap, upscaler_index, scale_factor):
        upscalers = shared.sd_upscalers
        names = [u.name for u in upscalers]
        if isinstance(upscaler_index, str):
            lowered = [n.lower() for n in names]
            if upscaler_index.lower() not in lowered:
                raise RequestError(f"SD upscale: unknown upscaler {upscaler_index!r}; available: {', '.join(names)}")
            upscaler_index = lowered.index(upscaler_index.lower())
        if not 0 <= int(upscaler_index or 0) < len(upscalers):
            raise RequestError(f"SD upscale: upscaler index {upscaler_index} is out of range (0-{len(names) - 1})")
        overlap, scale_factor = int(overlap), float(scale_factor)
        if overlap >= min(p.width, p.height):
            raise RequestError(f"SD upscale: tile overlap ({overlap}) must be smaller than the tile size "
                               f"{p.width}x{p.height}")
        fix_seed(p)
        upscaler = upscalers[int(upscaler_index or 0)]
        p.extra_generation_params["SD upscale overlap"] = overlap
        p.extra_generation_params["SD upscale upscaler"] = upscaler.name
        seed = p.seed
        init_img = flatten(p.init_images[0], shared.opts.img2img_background_color)
        img = upscaler.scaler.upscale(init_img, scale_factor, upscaler.data_path) if upscaler.name != "None" \
            else init_img
        grid = images.split_grid(img, tile_w=p.width, tile_h=p.height, overlap=overlap)
        batch_size, upscale_count = p.batch_size, p.n_iter
        save = shared.opts.samples_save and not p.do_not_save_samples and bool(p.outpath_samples)
        p.n_iter, p.do_not_save_grid, p.do_not_save_samples = 1, True, True
        work = [tile for _y, _h, row in grid.tiles for tile in row]
        batch_count = math.ceil(len(work) / batch_size)
        shared.state.job_count = batch_count * upscale_count
        initial_info, results = None, []
        for n in range(upscale_count):
            p.seed = seed + n
            redrawn = []
            for i in range(batch_count):
                if shared.state.interrupted:
                    break
                p.batch_size = len(work[i * batch_size:(i + 1) * batch_size])
                p.init_images = [t[2] for t in work[i * batch_size:(i + 1) * batch_size]]
                shared.state.job = f"Batch {i + 1 + n * batch_count} out of {shared.state.job_count}"
                processed = process_images(p)
                if initial_info is None:
                    initial_info = processed.info
                p.seed = processed.seed + 1
                redrawn += processed.images[processed.index_of_first_image:]
            for tile, new in zip(work, redrawn):
                tile[2] = new
            combined = images.combine_grid(grid)
            results.append(combined)
            if save:
                images.save_image(combined, p.outpath_samples, seed + n,
                                  initial_info if shared.opts.enable_pnginfo else None, shared.opts.samples_format)
            if shared.state.interrupted:
                break
        return Processed(p, results, seed, initial_info or "")

"""Poor man's outpainting (A1111's built-in img2img script): enlarge the canvas on the chosen sides and inpaint
the new border, tile by tile, through the request's mask fields."""
import math

import gradio as gr
from PIL import Image, ImageDraw

from modules import images, scripts, shared
from modules.processing import Processed, process_images
from modules.request_types import RequestError

FILLS = ["fill", "original", "latent noise", "latent nothing"]
DIRECTIONS = ["left", "right", "up", "down"]


def expanded_sides(width: int, height: int, pixels: int, direction) -> tuple[int, int, int, int, int, int]:
    """(left, right, up, down, new width, new height): the canvas grows to a multiple of 64, shared out between
    the chosen sides in proportion to what each asked for."""
    left, right, up, down = (pixels if d in direction else 0 for d in DIRECTIONS)
    target_w = math.ceil((width + left + right) / 64) * 64
    target_h = math.ceil((height + up + down) / 64) * 64
    if left:
        left = left * (target_w - width) // (left + right)
    if right:
        right = target_w - width - left
    if up:
        up = up * (target_h - height) // (up + down)
    if down:
        down = target_h - height - up
    return left, right, up, down, target_w, target_h


def border_mask(size, left, right, up, down, inset: int) -> Image.Image:
    """White (repaint) everywhere but the original picture, shrunk by `inset` on the sides that grew."""
    mask = Image.new("L", size, "white")
    ImageDraw.Draw(mask).rectangle((left + (inset if left else 0), up + (inset if up else 0),
                                    size[0] - right - (inset if right else 0) - 1,
                                    size[1] - down - (inset if down else 0) - 1), fill="black")
    return mask


class Script(scripts.Script):
    def title(self):
        return "Poor man's outpainting"

    def show(self, is_img2img):
        return is_img2img

    def ui(self, is_img2img):
        pixels = gr.Slider(label="Pixels to expand", minimum=8, maximum=256, step=8, value=128,
                           elem_id=self.elem_id("pixels"))
        mask_blur = gr.Slider(label="Mask blur", minimum=0, maximum=64, step=1, value=4,
                              elem_id=self.elem_id("mask_blur"))
        inpainting_fill = gr.Radio(label="Masked content", choices=FILLS, value="fill", type="index",
                                   elem_id=self.elem_id("inpainting_fill"))
        direction = gr.CheckboxGroup(label="Outpainting direction", choices=DIRECTIONS, value=DIRECTIONS,
                                     elem_id=self.elem_id("direction"))
        return [pixels, mask_blur, inpainting_fill, direction]

    def run(self, p, pixels, mask_blur, inpainting_fill, direction):
        pixels, mask_blur = int(pixels), int(mask_blur)
        if isinstance(inpainting_fill, str):
            inpainting_fill = FILLS.index(inpainting_fill) if inpainting_fill in FILLS else -1
        if inpainting_fill not in range(len(FILLS)):
            raise RequestError(f"Poor man's outpainting: masked content must be one of {', '.join(FILLS)}")
        direction = [d for d in (direction or []) if d in DIRECTIONS]
        if not direction:
            raise RequestError("Poor man's outpainting: choose at least one direction (left, right, up, down)")
        if pixels >= min(p.width, p.height):
            raise RequestError(f"Poor man's outpainting: pixels to expand ({pixels}) must be smaller than the "
                               f"tile size {p.width}x{p.height}")
        p.mask_blur = p.mask_blur_x = p.mask_blur_y = mask_blur * 2
        p.inpainting_fill = inpainting_fill
        p.inpaint_full_res = False
        init_img = p.init_images[0].convert("RGB")
        left, right, up, down, target_w, target_h = expanded_sides(init_img.width, init_img.height, pixels,
                                                                   direction)
        img = Image.new("RGB", (target_w, target_h))
        img.paste(init_img, (left, up))
        mask = border_mask(img.size, left, right, up, down, mask_blur * 2)
        latent_mask = border_mask(img.size, left, right, up, down, mask_blur // 2)

        grid = images.split_grid(img, tile_w=p.width, tile_h=p.height, overlap=pixels)
        grid_mask = images.split_grid(mask, tile_w=p.width, tile_h=p.height, overlap=pixels)
        grid_latent = images.split_grid(latent_mask, tile_w=p.width, tile_h=p.height, overlap=pixels)
        save = shared.opts.samples_save and not p.do_not_save_samples and bool(p.outpath_samples)
        p.n_iter, p.batch_size, p.do_not_save_grid, p.do_not_save_samples = 1, 1, True, True

        def inside(x, w, y, h):
            return x >= left and x + w <= img.width - right and y >= up and y + h <= img.height - down

        work = []  # (tile entry to replace, mask tile, latent-mask tile)
        for (y, h, row), (_, _, row_mask), (_, _, row_latent) in zip(grid.tiles, grid_mask.tiles, grid_latent.tiles):
            for tile, tile_mask, tile_latent in zip(row, row_mask, row_latent):
                if not inside(tile[0], tile[1], y, h):
                    work.append((tile, tile_mask[2], tile_latent[2]))
        shared.state.job_count = len(work)
        initial_seed = initial_info = None
        for i, (tile, tile_mask, tile_latent) in enumerate(work):
            if shared.state.interrupted:
                break
            shared.state.job = f"Batch {i + 1} out of {len(work)}"
            p.init_images, p.image_mask, p.latent_mask = [tile[2]], tile_mask, tile_latent
            processed = process_images(p)
            if initial_seed is None:
                initial_seed, initial_info = processed.seed, processed.info
            p.seed = processed.seed + 1
            tile[2] = processed.images[processed.index_of_first_image]
        combined = images.combine_grid(grid)
        if save:
            images.save_image(combined, p.outpath_samples, initial_seed or 0,
                              initial_info if shared.opts.enable_pnginfo else None, shared.opts.samples_format)
        return Processed(p, [combined], initial_seed, initial_info or "")

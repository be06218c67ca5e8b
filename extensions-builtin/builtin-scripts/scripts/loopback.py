"""Loopback (A1111's built-in img2img script): each loop's output is the next loop's input, with the denoising
strength moving from the request's value to the final one along a curve."""
import math

import gradio as gr

from modules import images, scripts, shared
from modules.processing import Processed, fix_seed, process_images

CURVES = ("Aggressive", "Linear", "Lazy")


def denoising_at(loop: int, loops: int, initial: float, final: float, curve: str) -> float:
    """The strength of loop number `loop` (0 = the first, at `initial`; loops-1 = the last, at `final`)."""
    if loops <= 1:
        return initial
    progress = loop / (loops - 1)
    if curve == "Aggressive":
        progress = math.sin(progress * math.pi * 0.5)
    elif curve == "Lazy":
        progress = 1 - math.cos(progress * math.pi * 0.5)
    return initial + (final - initial) * progress


class Script(scripts.Script):
    def title(self):
        return "Loopback"

    def show(self, is_img2img):
        return is_img2img

    def ui(self, is_img2img):
        loops = gr.Slider(minimum=1, maximum=32, step=1, label="Loops", value=4, elem_id=self.elem_id("loops"))
        final_denoising_strength = gr.Slider(minimum=0, maximum=1, step=0.01, label="Final denoising strength",
                                             value=0.5, elem_id=self.elem_id("final_denoising_strength"))
        denoising_curve = gr.Dropdown(label="Denoising strength curve", choices=list(CURVES), value="Linear")
        append_interrogation = gr.Dropdown(label="Append interrogated prompt at each iteration", choices=["None"],
                                           value="None", info="No interrogator is installed: the prompt is kept.")
        return [loops, final_denoising_strength, denoising_curve, append_interrogation]

    def run(self, p, loops, final_denoising_strength, denoising_curve, append_interrogation="None"):
        fix_seed(p)
        loops = max(1, int(loops))
        batch_count = p.n_iter
        p.extra_generation_params = {"Final denoising strength": final_denoising_strength,
                                     "Denoising curve": denoising_curve}
        p.batch_size, p.n_iter = 1, 1
        initial_seed = initial_info = None
        initial_strength = p.denoising_strength
        original_init_images, original_fill = p.init_images, p.inpainting_fill
        shared.state.job_count = loops * batch_count
        history, grids = [], []
        for n in range(batch_count):
            p.init_images, p.denoising_strength = original_init_images, initial_strength
            last_image = None
            for i in range(loops):
                p.n_iter, p.batch_size, p.do_not_save_grid = 1, 1, True
                shared.state.job = f"Iteration {i + 1}/{loops}, batch {n + 1}/{batch_count}"
                processed = process_images(p)
                if shared.state.interrupted or not processed.images:
                    break
                if initial_seed is None:
                    initial_seed, initial_info = processed.seed, processed.info
                p.seed = processed.seed + 1
                p.denoising_strength = denoising_at(i + 1, loops, initial_strength, final_denoising_strength,
                                                    denoising_curve)
                last_image = processed.images[processed.index_of_first_image]
                p.init_images = [last_image]
                p.inpainting_fill = 1  # masked content "original" from the second loop on
                if batch_count == 1:
                    history.append(last_image)
            if batch_count > 1 and last_image is not None:
                history.append(last_image)
            p.inpainting_fill = original_fill
            if shared.state.interrupted:
                break
        if len(history) > 1:
            grid = images.image_grid(history, rows=1)
            if shared.opts.grid_save and p.outpath_grids:
                images.save_grid(grid, p.outpath_grids, initial_info if shared.opts.enable_pnginfo else None,
                                 shared.opts.grid_format)
            if shared.opts.return_grid:
                grids.append(grid)
        return Processed(p, grids + history, initial_seed, initial_info or "", index_of_first_image=len(grids))

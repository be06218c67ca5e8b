"""Prompt matrix (A1111's built-in script): `fixed|a|b` → every combination of the optional parts, one image each,
plus a grid labelled with which parts are on."""
import math

import gradio as gr

from modules import images, scripts, shared
from modules.processing import fix_seed, process_images
from modules.request_types import RequestError


def combinations(parts: list[str], put_at_start: bool, delimiter: str) -> list[str]:
    """Prompt i switches on the optional parts whose bit is set in i (part 1 = bit 0)."""
    fixed, optional = parts[0], parts[1:]
    prompts = []
    for number in range(2 ** len(optional)):
        chosen = [text.strip().strip(",") for n, text in enumerate(optional) if number & (1 << n)]
        prompts.append(delimiter.join(chosen + [fixed] if put_at_start else [fixed] + chosen))
    return prompts


class Script(scripts.Script):
    def title(self):
        return "Prompt matrix"

    def ui(self, is_img2img):
        gr.HTML("<br />")
        with gr.Row():
            with gr.Column():
                put_at_start = gr.Checkbox(label="Put variable parts at start of prompt", value=False,
                                           elem_id=self.elem_id("put_at_start"))
                different_seeds = gr.Checkbox(label="Use different seed for each picture", value=False,
                                              elem_id=self.elem_id("different_seeds"))
            with gr.Column():
                prompt_type = gr.Radio(["positive", "negative"], label="Select prompt", value="positive",
                                       elem_id=self.elem_id("prompt_type"))
                delimiter = gr.Radio(["comma", "space"], label="Select joining char", value="comma",
                                     elem_id=self.elem_id("variations_delimiter"))
            with gr.Column():
                margin_size = gr.Slider(label="Grid margins (px)", minimum=0, maximum=500, value=0, step=2,
                                        elem_id=self.elem_id("margin_size"))
        return [put_at_start, different_seeds, prompt_type, delimiter, margin_size]

    def run(self, p, put_at_start, different_seeds, prompt_type, variations_delimiter, margin_size):
        fix_seed(p)
        if prompt_type not in ("positive", "negative"):
            raise RequestError(f"Prompt matrix: prompt type must be 'positive' or 'negative', got {prompt_type!r}")
        if variations_delimiter not in ("comma", "space"):
            raise RequestError(f"Prompt matrix: joining char must be 'comma' or 'space', got {variations_delimiter!r}")
        original = p.prompt if prompt_type == "positive" else p.negative_prompt
        parts = original.split("|")
        prompts = combinations(parts, bool(put_at_start), ", " if variations_delimiter == "comma" else " ")
        p.n_iter = math.ceil(len(prompts) / p.batch_size)
        p.do_not_save_grid = True
        shared.state.job_count = p.n_iter
        if prompt_type == "positive":
            p.prompt = prompts
        else:
            p.negative_prompt = prompts
        p.seed = [p.seed + (i if different_seeds else 0) for i in range(len(prompts))]
        p.prompt_for_display = original
        processed = process_images(p)
        pictures = processed.images[processed.index_of_first_image:]
        infotexts = processed.infotexts[processed.index_of_first_image:]
        if not pictures:
            return processed
        grid = images.image_grid(pictures, rows=1 << ((len(parts) - 1) // 2))
        grid = images.draw_prompt_matrix(grid, pictures[0].width, pictures[0].height, parts, int(margin_size or 0))
        processed.images = [grid, *pictures]
        processed.infotexts = [infotexts[0], *infotexts]
        processed.index_of_first_image = 1
        if shared.opts.grid_save and p.outpath_grids:
            processed.grid_path = images.save_grid(grid, p.outpath_grids, infotexts[0] if shared.opts.enable_pnginfo
                                                   else None, shared.opts.grid_format)
        return processed

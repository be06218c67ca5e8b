"""Prompts from file or textbox (A1111's built-in script): one generation per line; a line may carry A1111's
command-line style arguments (`--prompt "a cat" --steps 10 --seed 5 …`), parsed with shlex."""
import copy
import random
import shlex

import gradio as gr

from modules import scripts, shared
from modules.processing import Processed, process_images
from modules.request_types import RequestError
from modules.sampling import samplers


def process_string_tag(tag):
    return tag


def process_int_tag(tag):
    return int(tag)


def process_float_tag(tag):
    return float(tag)


def process_boolean_tag(tag):
    return tag.lower() == "true"


def process_sampler_tag(tag):
    try:
        return samplers.get_sampler(tag).name
    except ValueError:
        raise ValueError(f"unknown sampler {tag!r}; valid: {', '.join(samplers.sampler_names())}") from None


PROMPT_TAGS = {
    "sd_model": process_string_tag, "outpath_samples": process_string_tag, "outpath_grids": process_string_tag,
    "prompt_for_display": process_string_tag, "prompt": process_string_tag, "negative_prompt": process_string_tag,
    "styles": process_string_tag, "seed": process_int_tag, "subseed_strength": process_float_tag,
    "subseed": process_int_tag, "seed_resize_from_h": process_int_tag, "seed_resize_from_w": process_int_tag,
    "sampler_index": process_int_tag, "sampler_name": process_sampler_tag, "batch_size": process_int_tag,
    "n_iter": process_int_tag, "steps": process_int_tag, "cfg_scale": process_float_tag, "width": process_int_tag,
    "height": process_int_tag, "restore_faces": process_boolean_tag, "tiling": process_boolean_tag,
    "do_not_save_samples": process_boolean_tag, "do_not_save_grid": process_boolean_tag,
}
TEXT_TAGS = ("prompt", "negative_prompt")  # may run over several words without quotes


def cmdargs(line: str) -> dict:
    """`--name value` pairs of one line; raises ValueError naming what is wrong."""
    args = shlex.split(line)
    res, pos = {}, 0
    while pos < len(args):
        arg = args[pos]
        if not arg.startswith("--"):
            raise ValueError(f"must start with \"--\": {arg}")
        if pos + 1 >= len(args):
            raise ValueError(f"missing argument for command line option {arg}")
        tag = arg[2:]
        if tag in TEXT_TAGS:
            words, pos = [args[pos + 1]], pos + 2
            while pos < len(args) and not args[pos].startswith("--"):
                words.append(args[pos])
                pos += 1
            res[tag] = " ".join(words)
            continue
        func = PROMPT_TAGS.get(tag)
        if func is None:
            raise ValueError(f"unknown commandline option: {arg}")
        res[tag] = func(args[pos + 1])
        pos += 2
    if "styles" in res:
        res["styles"] = [s.strip() for s in res["styles"].split(",") if s.strip()]
    return res


def parse_lines(text: str) -> list[dict]:
    jobs = []
    for number, line in enumerate((x.strip() for x in str(text or "").splitlines()), start=1):
        if not line:
            continue
        if line.startswith("--"):
            try:
                jobs.append(cmdargs(line))
            except ValueError as e:
                raise RequestError(f"Prompts from file: line {number}: {e}") from None
        else:
            jobs.append({"prompt": line})
    return jobs


class Script(scripts.Script):
    def title(self):
        return "Prompts from file or textbox"

    def ui(self, is_img2img):
        checkbox_iterate = gr.Checkbox(label="Iterate seed every line", value=False,
                                       elem_id=self.elem_id("checkbox_iterate"))
        checkbox_iterate_batch = gr.Checkbox(label="Use same random seed for all lines", value=False,
                                             elem_id=self.elem_id("checkbox_iterate_batch"))
        prompt_position = gr.Radio(["start", "end"], label="Insert prompts at the", value="start",
                                   elem_id=self.elem_id("prompt_position"))
        prompt_txt = gr.Textbox(label="List of prompt inputs", lines=1, elem_id=self.elem_id("prompt_txt"))
        file = gr.File(label="Upload prompt inputs", type="binary", elem_id=self.elem_id("file"))
        file.change(fn=self._load_file, inputs=[file], outputs=[file, prompt_txt], show_progress="hidden")
        return [checkbox_iterate, checkbox_iterate_batch, prompt_position, prompt_txt]

    @staticmethod
    def _load_file(data):
        if data is None:
            return None, gr.update()
        try:
            text = data.decode("utf8") if isinstance(data, bytes) else open(data, encoding="utf8").read()
        except (UnicodeDecodeError, OSError) as e:
            gr.Warning(f"Could not read the prompt file: {e}")
            return None, gr.update()
        return None, text

    def run(self, p, checkbox_iterate, checkbox_iterate_batch, prompt_position, prompt_txt: str):
        jobs = parse_lines(prompt_txt)
        if not jobs:
            raise RequestError("Prompts from file: the list of prompt inputs is empty")
        p.do_not_save_grid = True
        if (checkbox_iterate or checkbox_iterate_batch) and p.seed == -1:
            p.seed = int(random.randrange(4294967294))
        shared.state.job_count = sum(job.get("n_iter", p.n_iter) for job in jobs)
        pictures, all_prompts, infotexts, all_seeds = [], [], [], []
        for args in jobs:
            if shared.state.interrupted:
                break
            shared.state.job = f"{len(all_prompts) + 1} out of {len(jobs)} lines"
            copy_p = copy.copy(p)
            for k, v in args.items():
                if k == "sd_model":
                    copy_p.override_settings["sd_model_checkpoint"] = v
                else:
                    setattr(copy_p, k, v)
            if args.get("prompt") and p.prompt:
                copy_p.prompt = f"{args['prompt']} {p.prompt}" if prompt_position == "start" else \
                    f"{p.prompt} {args['prompt']}"
            if args.get("negative_prompt") and p.negative_prompt:
                copy_p.negative_prompt = f"{args['negative_prompt']} {p.negative_prompt}" \
                    if prompt_position == "start" else f"{p.negative_prompt} {args['negative_prompt']}"
            proc = process_images(copy_p)
            first = proc.index_of_first_image
            pictures += proc.images[first:]
            infotexts += proc.infotexts[first:]
            all_prompts += proc.all_prompts
            all_seeds += proc.all_seeds
            if checkbox_iterate:
                p.seed = p.seed + (p.batch_size * p.n_iter)
        return Processed(p, pictures, p.seed, infotexts[0] if infotexts else "", all_prompts=all_prompts,
                         all_seeds=all_seeds, infotexts=infotexts)

"""X/Y/Z plot (A1111's built-in script): one generation per combination of up to three axes' values, assembled into
labelled grids. Written only against the extension API (modules.processing / scripts / shared / images)."""

import copy
import itertools
import os
import random
from dataclasses import dataclass
from typing import Any, Callable

import gradio as gr
from PIL import Image

from builtin_scripts.axis_values import AxisValueError, parse_values
from modules import images, scripts, shared
from modules.controlnet import preprocessors
from modules.processing import Processed, fix_seed
from modules.processing_compat import process_images_many
from modules.request_types import RequestError
from modules.sampling import samplers


# ---------------------------------------------------------------------------------------------------------------
# Axis types


def apply_field(name: str) -> Callable:
    def apply(p, value, values):
        setattr(p, name, value)
    return apply


def apply_prompt(p, value, values):
    """Prompt S/R: the first value is the search string; each cell puts its value in its place."""
    p.prompt = p.prompt.replace(values[0], value)
    p.negative_prompt = p.negative_prompt.replace(values[0], value)


def apply_checkpoint(p, value, values):
    p.override_settings["sd_model_checkpoint"] = value


def apply_size(p, value, values):
    width, height = parse_size(value)
    p.width, p.height = width, height


def parse_size(value: str) -> tuple[int, int]:
    parts = str(value).lower().replace(" ", "").split("x")
    if len(parts) != 2 or not all(x.isdigit() for x in parts):
        raise AxisValueError(f"Size: {value!r} is not WIDTHxHEIGHT (e.g. 512x768)")
    return int(parts[0]), int(parts[1])


def do_nothing(p, value, values):
    pass


def format_value_add_label(opt: "AxisOption", value) -> str:
    if isinstance(value, float):
        value = round(value, 8)
    return f"{opt.label}: {value}"


def format_value(opt: "AxisOption", value) -> str:
    return str(value)


def format_remove_path(opt: "AxisOption", value) -> str:
    return os.path.basename(str(value))


def format_nothing(opt: "AxisOption", value) -> str:
    return ""


def _match_by_name(label: str, values: list[str], valid: list[str], aliases: Callable[[str], list[str]]) -> list[str]:
    """Each value as the valid choice it names (any case, or one of `aliases`); a clear error otherwise."""
    out = []
    for value in values:
        want = value.strip().lower()
        found = next((v for v in valid if want in (a.lower() for a in [v, *aliases(v)])), None)
        if found is None:
            raise RequestError(f"{label}: unknown value {value!r}; valid values: {', '.join(valid)}")
        out.append(found)
    return out


def confirm_samplers(opt, values: list[str]) -> list[str]:
    return _match_by_name(opt.label, values, samplers.sampler_names(), lambda v: list(samplers.get_sampler(v).aliases))


def confirm_schedulers(opt, values: list[str]) -> list[str]:
    return _match_by_name(opt.label, values, samplers.schedule_type_labels(), lambda v: [
        samplers.get_schedule_type(v).name, *samplers.get_schedule_type(v).aliases])


def _checkpoint_aliases(title: str) -> list[str]:
    name = title.rsplit(" [", 1)[0]
    return [name, os.path.splitext(os.path.basename(name))[0]]


def confirm_checkpoints(opt, values: list[str]) -> list[str]:
    return _match_by_name(opt.label, values, shared.list_checkpoint_tiles(), _checkpoint_aliases)


def confirm_prompt(opt, values: list[str], p=None) -> list[str]:
    if p is not None and values and values[0] not in p.prompt and values[0] not in p.negative_prompt:
        raise RequestError(f"Prompt S/R did not find {values[0]!r} in prompt or negative prompt.")
    return values


def confirm_sizes(opt, values: list[str]) -> list[str]:
    for value in values:
        parse_size(value)
    return values


CONTROL_MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")
RESIZE_MODES = ("Just Resize", "Crop and Resize", "Resize and Fill")


def apply_controlnet(attribute: str) -> Callable:
    def apply(p, value, values):
        setattr(p, attribute, value)
    return apply


def confirm_bools(opt, values: list[str]) -> list[bool]:
    out = []
    for value in values:
        word = str(value).strip().lower()
        if word not in ("true", "false", "1", "0"):
            raise RequestError(f"{opt.label}: {value!r} is not True or False")
        out.append(word in ("true", "1"))
    return out


def controlnet_models() -> list[str]:
    library = getattr(shared.engine, "controlnets", None) if shared.engine is not None else None
    return library.titles(refresh=True) if library is not None else []


def confirm_controlnet_models(opt, values: list[str]) -> list[str]:
    return _match_by_name(opt.label, values, controlnet_models(), lambda title: [title.rsplit(" [", 1)[0]])


def confirm_preprocessors(opt, values: list[str]) -> list[str]:
    names = [pre.name for pre in preprocessors.all_sorted()]
    return _match_by_name(opt.label, values, names, lambda name: [preprocessors.get(name).label])


@dataclass
class AxisOption:
    label: str
    type: type
    apply: Callable
    format_value: Callable = format_value_add_label
    confirm: Callable | None = None
    cost: float = 0.0  # costlier axes change least often (a checkpoint switch loads a model)
    choices: Callable[[], list[str]] | None = None
    prepare: Callable[[str], list] | None = None  # A1111's: the values text → the values (instead of parsing it)
    only: str | None = None  # "img2img" / "txt2img"; None: both tabs


@dataclass
class AxisOptionImg2Img(AxisOption):
    only: str | None = "img2img"


@dataclass
class AxisOptionTxt2Img(AxisOption):
    only: str | None = "txt2img"


# A1111's module-level list: extensions append their own axes to it (ADetailer, FreeU, neutral prompt, …).
axis_options = [
    AxisOption("Nothing", str, do_nothing, format_value=format_nothing),
    AxisOption("Seed", int, apply_field("seed")),
    AxisOption("Var. seed", int, apply_field("subseed")),
    AxisOption("Var. strength", float, apply_field("subseed_strength")),
    AxisOption("Steps", int, apply_field("steps")),
    AxisOption("CFG Scale", float, apply_field("cfg_scale")),
    AxisOption("Distilled CFG Scale", float, apply_field("distilled_cfg_scale")),  # Forge's axis (Flux dev)
    AxisOption("Prompt S/R", str, apply_prompt, format_value=format_value, confirm=confirm_prompt),
    AxisOption("Sampler", str, apply_field("sampler_name"), format_value=format_value, confirm=confirm_samplers,
               choices=samplers.sampler_names),
    AxisOption("Schedule type", str, apply_field("scheduler"), confirm=confirm_schedulers,
               choices=samplers.schedule_type_labels),
    AxisOption("Checkpoint name", str, apply_checkpoint, format_value=format_remove_path,
               confirm=confirm_checkpoints, cost=1.0, choices=shared.list_checkpoint_tiles),
    AxisOption("Denoising", float, apply_field("denoising_strength")),
    AxisOption("Size", str, apply_size, format_value=format_value, confirm=confirm_sizes),
    # The sd-webui-controlnet extension's axes (built in here): they set its `p.control_net_*` script-control
    # attributes, which apply to every ControlNet unit of the request ("Enabled": the first).
    AxisOption("[ControlNet] Enabled", str, apply_controlnet("control_net_enabled"), confirm=confirm_bools,
               choices=lambda: ["False", "True"]),
    AxisOption("[ControlNet] Model", str, apply_controlnet("control_net_model"), format_value=format_value,
               confirm=confirm_controlnet_models, choices=controlnet_models, cost=0.9),
    AxisOption("[ControlNet] Weight", float, apply_controlnet("control_net_weight")),
    AxisOption("[ControlNet] Guidance Start", float, apply_controlnet("control_net_guidance_start")),
    AxisOption("[ControlNet] Guidance End", float, apply_controlnet("control_net_guidance_end")),
    AxisOption("[ControlNet] Control Mode", str, apply_controlnet("control_net_control_mode"),
               format_value=format_value, choices=lambda: list(CONTROL_MODES),
               confirm=lambda opt, values: _match_by_name(opt.label, values, list(CONTROL_MODES), lambda v: [])),
    AxisOption("[ControlNet] Resize Mode", str, apply_controlnet("control_net_resize_mode"),
               format_value=format_value, choices=lambda: list(RESIZE_MODES),
               confirm=lambda opt, values: _match_by_name(opt.label, values, list(RESIZE_MODES), lambda v: [])),
    AxisOption("[ControlNet] Preprocessor", str, apply_controlnet("control_net_module"), format_value=format_value,
               confirm=confirm_preprocessors, choices=lambda: [pre.name for pre in preprocessors.all_sorted()]),
    AxisOption("[ControlNet] Pre Resolution", int, apply_controlnet("control_net_pres")),
    AxisOption("[ControlNet] Pre Threshold A", float, apply_controlnet("control_net_pthr_a")),
    AxisOption("[ControlNet] Pre Threshold B", float, apply_controlnet("control_net_pthr_b")),
]
SEED_AXES = ("Seed", "Var. seed")
_OURS = frozenset(id(o) for o in axis_options)  # confirm(opt, values) → values; extensions' are A1111's confirm(p, xs)


def options_for(is_img2img: bool) -> list[AxisOption]:
    tab = "img2img" if is_img2img else "txt2img"
    return [o for o in axis_options if getattr(o, "only", None) in (None, tab)]


def find_option(options: list[AxisOption], chosen) -> AxisOption:
    """An axis by its index in the dropdown (what the UI sends) or by its label (friendlier for API callers)."""
    if isinstance(chosen, str) and not chosen.strip().lstrip("-").isdigit():
        for opt in options:
            if opt.label.lower() == chosen.strip().lower():
                return opt
        raise RequestError(f"X/Y/Z plot: unknown axis type {chosen!r}; valid: "
                           f"{', '.join(o.label for o in options)}")
    index = int(chosen or 0)
    if not 0 <= index < len(options):
        raise RequestError(f"X/Y/Z plot: axis type index {index} is out of range (0-{len(options) - 1})")
    return options[index]


# ---------------------------------------------------------------------------------------------------------------
# The script


@dataclass
class Axis:
    opt: AxisOption
    text: str
    values: list[Any]

    @property
    def labels(self) -> list[str]:
        return [self.opt.format_value(self.opt, v) for v in self.values]


class Script(scripts.Script):
    def title(self):
        return "X/Y/Z plot"

    def ui(self, is_img2img):
        self.current_axis_options = options_for(is_img2img)
        labels = [o.label for o in self.current_axis_options]
        controls = []
        for axis, default in (("x", 1), ("y", 0), ("z", 0)):
            with gr.Row():
                kind = gr.Dropdown(labels, value=labels[default], type="index", label=f"{axis.upper()} type",
                                   elem_id=self.elem_id(f"{axis}_type"))
                values = gr.Textbox(label=f"{axis.upper()} values", lines=1, elem_id=self.elem_id(f"{axis}_values"))
                values_dropdown = gr.Dropdown(label=f"{axis.upper()} values", visible=False, multiselect=True,
                                              interactive=True, choices=[], value=[])
            kind.change(self._choices_for, [kind], [values, values_dropdown], show_progress="hidden")
            controls += [kind, values, values_dropdown]
        with gr.Row(variant="compact", elem_id="axis_options"):
            draw_legend = gr.Checkbox(label="Draw legend", value=True, elem_id=self.elem_id("draw_legend"))
            keep_seeds = gr.Checkbox(label="Keep -1 for seeds", value=False, elem_id=self.elem_id("no_fixed_seeds"))
            vary = [gr.Checkbox(label=f"Vary seeds for {a}", value=False, elem_id=self.elem_id(f"vary_seeds_{a}"))
                    for a in "xyz"]
        with gr.Row(variant="compact"):
            lone = gr.Checkbox(label="Include Sub Images", value=False, elem_id=self.elem_id("include_lone_images"))
            sub_grids = gr.Checkbox(label="Include Sub Grids", value=False, elem_id=self.elem_id("include_sub_grids"))
            csv_mode = gr.Checkbox(label="Use text inputs instead of dropdowns", value=False,
                                   elem_id=self.elem_id("csv_mode"))
            margin = gr.Slider(label="Grid margins (px)", minimum=0, maximum=500, value=0, step=2,
                               elem_id=self.elem_id("margin_size"))
        return [*controls, draw_legend, lone, sub_grids, keep_seeds, *vary, margin, csv_mode]

    def _choices_for(self, index):
        opt = self.current_axis_options[index or 0]
        has_choices = opt.choices is not None
        return (gr.update(visible=not has_choices),
                gr.update(visible=has_choices, choices=opt.choices() if has_choices else [], value=[]))

    def run(self, p, x_type, x_values, x_values_dropdown, y_type, y_values, y_values_dropdown, z_type, z_values,
            z_values_dropdown, draw_legend, include_lone_images, include_sub_grids, no_fixed_seeds, vary_seeds_x,
            vary_seeds_y, vary_seeds_z, margin_size, csv_mode=False):
        options = options_for(self.is_img2img)
        if not no_fixed_seeds:
            fix_seed(p)
        if not shared.opts.return_grid:
            p.batch_size = 1
        axes = [self._axis(p, find_option(options, kind), text, dropdown, csv_mode, no_fixed_seeds)
                for kind, text, dropdown in ((x_type, x_values, x_values_dropdown),
                                             (y_type, y_values, y_values_dropdown),
                                             (z_type, z_values, z_values_dropdown))]
        vary = (vary_seeds_x, vary_seeds_y, vary_seeds_z)
        return self._plot(p, axes, vary, bool(draw_legend), bool(include_lone_images), bool(include_sub_grids),
                          int(margin_size or 0), bool(no_fixed_seeds))

    @staticmethod
    def _axis(p, opt: AxisOption, text, dropdown, csv_mode, no_fixed_seeds) -> Axis:
        if opt.label == "Nothing":
            return Axis(opt, "", [""])
        if opt.choices is not None and not csv_mode and dropdown:
            items = [str(v) for v in dropdown]
            text = ", ".join(items)
        elif getattr(opt, "prepare", None) is not None:
            items = list(opt.prepare(text))
        else:
            items = parse_values(text, opt.type, opt.label)
        try:
            values = [opt.type(v) for v in items] if opt.type in (int, float) else items
        except ValueError as e:
            raise RequestError(f"{opt.label}: {e}") from None
        if not values:
            raise RequestError(f"X/Y/Z plot: no values given for the {opt.label} axis")
        if opt.label in SEED_AXES and not no_fixed_seeds:  # -1 fixed once, so every cell of a row shares it
            values = [int(random.randrange(4294967294)) if v in (None, "", -1) else v for v in values]
        if opt.confirm is confirm_prompt:
            values = confirm_prompt(opt, values, p)
        elif opt.confirm is not None and id(opt) in _OURS:
            values = opt.confirm(opt, values)
        elif opt.confirm is not None:  # an extension's axis: A1111's confirm(p, xs) raises on a bad value
            opt.confirm(p, values)
        return Axis(opt, str(text or ""), values)

    def _plot(self, p, axes: list[Axis], vary, draw_legend, include_lone_images, include_sub_grids, margin,
              no_fixed_seeds) -> Processed:
        xs, ys, zs = (a.values for a in axes)
        cells = len(xs) * len(ys) * len(zs)
        grid_mp = round(cells * p.width * p.height / 1_000_000)  # A1111's check, before anything is sampled
        if grid_mp >= shared.opts.img_max_size_mp:
            raise RequestError(f"Resulting grid would be too large ({grid_mp} MPixels) (max configured size is "
                               f"{shared.opts.img_max_size_mp:g} MPixels: Settings → Saving images → Maximum image "
                               "size)")
        shared.state.job_count = cells * p.n_iter
        order = sorted(itertools.product(range(len(xs)), range(len(ys)), range(len(zs))),
                       key=lambda idx: [idx[k] for k in sorted(range(3), key=lambda k: -axes[k].opt.cost)])
        made = []
        for ix, iy, iz in order:
            pc = copy.copy(p)
            pc.do_not_save_grid = True
            for axis, i, vary_seed in zip(axes, (ix, iy, iz), vary):
                axis.opt.apply(pc, axis.values[i], axis.values)
                if vary_seed:
                    pc.seed = int(pc.seed) + i
            if (ix, iy, iz) == (0, 0, 0):
                pc.extra_generation_params.update(self._grid_params(axes, no_fixed_seeds))
            made.append(pc)

        def announce(n: int) -> None:
            shared.state.job = f"X/Y/Z plot: cell {n + 1} out of {cells}"

        # one after another here; on a cluster with Batch-count fan-out on, on its idle workers at once
        done = process_images_many(made, before_each=announce)
        results = {key: res for key, res in zip(order, done) if res is not None}
        return self._assemble(p, axes, results, draw_legend, include_lone_images, include_sub_grids, margin)

    def _grid_params(self, axes: list[Axis], no_fixed_seeds) -> dict[str, str]:
        params = {"Script": self.title()}
        for name, axis in zip("XYZ", axes):
            if axis.opt.label == "Nothing":
                continue
            params[f"{name} Type"] = axis.opt.label
            params[f"{name} Values"] = axis.text
            if axis.opt.label in SEED_AXES and not no_fixed_seeds:
                params[f"Fixed {name} Values"] = ", ".join(str(v) for v in axis.values)
        return params

    def _assemble(self, p, axes, results, draw_legend, include_lone_images, include_sub_grids, margin) -> Processed:
        xs, ys, zs = (a.values for a in axes)
        first = results.get((0, 0, 0))
        if first is None or not first.images:
            return Processed(p, [])
        info = first.infotexts[0]

        def cell_image(res):
            return res.images[0] if res is not None and res.images else None

        sample = next(im for r in results.values() if (im := cell_image(r)) is not None)
        blank = Image.new("RGB", sample.size)  # a cell an interrupt left out
        w, h = (max(sizes) for sizes in zip(*(cell_image(r).size for r in results.values() if cell_image(r))))
        sub_grids = []
        for iz in range(len(zs)):
            cells = [cell_image(results.get((ix, iy, iz))) or blank for iy in range(len(ys)) for ix in range(len(xs))]
            grid = images.image_grid(cells, rows=len(ys))
            if draw_legend:
                hor = [[images.GridAnnotation(t)] for t in axes[0].labels]
                ver = [[images.GridAnnotation(t)] for t in axes[1].labels]
                grid = images.draw_grid_annotations(grid, w, h, hor, ver, margin)
            sub_grids.append(grid)
        grids = sub_grids
        if len(zs) > 1:
            gw, gh = (max(sizes) for sizes in zip(*(g.size for g in sub_grids)))
            z_grid = images.image_grid(sub_grids, rows=1)
            if draw_legend:
                z_grid = images.draw_grid_annotations(z_grid, gw, gh, [[images.GridAnnotation(t)] for t in
                                                                        axes[2].labels], [[images.GridAnnotation()]])
            grids = [z_grid, *sub_grids] if include_sub_grids else [z_grid]
        if shared.opts.grid_save and not p.do_not_save_grid and p.outpath_grids:
            images.save_grid(grids[0], p.outpath_grids, info if shared.opts.enable_pnginfo else None,
                             shared.opts.grid_format)
        out_images, infotexts = list(grids), [info] * len(grids)
        if include_lone_images:
            for key in sorted(results, key=lambda k: (k[2], k[1], k[0])):
                res = results[key]
                out_images += res.images[res.index_of_first_image:]
                infotexts += res.infotexts[res.index_of_first_image:]
        all_seeds = [s for r in results.values() for s in r.all_seeds]
        all_prompts = [s for r in results.values() for s in r.all_prompts]
        processed = Processed(p, out_images, first.seed, info, infotexts=infotexts, all_prompts=all_prompts,
                              all_seeds=all_seeds, index_of_first_image=len(grids))
        processed.interrupted = shared.state.interrupted
        return processed

"""A1111's processing API for extensions: the `p` object, `Processed`, `process_images(p)`.

Compatibility shim (our own code uses typed requests and `GenerationResult`). `p` is a view of one typed request:
reading or writing a request field (`p.steps`, `p.prompt`, `p.override_settings`, …) reads or writes the request, so
whatever a script changes is what gets generated. Run-time fields A1111 scripts use (`all_prompts`, `all_seeds`,
`prompts`, `seeds`, `extra_generation_params`, `iteration`, `batch_index`, …) live on `p` and are exchanged with the
batch loop through `ScriptHooks`.
"""
from __future__ import annotations

import copy
import dataclasses
import random
import sys
from typing import Any

import numpy as np
import torch
from PIL import Image

from modules import script_callbacks
from modules.processing import GenerationResult, ProcessingHooks, RunState
from modules.request_types import GenerationRequest, Img2ImgRequest, RequestError, Txt2ImgRequest
from modules.sampling.loop import SamplingHooks
from modules.scripts import PostprocessBatchListArgs, PostprocessImageArgs, PostProcessMaskOverlayArgs

_RUNTIME_DEFAULTS: dict[str, Any] = {
    "all_prompts": None, "all_negative_prompts": None, "all_seeds": None, "all_subseeds": None,
    "all_hr_prompts": None, "all_hr_negative_prompts": None, "prompts": None, "negative_prompts": None,
    "seeds": None, "subseeds": None, "iteration": 0, "batch_index": 0, "scripts": None,
    "outpath_samples": None, "outpath_grids": None, "do_not_reload_embeddings": False, "user": None,
    "sampler": None, "rng": None, "comments": None, "color_corrections": None, "cached_c": [None, None],
    "cached_uc": [None, None], "is_using_inpainting_conditioning": False, "engine": None, "sd_model_hash": None,
    "sd_vae_name": None, "sd_vae_hash": None, "is_hr_pass": False, "modified_noise": None, "main_prompt": None,
    "main_negative_prompt": None, "firstpass_image": None,
}


class ScriptError(RuntimeError):
    """A selectable script's `run` failed; the message names the script."""


class StableDiffusionProcessing:
    """A1111's `p` over a typed request (see the module docstring)."""

    request_class: type[GenerationRequest] = Txt2ImgRequest

    def __init__(self, request: GenerationRequest | None = None, engine=None, sd_model=None, **kwargs):
        names = {f.name for f in dataclasses.fields(self.request_class)}
        req = request if request is not None else self.request_class(
            **{k: v for k, v in kwargs.items() if k in names})
        object.__setattr__(self, "_req", req)
        # `p.script_args` is A1111's flat list of every script's arguments, not the request's `script_args` (the
        # selected script's, as an API client sent them)
        object.__setattr__(self, "_fields", {f.name for f in dataclasses.fields(req)} - {"script_args"})
        object.__setattr__(self, "script_args", kwargs.get("script_args"))
        for name, value in _RUNTIME_DEFAULTS.items():
            if name not in self._fields:
                object.__setattr__(self, name, copy.copy(value))
        object.__setattr__(self, "extra_generation_params", {})
        object.__setattr__(self, "engine", engine)
        object.__setattr__(self, "_sd_model", sd_model)
        for k, v in kwargs.items():
            if k not in names:
                object.__setattr__(self, k, v)

    # Request fields read and write through to the request.
    def __getattr__(self, name: str):
        req = object.__getattribute__(self, "_req")
        if name in object.__getattribute__(self, "_fields"):
            return getattr(req, name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __setattr__(self, name: str, value) -> None:
        if name in object.__getattribute__(self, "_fields"):
            setattr(object.__getattribute__(self, "_req"), name, value)
        else:
            object.__setattr__(self, name, value)

    def __copy__(self):
        """Scripts copy `p` and change the copy (X/Y/Z plot): the copy gets its own request and lists."""
        clone = object.__new__(type(self))
        for k, v in self.__dict__.items():
            object.__setattr__(clone, k, copy.copy(v) if isinstance(v, (list, dict)) else v)
        req = copy.copy(self._req)
        req.override_settings = dict(req.override_settings or {})
        object.__setattr__(clone, "_req", req)
        return clone

    @property
    def request(self) -> GenerationRequest:
        return self._req

    @property
    def script_args_value(self):
        """A1111 ≥ 1.6 keeps the flat script arguments here; `script_args` is the same list."""
        return self.script_args

    @script_args_value.setter
    def script_args_value(self, value) -> None:
        self.script_args = value

    @property
    def sd_model(self):
        from modules.a1111.sd_model import view

        if self._sd_model is None and self.engine is not None:
            return view(self.engine.models.current)
        return view(self._sd_model)

    @sd_model.setter
    def sd_model(self, value) -> None:
        object.__setattr__(self, "_sd_model", value)

    @property
    def sampler_name(self) -> str:
        return self._req.effective_sampler

    @sampler_name.setter
    def sampler_name(self, value) -> None:
        self._req.sampler_name = value

    @property
    def seed_resize_from_w(self):
        return self._req.seed_resize_from_w

    @seed_resize_from_w.setter
    def seed_resize_from_w(self, value):
        self._req.seed_resize_from_w = value

    @property
    def seed_resize_from_h(self):
        return self._req.seed_resize_from_h

    @seed_resize_from_h.setter
    def seed_resize_from_h(self, value):
        self._req.seed_resize_from_h = value

    def close(self) -> None:
        """A1111 frees cached conditioning here; nothing is held on `p` in our design."""


class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    request_class = Txt2ImgRequest


class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    request_class = Img2ImgRequest

    @property
    def image_mask(self):
        """A1111's name for the request's `mask`."""
        return self._req.mask

    @image_mask.setter
    def image_mask(self, value) -> None:
        self._req.mask = value


def processing_object(req: GenerationRequest, engine=None) -> StableDiffusionProcessing:
    cls = StableDiffusionProcessingImg2Img if isinstance(req, Img2ImgRequest) else StableDiffusionProcessingTxt2Img
    p = cls(req, engine=engine)
    if engine is not None:  # where scripts save what they assemble themselves (grids, combined tiles)
        dirs = engine._outputs(req)
        p.outpath_samples, p.outpath_grids = str(dirs.samples), str(dirs.grids)
    return p


class Processed(GenerationResult):
    """A1111's `Processed(p, images_list, seed, info, …)`, for scripts that assemble their own result."""

    def __init__(self, p, images_list, seed=-1, info="", subseed=None, all_prompts=None, all_negative_prompts=None,
                 all_seeds=None, all_subseeds=None, index_of_first_image=0, infotexts=None, comments="",
                 extra_images_list=()):
        req = p.request if isinstance(p, StableDiffusionProcessing) else p
        images = list(images_list or [])
        model = p.sd_model if isinstance(p, StableDiffusionProcessing) else None
        seed = seed if seed not in (None, -1) else (p.all_seeds[0] if getattr(p, "all_seeds", None) else req.seed)
        subseed = subseed if subseed is not None else (
            p.all_subseeds[0] if getattr(p, "all_subseeds", None) else req.subseed)
        super().__init__(
            images=images, infotexts=list(infotexts) if infotexts else [info] * len(images),
            all_prompts=all_prompts or getattr(p, "all_prompts", None) or [req.prompt],
            all_negative_prompts=all_negative_prompts or getattr(p, "all_negative_prompts", None) or [
                req.negative_prompt],
            all_seeds=all_seeds or getattr(p, "all_seeds", None) or [seed],
            all_subseeds=all_subseeds or getattr(p, "all_subseeds", None) or [subseed],
            seed=seed, subseed=subseed, subseed_strength=req.subseed_strength, width=req.width, height=req.height,
            sampler_name=req.effective_sampler, scheduler=req.scheduler or "Automatic", cfg_scale=req.cfg_scale,
            steps=req.steps, batch_size=req.batch_size, n_iter=req.n_iter,
            denoising_strength=getattr(req, "denoising_strength", None),
            sd_model_name=getattr(model, "name", "") or "", sd_model_hash=getattr(model, "shorthash", None),
            sd_vae_name=getattr(model, "vae_name", None), sd_vae_hash=getattr(model, "vae_hash", None),
            clip_skip=1, prompt=req.prompt, negative_prompt=req.negative_prompt,
            extra_generation_params=dict(getattr(p, "extra_generation_params", {}) or {}),
            index_of_first_image=index_of_first_image,
        )
        self.comments = comments
        self.extra_images = list(extra_images_list or [])
        if not self.infotexts and info:
            self.infotexts = [info]

    @property
    def info(self) -> str:
        return self.infotexts[0] if self.infotexts else ""


def get_fixed_seed(seed) -> int:
    if seed == "" or seed is None:
        seed = -1
    elif isinstance(seed, str):
        try:
            seed = int(seed)
        except ValueError:
            seed = -1
    if seed == -1:
        return int(random.randrange(4294967294))
    return int(seed)


def fix_seed(p) -> None:
    p.seed = get_fixed_seed(p.seed)
    p.subseed = get_fixed_seed(p.subseed)


def create_infotext(p, all_prompts, all_seeds, all_subseeds, comments=None, iteration=0, position_in_batch=0,
                    *args, **kwargs) -> str:
    """A1111's infotext for image `position_in_batch` of batch `iteration`, from `p`'s fields."""
    from modules import infotext as infotext_mod

    index = position_in_batch + iteration * p.batch_size
    params = {"Steps": p.steps, "Sampler": p.sampler_name, "CFG scale": p.cfg_scale,
              "Seed": all_seeds[index] if index < len(all_seeds) else p.seed, "Size": f"{p.width}x{p.height}",
              **(p.extra_generation_params or {})}
    prompt = all_prompts[index] if index < len(all_prompts) else p.prompt
    negatives = p.all_negative_prompts or [p.negative_prompt]
    return infotext_mod.create_infotext(prompt, negatives[min(index, len(negatives) - 1)], params)


def process_images(p: StableDiffusionProcessing) -> GenerationResult:
    """Generate what `p` describes, with its always-on scripts taking part (A1111's process_images)."""
    if p.engine is None:  # a p object an extension made itself: the engine the web UI runs
        from modules.a1111._engine import engine

        p.engine = engine()
    runner = p.scripts
    if runner is not None:
        runner.before_process(p)
    per_image = _take_per_image_lists(p)
    fix_seed(p)
    hooks = ScriptHooks(p, per_image)
    _take_controlnet_units_from_script_args(p)
    _apply_controlnet_script_control(p)
    try:
        result = p.engine.process(p.request, hooks=hooks)
    finally:
        for name, values in per_image.items():
            setattr(p, name, values)
        if hooks.activated_networks is not None:
            sys.modules["modules.a1111.extra_networks"].deactivate(p, hooks.activated_networks)
    if runner is not None:
        runner.postprocess(p, result)
    return result


def process_images_many(ps: list, before_each=None) -> list:
    """Several `p` objects (the X/Y/Z plot's cells), in order: with a cluster whose Batch-count fan-out is on and
    idle workers, at once on those workers — when nothing of the head's scripts acts on them (no always-on script
    with a generation hook, no per-image lists) — else one after another here (`before_each(i)` before each;
    stopping at an interrupt: the rest are None)."""
    remote = _cluster_for(ps)
    if remote is not None:
        for p in ps:
            if p.scripts is not None:
                p.scripts.before_process(p)
            fix_seed(p)
            _take_controlnet_units_from_script_args(p)
            _apply_controlnet_script_control(p)
        state = ps[0].engine.state
        from modules.request_types import BUILTIN_ALWAYSON_SCRIPTS

        cells = [dataclasses.replace(  # the cell alone: the script that made it runs here, not on the worker
            p.request, script_name=None, script_args=[], alwayson_scripts={
                k: v for k, v in (p.request.alwayson_scripts or {}).items() if k.lower() in BUILTIN_ALWAYSON_SCRIPTS})
            for p in ps]
        results = remote.run_many(cells, on_done=lambda i: state.next_job())
        if results is not None:
            for p, result in zip(ps, results):
                if result is not None and p.scripts is not None:
                    p.scripts.postprocess(p, result)
            return results
    results = [None] * len(ps)
    for i, p in enumerate(ps):
        engine = p.engine
        if engine is not None and engine.state.stopping_generation:
            break
        if before_each is not None:
            before_each(i)
        results[i] = process_images(p)
    return results


def _cluster_for(ps: list):
    """The cluster executor that may run these `p` objects on its workers, or None."""
    if not ps or ps[0].engine is None:
        return None
    engine = ps[0].engine
    executor = getattr(getattr(engine, "visible_queue", None), "executor", None)
    if executor is None or not hasattr(executor, "run_many") or not engine.settings.get("cluster_fan_out", False):
        return None
    from modules.cluster.executor import acts_on_generation

    for p in ps:
        runner = p.scripts
        if runner is not None and any(acts_on_generation(s) for s in getattr(runner, "alwayson_scripts", []) or []):
            return None
        if any(isinstance(getattr(p, name, None), (list, tuple)) for name in _PER_IMAGE_FIELDS):
            return None
    return executor


# The sd-webui-controlnet extension's "script control" attributes of `p` (what its X/Y/Z axes and other scripts set):
# attribute → unit field. A list gives one value per unit; a single value applies to every unit ("enabled": unit 0).
CONTROLNET_SCRIPT_FIELDS = {
    "control_net_enabled": "enabled", "control_net_module": "module", "control_net_model": "model",
    "control_net_weight": "weight", "control_net_resize_mode": "resize_mode", "control_net_lowvram": "low_vram",
    "control_net_pres": "processor_res", "control_net_pthr_a": "threshold_a", "control_net_pthr_b": "threshold_b",
    "control_net_guidance_start": "guidance_start", "control_net_guidance_end": "guidance_end",
    "control_net_guidance_strength": "guidance_end", "control_net_control_mode": "control_mode",
    "control_net_pixel_perfect": "pixel_perfect",
}


def _controlnet_script(runner):
    if runner is None or not getattr(runner, "alwayson_scripts", None):
        return None
    from modules.a1111.controlnet_external_code import find_cn_script

    return find_cn_script(runner)


def _with_controlnet_units(runner, script_args: list, req: GenerationRequest):
    """The runner and arguments `p` gets: the request's units as the ControlNet script's arguments, as in A1111.

    The script's slice is appended after every other argument in a per-request view of the runner (the shared
    runner and the other scripts' slices stay as they are, whatever an extension then does with the units)."""
    cn = _controlnet_script(runner)
    if cn is None:
        return runner, script_args
    from modules.a1111.controlnet_external_code import ControlNetUnit, _padded

    units = _padded([ControlNetUnit.from_request(u) for u in req.controlnet_units])
    mine = copy.copy(cn)
    mine.args_from, mine.args_to = len(script_args), len(script_args) + len(units)
    view = copy.copy(runner)
    view.alwayson_scripts = [s for s in runner.alwayson_scripts if s is not cn] + [mine]
    view.scripts = [s for s in runner.scripts if s is not cn] + [mine]
    return view, list(script_args) + units


def _take_controlnet_units_from_script_args(p) -> None:
    """The units in the ControlNet script's arguments (what extensions set through external_code) become the
    request's, checked as an API unit's are; a runner or slice without units leaves the request's own."""
    cn = _controlnet_script(p.scripts)
    args = p.script_args
    if cn is None or not isinstance(args, (list, tuple)):
        return
    from modules.a1111.controlnet_external_code import units_for_request

    units = units_for_request(list(args), cn)
    if units is not None:
        p.request.controlnet_units = units


def _apply_controlnet_script_control(p) -> None:
    """Values scripts set as `p.control_net_*` replace those fields of the request's ControlNet units (checked as
    an API unit's would be)."""
    given = {attr: p.__dict__[attr] for attr in CONTROLNET_SCRIPT_FIELDS if p.__dict__.get(attr) is not None}
    units = list(p.request.controlnet_units)
    if not given or not units:
        return
    from modules.controlnet.unit_request import ControlNetUnitRequest

    changed = []
    for i, unit in enumerate(units):
        data = unit.to_dict()  # images and region mask are carried over as they are
        for attr, value in given.items():
            if isinstance(value, (list, tuple)):
                value = value[i] if i < len(value) else None
            elif attr == "control_net_enabled" and i > 0:
                value = None
            if value is not None:
                data[CONTROLNET_SCRIPT_FIELDS[attr]] = value
        new = ControlNetUnitRequest.from_dict(data, field_prefix=f"controlnet[{i}]")
        new.images, new.effective_region_mask = unit.images, unit.effective_region_mask
        changed.append(new)
    p.request.controlnet_units = changed


_PER_IMAGE_FIELDS = {"prompt": "all_prompts", "negative_prompt": "all_negative_prompts", "seed": "all_seeds",
                     "subseed": "all_subseeds"}


def _take_per_image_lists(p) -> dict[str, list]:
    """A1111 lets scripts set `p.prompt`, `p.negative_prompt`, `p.seed` or `p.subseed` to one value per image
    (Prompt matrix); the request keeps the first and the list becomes `all_prompts`/`all_seeds`/…"""
    taken = {}
    for name in _PER_IMAGE_FIELDS:
        value = getattr(p, name)
        if isinstance(value, (list, tuple)):
            taken[name] = list(value)
            setattr(p, name, value[0] if value else ("" if "prompt" in name else -1))
    return taken


def run_with_scripts(engine, runner, req: GenerationRequest, script_args: list | None = None) -> GenerationResult:
    """A request with the tab's scripts: the selected script's `run` if one is chosen, else process_images."""
    from_ui = script_args is not None
    if script_args is None:
        try:
            script_args = runner.args_for_request(req.script_name, req.script_args,
                                                   req.external_alwayson_scripts())
        except LookupError as e:
            raise RequestError(str(e)) from None
    p = processing_object(req, engine)
    p.scripts, p.script_args = _with_controlnet_units(runner, list(script_args), req)
    runner.setup_scrips(p, is_ui=from_ui)
    index = script_args[0] if script_args else 0
    if index:
        title = runner.titles[int(index) - 1] if 0 < int(index) <= len(runner.titles) else str(index)
        try:
            processed = runner.run(p, *script_args)
        except (RequestError, ScriptError):
            raise
        except Exception as e:  # noqa: BLE001 - the user sees which script failed and why
            script_callbacks.report_error("run", title, e)
            raise ScriptError(f"script {title!r} failed: {type(e).__name__}: {e}") from e
        if processed is not None:
            return processed
    return process_images(p)


# ---------------------------------------------------------------------------------------------------------------
# The bridge between the batch loop and the scripts


def _to_tensor(images: list[Image.Image]) -> torch.Tensor:
    arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def _to_image(x: torch.Tensor) -> Image.Image:
    array = (x.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0).round().astype(np.uint8)
    return Image.fromarray(array)


class ScriptHooks(ProcessingHooks):
    """Runs the always-on scripts' hooks and the extension callbacks at the batch loop's hook points."""

    def __init__(self, p: StableDiffusionProcessing, per_image: dict[str, list] | None = None):
        self.p = p
        self.runner = p.scripts
        self.per_image = per_image or {}
        self.activated_networks: dict | None = None

    def _batch_kwargs(self, run: RunState) -> dict:
        p = self.p
        return {"batch_number": run.iteration, "prompts": p.prompts, "seeds": p.seeds, "subseeds": p.subseeds}

    def process(self, run: RunState) -> None:
        p = self.p
        p.all_prompts, p.all_negative_prompts = run.all_prompts, run.all_negative_prompts
        p.all_seeds, p.all_subseeds = run.all_seeds, run.all_subseeds
        for name, values in self.per_image.items():
            setattr(p, _PER_IMAGE_FIELDS[name], [get_fixed_seed(v) for v in values] if "seed" in name else values)
        p.extra_generation_params.update(run.extra)
        run.extra = p.extra_generation_params
        if self.runner is not None:
            self.runner.process(p)
        run.all_prompts, run.all_negative_prompts = list(p.all_prompts), list(p.all_negative_prompts)
        run.batch_size, run.n_iter = int(p.batch_size), int(p.n_iter)
        total = max(len(run.all_prompts), run.batch_size * run.n_iter)
        run.all_prompts += [run.all_prompts[-1]] * (total - len(run.all_prompts)) if run.all_prompts else []
        if len(run.all_negative_prompts) < len(run.all_prompts):
            last = run.all_negative_prompts[-1] if run.all_negative_prompts else ""
            run.all_negative_prompts += [last] * (len(run.all_prompts) - len(run.all_negative_prompts))
        run.all_seeds, run.all_subseeds = list(p.all_seeds), list(p.all_subseeds)
        for seeds in (run.all_seeds, run.all_subseeds):
            while len(seeds) < len(run.all_prompts):
                seeds.append(seeds[-1] + 1 if seeds else 0)
        p.all_prompts, p.all_negative_prompts = run.all_prompts, run.all_negative_prompts
        p.all_seeds, p.all_subseeds = run.all_seeds, run.all_subseeds

    def before_batch(self, run: RunState) -> None:
        p = self.p
        p.iteration = run.iteration
        p.prompts, p.negative_prompts, p.seeds, p.subseeds = run.prompts, run.negative_prompts, run.seeds, run.subseeds
        if self.runner is not None:
            self.runner.before_process_batch(p, **self._batch_kwargs(run))
        run.prompts, run.negative_prompts, run.seeds, run.subseeds = p.prompts, p.negative_prompts, p.seeds, p.subseeds

    def process_batch(self, run: RunState) -> None:
        p = self.p
        self._activate_extension_networks()
        if self.runner is not None:
            self.runner.after_extra_networks_activate(p, **self._batch_kwargs(run))
            self.runner.process_batch(p, **self._batch_kwargs(run))
            self.runner.process_before_every_sampling(p, **self._batch_kwargs(run))
        run.prompts, run.negative_prompts, run.seeds, run.subseeds = p.prompts, p.negative_prompts, p.seeds, p.subseeds

    def _activate_extension_networks(self) -> None:
        """Network types extensions registered (`extra_networks.register_extra_network`) get A1111's
        `activate(p, params)` for this batch's tags; `deactivate` runs when the job ends (process_images)."""
        registry = sys.modules.get("modules.a1111.extra_networks")
        if registry is None or not registry.extra_network_registry:
            return
        p = self.p
        _, data = registry.parse_prompts(list(p.prompts or []))
        registry.activate(p, data)
        self.activated_networks = data

    def sampling(self) -> SamplingHooks | None:
        kinds = ("cfg_denoiser", "cfg_denoised", "cfg_after_cfg")
        return CallbackSamplingHooks() if any(script_callbacks.has(k) for k in kinds) else None

    def after_batch(self, run: RunState, images: list[Image.Image]) -> list[Image.Image]:
        runner = self.runner
        if runner is None or not images or not (runner.overrides("postprocess_batch") or
                                                runner.overrides("postprocess_batch_list")):
            return images
        x = _to_tensor(images)
        runner.postprocess_batch(self.p, x, batch_number=run.iteration)
        pp = PostprocessBatchListArgs(list(x))
        runner.postprocess_batch_list(self.p, pp, batch_number=run.iteration)
        return [_to_image(t) if isinstance(t, torch.Tensor) else t for t in pp.images]

    def image(self, run: RunState, index: int, image: Image.Image) -> Image.Image:
        if self.runner is None:
            return image
        self.p.batch_index = index
        pp = PostprocessImageArgs(image)
        self.runner.postprocess_image(self.p, pp)
        return pp.image

    def mask_overlay(self, run: RunState, index: int, mask, original):
        if self.runner is None or mask is None:
            return mask, original
        ppmo = PostProcessMaskOverlayArgs(index, mask, original)
        self.runner.postprocess_maskoverlay(self.p, ppmo)
        return ppmo.mask_for_overlay, ppmo.overlay_image

    def after_composite(self, run: RunState, index: int, image: Image.Image) -> Image.Image:
        if self.runner is None:
            return image
        self.p.batch_index = index
        pp = PostprocessImageArgs(image)
        self.runner.postprocess_image_after_composite(self.p, pp)
        return pp.image

    def before_hires(self, run: RunState) -> None:
        if self.runner is not None:
            self.p.is_hr_pass = True
            self.runner.before_hr(self.p)

    def save_image(self, save, image: Image.Image, infotext: str | None, **kw):
        params = script_callbacks.ImageSaveParams(image, self.p, str(kw.get("directory", "")),
                                                  {"parameters": infotext} if infotext else {})
        script_callbacks.before_image_saved_callback(params)
        pnginfo = dict(params.pnginfo or {})
        text = pnginfo.pop("parameters", None)
        path = save(params.image, infotext=text, pnginfo=pnginfo or None, **kw)
        params.filename = str(path)
        script_callbacks.image_saved_callback(params)
        return path


class CallbackSamplingHooks(SamplingHooks):
    """The loop's per-step hooks → A1111's cfg_denoiser / cfg_denoised / cfg_after_cfg callbacks."""

    @staticmethod
    def _text(c):
        if c is None:
            return None
        return c.embeds if c.pooled is None else {"crossattn": c.embeds, "vector": c.pooled}

    @staticmethod
    def _back(c, value):
        if c is None or value is None:
            return c
        if isinstance(value, dict):
            return dataclasses.replace(c, embeds=value.get("crossattn", c.embeds), pooled=value.get("vector", c.pooled))
        return c if value is c.embeds else dataclasses.replace(c, embeds=value)

    def before_model(self, x, sigma, step, total, cond, uncond, image_cond):
        if not script_callbacks.has("cfg_denoiser"):
            return x, cond, uncond
        params = script_callbacks.CFGDenoiserParams(x, image_cond, sigma, step, total, self._text(cond),
                                                    self._text(uncond))
        script_callbacks.cfg_denoiser_callback(params)
        return params.x, self._back(cond, params.text_cond), self._back(uncond, params.text_uncond)

    def after_model(self, out, step, total):
        if not script_callbacks.has("cfg_denoised"):
            return out
        params = script_callbacks.CFGDenoisedParams(out, step, total)
        script_callbacks.cfg_denoised_callback(params)
        return params.x

    def after_cfg(self, noise_pred, step, total):
        if not script_callbacks.has("cfg_after_cfg"):
            return noise_pred
        params = script_callbacks.AfterCFGCallbackParams(noise_pred, step, total)
        script_callbacks.cfg_after_cfg_callback(params)
        return params.x

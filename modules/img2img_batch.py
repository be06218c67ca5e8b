"""A1111's img2img "Batch" tab: every picture of a folder (or of an upload) run as an img2img job, with the
sd-webui-controlnet extension's batch units.

As A1111's `modules/img2img.py: process_batch`:

- the pictures: the input folder and its sub-folders (.png .jpg .jpeg .webp .tif .tiff, in natural name order), or
  the uploaded files; a folder that does not exist or holds no pictures is a RequestError saying so;
- the inpaint mask folder: one mask file → the mask of every picture; else each picture's mask is the file with
  its stem (`cat.png` ← `masks/cat.*`); a picture without one is skipped, said in the result's warnings; masked
  pictures are inpainted with the tab's inpaint options;
- "PNG info": the chosen infotext fields of each picture (or of the file with its name in the PNG info folder)
  replace the tab's: Prompt / Negative prompt are appended to the tab's, Seed, CFG scale, Sampler, Steps replace
  them, Model hash picks the checkpoint;
- an output folder: each result saved there as `<input stem>.<samples_format>` (`<stem>-1` … for the further
  pictures of a batch), in the input's sub-folder, with its infotext; the setting "Saving the image to an existing
  file" replaces or adds a number; no output folder: saved as any img2img picture (outputs/img2img-images);
- the gallery shows the first `img2img_batch_show_results_limit` pictures (-1: all);
- Interrupt stops the picture being made (as any interrupted job) and no further picture starts; Skip drops the
  current picture's batch and goes on with the next picture.

ControlNet (the extension's `batch_hijack.py`): a unit whose `input_mode` is "batch" reads its own folder
(`batch_images`; empty: the img2img input folder): picture k of the img2img batch takes the k-th picture of the
unit's folder (sorted names), and the batch stops after the shortest batch unit's folder, as the extension does.
Outside the Batch tab such a unit runs the generation once per picture of its folder (`run_controlnet_batch`),
saving into the unit's `output_dir` when one is given.

No gradio here: the UI (webui/generation_tabs.py) passes the tab's request fields and a `BatchOptions`.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from PIL import Image, ImageOps, UnidentifiedImageError

from modules.request_types import Img2ImgRequest, RequestError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff")
# A1111's "Parameters to take from png info" choices, in its order
PNG_INFO_PROPS = ("Prompt", "Negative prompt", "Seed", "CFG scale", "Sampler", "Steps", "Model hash")
HIDDEN_DIRS_MESSAGE = "Launched with --hide-ui-dir-config, batch img2img from a directory is disabled"


@dataclass
class BatchOptions:
    """What the Batch tab holds besides the img2img controls."""

    input_dir: str = ""
    output_dir: str = ""
    inpaint_mask_dir: str = ""
    use_png_info: bool = False
    png_info_props: list[str] = field(default_factory=list)
    png_info_dir: str = ""
    files: list[str] | None = None  # the "Upload" tab's files: used instead of the folders when given
    controlnet_dir: str = ""  # the extension's "Controlnet input directory" (batch units' fallback folder)
    hide_dirs: bool = False  # --hide-ui-dir-config: no folder of the server may be read or written from the page


@dataclass
class Picture:
    path: Path
    relative: Path  # under the input folder (sub-folders are kept in the output folder)


def natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _folder(value: str, what: str) -> Path:
    path = Path(os.path.expanduser(value.strip()))
    if not path.exists():
        raise RequestError(f"{what} does not exist: {value.strip()}")
    if not path.is_dir():
        raise RequestError(f"{what} is not a folder: {value.strip()}")
    return path


def list_pictures(folder: Path, recursive: bool = True) -> list[Path]:
    """The pictures of a folder (and its sub-folders), by extension, in natural name order."""
    found: list[Path] = []
    if recursive:
        for root, dirs, files in os.walk(folder, followlinks=True):
            dirs.sort(key=natural_key)
            found += [Path(root) / f for f in sorted(files, key=natural_key) if f.lower().endswith(IMAGE_EXTENSIONS)]
    else:
        found = [p for p in sorted(folder.iterdir(), key=lambda p: natural_key(p.name))
                 if p.is_file() and p.name.lower().endswith(IMAGE_EXTENSIONS)]
    return found


def pictures_of(options: BatchOptions) -> list[Picture]:
    """The batch's pictures; RequestError when there are none (a missing or empty folder, no upload)."""
    if options.files:
        paths = [Path(str(f)) for f in options.files if f]
        return [Picture(p, Path(p.name)) for p in paths]
    if options.hide_dirs:
        raise RequestError(HIDDEN_DIRS_MESSAGE)
    if not (options.input_dir or "").strip():
        raise RequestError("Batch: give an input directory (the folder of pictures to process)")
    folder = _folder(options.input_dir, "Input directory")
    found = list_pictures(folder)
    if not found:
        raise RequestError(f"No pictures in {options.input_dir.strip()} (looked for "
                           f"{', '.join(IMAGE_EXTENSIONS)})")
    return [Picture(p, p.relative_to(folder)) for p in found]


def _masks(options: BatchOptions) -> tuple[Path | None, list[Path]]:
    if options.files or not (options.inpaint_mask_dir or "").strip():
        return None, []
    folder = _folder(options.inpaint_mask_dir, "Inpaint batch mask directory")
    return folder, sorted((p for p in folder.iterdir() if p.is_file()), key=lambda p: natural_key(p.name))


def _mask_for(picture: Picture, folder: Path | None, masks: list[Path]) -> Path | None:
    if len(masks) == 1:
        return masks[0]
    found = sorted(folder.glob(f"{glob_escape(picture.path.stem)}.*")) if folder is not None else []
    return found[0] if found else None


def glob_escape(text: str) -> str:
    return re.sub(r"([\[\]*?])", r"[\1]", text)


def read_picture(path: Path) -> Image.Image:
    with Image.open(path) as im:
        im.load()
        return ImageOps.exif_transpose(im) or im


# -- PNG info -----------------------------------------------------------------------------------------------------


def png_info_fields(engine, info_image: Image.Image | None, props, base: dict) -> dict:
    """The request fields the chosen infotext properties of `info_image` replace (A1111: prompts appended)."""
    from modules import images as images_mod
    from modules import infotext as infotext_mod

    wanted = set(props or [])
    text = images_mod.read_infotext(info_image) if info_image is not None else None
    try:
        params = infotext_mod.parse_generation_parameters(text) if text else {}
    except Exception:  # noqa: BLE001 - an unreadable infotext: the tab's values (A1111 does the same)
        params = {}
    params = {k: v for k, v in params.items() if k in wanted}
    out: dict[str, Any] = {}
    if "Prompt" in params:
        out["prompt"] = (base.get("prompt") or "") + " " + str(params["Prompt"])
    if "Negative prompt" in params:
        out["negative_prompt"] = (base.get("negative_prompt") or "") + " " + str(params["Negative prompt"])
    for key, name, conv in (("Seed", "seed", int), ("CFG scale", "cfg_scale", float), ("Steps", "steps", int)):
        if key in params:
            try:
                out[name] = conv(float(params[key])) if conv is int else conv(params[key])
            except (TypeError, ValueError):
                pass
    if "Sampler" in params:
        out["sampler_name"] = str(params["Sampler"])
        if params.get("Schedule type") and "Schedule type" in wanted:
            out["scheduler"] = str(params["Schedule type"])
    if "Model hash" in params and getattr(engine, "registry", None) is not None:
        info = engine.registry.get(str(params["Model hash"]))
        if info is not None:
            out["override_settings"] = {**(base.get("override_settings") or {}), "sd_model_checkpoint": info.title}
    return out


# -- ControlNet batch units ---------------------------------------------------------------------------------------


def _unit_dicts(fields: dict) -> list | None:
    scripts = fields.get("alwayson_scripts") or {}
    payload = next((v for k, v in scripts.items() if k.lower() == "controlnet"), None)
    if isinstance(payload, dict):
        payload = payload.get("args")
    return payload if isinstance(payload, list) else None


def is_batch_unit(unit) -> bool:
    mode = unit.get("input_mode") if isinstance(unit, dict) else getattr(unit, "input_mode", None)
    mode = getattr(mode, "value", mode)
    enabled = unit.get("enabled", True) if isinstance(unit, dict) else getattr(unit, "enabled", True)
    return bool(enabled) and str(mode or "simple").lower() in ("batch", "inputmode.batch")


def unit_folder_pictures(batch_images, fallback: str = "", what: str = "ControlNet batch") -> list:
    """A batch unit's pictures: its folder's (sorted, as the extension's `listfiles`), or the list it was given."""
    if isinstance(batch_images, (list, tuple)):
        return list(batch_images)
    folder = (batch_images or "").strip() if isinstance(batch_images, str) else ""
    folder = folder or (fallback or "").strip()
    if not folder:
        raise RequestError(f"{what}: give the unit's input directory (batch_images)")
    found = list_pictures(_folder(folder, f"{what} input directory"), recursive=False)
    if not found:
        raise RequestError(f"No pictures in {folder} ({what} input directory)")
    return found


def _controlnet_batches(fields: dict, options: BatchOptions | None) -> dict[int, list]:
    """Unit index → its pictures, for the enabled batch units of the request's fields."""
    units = _unit_dicts(fields) or []
    out: dict[int, list] = {}
    for i, unit in enumerate(units):
        if isinstance(unit, dict) and is_batch_unit(unit):
            if options is not None and options.hide_dirs and isinstance(unit.get("batch_images"), str):
                raise RequestError(f"controlnet[{i}].batch_images: {HIDDEN_DIRS_MESSAGE}")
            fallback = ""
            if options is not None and not options.files:
                fallback = options.controlnet_dir or options.input_dir
            out[i] = unit_folder_pictures(unit.get("batch_images"), fallback, f"ControlNet unit {i}")
    return out


def _with_unit_pictures(fields: dict, batches: dict[int, list], k: int) -> dict:
    """The fields with each batch unit given its k-th picture (a simple unit from then on)."""
    if not batches:
        return fields
    units = [dict(u) if isinstance(u, dict) else u for u in _unit_dicts(fields)]
    for i, pictures in batches.items():
        picture = pictures[k]
        units[i]["image"] = read_picture(picture) if isinstance(picture, (str, Path)) else picture
        units[i]["mask"] = None
        units[i]["input_mode"] = "simple"
        units[i]["batch_images"] = None
    scripts = {k2: v for k2, v in (fields.get("alwayson_scripts") or {}).items() if k2.lower() != "controlnet"}
    scripts["controlnet"] = {"args": units}
    return {**fields, "alwayson_scripts": scripts}


# -- running ------------------------------------------------------------------------------------------------------


def check(engine, fields: dict, options: BatchOptions) -> list[Picture]:
    """What the page checks before queueing: the pictures are there and the fields make a request."""
    pictures = pictures_of(options)
    _masks(options)
    _controlnet_batches(fields, options)
    probe = {**fields, "init_images": [Image.new("RGB", (8, 8))], "mask": None}
    probe.pop("alwayson_scripts", None)  # units are checked per picture (their pictures are read then)
    Img2ImgRequest.from_dict(probe)
    return pictures


def _save_all(engine, made: list, texts: list, directory: Path, stem: str, options: dict) -> list[Path]:
    """A picture's results named after it (`stem`, `stem-1`, …), each indexed in the history."""
    paths = []
    for n, (image, text) in enumerate(zip(made, texts)):
        path = _save_named(engine, image, text, directory, stem if n == 0 else f"{stem}-{n}", options)
        _index(engine, path, text)
        paths.append(path)
    return paths


def _save_named(engine, image: Image.Image, text: str, directory: Path, stem: str, options: dict) -> Path:
    from modules import images as images_mod
    from modules.fileio import atomic_write_bytes

    directory.mkdir(parents=True, exist_ok=True)
    fmt = str(options.get("samples_format", "png") or "png")
    data = images_mod.encode_image(image.convert("RGB") if image.mode == "RGBA" else image, fmt,
                                   text if options.get("enable_pnginfo", True) else None,
                                   quality=int(options.get("jpeg_quality", 80) or 80),
                                   webp_lossless=bool(options.get("webp_lossless", False)))
    ext = fmt.lower().lstrip(".")
    path = directory / f"{stem}.{ext}"
    if options.get("save_images_replace_action", "Replace") == "Replace":
        return atomic_write_bytes(path, data)
    for n in range(1, 10000):
        if not path.exists():
            try:
                return atomic_write_bytes(path, data, overwrite=False)
            except FileExistsError:
                pass
        path = directory / f"{stem}-{n}.{ext}"
    raise FileExistsError(f"no free file name for {stem} in {directory}")


class _Stop:
    """Interrupt (the button, or the queue's cancel of the running job) for the whole batch: the engine's own flag
    is cleared when each picture's generation starts, so the batch listens to the engine's control hooks too."""

    def __init__(self, engine):
        self.engine, self.interrupted, self.stopping = engine, False, False

    def __call__(self, what: str) -> None:
        if what == "interrupt":
            self.interrupted = True
        elif what == "stop_generating":  # Interrupt with "Don't Interrupt in the middle": after this picture
            self.stopping = True

    @property
    def stopping_generation(self) -> bool:
        return self.interrupted or self.stopping

    def __enter__(self):
        if self.engine.control_hooks is None:
            self.engine.control_hooks = []
        self.engine.control_hooks.append(self)
        return self

    def __exit__(self, *exc):
        try:
            self.engine.control_hooks.remove(self)
        except ValueError:
            pass


def _combine(results: list, images: list, infotexts: list, saved: list, saved_texts: list, warnings: list,
             interrupted: bool, fields: dict):
    from modules.processing import GenerationResult

    if results:
        base = results[0]
    else:
        base = GenerationResult(
            images=[], infotexts=[], all_prompts=[], all_negative_prompts=[], all_seeds=[], all_subseeds=[],
            seed=int(fields.get("seed", -1) or -1), subseed=-1, subseed_strength=0.0,
            width=int(fields.get("width", 512)), height=int(fields.get("height", 512)),
            sampler_name=str(fields.get("sampler_name") or ""), scheduler=str(fields.get("scheduler") or ""),
            cfg_scale=float(fields.get("cfg_scale", 7.0)), steps=int(fields.get("steps", 20)), batch_size=1,
            n_iter=1, denoising_strength=fields.get("denoising_strength"), sd_model_name="", sd_model_hash=None,
            sd_vae_name=None, sd_vae_hash=None, clip_skip=1, prompt=str(fields.get("prompt") or ""),
            negative_prompt=str(fields.get("negative_prompt") or ""))
    return dataclasses.replace(
        base, images=images, infotexts=infotexts, index_of_first_image=0, saved_paths=saved,
        saved_infotexts=saved_texts, grid_path=None, interrupted=interrupted,
        skipped_batches=sum(r.skipped_batches for r in results), warnings=warnings,
        elapsed=sum(r.elapsed for r in results),
        all_prompts=[p for r in results for p in r.all_prompts],
        all_negative_prompts=[p for r in results for p in r.all_negative_prompts],
        all_seeds=[s for r in results for s in r.all_seeds], all_subseeds=[s for r in results for s in r.all_subseeds])


def run_batch(engine, fields: dict, options: BatchOptions, script_args: list | None = None,
              on_picture: Callable[[int, int, str], None] | None = None):
    """Run the batch (the caller is the visible queue's job); a GenerationResult of all its pictures.

    `fields`: the img2img tab's request fields without a picture; `on_picture(k, n, name)` before picture k (1…n)."""
    pictures = pictures_of(options)
    mask_folder, masks = _masks(options)
    unit_batches = _controlnet_batches(fields, options)
    warnings: list[str] = []
    total = len(pictures)
    if unit_batches:
        shortest = min(len(p) for p in unit_batches.values())
        if shortest < total:
            warnings.append(f"ControlNet batch: {shortest} control picture(s) for {total} pictures; processed "
                            f"the first {shortest}")
            total = shortest
    output_dir = "" if options.files else (options.output_dir or "").strip()
    out_root = Path(os.path.expanduser(output_dir)) if output_dir else None
    if out_root is not None and options.hide_dirs:
        raise RequestError(HIDDEN_DIRS_MESSAGE)
    png_dir = (options.png_info_dir or "").strip() if not options.hide_dirs else ""
    settings = engine.settings.as_dict()
    limit = int(settings.get("img2img_batch_show_results_limit", 32))
    save_options = dict(settings)
    save_options.update(fields.get("override_settings") or {})
    base = dict(fields)
    if base.get("seed") in (None, -1):  # A1111's fix_seed: one seed for the whole batch
        import random

        base["seed"] = random.randrange(4294967294)
    results, images, infotexts, saved, saved_texts = [], [], [], [], []
    interrupted = False
    with _Stop(engine) as stop:
        for k, picture in enumerate(pictures[:total]):
            if stop.stopping_generation:
                interrupted = True
                break
            if on_picture is not None:
                on_picture(k + 1, total, picture.relative.as_posix())
            try:
                image = read_picture(picture.path)
            except (UnidentifiedImageError, OSError) as e:
                warnings.append(f"{picture.relative.as_posix()}: not a picture ({type(e).__name__}); skipped")
                continue
            data = _with_unit_pictures(base, unit_batches, k)
            data = {**data, "init_images": [image.convert("RGB") if image.mode not in ("RGB", "RGBA") else image],
                    "do_not_save_grid": True}
            mask = None
            if mask_folder is not None and masks:
                mask_path = _mask_for(picture, mask_folder, masks)
                if mask_path is None:
                    warnings.append(f"{picture.relative.as_posix()}: no mask named {picture.path.stem}.* in "
                                    f"{mask_folder}; skipped")
                    continue
                mask = read_picture(mask_path)
            data["mask"] = mask
            if mask is None:
                data.pop("mask_blur", None)
            if options.use_png_info:
                info_image = image
                if png_dir:
                    try:
                        info_image = read_picture(Path(png_dir) / picture.path.name)
                    except (OSError, UnidentifiedImageError):
                        info_image = None
                data.update(png_info_fields(engine, info_image, options.png_info_props, base))
            data["override_settings"] = {**(data.get("override_settings") or {}), "control_net_no_detectmap": True}
            if out_root is not None:
                data["do_not_save_samples"] = True
            result = engine.generate(Img2ImgRequest.from_dict(data), script_args)
            results.append(result)
            made = result.images[result.index_of_first_image:]
            texts = result.infotexts[result.index_of_first_image:]
            if out_root is not None:
                saved += _save_all(engine, made, texts, out_root / picture.relative.parent, picture.path.stem,
                                   save_options)
                saved_texts += texts
            else:
                saved += result.saved_paths
                saved_texts += result.saved_infotexts
            if limit < 0 or len(images) < limit:
                room = len(made) if limit < 0 else limit - len(images)
                images += made[:room]
                infotexts += texts[:room]
            if result.interrupted or stop.stopping_generation:
                interrupted = True
                if k + 1 < total:
                    warnings.append(f"Interrupted after picture {k + 1} of {total}")
                break
    return _combine(results, images, infotexts, saved, saved_texts, warnings, interrupted, fields)


def _index(engine, path: Path, text: str) -> None:
    if getattr(engine, "history", None) is None:
        return
    try:
        engine.history.add(path, text)
    except Exception as e:  # noqa: BLE001 - the file is saved; the history catches up at the next start
        log.warning("history: could not index %s (%s)", path, e)


# -- ControlNet batch units outside img2img Batch -----------------------------------------------------------------


def has_batch_units(req) -> bool:
    return any(u.enabled and is_batch_unit(u) for u in getattr(req, "controlnet_units", None) or [])


def run_controlnet_batch(engine, req, script_args: list | None = None, hide_dirs: bool = False):
    """The extension's batch units in a plain txt2img/img2img request (its `processing_process_images_hijack`): one
    generation per picture of the shortest batch unit's folder, each unit taking its folder's k-th picture; saved
    as usual, or into the unit's `output_dir` named as its picture; the pictures come back when the extension's
    option "controlnet_show_batch_images_in_ui" is on or no output folder was given. Interrupt stops the batch."""
    from modules.controlnet.unit_request import InputMode, UnitImage, _to_rgb

    batches: dict[int, list] = {}
    output_dir, names = "", []
    for i, unit in enumerate(req.controlnet_units):
        if unit.enabled and is_batch_unit(unit):
            if hide_dirs and isinstance(unit.batch_images, str):
                raise RequestError(f"controlnet[{i}].batch_images: {HIDDEN_DIRS_MESSAGE}")
            batches[i] = unit_folder_pictures(unit.batch_images, "", f"controlnet[{i}]")
            output_dir = (unit.output_dir or "").strip() or output_dir
            if isinstance(unit.batch_images, str):
                names = batches[i]
    if hide_dirs and output_dir:
        raise RequestError(HIDDEN_DIRS_MESSAGE)
    total = min(len(p) for p in batches.values())
    settings = engine.settings.as_dict()
    show = bool(settings.get("controlnet_show_batch_images_in_ui", False)) or not output_dir
    increment = bool(settings.get("controlnet_increment_seed_during_batch", False))
    save_options = {**settings, **(req.override_settings or {})}
    if req.seed in (None, -1):
        import random

        req = dataclasses.replace(req, seed=random.randrange(4294967294))
    results, images, infotexts, saved, saved_texts, warnings = [], [], [], [], [], []
    interrupted = False
    with _Stop(engine) as stop:
        for k in range(total):
            if stop.stopping_generation:
                interrupted = True
                break
            units = [dataclasses.replace(u) for u in req.controlnet_units]
            for i, pictures in batches.items():
                picture = pictures[k]
                picture = read_picture(picture) if isinstance(picture, (str, Path)) else picture
                units[i].images = [UnitImage(_to_rgb(picture))]
                units[i].input_mode, units[i].batch_images = InputMode.SIMPLE, None
            seed = req.seed + k * req.batch_size * req.n_iter if increment else req.seed
            one = dataclasses.replace(req, controlnet_units=units, do_not_save_grid=True, seed=seed,
                                      do_not_save_samples=req.do_not_save_samples or bool(output_dir),
                                      override_settings={**(req.override_settings or {}),
                                                         "control_net_no_detectmap": True})
            result = engine.generate(one, script_args)
            results.append(result)
            made = result.images[result.index_of_first_image:]
            texts = result.infotexts[result.index_of_first_image:]
            if output_dir:
                saved += _save_all(engine, made, texts, Path(os.path.expanduser(output_dir)),
                                   Path(names[k]).stem if names else f"{k:05}", save_options)
                saved_texts += texts
            else:
                saved += result.saved_paths
                saved_texts += result.saved_infotexts
            if show:
                images += made
                infotexts += texts
            if result.interrupted or stop.stopping_generation:
                interrupted = True
                break
    return _combine(results, images, infotexts, saved, saved_texts, warnings, interrupted,
                    {"seed": req.seed, "width": req.width, "height": req.height, "prompt": req.prompt})

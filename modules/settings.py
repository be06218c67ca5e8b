"""Typed settings (A1111's ``opts``), stored in ``config.json`` as a flat ``{option: value}`` JSON object.

* :data:`OPTIONS` maps each option name (A1111's names) to an :class:`OptionInfo` (default, label, section,
  choices, type, range, infotext key). Extensions add theirs with :func:`register_option`.
* :class:`Settings` holds the values. ``Settings.load(path)``: a missing file gives the defaults; a corrupt file is
  moved aside to ``config.json.bad`` (then ``.bad.1``, ...), a warning is logged, and the defaults are used. It is
  moved, not copied (as A1111 does), so the next reader in the same start (extension preload, installers, the
  engine) finds no file instead of backing it up and warning again. Keys that are
  not (yet) registered are kept as they are and written back on save, so extensions' options survive, and so does
  a known option whose stored value does not validate (the default is used in its place, with a warning).
* ``set``/``update`` check and coerce values (``"3"`` → 3 for an int option, ``"true"`` → True, case-insensitive
  choices → the canonical spelling) and raise :class:`ValueError` naming the option on a bad value.
  ``update`` is all-or-nothing.
* ``save()`` writes atomically (``modules.fileio.atomic_write_json``): a crash mid-write leaves the old file.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from modules.fileio import atomic_write_json
from modules.upscaling import realesrgan

__all__ = ["OptionInfo", "OPTIONS", "register_option", "Settings", "infotext_to_option", "section_title"]

log = logging.getLogger(__name__)

_MISSING = object()  # "not stored"
_UNMOVABLE_WARNED: set = set()  # corrupt settings files that could not be moved aside, warned about once
_REQUIRED = object()  # get(): no default given


@dataclass
class OptionInfo:
    """One option. ``type`` is inferred from ``default`` when not given (``None`` default → ``str``, nullable).

    ``choices`` is a list, or a callable returning one (for lists that change at run time); ``None`` means any
    value of the type. ``minimum``/``maximum`` bound numbers. ``nullable`` allows ``None``. ``infotext`` is the
    key used for this option in generation parameters text (A1111's ``OptionInfo(infotext=...)``).
    """

    default: Any = None
    label: str = ""
    section: str = "other"
    choices: list | tuple | Callable[[], Iterable] | None = None
    type: type | None = None
    minimum: float | None = None
    maximum: float | None = None
    nullable: bool = False
    infotext: str | None = None
    restart_required: bool = False

    def __post_init__(self):
        if self.type is None:
            if self.default is None:
                self.type, self.nullable = str, True
            elif isinstance(self.default, bool):
                self.type = bool
            elif isinstance(self.default, (list, tuple)):
                self.type = list
            else:
                self.type = type(self.default)
        if self.default is None:
            self.nullable = True

    def get_choices(self) -> list | None:
        if self.choices is None:
            return None
        return list(self.choices() if callable(self.choices) else self.choices)


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _coerce(name: str, info: OptionInfo, value: Any) -> Any:
    """Check ``value`` for option ``name`` and return it in canonical form; ValueError (naming the option) if bad."""
    def bad(why: str) -> ValueError:
        return ValueError(f"invalid value for option {name!r}: {value!r} ({why})")

    if value is None:
        if info.nullable:
            return None
        raise bad(f"expected {info.type.__name__}, got None")
    t = info.type
    if t is bool:
        if isinstance(value, bool):
            out = value
        elif isinstance(value, int) and value in (0, 1):
            out = bool(value)
        elif isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            out = value.strip().lower() in _TRUE
        else:
            raise bad("expected true or false")
    elif t is int:
        if isinstance(value, bool):
            raise bad("expected an integer")
        if isinstance(value, int):
            out = value
        elif isinstance(value, float) and value.is_integer():
            out = int(value)
        elif isinstance(value, str):
            try:
                f = float(value.strip())
            except ValueError:
                raise bad("expected an integer") from None
            if not f.is_integer():
                raise bad("expected an integer")
            out = int(f)
        else:
            raise bad("expected an integer")
    elif t is float:
        if isinstance(value, bool):
            raise bad("expected a number")
        try:
            out = float(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError):
            raise bad("expected a number") from None
        if not math.isfinite(out):
            raise bad("expected a finite number")
    elif t is str:
        if not isinstance(value, str):
            raise bad("expected a string")
        out = value
    elif t is list:
        if not isinstance(value, (list, tuple)):
            raise bad("expected a list")
        out = list(value)
    else:  # an extension's own type: accept instances, or let the type convert
        if isinstance(value, t):
            out = value
        else:
            try:
                out = t(value)
            except Exception:
                raise bad(f"expected {t.__name__}") from None

    if t in (int, float):
        if info.minimum is not None and out < info.minimum:
            raise bad(f"must be at least {info.minimum:g}")
        if info.maximum is not None and out > info.maximum:
            raise bad(f"must be at most {info.maximum:g}")

    choices = info.get_choices()
    if choices is not None:
        items = out if t is list else [out]
        canon = []
        for item in items:
            if item in choices:
                canon.append(item)
                continue
            match = [c for c in choices if isinstance(c, str) and isinstance(item, str) and c.lower() == item.lower()]
            if not match:
                shown = ", ".join(repr(c) for c in choices)
                raise ValueError(f"invalid value for option {name!r}: {item!r} (choose from {shown})")
            canon.append(match[0])
        out = canon if t is list else canon[0]
    return out


# --- the options ---------------------------------------------------------------------------------------------------

OPTIONS: dict[str, OptionInfo] = {}
_registry_lock = threading.Lock()


def register_option(name: str, info: OptionInfo, *, replace: bool = False) -> OptionInfo:
    """Add an option (for extensions; A1111's ``shared.opts.add_option``). Re-registering the same name replaces
    the entry only with ``replace=True``; otherwise the existing entry is kept and returned."""
    if not isinstance(info, OptionInfo):
        raise TypeError("info must be an OptionInfo")
    try:
        _coerce(name, info, info.default)
    except ValueError as e:
        raise ValueError(f"default of option {name!r} does not validate: {e}") from None
    with _registry_lock:
        if name in OPTIONS and not replace:
            return OPTIONS[name]
        OPTIONS[name] = info
        return info


def _section(section: str, options: Mapping[str, OptionInfo]) -> None:
    for name, info in options.items():
        info.section = section
        register_option(name, info)


def _attention_choices() -> list[str]:
    from modules.models.attention import CHOICES

    return CHOICES


_O = OptionInfo
_IMAGE_FORMATS = ["png", "jpg", "jpeg", "webp", "avif", "gif", "tif", "tiff"]

_section("saving-images", {
    "samples_save": _O(True, "Always save all generated images"),
    "samples_format": _O("png", "File format for images", choices=_IMAGE_FORMATS),
    "samples_filename_pattern": _O("", "Images filename pattern"),
    "save_images_add_number": _O(True, "Add number to filename when saving"),
    "save_images_replace_action": _O("Replace", "Saving the image to an existing file",
                                     choices=["Replace", "Add number suffix"]),
    "grid_save": _O(True, "Always save all generated image grids"),
    "grid_format": _O("png", "File format for grids", choices=_IMAGE_FORMATS),
    "grid_extended_filename": _O(False, "Add extended info (seed, prompt) to filename when saving grid"),
    "grid_only_if_multiple": _O(True, "Do not save grids consisting of one picture"),
    "grid_prevent_empty_spots": _O(False, "Prevent empty spots in grid (when set to autodetect)"),
    "grid_zip_filename_pattern": _O("", "Archive filename pattern"),
    "n_rows": _O(-1, "Grid row count; -1 for autodetect and 0 for same as batch size", minimum=-1, maximum=16),
    "font": _O("", "Font for image grids that have text"),
    "grid_text_active_color": _O("#000000", "Text color for image grids"),
    "grid_text_inactive_color": _O("#999999", "Inactive text color for image grids"),
    "grid_background_color": _O("#ffffff", "Background color for image grids"),
    "enable_pnginfo": _O(True, "Save text information about generation parameters as chunks to png files"),
    "save_txt": _O(False, "Create a text file next to every image with generation parameters"),
    "save_images_before_face_restoration": _O(False, "Save a copy of image before doing face restoration"),
    "save_images_before_highres_fix": _O(False, "Save a copy of image before applying highres fix"),
    "save_images_before_color_correction": _O(False, "Save a copy of image before applying color correction"),
    "save_mask": _O(False, "For inpainting, save a copy of the greyscale mask"),
    "save_mask_composite": _O(False, "For inpainting, save a masked composite"),
    "jpeg_quality": _O(80, "Quality for saved jpeg and webp images", minimum=1, maximum=100),
    "webp_lossless": _O(False, "Use lossless compression for webp images"),
    "export_for_4chan": _O(True, "Save copy of large images as JPG"),
    "img_downscale_threshold": _O(4.0, "File size limit for the above option, MB", minimum=0),
    "target_side_length": _O(4000.0, "Width/height limit for the above option, in pixels", minimum=0),
    "img_max_size_mp": _O(200.0, "Maximum image size, in megapixels", minimum=0),
    "use_original_name_batch": _O(True, "Use original name for output filename during batch process in extras tab"),
    "use_upscaler_name_as_suffix": _O(False, "Use upscaler name as filename suffix in the extras tab"),
    "save_selected_only": _O(True, "When using 'Save' button, only save a single selected image"),
    "save_init_img": _O(False, "Save init images when using img2img"),
    "temp_dir": _O("", "Directory for temporary images; leave empty for default"),
    "clean_temp_dir_at_start": _O(False, "Cleanup non-default temporary directory when starting webui"),
    "save_incomplete_images": _O(False, "Save incomplete images"),
})

_section("saving-paths", {
    "outdir_samples": _O("", "Output directory for images; if empty, defaults to three directories below"),
    "outdir_txt2img_samples": _O("outputs/txt2img-images", "Output directory for txt2img images"),
    "outdir_img2img_samples": _O("outputs/img2img-images", "Output directory for img2img images"),
    "outdir_extras_samples": _O("outputs/extras-images", "Output directory for images from extras tab"),
    "outdir_grids": _O("", "Output directory for grids; if empty, defaults to two directories below"),
    "outdir_txt2img_grids": _O("outputs/txt2img-grids", "Output directory for txt2img grids"),
    "outdir_img2img_grids": _O("outputs/img2img-grids", "Output directory for img2img grids"),
    "outdir_save": _O("log/images", "Directory for saving images using the Save button"),
    "outdir_init_images": _O("outputs/init-images", "Directory for saving init images when using img2img"),
})

_section("saving-to-dirs", {
    "save_to_dirs": _O(True, "Save images to a subdirectory"),
    "grid_save_to_dirs": _O(True, "Save grids to a subdirectory"),
    "use_save_to_dirs_for_ui": _O(False, "When using \"Save\" button, save images to a subdirectory"),
    "directories_filename_pattern": _O("[date]", "Directory name pattern"),
    "directories_max_prompt_words": _O(8, "Max prompt words for [prompt_words] pattern", minimum=1, maximum=20),
})

_section("upscaling", {
    "ESRGAN_tile": _O(192, "Tile size for ESRGAN upscalers (0 = no tiling)", minimum=0, maximum=512),
    "ESRGAN_tile_overlap": _O(8, "Tile overlap for ESRGAN upscalers", minimum=0, maximum=48),
    "realesrgan_enabled_models": _O(list(realesrgan.DEFAULT_ENABLED), "Real-ESRGAN models to show",
                                    choices=list(realesrgan.NAMES)),
    "upscaler_for_img2img": _O(None, "Upscaler for img2img"),
    "upscaling_max_images_in_cache": _O(5, "Maximum number of images in upscaling cache", minimum=0, maximum=10),
})

_section("face-restoration", {
    "face_restoration": _O(False, "Restore faces", infotext="Face restoration"),
    "face_restoration_model": _O("CodeFormer", "Face restoration model", nullable=True),
    "code_former_weight": _O(0.5, "CodeFormer weight (0 = maximum effect; 1 = minimum effect)",
                             minimum=0.0, maximum=1.0),
    "face_restoration_unload": _O(False, "Move face restoration model from VRAM into RAM after processing"),
})

_section("system", {
    "auto_launch_browser": _O("Local", "Automatically open webui in browser on startup",
                              choices=["Disable", "Local", "Remote"]),
    "show_warnings": _O(False, "Show warnings in console (requires restart)", restart_required=True),
    "memmon_poll_rate": _O(8, "VRAM usage polls per second during generation (0 = disable)", minimum=0, maximum=40),
    "samples_log_stdout": _O(False, "Always print all generation info to standard output"),
    "multiple_tqdm": _O(True, "Add a second progress bar to the console that shows progress for an entire job"),
    "list_hidden_files": _O(True, "Load models/files in hidden directories"),
    "disable_mmap_load_safetensors": _O(False, "Disable memmapping for loading .safetensors files"),
    "cpu_threads": _O(0, "CPU threads for generation and training on the CPU (0 = automatic: 1 for small work, else "
                         "the cores other programs leave free; --threads overrides)", minimum=0, maximum=1024),
    "queue_max_per_client": _O(20, "Queue: most jobs one client may have waiting", minimum=1, maximum=10_000),
    "queue_max_total": _O(100, "Queue: most jobs waiting in all", minimum=1, maximum=100_000),
    "queue_resume_after_restart": _O(True, "Queue: jobs still waiting when the server stopped run after a restart"),
})

_section("API", {
    "api_enable_requests": _O(True, "Allow http:// and https:// URLs for input images in API"),
    "api_forbid_local_requests": _O(True, "Forbid URLs to local resources (always, here: a request's URL never "
                                          "reaches this machine or its network)"),
    "api_useragent": _O("", "User agent for requests"),
    "api_max_steps": _O(150, "API: most sampling steps a request may ask for", minimum=1, maximum=1000),
    "api_max_batch_size": _O(8, "API: largest batch_size a request may ask for", minimum=1, maximum=64),
    "api_max_n_iter": _O(100, "API: largest n_iter (batch count) a request may ask for", minimum=1, maximum=1000),
    "prompt_max_tokens": _O(3000, "Longest prompt a generation may have, in tokens (longer ones are refused before "
                                  "they wait in the queue)", minimum=75, maximum=1_000_000),
})

_section("sd", {
    "sd_model_checkpoint": _O(None, "Stable Diffusion checkpoint", infotext="Model hash"),
    "sd_checkpoints_limit": _O(1, "Maximum number of checkpoints loaded at the same time", minimum=1, maximum=10),
    "sd_checkpoints_keep_in_cpu": _O(True, "Only keep one model on device"),
    "sd_checkpoint_cache": _O(0, "Checkpoints to cache in RAM (obsolete)", minimum=0, maximum=10),
    "sd_unet": _O("Automatic", "SD Unet"),
    "enable_quantization": _O(False, "Enable quantization in K samplers for sharper and cleaner results"),
    "emphasis": _O("Original", "Emphasis mode", choices=["None", "Ignore", "Original", "No norm"],
                   infotext="Emphasis"),
    "enable_batch_seeds": _O(True, "Make K-diffusion samplers produce same images in a batch as when making a "
                                   "single image"),
    "comma_padding_backtrack": _O(20, "Prompt word wrap length limit", minimum=0, maximum=74),
    "sdxl_clip_l_skip": _O(False, "Clip skip SDXL", infotext="Clip skip SDXL"),
    "CLIP_stop_at_last_layers": _O(1, "Clip skip", minimum=1, maximum=12, infotext="Clip skip"),
    "upcast_attn": _O(False, "Upcast cross attention layer to float32"),
    "randn_source": _O("GPU", "Random number generator source", choices=["GPU", "CPU", "NV"], infotext="RNG"),
    "tiling": _O(False, "Tiling", infotext="Tiling"),
    "hires_fix_refiner_pass": _O("second pass", "Hires fix: which pass to enable refiner for",
                                 choices=["first pass", "second pass", "both passes"], infotext="Hires refiner"),
    "enable_prompt_comments": _O(True, "Enable comments in prompts (# ...)"),
    "sd_noise_schedule": _O("Default", "Noise schedule for sampling", choices=["Default", "Zero Terminal SNR"],
                            infotext="Noise Schedule"),
    "skip_early_cond": _O(0.0, "Ignore negative prompt during early sampling", minimum=0.0, maximum=1.0,
                          infotext="Skip Early CFG"),
    "fp8_storage": _O("Disable", "FP8 weight", choices=["Disable", "Enable for SDXL", "Enable"],
                      infotext="FP8 weight"),
    "cache_fp16_weight": _O(False, "Cache FP16 weight for LoRA", infotext="Cache FP16 weight for LoRA"),
    "sd_checkpoint_hash": _O("", "SHA256 hash of the current checkpoint"),
    "forge_additional_modules": _O([], "VAE / Text Encoder: files for the parts a Flux/SD3 checkpoint lacks (none "
                                       "picked: found in models/text_encoder and models/VAE)"),
    "flow_shift": _O(0.0, "Flux/SD3: sampling shift (0 = the model's own: SD3 3.0, Flux dev by resolution)",
                     minimum=0.0, maximum=20.0, infotext="Shift"),
    "sd3_enable_t5": _O(True, "SD3: encode prompts with T5-XXL too (off: faster, less faithful to long prompts)"),
})

_section("sdxl", {
    "sdxl_crop_top": _O(0, "crop top coordinate"),
    "sdxl_crop_left": _O(0, "crop left coordinate"),
    "sdxl_refiner_low_aesthetic_score": _O(2.5, "SDXL low aesthetic score"),
    "sdxl_refiner_high_aesthetic_score": _O(6.0, "SDXL high aesthetic score"),
})

_section("vae", {
    "sd_vae_checkpoint_cache": _O(0, "VAE Checkpoints to cache in RAM", minimum=0, maximum=10),
    # Choices are "Automatic", "None" or a VAE file name: checked against the VAE list by the model code.
    "sd_vae": _O("Automatic", "SD VAE", infotext="VAE"),
    "sd_vae_overrides_per_model_preferences": _O(True, "Selected VAE overrides per-model preferences"),
    "auto_vae_precision_bfloat16": _O(False, "Automatically convert VAE to bfloat16"),
    "auto_vae_precision": _O(True, "Automatically revert VAE to 32-bit floats"),
    "sd_vae_encode_method": _O("Full", "VAE type for encode", choices=["Full", "TAESD"], infotext="VAE Encoder"),
    "sd_vae_decode_method": _O("Full", "VAE type for decode", choices=["Full", "TAESD"], infotext="VAE Decoder"),
})

_section("img2img", {
    "inpainting_mask_weight": _O(1.0, "Inpainting conditioning mask strength", minimum=0.0, maximum=1.0,
                                 infotext="Conditional mask weight"),
    "initial_noise_multiplier": _O(1.0, "Noise multiplier for img2img", minimum=0.0, maximum=1.5,
                                   infotext="Noise multiplier"),
    "img2img_extra_noise": _O(0.0, "Extra noise multiplier for img2img and hires fix", minimum=0.0, maximum=1.0,
                              infotext="Extra noise"),
    "img2img_color_correction": _O(False, "Apply color correction to img2img results to match original colors"),
    "img2img_fix_steps": _O(False, "With img2img, do exactly the amount of steps the slider specifies"),
    "img2img_background_color": _O("#ffffff", "With img2img, fill transparent parts of the input image with this "
                                              "color"),
    "img2img_editor_height": _O(720, "Height of the image editor", minimum=80, maximum=1600),
    "img2img_sketch_default_brush_color": _O("#ffffff", "Sketch initial brush color"),
    "img2img_inpaint_mask_brush_color": _O("#ffffff", "Inpaint mask brush color"),
    "img2img_inpaint_sketch_default_brush_color": _O("#ffffff", "Inpaint sketch initial brush color"),
    "return_mask": _O(False, "For inpainting, include the greyscale mask in results for web"),
    "return_mask_composite": _O(False, "For inpainting, include masked composite in results for web"),
    "img2img_batch_show_results_limit": _O(32, "Show the first N batch img2img results in UI", minimum=-1,
                                           maximum=1000),
    "overlay_inpaint": _O(True, "Overlay original for inpaint"),
})

_section("optimizations", {
    "cross_attention_optimization": _O("Automatic", "Cross attention optimization (Automatic: as the flags say; "
                                       "applies at the next generation)", choices=_attention_choices),
    "s_min_uncond": _O(0.0, "Negative Guidance minimum sigma", minimum=0.0, maximum=15.0, infotext="NGMS"),
    "s_min_uncond_all": _O(False, "Negative Guidance minimum sigma all steps", infotext="NGMS all steps"),
    "token_merging_ratio": _O(0.0, "Token merging ratio", minimum=0.0, maximum=0.9, infotext="Token merging ratio"),
    "token_merging_ratio_img2img": _O(0.0, "Token merging ratio for img2img", minimum=0.0, maximum=0.9),
    "token_merging_ratio_hr": _O(0.0, "Token merging ratio for high-res pass", minimum=0.0, maximum=0.9,
                                 infotext="Token merging ratio hr"),
    "pad_cond_uncond": _O(False, "Pad prompt/negative prompt", infotext="Pad conds"),
    "pad_cond_uncond_v0": _O(False, "Pad prompt/negative prompt (v0)", infotext="Pad conds v0"),
    "persistent_cond_cache": _O(True, "Persistent cond cache"),
    "batch_cond_uncond": _O(True, "Batch cond/uncond"),
})

_section("memory", {
    # modules/memory/: where the weights live while a job runs (flags such as --medvram set the same on the GPU)
    "memory_mode": _O("Automatic", "Where the model's weights live while generating",
                      choices=["Automatic", "Everything on the GPU", "Model offload (--medvram)",
                               "Sequential offload (--lowvram)"]),
    "gpu_weights_mb": _O(0, "GPU Weights (MB): at most this much of the model's weights on the GPU (0: automatic)",
                         minimum=0, maximum=1_000_000),
    "vae_tiling": _O("Automatic", "Decode and encode with the VAE in tiles",
                     choices=["Automatic", "Always", "Never"]),
    # Forge's key, so its API clients and extensions set the same thing
    "forge_unet_storage_dtype": _O("Automatic", "Diffusion in Low Bits (weights kept in fewer bits, computed in "
                                   "the model's precision; Automatic: as the file stores them, GGUF included)",
                                   choices=["Automatic", "float16", "bfloat16", "float8-e4m3fn", "float8-e5m2"]),
    "low_bits_text_encoders": _O(False, "Low bits for the text encoders too"),
    # Forge's "Swap Method" and "Swap Location" (its keys): how offloaded weights travel to the GPU
    "forge_async_loading": _O("Queue", "Swap Method: Async copies the next block on a side CUDA stream while the "
                                       "current one computes (sequential offload)", choices=["Queue", "Async"]),
    "forge_pin_shared_memory": _O("CPU", "Swap Location: Shared keeps offloaded weights in pinned host memory "
                                         "(faster copies, less free RAM; --pin-shared-memory)",
                                  choices=["CPU", "Shared"]),
})

_section("cluster", {
    # modules/cluster (--cluster): how the head spreads work over its workers
    "cluster_fan_out": _O(False, "Spread a request over the idle workers: its batches (Batch count) and the X/Y/Z "
                                 "plot's cells run at once (each picture as a single worker would make it)"),
    "cluster_copy_models": _O(False, "Copy the checkpoint, LoRAs and embeddings a job needs to a worker that lacks them "
                                     "(sha256 checked), for workers without the head's models folder"),
})

_section("compatibility", {
    "auto_backcompat": _O(True, "Automatic backward compatibility"),
    "use_old_emphasis_implementation": _O(False, "Use old emphasis implementation", infotext="Old emphasis"),
    "use_old_karras_scheduler_sigmas": _O(False, "Use old karras scheduler sigmas (0.1 to 10)"),
    "no_dpmpp_sde_batch_determinism": _O(False, "Do not make DPM++ SDE deterministic across different batch sizes"),
    "use_old_hires_fix_width_height": _O(False, "For hires fix, use width/height sliders to set final resolution"),
    "hires_fix_use_firstpass_conds": _O(False, "For hires fix, calculate conds of second pass using extra networks "
                                               "of first pass"),
    "use_old_scheduling": _O(False, "Use old prompt editing timelines", infotext="Old prompt editing timelines"),
    "use_downcasted_alpha_bar": _O(False, "Downcast model alphas_cumprod to fp16 before sampling",
                                   infotext="Downcast alphas_cumprod"),
    "refiner_switch_by_sample_steps": _O(False, "Switch to refiner by sampling steps instead of model timesteps",
                                         infotext="Refiner switch by sampling steps"),
})

_section("extra_networks", {
    "extra_networks_default_multiplier": _O(1.0, "Default multiplier for extra networks", minimum=0.0, maximum=2.0),
    "extra_networks_add_text_separator": _O(" ", "Extra networks separator"),
    "textual_inversion_print_at_load": _O(False, "Print a list of Textual Inversion embeddings when loading model"),
    "textual_inversion_add_hashes_to_infotext": _O(True, "Add Textual Inversion hashes to infotext"),
    "sd_hypernetwork": _O("None", "Add hypernetwork to prompt"),
})

_section("ui", {
    "return_grid": _O(True, "Show grid in gallery"),
    "do_not_show_images": _O(False, "Do not show any images in gallery"),
    "send_seed": _O(True, "Send seed when sending prompt or image to other interface"),
    "send_size": _O(True, "Send size when sending prompt or image to another interface"),
    "quicksettings_list": _O(["sd_model_checkpoint"], "Quicksettings list: settings shown in the bar at the top "
                             "(requires restart)", restart_required=True),
    "ui_tab_order": _O([], "UI tab order (requires restart)", restart_required=True),
    "hidden_tabs": _O([], "Hidden UI tabs (requires restart)", restart_required=True),
    "ui_reorder_list": _O([], "txt2img/img2img UI item order"),
    "hires_fix_show_sampler": _O(False, "Hires fix: show hires checkpoint and sampler selection"),
    "hires_fix_show_prompts": _O(False, "Hires fix: show hires prompt and negative prompt"),
    "disable_token_counters": _O(False, "Disable prompt token counters"),
    "gallery_height": _O("", "Gallery height"),
    "localization": _O("None", "Localization"),
})

_section("infotext", {
    "add_model_hash_to_info": _O(True, "Add model hash to generation information"),
    "add_model_name_to_info": _O(True, "Add model name to generation information"),
    "add_user_name_to_info": _O(False, "Add user name to generation information when authenticated"),
    "add_version_to_infotext": _O(True, "Add program version to generation information"),
    "add_vae_hash_to_info": _O(True, "Add VAE hash to generation information"),
    "add_vae_name_to_info": _O(True, "Add VAE name to generation information"),
    "disable_weights_auto_swap": _O(True, "Disregard checkpoint information from pasted infotext"),
    "infotext_skip_pasting": _O([], "Disregard fields from pasted infotext"),
    "infotext_styles": _O("Apply if any", "Infer styles from prompts of pasted infotext",
                          choices=["Ignore", "Apply", "Discard", "Apply if any"]),
})

_section("live-previews", {
    "show_progressbar": _O(True, "Show progressbar"),
    "live_previews_enable": _O(True, "Show live previews of the created image"),
    "live_previews_image_format": _O("png", "Live preview file format", choices=["jpeg", "png", "webp"]),
    "show_progress_grid": _O(True, "Show previews of all images generated in a batch as a grid"),
    "show_progress_every_n_steps": _O(10, "Live preview display period (-1 = only after the batch)",
                                      minimum=-1, maximum=32),
    "show_progress_type": _O("Approx NN", "Live preview method",
                             choices=["Full", "Approx NN", "Approx cheap", "TAESD"]),
    "live_preview_allow_lowvram_full": _O(False, "Allow Full live preview method with lowvram/medvram"),
    "live_preview_content": _O("Prompt", "Live preview subject", choices=["Combined", "Prompt", "Negative prompt"]),
    "live_preview_refresh_period": _O(1000, "Progressbar and preview update period, in milliseconds", minimum=0),
    "live_preview_fast_interrupt": _O(False, "Return image with chosen live preview method on interrupt"),
    "interrupt_after_current": _O(True, "Don't Interrupt in the middle"),
})

_section("sampler-params", {
    "hide_samplers": _O([], "Hide samplers in user interface"),
    "eta_ddim": _O(0.0, "Eta for DDIM", minimum=0.0, maximum=1.0, infotext="Eta DDIM"),
    "eta_ancestral": _O(1.0, "Eta for k-diffusion samplers", minimum=0.0, maximum=1.0, infotext="Eta"),
    "ddim_discretize": _O("uniform", "img2img DDIM discretize", choices=["uniform", "quad"]),
    "s_churn": _O(0.0, "sigma churn", minimum=0.0, maximum=100.0, infotext="Sigma churn"),
    "s_tmin": _O(0.0, "sigma tmin", minimum=0.0, maximum=10.0, infotext="Sigma tmin"),
    "s_tmax": _O(0.0, "sigma tmax (0 = inf)", minimum=0.0, maximum=999.0, infotext="Sigma tmax"),
    "s_noise": _O(1.0, "sigma noise", minimum=0.0, maximum=1.1, infotext="Sigma noise"),
    "sigma_min": _O(0.0, "sigma min (0 = default)", infotext="Schedule min sigma"),
    "sigma_max": _O(0.0, "sigma max (0 = default)", infotext="Schedule max sigma"),
    "rho": _O(0.0, "rho (0 = default)", infotext="Schedule rho"),
    "eta_noise_seed_delta": _O(0, "Eta noise seed delta", infotext="ENSD"),
    "always_discard_next_to_last_sigma": _O(False, "Always discard next-to-last sigma",
                                            infotext="Discard penultimate sigma"),
    "sgm_noise_multiplier": _O(False, "SGM noise multiplier", infotext="SGM noise multiplier"),
    "uni_pc_variant": _O("bh1", "UniPC variant", choices=["bh1", "bh2", "vary_coeff"], infotext="UniPC variant"),
    "uni_pc_skip_type": _O("time_uniform", "UniPC skip type", choices=["time_uniform", "time_quadratic", "logSNR"],
                           infotext="UniPC skip type"),
    "uni_pc_order": _O(3, "UniPC order (must be < sampling steps)", minimum=1, maximum=50, infotext="UniPC order"),
    "uni_pc_lower_order_final": _O(True, "UniPC lower order final", infotext="UniPC lower order final"),
    "beta_dist_alpha": _O(0.6, "Beta scheduler - alpha", minimum=0.01, maximum=1.0,
                          infotext="Beta schedule alpha"),
    "beta_dist_beta": _O(0.6, "Beta scheduler - beta", minimum=0.01, maximum=1.0, infotext="Beta schedule beta"),
})

_section("postprocessing", {
    "postprocessing_enable_in_main_ui": _O([], "Enable postprocessing operations in txt2img and img2img tabs"),
    "postprocessing_operation_order": _O([], "Postprocessing operation order"),
})

_section("extensions", {
    "extensions_index_url": _O("https://raw.githubusercontent.com/AUTOMATIC1111/stable-diffusion-webui-extensions/"
                               "master/index.json", "Extension index for the Available tab (URL or local file)"),
})

_section("control_net", {  # the sd-webui-controlnet extension's options (its section id and labels)
    "control_net_unit_count": _O(3, "Multi-ControlNet: ControlNet unit number (requires restart)", minimum=1,
                                 maximum=10, restart_required=True),
    "control_net_model_cache_size": _O(2, "Model cache size (requires restart)", minimum=1, maximum=10,
                                       restart_required=True),
    "control_net_no_detectmap": _O(False, "Do not append detectmap to output"),
    "control_net_detectmap_autosaving": _O(False, "Allow detectmap auto saving"),
    "control_net_detectedmap_dir": _O("detected_maps", "Directory for detected maps auto saving"),
    "controlnet_skip_failed_units": _O(False, "Skip a unit whose model or preprocessor fails instead of stopping "
                                              "the generation"),
    "controlnet_show_batch_images_in_ui": _O(False, "Show batch images in gradio gallery output"),
    "controlnet_increment_seed_during_batch": _O(False, "Increment seed after each controlnet batch iteration"),
})

_section("hidden", {
    "disabled_extensions": _O([], "Disable these extensions"),
    "disable_all_extensions": _O("none", "Disable all extensions (preserves the list of disabled extensions)",
                                 choices=["none", "extra", "all"]),
    "restore_config_state_file": _O("", "Config state file to restore from, under 'config-states/' folder"),
})


# Where files are written: hidden in the UI and refused through the API with --hide-ui-dir-config (A1111's list).
DIRECTORY_OPTIONS = frozenset({
    "samples_filename_pattern", "directories_filename_pattern", "outdir_samples", "outdir_txt2img_samples",
    "outdir_img2img_samples", "outdir_extras_samples", "outdir_grids", "outdir_txt2img_grids", "outdir_img2img_grids",
    "outdir_save", "outdir_init_images", "control_net_detectedmap_dir",
})


# A1111's titles for the settings sections (its shared_options.py); ids not listed here take the title an
# extension gave with ``section=(id, title)``, else one made from the id.
SECTION_TITLES = {
    "saving-images": "Saving images/grids",
    "saving-paths": "Paths for saving",
    "saving-to-dirs": "Saving to a directory",
    "upscaling": "Upscaling",
    "face-restoration": "Face restoration",
    "system": "System",
    "API": "API",
    "training": "Training",
    "sd": "Stable Diffusion",
    "sdxl": "Stable Diffusion XL",
    "vae": "VAE",
    "memory": "Memory",
    "cluster": "Cluster",
    "img2img": "img2img",
    "optimizations": "Optimizations",
    "compatibility": "Compatibility",
    "interrogate": "Interrogate",
    "extra_networks": "Extra Networks",
    "ui": "User interface",
    "infotext": "Infotext",
    "live-previews": "Live previews",
    "sampler-params": "Sampler parameters",
    "postprocessing": "Postprocessing",
    "extensions": "Extensions",
    "control_net": "ControlNet",
    "other": "Other",
}


def section_title(section: str) -> str:
    """The title shown for a settings section id."""
    if section in SECTION_TITLES:
        return SECTION_TITLES[section]
    for info in list(OPTIONS.values()):
        label = getattr(info, "section_label", None)
        if info.section == section and isinstance(label, str) and label.strip():
            return label.strip()
    text = str(section).replace("-", " ").replace("_", " ").strip()
    return text[:1].upper() + text[1:] if text else "Other"


def infotext_to_option(key: str) -> str | None:
    """The option whose ``infotext`` key is ``key`` (e.g. ``"Clip skip"`` → ``"CLIP_stop_at_last_layers"``)."""
    for name, info in list(OPTIONS.items()):
        if info.infotext == key:
            return name
    return None


# --- values --------------------------------------------------------------------------------------------------------

class Settings:
    """Option values backed by a JSON file. Thread-safe. Attribute access (``opts.samples_format``) also works."""

    def __init__(self, path: str | Path | None = None, data: Mapping[str, Any] | None = None):
        object.__setattr__(self, "_path", Path(path) if path is not None else None)
        object.__setattr__(self, "_data", {})  # as stored: validated values + unknown/invalid raw values
        object.__setattr__(self, "_lock", threading.RLock())
        object.__setattr__(self, "_listeners", {})
        object.__setattr__(self, "_warned", set())
        if data:
            self._load_dict(dict(data))

    # --- loading / saving -------------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path) -> "Settings":
        """Read ``path``. Missing → defaults. Unreadable/corrupt → moved to ``<name>.bad``, warning, defaults."""
        path = Path(path)
        settings = cls(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return settings
        except (OSError, UnicodeDecodeError) as e:
            settings._backup_corrupt(f"cannot read it: {e}")
            return settings
        try:
            data = json.loads(text)
        except ValueError as e:
            settings._backup_corrupt(f"not valid JSON: {e}")
            return settings
        if not isinstance(data, dict):
            settings._backup_corrupt(f"expected a JSON object, found {type(data).__name__}")
            return settings
        settings._load_dict(data)
        return settings

    def _backup_corrupt(self, why: str) -> Path | None:
        """Move the unusable file to the first free ``<name>.bad[.N]`` and say so once.

        Moved, not copied: a file left in place is found corrupt again by every later load in this start (and
        every later start), each making another backup and warning. When it cannot be moved, the warning is
        given once per process for that file's state."""
        path = self._path
        backup = path.with_name(path.name + ".bad")
        n = 0
        while backup.exists():
            n += 1
            backup = path.with_name(f"{path.name}.bad.{n}")
        try:
            os.replace(path, backup)
        except OSError as e:
            try:
                st = path.stat()
                key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
            except OSError:
                key = (str(path), None, None)
            with _registry_lock:
                if key in _UNMOVABLE_WARNED:
                    return None
                _UNMOVABLE_WARNED.add(key)
            log.warning("settings file %s is unusable (%s); could not move it aside (%s); using defaults",
                        path, why, e)
            return None
        log.warning("settings file %s is unusable (%s); it was moved to %s; using default settings",
                    path, why, backup)
        return backup

    def _load_dict(self, data: dict) -> None:
        with self._lock:
            for name, value in data.items():
                info = OPTIONS.get(name)
                if info is not None:
                    try:
                        value = _coerce(name, info, value)
                    except ValueError as e:
                        log.warning("%s; using the default %r", e, info.default)
                        self._warned.add(name)
                self._data[str(name)] = value

    @property
    def path(self) -> Path | None:
        return self._path

    def save(self, path: str | Path | None = None) -> Path:
        """Write the settings atomically (to ``path``, default the file they were loaded from)."""
        target = Path(path) if path is not None else self._path
        if target is None:
            raise ValueError("Settings.save(): no file to save to")
        with self._lock:
            atomic_write_json(target, dict(self._data))
        return target

    # --- access -------------------------------------------------------------------------------------------------

    def get(self, name: str, default: Any = _REQUIRED) -> Any:
        """The value of ``name`` (its default if unset). An unregistered name that was in the file returns the
        stored value; otherwise ``default`` if given, else KeyError."""
        info = OPTIONS.get(name)
        with self._lock:
            value = self._data.get(name, _MISSING)
        if info is None:
            if value is not _MISSING:
                return value
            if default is not _REQUIRED:
                return default
            raise KeyError(f"unknown option {name!r}")
        if value is _MISSING:
            return _copy(info.default)
        try:
            return _coerce(name, info, value)
        except ValueError as e:
            if name not in self._warned:
                self._warned.add(name)
                log.warning("%s; using the default %r", e, info.default)
            return _copy(info.default)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self.get(name)
        except KeyError:
            raise AttributeError(f"no option named {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            self.set(name, value)

    def __contains__(self, name: str) -> bool:
        return name in OPTIONS or name in self._data

    def validate(self, name: str, value: Any) -> Any:
        """The coerced value, or ValueError naming the option (unknown option → ValueError too)."""
        info = OPTIONS.get(name)
        if info is None:
            raise ValueError(f"unknown option {name!r}")
        return _coerce(name, info, value)

    def set(self, name: str, value: Any, *, allow_unknown: bool = False) -> bool:
        """Validate and set one option. Returns whether the value changed. Does not save.

        Unknown names raise ValueError unless ``allow_unknown`` (then the value is stored as given)."""
        if name in OPTIONS or not allow_unknown:
            value = self.validate(name, value)
        return bool(self._apply({name: value}))

    def update(self, values: Mapping[str, Any], *, allow_unknown: bool = False) -> list[str]:
        """Validate every value first, then set them all (nothing is set if any is bad). Returns changed names."""
        checked = {}
        for name, value in values.items():
            checked[name] = value if (name not in OPTIONS and allow_unknown) else self.validate(name, value)
        return self._apply(checked)

    def reset(self, name: str) -> None:
        """Forget the stored value, so the default applies."""
        with self._lock:
            old = self.get(name, None)
            self._data.pop(name, None)
        if name in OPTIONS and old != OPTIONS[name].default:
            self._notify(name, OPTIONS[name].default)

    def _apply(self, values: dict[str, Any]) -> list[str]:
        changed = []
        with self._lock:
            for name, value in values.items():
                old = self.get(name, _MISSING)
                self._data[name] = value
                self._warned.discard(name)
                if old is _MISSING or old != value:
                    changed.append(name)
        for name in changed:
            self._notify(name, values[name])
        return changed

    def on_change(self, name: str, callback: Callable[[str, Any], None]) -> None:
        """Call ``callback(name, new_value)`` after ``name`` changes through set/update/reset."""
        with self._lock:
            self._listeners.setdefault(name, []).append(callback)

    def _notify(self, name: str, value: Any) -> None:
        for cb in list(self._listeners.get(name, ())):
            try:
                cb(name, value)
            except Exception:  # a listener must not break settings
                log.exception("settings listener for %r failed", name)

    def as_dict(self) -> dict[str, Any]:
        """Every registered option's current value plus every unknown stored key (for /sdapi/v1/options)."""
        with self._lock:
            out = {k: _copy(v) for k, v in self._data.items()}
        for name in list(OPTIONS):
            out[name] = self.get(name)
        return out

    def stored(self) -> dict[str, Any]:
        """Exactly what :meth:`save` would write."""
        with self._lock:
            return {k: _copy(v) for k, v in self._data.items()}

    @staticmethod
    def defaults() -> dict[str, Any]:
        return {name: _copy(info.default) for name, info in list(OPTIONS.items())}

    def __repr__(self) -> str:
        return f"Settings(path={str(self._path)!r}, stored={len(self._data)})"


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else dict(value) if isinstance(value, dict) else value

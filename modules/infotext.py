"""A1111 infotext: the generation-parameters text stored in every image (PNG ``parameters`` chunk).

Format (A1111 ``processing.create_infotext``)::

    a cat, (masterpiece:1.2)
    Negative prompt: ugly
    Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 512x512, Version: v1.10.1

Other tools (A1111 "PNG Info", civitai, image browsers) read this text back, so it is produced byte for byte the
way A1111 writes it, and :func:`parse_generation_parameters` returns what A1111's parser returns.

Number formatting: A1111 writes ``str(value)``. From its UI, whole numbers arrive as ints (``CFG scale: 7``);
from its API they stay floats (``CFG scale: 7.0``). We always write whole floats as ints (``7.0`` -> ``7``,
``7.5`` -> ``7.5``), matching the UI form, which is what almost all shared images carry; both parse the same.
"""

from __future__ import annotations

import json
import math
import numbers
import re
from typing import Any, Mapping

__all__ = [
    "INFOTEXT_KEY_ORDER",
    "INFOTEXT_TRAILING_KEYS",
    "SCHEDULE_TYPE_SUFFIXES",
    "quote",
    "unquote",
    "format_value",
    "create_infotext",
    "parse_generation_parameters",
    "split_sampler_scheduler",
    "infotext_to_request_fields",
    "infotext_to_override_settings",
]

# The fixed part of A1111 1.10's generation_params dict, in its order. Keys not listed here follow in the order the
# caller gives them (A1111's p.extra_generation_params: Hires upscale, Lora hashes, Mask blur, ...).
INFOTEXT_KEY_ORDER: tuple[str, ...] = (
    "Steps",
    "Sampler",
    "Schedule type",
    "CFG scale",
    "Image CFG scale",
    "Seed",
    "Face restoration",
    "Size",
    "Distilled CFG Scale",
    "Model hash",
    "Model",
    "FP8 weight",
    "Cache FP16 weight for LoRA",
    "VAE hash",
    "VAE",
    "Variation seed",
    "Variation seed strength",
    "Seed resize from",
    "Denoising strength",
    "Conditional mask weight",
    "Clip skip",
    "ENSD",
    "Token merging ratio",
    "Token merging ratio hr",
    "Init image hash",
    "RNG",
    "Tiling",
)

# Always written after the extra params: Version, then (A1111's add_user_name_to_info) User.
INFOTEXT_TRAILING_KEYS: tuple[str, ...] = ("Version", "User")

# A1111's parameter regex (infotext_utils.re_param): a key starts with a word character and may contain spaces,
# '-' and '/'; a value is either a JSON string (with escapes) or runs to the next comma.
re_param = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
re_imagesize = re.compile(r"^(\d+)x(\d+)$")


# --------------------------------------------------------------------------------------------------------------------
# Writing


def quote(value: Any) -> Any:
    """JSON-quote a value containing ``,``, ``:`` or a newline (else returned unchanged), as A1111 does."""
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return value
    return json.dumps(text, ensure_ascii=False)


def unquote(text: str) -> str:
    """Undo :func:`quote`; text that is not a valid JSON string is returned unchanged."""
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        result = json.loads(text)
    except ValueError:
        return text
    return result if isinstance(result, str) else text


def format_value(value: Any) -> str:
    """``str(value)``, except that whole floats are written as ints (``7.0`` -> ``"7"``); see the module doc."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        f = float(value)
        if math.isfinite(f) and f.is_integer():
            return str(int(f))
        return str(value)
    return str(value)


def _ordered_params(params: Mapping[str, Any]) -> list[tuple[str, Any]]:
    fixed = [k for k in INFOTEXT_KEY_ORDER if k in params]
    trailing = [k for k in INFOTEXT_TRAILING_KEYS if k in params]
    skip = set(INFOTEXT_KEY_ORDER) | set(INFOTEXT_TRAILING_KEYS)
    extra = [k for k in params if k not in skip]
    return [(k, params[k]) for k in (*fixed, *extra, *trailing)]


def create_infotext(prompt: str, negative_prompt: str, params: Mapping[str, Any]) -> str:
    """Build the infotext: prompt, ``Negative prompt: ...`` (only when non-empty), then the params line.

    ``params`` maps infotext keys to values; ``None`` values are left out (the caller decides what to include,
    e.g. ``Clip skip`` only when > 1, ``RNG`` only when not GPU). Keys are ordered as
    :data:`INFOTEXT_KEY_ORDER`, then the remaining keys in the given order, then ``Version`` (and ``User``).
    Values are formatted with :func:`format_value` and quoted with :func:`quote`. As in A1111, a key whose value
    equals the key itself is written bare, and the whole text is stripped of surrounding whitespace.
    """
    parts = []
    for key, value in _ordered_params(params):
        if value is None:
            continue
        text = format_value(value)
        parts.append(key if key == text else f"{key}: {quote(text)}")
    params_text = ", ".join(parts)
    negative_text = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt or ''}{negative_text}\n{params_text}".strip()


# --------------------------------------------------------------------------------------------------------------------
# Reading

# Schedule types as A1111 spells them (label, name, aliases): a legacy sampler name such as "DPM++ 2M Karras"
# carries one of these as a suffix.
SCHEDULE_TYPE_SUFFIXES: dict[str, tuple[str, ...]] = {
    "Automatic": ("automatic",),
    "Uniform": ("uniform",),
    "Karras": ("karras",),
    "Exponential": ("exponential",),
    "Polyexponential": ("polyexponential",),
    "SGM Uniform": ("sgm_uniform", "SGMUniform"),
    "KL Optimal": ("kl_optimal",),
    "Align Your Steps": ("align_your_steps",),
    "Simple": ("simple",),
    "Normal": ("normal",),
    "DDIM": ("ddim",),
    "Beta": ("beta",),
}


def split_sampler_scheduler(sampler: str) -> tuple[str, str | None]:
    """Split a legacy combined name: ``"DPM++ 2M Karras"`` -> ``("DPM++ 2M", "Karras")``.

    Returns ``(sampler, None)`` when the name has no schedule-type suffix. The longest matching suffix wins
    (so ``"Euler SGM Uniform"`` gives ``SGM Uniform``, not ``Uniform``).
    """
    best: tuple[int, str] | None = None
    for label, others in SCHEDULE_TYPE_SUFFIXES.items():
        for option in (label, *others):
            suffix = " " + option
            if sampler.endswith(suffix) and len(sampler) > len(suffix) and (best is None or len(suffix) > best[0]):
                best = (len(suffix), label)
    if best is None:
        return sampler, None
    return sampler[: -best[0]].rstrip(), best[1]


def _parse_version(text: Any) -> tuple[int, int, int, int] | None:
    """``"v1.7.0-225-gabcdef"`` -> ``(1, 7, 0, 225)``; None for anything else (like A1111: no backcompat)."""
    if not isinstance(text, str):
        return None
    m = re.match(r"^v?(\d+)\.(\d+)(?:\.(\d+))?(?:-(\d+))?(?:-.*)?$", text.strip())
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0), int(m.group(4) or 0)


def _backcompat(res: dict[str, Any]) -> None:
    """A1111 ``infotext_versions.backcompat``: flags that reproduce images made by older versions."""
    ver = _parse_version(res.get("Version"))
    if ver is None:
        return
    if ver < (1, 6, 0, 0) and "[" in res.get("Prompt", ""):
        res["Old prompt editing timelines"] = True
    if ver < (1, 6, 0, 0) and res.get("Sampler", "") in ("DDIM", "PLMS"):
        res["Pad conds v0"] = True
    if ver < (1, 7, 0, 225):
        res["Downcast alphas_cumprod"] = True
    if ver < (1, 8, 0, 0) and res.get("Refiner"):
        res["Refiner switch by sampling steps"] = True


def _old_hires_fix_first_pass_dimensions(width: int, height: int) -> tuple[int, int]:
    """A1111's pre-1.0 hires fix: the first pass was scaled to about 512x512 pixels, rounded up to 64."""
    scale = math.sqrt(512 * 512 / (width * height))
    return math.ceil(scale * width / 64) * 64, math.ceil(scale * height / 64) * 64


def _restore_old_hires_fix_params(res: dict[str, Any], use_old_hires_fix_width_height: bool) -> None:
    """Infotexts with the old ``First pass size`` key: convert to the current Size + Hires resize form."""
    if use_old_hires_fix_width_height:
        hires_width = int(res.get("Hires resize-1", 0))
        hires_height = int(res.get("Hires resize-2", 0))
        if hires_width and hires_height:
            res["Size-1"] = hires_width
            res["Size-2"] = hires_height
            return

    firstpass_width = res.get("First pass size-1")
    firstpass_height = res.get("First pass size-2")
    if firstpass_width is None or firstpass_height is None:
        return
    firstpass_width, firstpass_height = int(firstpass_width), int(firstpass_height)
    width = int(res.get("Size-1", 512))
    height = int(res.get("Size-2", 512))
    if firstpass_width == 0 or firstpass_height == 0:
        firstpass_width, firstpass_height = _old_hires_fix_first_pass_dimensions(width, height)
    res["Size-1"] = firstpass_width
    res["Size-2"] = firstpass_height
    res["Hires resize-1"] = width
    res["Hires resize-2"] = height


# Filled in when absent, as A1111 does (its UI relies on them to reset fields the infotext does not mention).
_DEFAULTS: tuple[tuple[str, Any], ...] = (
    ("Hires sampler", "Use same sampler"),
    ("Hires checkpoint", "Use same checkpoint"),
    ("Hires prompt", ""),
    ("Hires negative prompt", ""),
    ("Mask mode", "Inpaint masked"),
    ("Masked content", "original"),
    ("Inpaint area", "Whole picture"),
    ("Masked area padding", 32),
)
_DEFAULTS_AFTER_HIRES: tuple[tuple[str, Any], ...] = (
    ("RNG", "GPU"),
    ("Schedule type", "Automatic"),
    ("Schedule max sigma", 0),
    ("Schedule min sigma", 0),
    ("Schedule rho", 0),
    ("VAE Encoder", "Full"),
    ("VAE Decoder", "Full"),
    ("FP8 weight", "Disable"),
)


def parse_generation_parameters(text: str, *, split_legacy_sampler: bool = True, fill_defaults: bool = True,
                                use_old_hires_fix_width_height: bool = False, backcompat: bool = True,
                                skip_keys: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
    """Parse an infotext into ``{"Prompt", "Negative prompt", <key>: <value>, ...}`` like A1111.

    - The last line is the params line only if it holds at least 3 ``key: value`` pairs; otherwise it belongs to
      the prompt. Prompt and negative prompt may span several lines (each line is stripped, as in A1111).
    - Values are strings; quoted values are unquoted. ``WxH`` values become ``<key>-1`` / ``<key>-2``
      (``Size: 512x768`` -> ``Size-1: "512"``, ``Size-2: "768"``); a pair with an empty value is dropped.
    - With ``fill_defaults`` absent keys get A1111's defaults (``Clip skip`` "1", ``RNG`` "GPU", ``Schedule type``
      "Automatic", ``Hires resize-1/2`` 0, ``Masked area padding`` 32, ... some of them ints, as in A1111), old
      ``First pass size`` hires infotexts are converted, and with ``backcompat`` the ``Version``-dependent
      compatibility flags are added.
    - With ``split_legacy_sampler`` a combined sampler such as ``DPM++ 2M Karras`` with no ``Schedule type`` is
      split into ``Sampler: DPM++ 2M`` and ``Schedule type: Karras`` (A1111 does this when it applies the
      infotext; its PNG Info output keeps the combined name, pass False for that).
    """
    res: dict[str, Any] = {}
    prompt = ""
    negative_prompt = ""
    done_with_prompt = False

    *lines, lastline = (text or "").strip().split("\n")
    if len(re_param.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ""

    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative_prompt += ("" if negative_prompt == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line

    res["Prompt"] = prompt
    res["Negative prompt"] = negative_prompt

    for k, v in re_param.findall(lastline):
        if not v:
            continue  # A1111 fails on v[0] and skips the pair
        if v[0] == '"' and v[-1] == '"':
            v = unquote(v)
        m = re_imagesize.match(v)
        if m is not None:
            res[f"{k}-1"] = m.group(1)
            res[f"{k}-2"] = m.group(2)
        else:
            res[k] = v

    if split_legacy_sampler and "Schedule type" not in res and isinstance(res.get("Sampler"), str):
        sampler, schedule_type = split_sampler_scheduler(res["Sampler"])
        if schedule_type is not None:
            res["Sampler"] = sampler
            res["Schedule type"] = schedule_type

    if not fill_defaults:
        return {k: v for k, v in res.items() if k not in set(skip_keys)}

    # Missing Clip skip means it was 1 (the default).
    res.setdefault("Clip skip", "1")

    hypernet = res.get("Hypernet")
    if hypernet is not None:
        res["Prompt"] += f"<hypernet:{hypernet}:{res.get('Hypernet strength', '1.0')}>"

    if "Hires resize-1" not in res:
        res["Hires resize-1"] = 0
        res["Hires resize-2"] = 0
    for key, value in _DEFAULTS:
        res.setdefault(key, value)

    _restore_old_hires_fix_params(res, use_old_hires_fix_width_height)

    for key, value in _DEFAULTS_AFTER_HIRES:
        res.setdefault(key, value)
    if "Cache FP16 weight for LoRA" not in res and res["FP8 weight"] != "Disable":
        res["Cache FP16 weight for LoRA"] = False

    if backcompat:
        _backcompat(res)

    skip = set(skip_keys)
    return {k: v for k, v in res.items() if k not in skip}


# --------------------------------------------------------------------------------------------------------------------
# Infotext -> request


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    return int(float(str(value).strip()))


def _to_float(value: Any) -> float:
    return float(str(value).strip()) if not isinstance(value, numbers.Real) else float(value)


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() not in ("", "false", "0", "none", "no", "off")


_INPAINT_AREAS = {"Whole picture": False, "Only masked": True}
_MASKED_CONTENT = {"fill": 0, "original": 1, "latent noise": 2, "latent nothing": 3}
_MASK_MODES = {"Inpaint masked": 0, "Inpaint not masked": 1}
_RESIZE_MODES = {"Just resize": 0, "Crop and resize": 1, "Resize and fill": 2, "Just resize (latent upscale)": 3}

# infotext key -> (request field, converter)
_SIMPLE_FIELDS: tuple[tuple[str, str, Any], ...] = (
    ("Prompt", "prompt", str),
    ("Negative prompt", "negative_prompt", str),
    ("Steps", "steps", _to_int),
    ("CFG scale", "cfg_scale", _to_float),
    ("Distilled CFG Scale", "distilled_cfg_scale", _to_float),
    ("Image CFG scale", "image_cfg_scale", _to_float),
    ("Seed", "seed", _to_int),
    ("Size-1", "width", _to_int),
    ("Size-2", "height", _to_int),
    ("Batch size", "batch_size", _to_int),
    ("Variation seed", "subseed", _to_int),
    ("Variation seed strength", "subseed_strength", _to_float),
    ("Seed resize from-1", "seed_resize_from_w", _to_int),
    ("Seed resize from-2", "seed_resize_from_h", _to_int),
    ("Denoising strength", "denoising_strength", _to_float),
    ("Tiling", "tiling", _to_bool),
    ("Hires upscale", "hr_scale", _to_float),
    ("Hires upscaler", "hr_upscaler", str),
    ("Hires steps", "hr_second_pass_steps", _to_int),
    ("Hires resize-1", "hr_resize_x", _to_int),
    ("Hires resize-2", "hr_resize_y", _to_int),
    ("Hires prompt", "hr_prompt", str),
    ("Hires negative prompt", "hr_negative_prompt", str),
    ("Refiner", "refiner_checkpoint", str),
    ("Refiner switch at", "refiner_switch_at", _to_float),
    ("Mask blur", "mask_blur", _to_int),
    ("Masked area padding", "inpaint_full_res_padding", _to_int),
    ("Noise multiplier", "initial_noise_multiplier", _to_float),
)


def infotext_to_request_fields(params: Mapping[str, Any]) -> dict[str, Any]:
    """Map parsed infotext (:func:`parse_generation_parameters`) to A1111 txt2img/img2img request fields.

    Only fields the infotext determines are returned, converted to int/float/bool; values that do not convert are
    left out (like A1111's paste, which leaves such a field alone). ``enable_hr`` is True when the infotext has
    ``Denoising strength`` plus a hires key (``Hires upscale``/``Hires upscaler``/``Hires steps``/a non-zero
    ``Hires resize``); "Use same sampler/scheduler/checkpoint" hires values are left out (they mean "unset").
    A legacy sampler name (``DPM++ 2M Karras``) is split into ``sampler_name`` and ``scheduler``.
    """
    out: dict[str, Any] = {}

    def put(field: str, key: str, conv: Any) -> None:
        value = params.get(key)
        if value is None:
            return
        try:
            out[field] = conv(value)
        except (TypeError, ValueError):
            pass

    for key, field, conv in _SIMPLE_FIELDS:
        put(field, key, conv)

    sampler = params.get("Sampler")
    scheduler = params.get("Schedule type")
    if isinstance(sampler, str) and sampler:
        name, suffix = split_sampler_scheduler(sampler)
        out["sampler_name"] = name
        if suffix is not None and scheduler in (None, "Automatic"):
            scheduler = suffix
    if isinstance(scheduler, str) and scheduler:
        out["scheduler"] = scheduler

    hr_sampler = params.get("Hires sampler")
    hr_scheduler = params.get("Hires schedule type")
    if isinstance(hr_sampler, str) and hr_sampler and hr_sampler != "Use same sampler":
        name, suffix = split_sampler_scheduler(hr_sampler)
        out["hr_sampler_name"] = name
        if suffix is not None and hr_scheduler in (None, "Use same scheduler"):
            hr_scheduler = suffix
    if isinstance(hr_scheduler, str) and hr_scheduler and hr_scheduler != "Use same scheduler":
        out["hr_scheduler"] = hr_scheduler
    hr_checkpoint = params.get("Hires checkpoint")
    if isinstance(hr_checkpoint, str) and hr_checkpoint and hr_checkpoint != "Use same checkpoint":
        out["hr_checkpoint_name"] = hr_checkpoint

    has_hires_resize = bool(out.get("hr_resize_x") or out.get("hr_resize_y"))
    out["enable_hr"] = "Denoising strength" in params and (
        "Hires upscale" in params or "Hires upscaler" in params or "Hires steps" in params or has_hires_resize)

    if params.get("Face restoration"):
        out["restore_faces"] = True

    area = params.get("Inpaint area")
    if area in _INPAINT_AREAS:
        out["inpaint_full_res"] = _INPAINT_AREAS[area]
    content = params.get("Masked content")
    if content in _MASKED_CONTENT:
        out["inpainting_fill"] = _MASKED_CONTENT[content]
    mode = params.get("Mask mode")
    if mode in _MASK_MODES:
        out["inpainting_mask_invert"] = _MASK_MODES[mode]
    resize_mode = params.get("Resize mode")
    if resize_mode in _RESIZE_MODES:
        out["resize_mode"] = _RESIZE_MODES[resize_mode]

    return out


# infotext key -> (A1111 option name, converter): the settings A1111 1.10 marks with OptionInfo(infotext=...).
_OVERRIDE_SETTINGS: tuple[tuple[str, str, Any], ...] = (
    ("Model hash", "sd_model_checkpoint", str),
    ("Clip skip", "CLIP_stop_at_last_layers", _to_int),
    ("ENSD", "eta_noise_seed_delta", _to_int),
    ("RNG", "randn_source", str),
    ("VAE", "sd_vae", str),
    ("VAE Encoder", "sd_vae_encode_method", str),
    ("VAE Decoder", "sd_vae_decode_method", str),
    ("Emphasis", "emphasis", str),
    ("NGMS", "s_min_uncond", _to_float),
    ("Eta", "eta_ancestral", _to_float),
    ("Eta DDIM", "eta_ddim", _to_float),
    ("Sigma churn", "s_churn", _to_float),
    ("Sigma tmin", "s_tmin", _to_float),
    ("Sigma tmax", "s_tmax", _to_float),
    ("Sigma noise", "s_noise", _to_float),
    ("Schedule max sigma", "sigma_max", _to_float),
    ("Schedule min sigma", "sigma_min", _to_float),
    ("Schedule rho", "rho", _to_float),
    ("Beta schedule alpha", "beta_dist_alpha", _to_float),
    ("Beta schedule beta", "beta_dist_beta", _to_float),
    ("Discard penultimate sigma", "always_discard_next_to_last_sigma", _to_bool),
    ("SGM noise multiplier", "sgm_noise_multiplier", _to_bool),
    ("Noise Schedule", "sd_noise_schedule", str),
    ("UniPC variant", "uni_pc_variant", str),
    ("UniPC skip type", "uni_pc_skip_type", str),
    ("UniPC order", "uni_pc_order", _to_int),
    ("UniPC lower order final", "uni_pc_lower_order_final", _to_bool),
    ("Noise multiplier", "initial_noise_multiplier", _to_float),
    ("Extra noise", "img2img_extra_noise", _to_float),
    ("Conditional mask weight", "inpainting_mask_weight", _to_float),
    ("Token merging ratio", "token_merging_ratio", _to_float),
    ("Token merging ratio hr", "token_merging_ratio_hr", _to_float),
    ("Pad conds", "pad_cond_uncond", _to_bool),
    ("Pad conds v0", "pad_cond_uncond_v0", _to_bool),
    ("Old prompt editing timelines", "use_old_scheduling", _to_bool),
    ("Downcast alphas_cumprod", "use_downcasted_alpha_bar", _to_bool),
    ("Refiner switch by sampling steps", "refiner_switch_by_sample_steps", _to_bool),
    ("Shift", "flow_shift", _to_float),
    ("T5", "sd3_enable_t5", _to_bool),
)


def infotext_to_override_settings(params: Mapping[str, Any]) -> dict[str, Any]:
    """Settings an infotext implies (A1111 ``get_override_settings``), as ``{option name: value}``.

    A1111 keeps only those that differ from the current settings (and skips ``sd_model_checkpoint`` when
    ``disable_weights_auto_swap`` is on); those decisions are the caller's, which owns the settings.
    """
    out: dict[str, Any] = {}
    for key, option, conv in _OVERRIDE_SETTINGS:
        value = params.get(key)
        if value is None:
            continue
        try:
            out[option] = conv(value)
        except (TypeError, ValueError):
            pass
    return out

"""From the units a user asked for to the units the loop applies: pick each unit's input (its own image, else the
img2img picture), run its preprocessor at the resolution the extension would pick, load its model, and record
its infotext. Every problem is a RequestError naming the unit, before any sampling starts."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from modules.controlnet import units as units_mod
from modules.memory.offload import weights_in_host_memory
from modules.request_types import RequestError

log = logging.getLogger(__name__)

# Preprocessors whose maps are applied softly in the hires pass (the extension's rule against edge artifacts).
SOFT_IN_HIRES = ("canny", "mlsd")
# Control types of the preprocessors → ControlNet Union type (the extension's union mapping).
UNION_BY_TAG = {"OpenPose": "OpenPose", "Depth": "Depth", "SoftEdge": "Soft Edge", "Scribble": "Soft Edge",
                "Canny": "Hard Edge", "Lineart": "Hard Edge", "MLSD": "Hard Edge", "NormalMap": "Normal Map",
                "Segmentation": "Segmentation", "Tile": "Tile", "Inpaint": "Inpaint"}


@dataclass
class PreparedControls:
    units: list[units_mod.ControlUnit] = field(default_factory=list)
    detected_maps: list[Image.Image] = field(default_factory=list)  # returned with the images when asked
    map_modules: list[str] = field(default_factory=list)  # the preprocessor of each map (its folder when saved)
    infotext: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def prepare(requests: list, *, library, model, width: int, height: int, init_image: Image.Image | None = None,
            init_mask: Image.Image | None = None, annotator_dir: Path | None = None,
            skip_failed: bool = False, crop: tuple[int, int, int, int] | None = None,
            structure: bool = False) -> PreparedControls:
    """`requests`: ControlNetUnitRequest list (inactive ones are skipped, as the extension does). `structure`: the
    checkpoint reads a control image itself (Flux.1 Depth/Canny): an enabled unit without a model gives it its
    map (one such unit)."""
    from modules.controlnet.unit_request import infotext_fields

    out = PreparedControls()
    used = []
    for index, req in enumerate(requests):
        if structure and req.enabled and not req.active:
            if any(u.kind == "structure" for u in out.units):
                raise RequestError(f"controlnet[{index}]: {model.title} reads one control image; a second unit "
                                   "without a model has nothing to guide")
            unit, detected = _prepare_one(index, req, library, model, width, height, init_image, init_mask,
                                          annotator_dir, crop, structure=True)
            out.units.append(unit)
            if req.save_detected_map and req.module != "none":
                out.detected_maps.append(detected)
                out.map_modules.append(req.module)
            used.append(req)
            continue
        if req.enabled and not req.active:  # the extension: "You have not selected any ControlNet Model"
            error = RequestError(f"controlnet[{index}].model: ControlNet unit {index} is enabled but has no model; "
                                 "pick one in its Model list (or disable the unit)")
            if not skip_failed:
                raise error
            out.warnings.append(f"{error} (unit skipped)")
            continue
        if not req.active:
            continue
        try:
            unit, detected = _prepare_one(index, req, library, model, width, height, init_image, init_mask,
                                          annotator_dir, crop, previous=out.units[-1] if out.units else None)
        except RequestError as e:
            if not skip_failed:
                raise
            out.warnings.append(f"{e} (unit skipped)")
            log.warning("ControlNet unit %d skipped: %s", index, e)
            continue
        out.units.append(unit)
        if detected is not None and req.save_detected_map and req.module != "none":
            out.detected_maps.append(detected)
            out.map_modules.append(req.module)
        used.append(req)
    out.infotext = infotext_fields(used)
    return out


def _prepare_one(index: int, req, library, model, width: int, height: int, init_image, init_mask,
                 annotator_dir: Path | None, crop=None, structure: bool = False, previous=None):
    """`previous`: the unit prepared just before this one (an InstantID ControlNet reads its face tokens)."""
    from modules.controlnet import faceid, instant_id, preprocessors, reference, revision
    from modules.controlnet.models import ControlNetLoadError

    where = f"controlnet[{index}]"
    pre = preprocessors.get(req.module)
    if pre is None:
        raise RequestError(f"{where}.module: unknown preprocessor {req.module!r} (GET /controlnet/module_list "
                           "lists them)")
    if pre.name in reference.MODULES:
        return _reference_unit(where, req, pre, model, init_image, init_mask, crop)
    if pre.name in revision.MODULES:
        return _revision_unit(where, req, pre, library, model, init_image, init_mask), None
    if instant_id.is_instant_id_module(pre.name) and not structure:
        instant_id.check_checkpoint(where, pre.name, model)
    if req.model in ("", "None") and not structure:
        raise RequestError(f"{where}.model: no ControlNet model chosen for preprocessor {pre.name}")
    source, mask = _input(where, req, init_image, init_mask)
    if crop is not None and req.inpaint_crop_input_image and init_image is not None:
        source, mask = _crop(source, init_image.size, crop), _crop(mask, init_image.size, crop)
    if pre.name == "ip-adapter_pulid":  # PuLID (pulid.py): the face read three ways, its id tokens in attn2
        from modules.controlnet import pulid

        return pulid.unit(where, req, pre, library, model, source, width, height, annotator_dir)
    if pre.name == instant_id.EMBEDDING:  # InstantID's face embedding through its adapter (instant_id.py)
        return instant_id.embedding_unit(where, req, pre, library, model, source, width, height,
                                         annotator_dir), None
    if faceid.is_faceid_module(pre.name):  # IP-Adapter FaceID (faceid.py): the face's embedding as the prompt
        return faceid.unit(where, req, pre, library, model, source, width, height, annotator_dir), None
    if pre.name.startswith(("ip-adapter", "clip_vision")) or "IP-Adapter" in pre.tags:
        return _image_prompt(where, req, library, model, source, width, height), None
    resolution = req.processor_res
    if req.pixel_perfect:
        resolution = pixel_perfect_resolution(source.size, width, height, req.resize_mode.value)
    array = np.asarray(source.convert("RGB"))
    if pre.accepts_mask or pre.requires_mask:
        if mask is None and pre.requires_mask:
            raise RequestError(f"{where}.mask: preprocessor {pre.name} needs a mask (or use img2img inpaint)")
        alpha = np.zeros(array.shape[:2], np.uint8) if mask is None else np.asarray(
            mask.convert("L").resize(source.size))
        array = np.concatenate([array, alpha[:, :, None]], axis=2)
    try:
        detected = pre.run(array, resolution, req.threshold_a, req.threshold_b, annotator_dir=annotator_dir)
    except (preprocessors.MissingAnnotatorError, preprocessors.AnnotatorUnavailableError) as e:
        raise RequestError(f"{where}.module: {e}") from None
    detected_image = Image.fromarray(np.ascontiguousarray(detected[:, :, :3] if detected.ndim == 3 else detected))
    if structure:  # the checkpoint reads the map itself (Flux.1 Depth/Canny)
        return units_mod.ControlUnit(model=None, image=_control_input(detected), resize_mode=req.resize_mode.value,
                                     kind="structure"), detected_image
    try:
        loaded = library.load(req.model, model.device, model.dtype, model.unet.config, model.family, model.title,
                              unet=model.unet, unet_weights=lambda: weights_in_host_memory(model))
    except ControlNetLoadError as e:
        raise RequestError(f"{where}.model: {e}") from None
    if loaded.kind == "ip_adapter":
        raise RequestError(f"{where}.model: {loaded.title} is an IP-Adapter: pair it with an ip-adapter "
                           f"preprocessor, not {pre.name}")
    union = None
    if loaded.kind == "union":
        union = _union_type(where, req, pre)
    elif loaded.kind == "flux" and getattr(loaded.model.config, "num_mode", None):
        union = _flux_union_mode(where, req, pre, loaded.model.config.num_mode)
    unit = units_mod.ControlUnit(
        model=loaded.model, image=_control_input(detected), weight=req.weight, guidance_start=req.guidance_start,
        guidance_end=req.guidance_end, control_mode=req.control_mode.value, resize_mode=req.resize_mode.value,
        hr_option=req.hr_option.value, soft_in_hires=any(k in pre.name for k in SOFT_IN_HIRES),
        advanced_weighting=req.advanced_weighting, union_type=union, kind=loaded.kind,
        region_mask=_region(req.effective_region_mask), low_vram=req.low_vram)
    if loaded.kind == "controlnet" and instant_id.reads_face_tokens(pre.name, loaded.title):
        unit.context = instant_id.tokens_from(where, pre.name, loaded.title, previous)
    return unit, detected_image


def _reference_unit(where: str, req, pre, model, init_image, init_mask, crop):
    """A reference unit: the picture itself (its "map"), with the style fidelity slider (threshold_a)."""
    from modules.controlnet.reference import ReferenceSpec

    if model.is_flow:
        raise RequestError(f"{where}.module: {pre.name} works with SD1.x, SD2.x and SDXL checkpoints, not "
                           f"{model.spec.label}")
    source, mask = _input(where, req, init_image, init_mask)
    if crop is not None and req.inpaint_crop_input_image and init_image is not None:
        source = _crop(source, init_image.size, crop)
    style = req.threshold_a if req.threshold_a >= 0 else pre.slider_1.value
    picture = source.convert("RGB")
    unit = units_mod.ControlUnit(
        model=ReferenceSpec(pre.name, style), image=picture, weight=req.weight, guidance_start=req.guidance_start,
        guidance_end=req.guidance_end, control_mode=req.control_mode.value, resize_mode=req.resize_mode.value,
        hr_option=req.hr_option.value, kind="reference")
    return unit, picture


def _revision_unit(where: str, req, pre, library, model, init_image, init_mask) -> units_mod.ControlUnit:
    """A ReVision unit: the picture's projected CLIP-G embedding (the encoder whose projection is as wide as the
    checkpoint's pooled prompt), noise-augmented by the slider (a fixed noise seed: the same picture, the same
    embedding)."""
    from types import SimpleNamespace

    import torch

    from modules.controlnet import ip_adapter
    from modules.controlnet.models import ControlNetLoadError
    from modules.controlnet.revision import RevisionSpec, noise_augmented

    if model.family != "sdxl":
        raise RequestError(f"{where}.module: {pre.name} works with SDXL checkpoints, not "
                           f"{getattr(model.spec, 'label', model.family)}")
    config = model.unet.config
    width = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
    if library is None:
        raise RequestError(f"{where}.module: {pre.name} needs the CLIP vision encoders in models/clip_vision")
    try:
        encoder = library.encoder(SimpleNamespace(plus=False, clip_width=width), model.device, model.dtype)
    except ControlNetLoadError as e:
        raise RequestError(f"{where}.module: {e}") from None
    source, _ = _input(where, req, init_image, init_mask)
    embedding = ip_adapter.encode(encoder, source, plus=False)[0].reshape(1, -1)
    level = pre.slider_1.pick(req.threshold_a)
    spec = RevisionSpec(noise_augmented(embedding, level, torch.Generator().manual_seed(0)),
                        ignore_prompt=pre.name == "revision_ignore_prompt")
    return units_mod.ControlUnit(model=spec, image=source.convert("RGB"), weight=req.weight,
                                 guidance_start=req.guidance_start, guidance_end=req.guidance_end,
                                 hr_option=req.hr_option.value, kind="revision")


def _region(mask: Image.Image | None):
    """The effective region mask as the loop scales it: (1, 1, H, W), white = act, in [0, 1]."""
    if mask is None:
        return None
    import torch

    grey = np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
    return torch.from_numpy(grey)[None, None]


def _image_prompt(where: str, req, library, model, picture: Image.Image, width: int,
                  height: int) -> units_mod.ControlUnit:
    """An IP-Adapter unit: the picture through the CLIP vision encoder the adapter was trained with; its effective
    region mask limits where the image tokens act (diffusers' ip_adapter_masks: binarised at the picture's size)."""
    from modules.controlnet import ip_adapter
    from modules.controlnet.models import ControlNetLoadError

    try:
        loaded = library.load(req.model, model.device, model.dtype, model.unet.config, model.family, model.title,
                              unet=model.unet, unet_weights=lambda: weights_in_host_memory(model))
        if loaded.kind == "t2i_style":
            return _style_unit(where, req, library, model, loaded, picture)
        if loaded.kind != "ip_adapter":
            raise RequestError(f"{where}.model: {loaded.title} is not an IP-Adapter (preprocessor {req.module} "
                               "makes image prompts)")
        if loaded.model.instant_id:
            raise RequestError(f"{where}.model: {loaded.title} is InstantID's adapter: it reads a face embedding, "
                               f"pair it with preprocessor instant_id_face_embedding, not {req.module}")
        if "body.0.weight" in loaded.model.state_dict["image_proj"]:  # PuLID's IDEncoder (pulid.py)
            raise RequestError(f"{where}.model: {loaded.title} is a PuLID model: it reads a face three ways, pair "
                               f"it with preprocessor ip-adapter_pulid, not {req.module}")
        encoder = library.encoder(loaded.model, model.device, model.dtype)
    except ControlNetLoadError as e:
        raise RequestError(f"{where}.model: {e}") from None
    pictures = [im.image for im in req.images] if len(req.images) > 1 else [picture]  # "multi-inputs": averaged
    embeds = ip_adapter.encode_all(encoder, pictures, loaded.model.plus)
    region = ip_adapter.region_mask(req.effective_region_mask, width, height)
    return units_mod.ControlUnit(model=loaded.model, image=picture, weight=req.weight,
                                 guidance_start=req.guidance_start, guidance_end=req.guidance_end,
                                 hr_option=req.hr_option.value, kind="ip_adapter", ip_embeds=embeds,
                                 region_mask=region)


def _style_unit(where: str, req, library, model, loaded, picture: Image.Image) -> units_mod.ControlUnit:
    """A T2I-Adapter style unit: the picture's CLIP ViT-L hidden states (the encoder as wide as the adapter, from
    models/clip_vision) through the adapter, once; its tokens join the prompt's context (t2i_style.apply)."""
    from types import SimpleNamespace

    from modules.controlnet import t2i_style

    width = loaded.model.style_embedding.shape[-1]
    encoder = library.encoder(SimpleNamespace(plus=True, clip_width=width), model.device, model.dtype)
    tokens = t2i_style.encode(encoder, loaded.model, picture)
    return units_mod.ControlUnit(model=tokens, image=picture, weight=req.weight, guidance_start=req.guidance_start,
                                 guidance_end=req.guidance_end, hr_option=req.hr_option.value, kind="t2i_style")


def _input(where: str, req, init_image, init_mask):
    """The unit's own image (and mask), else the img2img picture: the extension's order of sources."""
    if req.images:
        first = req.images[0]
        return first.image, first.mask
    if init_image is not None:
        return init_image, init_mask
    raise RequestError(f"{where}.image: no input image (give the unit an image, or use img2img)")


def _crop(image: Image.Image | None, size: tuple[int, int], box: tuple[int, int, int, int]):
    """img2img's "Only masked" region cut from a unit's input (brought to the picture's size first), so the map
    lines up with the part of the picture being inpainted (the extension's inpaint_crop_input_image)."""
    if image is None:
        return None
    x, y, w, h = box
    return image.resize(size, Image.Resampling.LANCZOS).crop((x, y, x + w, y + h)) if image.size != size else \
        image.crop((x, y, x + w, y + h))


def _control_input(detected: np.ndarray) -> Image.Image:
    """The map the ControlNet reads; an inpaint map (RGB + mask) keeps its mask in the alpha channel (see
    ControlUnit.tensor for how the model sees it)."""
    if detected.ndim == 3 and detected.shape[2] == 4:
        return Image.fromarray(np.ascontiguousarray(detected), "RGBA")
    return Image.fromarray(np.ascontiguousarray(detected)).convert("RGB")


def _union_type(where: str, req, pre) -> int:
    name = req.union_control_type
    if name in (None, "", "Unknown"):
        name = next((UNION_BY_TAG[t] for t in pre.tags if t in UNION_BY_TAG), None)
    if name not in units_mod.UNION_TYPES:
        raise RequestError(f"{where}.union_control_type: a ControlNet Union model needs a control type "
                           f"({', '.join(units_mod.UNION_TYPES)}); none follows from preprocessor {pre.name}")
    return units_mod.UNION_TYPES.index(name)


# InstantX / Shakker-Labs Flux ControlNet Union modes (their model cards' numbering).
FLUX_UNION_MODES = {"canny": 0, "tile": 1, "depth": 2, "blur": 3, "pose": 4, "gray": 5, "lq": 6}
_FLUX_MODE_BY_TYPE = {"Hard Edge": "canny", "Tile": "tile", "Depth": "depth", "OpenPose": "pose"}
_FLUX_MODE_BY_TAG = {"Canny": "canny", "Lineart": "canny", "MLSD": "canny", "Tile": "tile", "Depth": "depth",
                     "OpenPose": "pose", "Recolor": "gray"}


def _flux_union_mode(where: str, req, pre, modes: int) -> int:
    """The mode a Flux Union ControlNet reads the map as: the unit's union control type, else the preprocessor's
    (a blur preprocessor → blur)."""
    name = _FLUX_MODE_BY_TYPE.get(req.union_control_type)
    if name is None:
        name = "blur" if pre.name.startswith("blur") else next(
            (_FLUX_MODE_BY_TAG[t] for t in pre.tags if t in _FLUX_MODE_BY_TAG), None)
    if name is None or FLUX_UNION_MODES[name] >= modes:
        raise RequestError(f"{where}.union_control_type: a Flux ControlNet Union reads {', '.join(FLUX_UNION_MODES)}; "
                           f"none follows from preprocessor {pre.name} (set union_control_type)")
    return FLUX_UNION_MODES[name]


def pixel_perfect_resolution(size: tuple[int, int], width: int, height: int, resize_mode: str) -> int:
    """The preprocessor resolution at which the map comes out at the picture's own scale (the extension's
    pixel_perfect_resolution): the short side scaled as the resize mode will scale it."""
    raw_w, raw_h = size
    k0, k1 = height / raw_h, width / raw_w
    k = min(k0, k1) if resize_mode == "Resize and Fill" else max(k0, k1)
    return int(np.round(k * min(raw_h, raw_w)))


"""IP-Adapter FaceID units, as the sd-webui-controlnet extension runs them.

Files as users have them in models/ControlNet: `ip-adapter-faceid_sd15.bin` / `_sdxl.bin` (an MLP turns the face
embedding into 4 tokens) and `ip-adapter-faceid-plus(v2)_sd15.bin` / `-plusv2_sdxl.bin` (those tokens then read the
picture's CLIP-H penultimate hidden states through a perceiver resampler; "v2" in the file name adds the tokens
back, the extension's shortcut at scale 1). Their LoRAs (`ip-adapter-faceid_sd15_lora.safetensors` …) go in
models/Lora and are added with `<lora:…>` in the prompt, as with the extension.

Preprocessors `ip-adapter_face_id` (the face embedding alone) and `ip-adapter_face_id_plus` (and the CLIP-H
encoding of the whole picture, as the extension's face_id_plus passes it): the largest face's unit-length ArcFace
embedding from InsightFace's buffalo_l files (face_embed.py). The negative prompt's rows get a zero face (and the
CLIP encoding of an empty picture), as the extension's uncond embeddings. Several pictures: their tokens averaged.
The adapter is attached to the UNet like every IP-Adapter (ip_adapter.attached); diffusers' FaceID projections
(IPAdapterFaceIDImageProjection / IPAdapterFaceIDPlusImageProjection) make the tokens.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from modules.controlnet import face_embed
from modules.request_types import RequestError

MODULES = ("ip-adapter_face_id", "ip-adapter_face_id_plus")


def is_faceid_module(name: str) -> bool:
    return name in MODULES


def preview(img: np.ndarray, res, a, b, ctx) -> np.ndarray:
    """What /controlnet/detect shows for a FaceID preprocessor: the picture with the face it would use."""
    from modules.controlnet.preprocessors import AnnotatorUnavailableError
    from modules.models.loader import ModelLoadError

    label = ctx.label or ctx.name
    try:
        _, face = face_embed.face_embedding(img, ctx.annotator_dir, label)
    except face_embed.NoFaceError:
        raise AnnotatorUnavailableError(f"ControlNet preprocessor '{label}': no face found in the picture") from None
    except (face_embed.FaceNetworkError, ModelLoadError) as e:
        raise AnnotatorUnavailableError(f"ControlNet preprocessor '{label}': {e}") from None
    return face_embed.draw(img, face)


def embeddings(where: str, label: str, pictures: list, annotator_dir: Path | None) -> list[np.ndarray]:
    """Each picture's face embedding; what is missing or wrong as a RequestError naming the unit."""
    return face_embed.read_each(where, label, pictures,
                                lambda rgb: face_embed.face_embedding(rgb, annotator_dir, label)[0], "FaceID")


def _check_pairing(where: str, pre_name: str, loaded) -> None:
    weights = loaded.model
    if loaded.kind != "ip_adapter" or weights.faceid is None:
        raise RequestError(f"{where}.model: {loaded.title} is not an IP-Adapter FaceID model (preprocessor "
                           f"{pre_name} reads faces: pick ip-adapter-faceid_sd15, ip-adapter-faceid-plusv2_sd15 or "
                           "their SDXL versions)")
    wanted = "ip-adapter_face_id_plus" if weights.faceid == "plus" else "ip-adapter_face_id"
    if pre_name != wanted:
        raise RequestError(f"{where}.module: {loaded.title} is a FaceID{' Plus' if weights.faceid == 'plus' else ''}"
                           f" model: pair it with preprocessor {wanted}, not {pre_name}")


def unit(where: str, req, pre, library, model, picture, width: int, height: int, annotator_dir: Path | None):
    """The ControlUnit of a FaceID request unit (kind "ip_adapter", its image tokens' inputs in ip_embeds)."""
    from modules.controlnet import ip_adapter
    from modules.controlnet import units as units_mod
    from modules.controlnet.models import ControlNetLoadError
    from modules.memory.offload import weights_in_host_memory

    if library is None:
        raise RequestError(f"{where}.model: no ControlNet models folder")
    try:
        loaded = library.load(req.model, model.device, model.dtype, model.unet.config, model.family, model.title,
                              unet=model.unet, unet_weights=lambda: weights_in_host_memory(model))
    except ControlNetLoadError as e:
        raise RequestError(f"{where}.model: {e}") from None
    _check_pairing(where, pre.name, loaded)
    weights = loaded.model
    pictures = [im.image for im in req.images] if len(req.images) > 1 else [picture]  # "multi-inputs": averaged
    faces = embeddings(where, pre.label, pictures, annotator_dir)
    face = torch.from_numpy(np.stack(faces)).float()[None]  # (1, pictures, 512)
    if weights.faceid == "plus":
        weights = dataclasses.replace(weights, shortcut="v2" in loaded.title.lower())  # the extension's is_v2
        try:
            encoder = library.encoder(weights, model.device, model.dtype)
        except ControlNetLoadError as e:
            raise RequestError(f"{where}.model: {e}") from None
        clip_pos, clip_neg = ip_adapter.encode_all(encoder, pictures, plus=True)  # (1, pictures, tokens, width)
        face = face.to(clip_pos.device, clip_pos.dtype)
        embeds = (ip_adapter.pack_faceid_plus(face, clip_pos),
                  ip_adapter.pack_faceid_plus(torch.zeros_like(face), clip_neg))
    else:
        face = face.to(model.device, model.dtype)
        embeds = (face, torch.zeros_like(face))
    region = ip_adapter.region_mask(req.effective_region_mask, width, height)
    return units_mod.ControlUnit(model=weights, image=picture, weight=req.weight, guidance_start=req.guidance_start,
                                 guidance_end=req.guidance_end, hr_option=req.hr_option.value, kind="ip_adapter",
                                 ip_embeds=embeds, region_mask=region)

"""InstantID (InstantX, SDXL) as the sd-webui-controlnet extension runs it: two units working together.

1. `instant_id_face_embedding` with InstantX's `ip-adapter.bin` (as users name it, `ip-adapter_instant_id_sdxl`):
   the largest face's ArcFace embedding (512 numbers, *not* scaled to unit length: insightface's `embedding`, what
   the extension and InstantX's pipeline hand over) goes through the adapter's Resampler (16 tokens; its input
   width, 512, is how the file is recognised) into the IP-Adapter attention layers like any IP-Adapter. The
   negative prompt's rows get the tokens of a zero embedding (the extension's uncond, the pipeline's zeros).
2. `instant_id_face_keypoints` with InstantX's ControlNet (`control_instant_id_sdxl`, a standard SDXL ControlNet)
   on a map of the face's five landmarks: limbs from the eyes and mouth corners to the nose as filled ellipses
   (4 px half-width) at 0.6 of their colour, then a 10 px disc per landmark (red, green, blue, yellow, magenta:
   left eye, right eye, nose, left and right mouth corner). The ControlNet's encoder_hidden_states are the face
   tokens of the embedding unit, not the prompt (the extension's `control_context_override`; InstantX's pipeline
   passes `prompt_image_emb`); its pooled/time inputs stay the prompt's. As in the extension, such a unit must come
   right after the embedding unit; a ControlNet whose file name says `instant_id` is one whatever its preprocessor.

Both read InsightFace's antelopev2 pack, the folder the extension's FaceAnalysis(name="antelopev2") loads:
`models/ControlNetPreprocessor/insightface/models/antelopev2/` with `scrfd_10g_bnkps.onnx` (SCRFD, the same
detector as buffalo_l's det_10g) and `glintr100.onnx` (ArcFace R100), run through OpenCV (face_embed.py). The
picture is first brought to the unit's preprocessor resolution (short side, padded to 64, the extension's
resize_image_with_pad) and the face read there; the keypoint map comes back without the padding.
"""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import torch

from modules.controlnet import face_embed
from modules.request_types import RequestError

EMBEDDING, KEYPOINTS = "instant_id_face_embedding", "instant_id_face_keypoints"
MODULES = (EMBEDDING, KEYPOINTS)
SUBFOLDER = Path("insightface") / "models" / "antelopev2"
DETECTOR, RECOGNISER = "scrfd_10g_bnkps.onnx", "glintr100.onnx"
FACE_WIDTH = 512  # the embedding the adapter's Resampler reads
COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255))  # RGB, one per landmark
LIMBS = ((0, 2), (1, 2), (3, 2), (4, 2))  # each to the nose; a limb takes its first landmark's colour
LIMB_HALF_WIDTH, LIMB_SHADE, DOT_RADIUS = 4, 0.6, 10
ADAPTER_HINT = "ip-adapter_instant_id_sdxl (InstantX's ip-adapter.bin)"


def is_instant_id_module(name: str) -> bool:
    return name in MODULES


def reads_face_tokens(pre_name: str, model_title: str) -> bool:
    """A ControlNet unit fed the face tokens instead of the prompt: the keypoint preprocessor's, or a model the
    extension takes for InstantID's by its name."""
    return pre_name == KEYPOINTS or "instant_id" in model_title.lower()


# --- reading the face ---

def folder(annotator_dir: Path | None) -> Path:
    from modules.controlnet.preprocessors import ANNOTATOR_FOLDER

    return Path(annotator_dir if annotator_dir is not None else ANNOTATOR_FOLDER) / SUBFOLDER


def _network(annotator_dir: Path | None, label: str, name: str):
    from modules.controlnet import dwpose
    from modules.controlnet.preprocessors import MissingAnnotatorError

    path = folder(annotator_dir) / name
    if annotator_dir is None or not path.is_file():
        raise MissingAnnotatorError(label, name, folder(annotator_dir))
    return dwpose.load(path)


def _renamed(error: Exception) -> face_embed.FaceNetworkError:
    """face_embed names buffalo_l's files in its messages; here they are antelopev2's."""
    text = str(error).replace(face_embed.DETECTOR, DETECTOR).replace(face_embed.RECOGNISER, RECOGNISER)
    return face_embed.FaceNetworkError(text.replace("det_10g gives", "SCRFD gives").replace("w600k_r50 gives",
                                                                                           "glintr100 gives"))


def find_face(rgb: np.ndarray, resolution: int, annotator_dir: Path | None, label: str):
    """(the picture at the preprocessor resolution, padded; the largest face in it) for an RGB uint8 picture."""
    from modules.controlnet.preprocessors import resize_with_pad

    detector = _network(annotator_dir, label, DETECTOR)
    padded = resize_with_pad(np.ascontiguousarray(rgb[:, :, :3]), resolution)
    try:
        faces = face_embed.detect(detector, padded.image)
    except face_embed.FaceNetworkError as e:
        raise _renamed(e) from None
    return padded, face_embed.largest(faces)


def embedding(rgb: np.ndarray, resolution: int, annotator_dir: Path | None, label: str) -> np.ndarray:
    """The largest face's raw ArcFace embedding (512 numbers, not normalised), read as the extension reads it."""
    _network(annotator_dir, label, DETECTOR)  # a missing file is named in the folder's order: detector first
    recogniser = _network(annotator_dir, label, RECOGNISER)
    padded, face = find_face(rgb, resolution, annotator_dir, label)
    crop = face_embed.align(padded.image, face.landmarks)
    blob = ((crop.astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1)[None]
    try:
        out = face_embed._forward(recogniser, blob, RECOGNISER)[0].reshape(-1)
    except face_embed.FaceNetworkError as e:
        raise _renamed(e) from None
    if out.size != FACE_WIDTH:
        raise face_embed.FaceNetworkError(f"{RECOGNISER}: not an ArcFace recogniser (it gives {out.size} numbers, "
                                          f"glintr100 gives {FACE_WIDTH})")
    return out


def keypoint_map(height: int, width: int, landmarks: np.ndarray) -> np.ndarray:
    """The five landmarks drawn as InstantID's ControlNet was trained to read them (HxWx3 uint8, black ground)."""
    out = np.zeros((height, width, 3), np.uint8)
    points = np.asarray(landmarks, np.float64)
    for a, b in LIMBS:
        (xa, ya), (xb, yb) = points[a], points[b]
        length = math.hypot(xa - xb, ya - yb)
        angle = math.degrees(math.atan2(ya - yb, xa - xb))
        ellipse = cv2.ellipse2Poly((int((xa + xb) / 2), int((ya + yb) / 2)), (int(length / 2), LIMB_HALF_WIDTH),
                                   int(angle), 0, 360, 1)
        shade = tuple(int(c * LIMB_SHADE) for c in COLOURS[a])  # 255 × 0.6 = 153 exactly, as the float original
        cv2.fillConvexPoly(out, ellipse, shade)
    for (x, y), colour in zip(points, COLOURS):
        cv2.circle(out, (int(x), int(y)), DOT_RADIUS, colour, -1)
    return out


def _preprocessor_error(label: str, error: Exception):
    from modules.controlnet.preprocessors import AnnotatorUnavailableError

    if isinstance(error, face_embed.NoFaceError):
        return AnnotatorUnavailableError(f"ControlNet preprocessor '{label}': no face found in the picture "
                                         "(InstantID needs a picture with a visible face)")
    return AnnotatorUnavailableError(f"ControlNet preprocessor '{label}': {error}")


def run(img: np.ndarray, res: int, a, b, ctx) -> np.ndarray:
    """The preprocessors as /controlnet/detect and the units run them: the keypoint map (at the resolution's size,
    unpadded), or for the embedding preprocessor the picture at that size with the face it reads."""
    from modules.models.loader import ModelLoadError

    label = ctx.label or ctx.name
    try:
        padded, face = find_face(img, res, ctx.annotator_dir, label)
    except (face_embed.NoFaceError, face_embed.FaceNetworkError, ModelLoadError) as e:
        raise _preprocessor_error(label, e) from None
    if ctx.name == KEYPOINTS:
        return padded.crop(keypoint_map(padded.image.shape[0], padded.image.shape[1], face.landmarks))
    return padded.crop(face_embed.draw(padded.image, face))


# --- the units ---

def check_checkpoint(where: str, pre_name: str, model) -> None:
    family = getattr(model, "family", "") or ""
    if not family.startswith("sdxl") or getattr(model, "is_flow", False):
        name = getattr(getattr(model, "spec", None), "label", None) or family or "this checkpoint"
        raise RequestError(f"{where}.module: {pre_name} is InstantID, which works with SDXL checkpoints (its adapter "
                           f"and ControlNet are SDXL's), not {name}")


def _resolution(req, pre, picture, width: int, height: int) -> int:
    from modules.controlnet.prepare import pixel_perfect_resolution

    if req.pixel_perfect:
        return pixel_perfect_resolution(picture.size, width, height, req.resize_mode.value)
    return int(pre.resolution.pick(req.processor_res)) if pre.resolution is not None else 512


def _face_embeddings(where: str, label: str, pictures: list, resolution: int, annotator_dir: Path | None):
    return face_embed.read_each(where, label, pictures,
                                lambda rgb: embedding(rgb, resolution, annotator_dir, label), "InstantID")


def projection(unet, weights, device, dtype):
    """The adapter's Resampler as diffusers builds it from the file (IPAdapterPlusImageProjection)."""
    layer = unet._convert_ip_adapter_image_proj_to_diffusers(weights.state_dict["image_proj"],
                                                             low_cpu_mem_usage=False)
    return layer.to(device=device, dtype=dtype).eval()


@torch.no_grad()
def face_tokens(layer, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative) tokens, each (1, 16, width): the pictures' tokens averaged (the extension's
    ImageEmbed.average_of) and a zero face's."""
    param = next(layer.parameters())
    faces = faces.reshape(-1, 1, FACE_WIDTH).to(param.device, param.dtype)
    positive = layer(faces).mean(dim=0, keepdim=True)
    negative = layer(torch.zeros_like(faces[:1]))
    return positive, negative


def embedding_unit(where: str, req, pre, library, model, picture, width: int, height: int,
                   annotator_dir: Path | None):
    """The ControlUnit of an instant_id_face_embedding unit: kind "ip_adapter" (the raw face embeddings in
    ip_embeds), its tokens kept in `context` for the keypoint unit that follows."""
    from modules.controlnet import ip_adapter
    from modules.controlnet import units as units_mod
    from modules.controlnet.models import ControlNetLoadError
    from modules.memory.offload import weights_in_host_memory

    check_checkpoint(where, pre.name, model)
    if library is None:
        raise RequestError(f"{where}.model: no ControlNet models folder")
    if req.model in ("", "None"):
        raise RequestError(f"{where}.model: preprocessor {pre.name} needs the InstantID IP-Adapter, "
                           f"{ADAPTER_HINT}, in models/ControlNet")
    try:
        loaded = library.load(req.model, model.device, model.dtype, model.unet.config, model.family, model.title,
                              unet=model.unet, unet_weights=lambda: weights_in_host_memory(model))
    except ControlNetLoadError as e:
        raise RequestError(f"{where}.model: {e}") from None
    if loaded.kind != "ip_adapter" or not getattr(loaded.model, "instant_id", False):
        raise RequestError(f"{where}.model: {loaded.title} is not the InstantID IP-Adapter (preprocessor "
                           f"{pre.name} needs {ADAPTER_HINT}; the InstantID ControlNet goes in the next unit, with "
                           f"{KEYPOINTS})")
    weights = loaded.model
    pictures = [im.image for im in req.images] if len(req.images) > 1 else [picture]  # "multi-inputs": averaged
    resolution = _resolution(req, pre, pictures[0], width, height)
    faces = _face_embeddings(where, pre.label, pictures, resolution, annotator_dir)
    face = torch.from_numpy(np.stack(faces)).float().reshape(1, len(faces), 1, FACE_WIDTH)
    face = face.to(model.device, model.dtype)
    tokens = face_tokens(projection(model.unet, weights, model.device, model.dtype), face)
    region = ip_adapter.region_mask(req.effective_region_mask, width, height)
    return units_mod.ControlUnit(model=weights, image=picture, weight=req.weight, guidance_start=req.guidance_start,
                                 guidance_end=req.guidance_end, hr_option=req.hr_option.value, kind="ip_adapter",
                                 ip_embeds=(face, torch.zeros_like(face)), region_mask=region, context=tokens)


def tokens_from(where: str, pre_name: str, model_title: str, previous) -> tuple[torch.Tensor, torch.Tensor]:
    """The face tokens an InstantID ControlNet unit reads: those of the embedding unit right before it."""
    if previous is None or previous.kind != "ip_adapter" or not getattr(previous.model, "instant_id", False) \
            or previous.context is None:
        raise RequestError(f"{where}.module: {model_title} with {pre_name} is InstantID's ControlNet, which reads "
                           f"the face tokens of an InstantID face embedding unit: put a unit with preprocessor "
                           f"{EMBEDDING} and {ADAPTER_HINT} right before this one (as the extension requires)")
    return previous.context

"""ControlNet preprocessors ("annotators"/modules) as the sd-webui-controlnet extension lists and runs them.

Names, labels, control types (tags), sliders, sorting and the weight-free algorithms follow the extension (its
`scripts/supported_preprocessor.py`, `scripts/preprocessor/*` and the legacy table), so an API client or a user who
knows the extension sees the same list and gets the same maps. Preprocessors that run a network take its weights
only from the user's annotator folder (`models/ControlNetPreprocessor/<subdir>/<file>`, the extension's
`annotator/downloads` layout); nothing is ever downloaded. Those live in `annotators.py`, imported on first use.

`Preprocessor.model_free` is the extension's `do_not_need_model`: the unit runs without a ControlNet model
(reference_*). Whether a preprocessor needs annotator weights is `annotator_files` (empty: weight-free).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

DEFAULT_RESOLUTION = 512
ANNOTATOR_FOLDER = Path("models") / "ControlNetPreprocessor"


class MissingAnnotatorError(FileNotFoundError):
    """An annotator's weights are not in the user's folder (they are never downloaded)."""

    def __init__(self, preprocessor: str, file: str, folder: Path):
        self.preprocessor, self.file, self.folder = preprocessor, file, Path(folder)
        self.message = (f"ControlNet preprocessor '{preprocessor}' needs {file} in {self.folder} "
                        f"(put the file there; preprocessor weights are not downloaded)")
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


class AnnotatorUnavailableError(RuntimeError):
    """The weights are there but this build cannot run that annotator's network."""


@dataclass(frozen=True)
class Slider:
    """One of the extension's preprocessor sliders (its PreprocessorParameter)."""

    name: str
    value: float
    minimum: float
    maximum: float
    step: float = 1.0

    def api_json(self) -> dict:
        """The extension's `PreprocessorParameter.api_json` (what /controlnet/module_list reports)."""
        return {"name": self.name, "value": self.value, "min": self.minimum, "max": self.maximum, "step": self.step}

    def pick(self, value) -> float:
        """The extension resets a value outside [min, max] (the API's -1 included) to the slider's default."""
        try:
            v = float(value)
        except (TypeError, ValueError):
            return self.value
        if math.isnan(v) or v < self.minimum or v > self.maximum:
            return self.value
        return v


@dataclass(frozen=True)
class RunContext:
    """What a preprocessor may need besides the picture and sliders."""

    name: str
    label: str = ""
    annotator_dir: Path | None = None
    device: str | None = None
    seed: int = 0
    pose_sink: Callable[[dict], None] | None = None  # receives a pose preprocessor's OpenPose-format JSON


Process = Callable[[np.ndarray, int, float, float, RunContext], np.ndarray]


@dataclass(frozen=True)
class Preprocessor:
    name: str
    label: str
    tags: tuple[str, ...]
    resolution: Slider | None
    slider_1: Slider | None
    slider_2: Slider | None
    model_free: bool
    accepts_mask: bool = False
    requires_mask: bool = False
    sorting_priority: int = 0
    annotator_files: tuple[str, ...] = ()
    process: Process | None = field(default=None, repr=False, compare=False)

    def run(self, image: np.ndarray, resolution: int = -1, slider_1: float = -1, slider_2: float = -1,
            annotator_dir: Path | None = None, *, seed: int = 0, device: str | None = None,
            pose_sink: Callable[[dict], None] | None = None) -> np.ndarray:
        """The detected map (HxWx3 uint8; HxWx4 RGB + mask for the inpaint ones), at the resolution's size.

        Out-of-range values (the API's -1) take the slider's default, as the extension does. `seed` makes
        "shuffle" deterministic (the extension draws from numpy's global random state); `device` picks where a
        network runs (default: CUDA when there is one); `pose_sink` receives the poses a pose preprocessor found
        (OpenPose's JSON format, as the extension's /controlnet/detect returns them)."""
        image = _as_image(image)
        image = _with_mask(image) if self.accepts_mask else hwc3(image)
        res = int(self.resolution.pick(resolution)) if self.resolution is not None else DEFAULT_RESOLUTION
        a = self.slider_1.pick(slider_1) if self.slider_1 is not None else None
        b = self.slider_2.pick(slider_2) if self.slider_2 is not None else None
        folder = Path(annotator_dir) if annotator_dir is not None else None
        ctx = RunContext(self.name, self.label, folder, device, int(seed), pose_sink)
        return self.process(image, res, a, b, ctx)

    @property
    def needs_annotator(self) -> bool:
        return bool(self.annotator_files)


# --- image helpers (the extension's annotator.util / scripts.utils behaviour) ---

def _as_image(image) -> np.ndarray:
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"a preprocessor takes a uint8 image, got {array.dtype}")
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise ValueError(f"a preprocessor takes an HxW, HxWx1, HxWx3 or HxWx4 image, got shape {array.shape}")
    return array


def hwc3(x: np.ndarray) -> np.ndarray:
    """Grey to RGB; RGBA composited over white (the extension's HWC3)."""
    if x.ndim == 2:
        x = x[:, :, None]
    if x.shape[2] == 3:
        return x
    if x.shape[2] == 1:
        return np.concatenate([x, x, x], axis=2)
    alpha = x[:, :, 3:4].astype(np.float32) / 255.0
    return (x[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)).clip(0, 255).astype(np.uint8)


def _with_mask(x: np.ndarray) -> np.ndarray:
    """RGB + mask in channel 3; no mask means nothing masked (the extension's combine_image_and_mask)."""
    if x.ndim == 3 and x.shape[2] == 4:
        return np.ascontiguousarray(x)
    rgb = hwc3(x)
    return np.concatenate([rgb, np.zeros_like(rgb[:, :, :1])], axis=2)


def _pad64(x: int) -> int:
    return int(np.ceil(float(x) / 64.0) * 64 - x)


@dataclass(frozen=True)
class Padded:
    """An image resized so its short side is the resolution, padded (edge) to multiples of 64 for the networks."""

    image: np.ndarray
    height: int
    width: int

    def crop(self, x: np.ndarray) -> np.ndarray:
        """Drop the padding again: the map comes back at the resized (unpadded) size."""
        return np.ascontiguousarray(x[:self.height, :self.width])


def resize_with_pad(image: np.ndarray, resolution: int) -> Padded:
    """The extension's resize_image_with_pad: cubic when enlarging, area when shrinking."""
    img = hwc3(image)
    h_raw, w_raw = img.shape[:2]
    k = float(resolution) / float(min(h_raw, w_raw))
    h, w = int(np.round(h_raw * k)), int(np.round(w_raw * k))
    img = cv2.resize(img, (w, h), interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)
    padded = np.pad(img, [[0, _pad64(h)], [0, _pad64(w)], [0, 0]], mode="edge")
    return Padded(np.ascontiguousarray(padded), h, w)


def resize_short_side(image: np.ndarray, resolution: int) -> np.ndarray:
    """Resized (no padding) so the short side is the resolution, as the extension's model-free path does."""
    p = resize_with_pad(image, resolution)
    return p.crop(p.image)


# --- weight-free algorithms ---

def _identity(img, res, a, b, ctx):
    """Passed through: reference_*, tile_colorfix* and none act on the picture itself, not on a map."""
    return np.ascontiguousarray(img)


def _invert(img, res, a, b, ctx):
    """For drawings on white: ControlNet expects white lines on black. The resolution is not used."""
    return 255 - img


def _canny(img, res, low, high, ctx):
    p = resize_with_pad(img, res)
    edges = cv2.Canny(p.image, int(low), int(high))
    return p.crop(cv2.cvtColor(edges, cv2.COLOR_GRAY2RGB))


def _threshold(img, res, t, b, ctx):
    """White where every channel is above the threshold."""
    p = resize_with_pad(img, res)
    out = np.zeros_like(p.image)
    out[np.min(p.image, axis=2) > t] = 255
    return p.crop(out)


def _blur_gaussian(img, res, sigma, b, ctx):
    return cv2.GaussianBlur(resize_short_side(img, res), (0, 0), float(sigma))


def _scribble_xdog(img, res, t, b, ctx):
    """Difference of Gaussians, thresholded into white scribbles. The doubling is done in uint8 as the extension
    does (it wraps for the strongest differences), so the maps match the extension's."""
    p = resize_with_pad(img, res)
    x = p.image.astype(np.float32)
    dog = cv2.GaussianBlur(x, (0, 0), 5.0) - cv2.GaussianBlur(x, (0, 0), 0.5)
    strength = 255 - (255 - np.min(dog, axis=2)).clip(0, 255).astype(np.uint8)
    out = np.zeros_like(p.image)
    out[(strength * np.uint8(2)) > t] = 255
    return p.crop(out)


def _noise_disk(h: int, w: int, f: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth noise in [0, 1] with features ~f pixels wide (the extension's make_noise_disk)."""
    noise = rng.uniform(0.0, 1.0, size=(h // f + 2, w // f + 2)).astype(np.float64)
    noise = cv2.resize(noise, (w + 2 * f, h + 2 * f), interpolation=cv2.INTER_CUBIC)[f:f + h, f:f + w]
    noise -= noise.min()
    return noise / max(noise.max(), 1e-12)


def _shuffle(img, res, a, b, ctx):
    """Content shuffle: the picture warped by a smooth random flow at 512 (the extension fixes the resolution).

    The extension draws from numpy's global random state (seeded per generation); here a numpy Generator seeded
    from `seed` makes the same seed give the same map."""
    x = resize_short_side(img, DEFAULT_RESOLUTION)
    h, w = x.shape[:2]
    rng = np.random.default_rng(ctx.seed)
    fx = _noise_disk(h, w, 256, rng) * float(w - 1)
    fy = _noise_disk(h, w, 256, rng) * float(h - 1)
    return cv2.remap(x, fx.astype(np.float32), fy.astype(np.float32), cv2.INTER_LINEAR)


def _tile_resample(img, res, rate, b, ctx):
    """Shrink by the down-sampling rate (1 to 1.1 leaves the picture as it is)."""
    if rate < 1.1:
        return np.ascontiguousarray(img)
    h, w = img.shape[:2]
    return cv2.resize(img, (int(w / rate), int(h / rate)), interpolation=cv2.INTER_AREA)


def _grey(channel: np.ndarray, gamma: float) -> np.ndarray:
    y = (channel.astype(np.float32) / 255.0) ** gamma
    return cv2.cvtColor((y * 255.0).clip(0, 255).astype(np.uint8), cv2.COLOR_GRAY2RGB)


def _recolor_luminance(img, res, gamma, b, ctx):
    """Lab lightness with gamma; like the extension, the RGB picture goes through OpenCV's BGR->Lab."""
    return _grey(cv2.cvtColor(img, cv2.COLOR_BGR2LAB)[:, :, 0], gamma)


def _recolor_intensity(img, res, gamma, b, ctx):
    """HSV value (max of the channels) with gamma."""
    return _grey(cv2.cvtColor(img, cv2.COLOR_BGR2HSV)[:, :, 2], gamma)


def lineart_standard(img: np.ndarray, res: int) -> np.ndarray:
    """Dark lines on a light picture become white lines: how much darker than its blurred surroundings a pixel is,
    scaled by the median line strength."""
    p = resize_with_pad(img, res)
    x = p.image.astype(np.float32)
    intensity = np.min(cv2.GaussianBlur(x, (0, 0), 6.0) - x, axis=2).clip(0, 255)
    strong = intensity[intensity > 8]
    intensity /= max(16.0, float(np.median(strong))) if strong.size else 16.0
    out = (intensity * 127).clip(0, 255).astype(np.uint8)
    return p.crop(hwc3(out))


def _lineart_standard(img, res, a, b, ctx):
    return lineart_standard(img, res)


def _color_grid(img, res, a, b, ctx):
    """T2I-Adapter colour grid: the picture as 64-pixel cells of its colours."""
    h, w = img.shape[:2]
    nh, nw = (res, int(round(w / h * res))) if h < w else (int(round(h / w * res)), res)
    x = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
    small = cv2.resize(x, (max(1, nw // 64), max(1, nh // 64)), interpolation=cv2.INTER_CUBIC)
    return cv2.resize(small, (nw, nh), interpolation=cv2.INTER_NEAREST)


def _face_id(img, res, a, b, ctx):
    """IP-Adapter FaceID: the face the unit would use, drawn on the picture (faceid.py)."""
    from modules.controlnet import faceid

    return faceid.preview(img, res, a, b, ctx)


def _instant_id(img, res, a, b, ctx):
    """InstantID (instant_id.py): the face keypoint map, or the face the embedding unit reads."""
    from modules.controlnet import instant_id

    return instant_id.run(img, res, a, b, ctx)


def _pulid(img, res, a, b, ctx):
    """PuLID (pulid.py): the face features picture its EVA-CLIP reads."""
    from modules.controlnet import pulid

    return pulid.run(img, res, a, b, ctx)


def _network(img, res, a, b, ctx):
    """Model-based: runs from the user's annotator folder (annotators.py, imported only now)."""
    from modules.controlnet import annotators

    return annotators.run(ctx.name, img, res, a, b, ctx)


# --- the registry ---

def _res(value: int = DEFAULT_RESOLUTION) -> Slider:
    return Slider("Resolution", value, 64, 2048, 8)


_STYLE_FIDELITY = Slider("Style Fidelity (only for Balanced mode)", 0.5, 0.0, 1.0, 0.01)
_NOISE_AUGMENTATION = Slider("Noise Augmentation", 0.0, 0.0, 1.0, 0.01)
_GAMMA = Slider("Gamma Correction", 1.0, 0.1, 2.0, 0.001)
_VARIATION = Slider("Variation", 8.0, 3.0, 32.0, 1.0)
_SAFE_STEPS = Slider("Safe Steps", 2, 0, 10, 1)
_DEPTH_NEAR = Slider("Remove Near %", 0, 0, 100, 0.1)
_DEPTH_BG = Slider("Remove Background %", 0, 0, 100, 0.1)


def _free(name, process, tags, res=None, s1=None, s2=None, label=None, priority=0, model_free=False,
          mask=False) -> Preprocessor:
    return Preprocessor(name=name, label=label or name, tags=tuple(tags), resolution=res, slider_1=s1,
                        slider_2=s2, model_free=model_free, accepts_mask=mask, requires_mask=mask,
                        sorting_priority=priority, process=process)


def _net(name, files, tags, res=None, s1=None, s2=None, label=None, priority=0, mask=False) -> Preprocessor:
    return Preprocessor(name=name, label=label or name, tags=tuple(tags), resolution=res, slider_1=s1,
                        slider_2=s2, model_free=False, accepts_mask=mask, requires_mask=mask,
                        sorting_priority=priority, annotator_files=tuple(files), process=_network)


def _weight_free() -> list[Preprocessor]:
    """The extension's preprocessors that need no weights. Resolution is hidden where the algorithm ignores it."""
    return [
        _free("none", _identity, ["InstructP2P"], priority=10),
        _free("invert", _invert, ["Canny", "Lineart", "Scribble", "MLSD"],
              label="invert (from white bg & black line)", priority=20),
        _free("canny", _canny, ["Canny"], _res(), Slider("Low Threshold", 100, 1, 255, 1),
              Slider("High Threshold", 200, 1, 255, 1), priority=100),
        _free("blur_gaussian", _blur_gaussian, ["Tile"], _res(), Slider("Sigma", 9.0, 0.01, 64.0, 0.01)),
        _free("scribble_xdog", _scribble_xdog, ["Scribble", "SparseCtrl"], _res(),
              Slider("XDoG Threshold", 32, 1, 64, 0.01)),
        _free("shuffle", _shuffle, ["Shuffle"]),
        _free("threshold", _threshold, [], _res(), Slider("Binarization Threshold", 127, 0, 255, 0.01)),
        _free("tile_resample", _tile_resample, ["Tile"], None, Slider("Down Sampling Rate", 1.0, 1.0, 8.0, 0.01),
              priority=100),
        _free("tile_colorfix", _identity, ["Tile"], None, _VARIATION),
        _free("tile_colorfix+sharp", _identity, ["Tile"], None, _VARIATION,
              Slider("Sharpness", 1.0, 0.0, 2.0, 0.01)),
        _free("recolor_luminance", _recolor_luminance, ["Recolor"], None, _GAMMA, priority=100),
        _free("recolor_intensity", _recolor_intensity, ["Recolor"], None, _GAMMA),
        _free("lineart_standard", _lineart_standard, ["Lineart"], _res(),
              label="lineart_standard (from white bg & black line)", priority=100),
        _free("color", _color_grid, ["T2I-Adapter"], _res(), label="t2ia_color_grid"),
        _free("reference_only", _identity, ["Reference"], None, _STYLE_FIDELITY, priority=100, model_free=True),
        _free("reference_adain", _identity, ["Reference"], None, _STYLE_FIDELITY, model_free=True),
        _free("reference_adain+attn", _identity, ["Reference"], None, _STYLE_FIDELITY, model_free=True),
        _free("inpaint", _identity, ["Inpaint"], label="inpaint_global_harmonious", mask=True),
        _free("inpaint_only", _identity, ["Inpaint"], priority=100, mask=True),
        # Image prompts: the picture goes through the IP-Adapter's CLIP vision encoder (modules/controlnet/
        # ip_adapter.py), found by width in models/clip_vision; no map is drawn.
        # ReVision (SDXL): the picture's CLIP-G image embedding replaces the pooled prompt (revision.py)
        _free("revision_clipvision", _identity, ["Revision"], None, _NOISE_AUGMENTATION, priority=100,
              model_free=True),
        _free("revision_ignore_prompt", _identity, ["Revision"], None, _NOISE_AUGMENTATION, model_free=True),
        # T2I-Adapter style: the picture's CLIP ViT-L hidden states through the style adapter (t2i_style.py)
        _free("clip_vision", _identity, ["T2I-Adapter"], label="t2ia_style_clipvision"),
        _free("ip-adapter_clip_sd15", _identity, ["IP-Adapter"], label="ip-adapter_clip_h", priority=100),
        _free("ip-adapter_clip_sdxl", _identity, ["IP-Adapter"], label="ip-adapter_clip_g"),
        _free("ip-adapter_clip_sdxl_plus_vith", _identity, ["IP-Adapter"]),
        # IP-Adapter FaceID (faceid.py): InsightFace's buffalo_l files (insightface/models/buffalo_l/det_10g.onnx,
        # w600k_r50.onnx) give the face's embedding; "plus" adds the picture's CLIP-H encoding. Detect: the face.
        _free("ip-adapter_face_id", _face_id, ["IP-Adapter"]),
        _free("ip-adapter_face_id_plus", _face_id, ["IP-Adapter"]),
        # InstantID (instant_id.py): InsightFace's antelopev2 files (insightface/models/antelopev2/
        # scrfd_10g_bnkps.onnx, glintr100.onnx); the extension still shows (and passes) the resolution slider.
        _free("instant_id_face_embedding", _instant_id, ["Instant-ID"], _res()),
        _free("instant_id_face_keypoints", _instant_id, ["Instant-ID"], _res()),
        # PuLID (pulid.py): antelopev2 as above, facexlib/detection_Resnet50_Final.pth + parsing_bisenet.pth,
        # EVA-CLIP/EVA02_CLIP_L_336_psz14_s6B.pt; `facexlib` alone gives the face features picture.
        _free("ip-adapter_pulid", _pulid, ["IP-Adapter"]),
        _free("facexlib", _pulid, []),
    ]


def _model_based() -> list[Preprocessor]:
    """The extension's annotators that run a network, with the files its annotator/*/__init__.py loads."""
    hed, pidi = "hed/ControlNetHED.pth", "pidinet/table5_pidinet.pth"
    midas = "midas/dpt_hybrid-midas-501f0c75.pt"
    body, hand, face = "openpose/body_pose_model.pth", "openpose/hand_pose_model.pth", "openpose/facenet.pth"
    dw = ("openpose/yolox_l.onnx", "openpose/dw-ll_ucoco_384.onnx")
    animal = ("openpose/yolox_l.onnx",
              "openpose/rtmpose-m_simcc-ap10k_pt-aic-coco_210e-256x256-7a041aa1_20230206.onnx")
    return [
        _net("inpaint_only+lama", ["lama/ControlNetLama.pth"], ["Inpaint"], mask=True),
        _net("depth", [midas], ["Depth"], _res(), label="depth_midas", priority=100),
        _net("normal_map", [midas], ["NormalMap"], _res(),
             Slider("Normal Background Threshold", 0.4, 0.0, 1.0, 0.01), label="normal_midas"),
        _net("depth_leres", ["leres/res101.pth"], ["Depth"], _res(), _DEPTH_NEAR, _DEPTH_BG),
        _net("depth_leres++", ["leres/res101.pth", "leres/latest_net_G.pth"], ["Depth"], _res(), _DEPTH_NEAR,
             _DEPTH_BG),
        _net("depth_zoe", ["zoedepth/ZoeD_M12_N.pt"], ["Depth"], _res()),
        _net("depth_anything", ["depth_anything/depth_anything_vitl14.pth"], ["Depth"], _res()),
        _net("depth_anything_v2", ["depth_anything_v2/depth_anything_v2_vitl.safetensors"], ["Depth"], _res()),
        _net("hed", [hed], ["SoftEdge"], _res(), label="softedge_hed"),
        _net("hed_safe", [hed], ["SoftEdge"], _res(), label="softedge_hedsafe"),
        _net("scribble_hed", [hed], ["Scribble", "SparseCtrl"], _res()),
        _net("pidinet", [pidi], ["SoftEdge"], _res(), label="softedge_pidinet", priority=100),
        _net("pidinet_safe", [pidi], ["SoftEdge"], _res(), label="softedge_pidisafe"),
        _net("pidinet_scribble", [pidi], ["Scribble", "SparseCtrl"], _res(), label="scribble_pidinet",
             priority=100),
        _net("pidinet_sketch", [pidi], ["T2I-Adapter"], _res(), label="t2ia_sketch_pidi"),
        _net("softedge_teed", ["TEED/7_model.pth"], ["SoftEdge"], _res(), _SAFE_STEPS),
        _net("softedge_anyline", ["TEED/MTEED.pth"], ["SoftEdge"], _res(1280), _SAFE_STEPS),
        _net("lineart", ["lineart/sk_model.pth"], ["Lineart"], _res(), label="lineart_realistic"),
        _net("lineart_coarse", ["lineart/sk_model2.pth"], ["Lineart"], _res()),
        _net("lineart_anime", ["lineart_anime/netG.pth"], ["Lineart"], _res()),
        _net("lineart_anime_denoise", ["manga_line/erika.pth"], ["Lineart"], _res()),
        _net("mlsd", ["mlsd/mlsd_large_512_fp32.pth"], ["MLSD"], _res(),
             Slider("MLSD Value Threshold", 0.1, 0.01, 2.0, 0.01),
             Slider("MLSD Distance Threshold", 0.1, 0.01, 20.0, 0.01), priority=100),
        _net("normal_bae", ["normal_bae/scannet.pt"], ["NormalMap"], _res(), priority=100),
        _net("normal_dsine", ["normal_dsine/dsine.pt"], ["NormalMap"], _res(), Slider("Fov", 60, 0, 360, 0.1),
             Slider("Iterations", 5, 1, 20, 1)),
        _net("openpose", [body], ["OpenPose"], _res()),
        _net("openpose_face", [body, face], ["OpenPose"], _res()),
        _net("openpose_faceonly", [body, face], ["OpenPose"], _res()),
        _net("openpose_full", [body, hand, face], ["OpenPose"], _res(), priority=100),
        _net("openpose_hand", [body, hand], ["OpenPose"], _res()),
        _net("dw_openpose_full", dw, ["OpenPose"], _res()),
        _net("animal_openpose", animal, ["OpenPose"], _res()),
        _net("densepose", ["densepose/densepose_r50_fpn_dl.torchscript"], ["OpenPose"], _res(),
             label="densepose (pruple bg & purple torso)"),
        _net("densepose_parula", ["densepose/densepose_r50_fpn_dl.torchscript"], ["OpenPose"], _res(),
             label="densepose_parula (black bg & blue torso)"),
        _net("segmentation", ["uniformer/upernet_global_small.pth"], ["Segmentation"], _res(),
             label="seg_ufade20k"),
        _net("oneformer_coco", ["oneformer/150_16_swin_l_oneformer_coco_100ep.pth"], ["Segmentation"], _res(),
             label="seg_ofcoco"),
        _net("oneformer_ade20k", ["oneformer/250_16_swin_l_oneformer_ade20k_160k.pth"], ["Segmentation"], _res(),
             label="seg_ofade20k", priority=100),
        _net("anime_face_segment", ["anime_face_segment/UNet.pth"], ["Segmentation"], _res(),
             label="seg_anime_face"),
        _net("mobile_sam", ["mobile_sam/mobile_sam.pt"], ["Segmentation"], _res()),
    ]


# Module names older versions of the extension (and API clients written for them) send.
LEGACY_ALIASES = {"fake_scribble": "scribble_hed", "te_hed": "softedge_teed"}


def _build() -> tuple[dict[str, Preprocessor], dict[str, Preprocessor]]:
    by_name: dict[str, Preprocessor] = {}
    by_label: dict[str, Preprocessor] = {}
    for p in _weight_free() + _model_based():
        assert p.name not in by_name and p.label not in by_label, f"{p.name} registered twice"
        by_name[p.name], by_label[p.label] = p, p
    return by_name, by_label


_BY_NAME, _BY_LABEL = _build()


def get(name: str | None) -> Preprocessor | None:
    """By label first, then name (the extension's get_preprocessor), then an old name."""
    if name is None:
        return None
    found = _BY_LABEL.get(name) or _BY_NAME.get(name)
    return found or _BY_NAME.get(LEGACY_ALIASES.get(name, ""))


def all_sorted() -> list[Preprocessor]:
    """The extension's dropdown order: "none", then by sorting priority, then label, both descending."""
    rest = [p for p in _BY_LABEL.values() if p.label != "none"]
    rest.sort(key=lambda p: str(p.sorting_priority).zfill(8) + p.label, reverse=True)
    return [_BY_LABEL["none"], *rest]


def _filtered(tag: str) -> list[Preprocessor]:
    return [p for p in all_sorted() if tag in p.tags or p.label == "none"]


def control_types() -> dict[str, dict]:
    """Control type -> its preprocessors (labels, "none" first) and default (the first after "none"), "All" first,
    then the tags in alphabetical order (the extension's /controlnet/control_types, without models)."""
    tags = sorted({t for p in _BY_NAME.values() for t in p.tags})
    out = {"All": {"module_list": [p.label for p in all_sorted()], "default_option": "none"}}
    for tag in tags:
        labels = [p.label for p in _filtered(tag)]
        out[tag] = {"module_list": labels, "default_option": labels[1] if len(labels) > 1 else labels[0]}
    return out

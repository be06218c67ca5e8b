"""The model-based ControlNet preprocessors: the extension's annotator networks (taken from `controlnet_aux`, the
same architectures) with weights read only from the user's annotator folder, never downloaded.

Pre- and post-processing follow the extension's annotator code (not controlnet_aux's detectors, which resize
differently): the picture is resized so its short side is the resolution, edge-padded to multiples of 64, run, and
the map cropped back to the resized size. Networks are built on the meta device and take the file's tensors
directly, so a large annotator costs neither a random initialisation nor twice its memory. The last few networks
stay loaded (`unload_all()` frees them).
"""
from __future__ import annotations

import functools
import importlib
import itertools
import threading
import warnings
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

from modules.controlnet import annotators_more as more
from modules.controlnet import depth_anything
from modules.controlnet import segmentation
from modules.models.loader import ModelLoadError
from modules.controlnet.preprocessors import (ANNOTATOR_FOLDER, AnnotatorUnavailableError, MissingAnnotatorError,
                                               RunContext, get, hwc3, lineart_standard, resize_with_pad)

KEEP_LOADED = 3
_cache: OrderedDict[tuple, torch.nn.Module] = OrderedDict()
_lock = threading.Lock()


# --- finding and loading weights ---

def locate(ctx: RunContext, relative: str) -> Path:
    """The file in the user's folder, in the extension's `<subdir>/<file>` layout, or MissingAnnotatorError."""
    subdir, filename = relative.split("/", 1)
    folder = (ctx.annotator_dir if ctx.annotator_dir is not None else ANNOTATOR_FOLDER) / subdir
    path = folder / filename
    if ctx.annotator_dir is None or not path.is_file():
        raise MissingAnnotatorError(ctx.label or ctx.name, filename, folder)
    return path


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors only, read as checkpoints are everywhere in this program (a pickle cannot run code), with
    DataParallel's "module." prefixes dropped."""
    from modules.models.loader import read_state_dict as read_tensors

    sd = read_tensors(path, nested=True)
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}


def fit_keys(net: torch.nn.Module, sd: dict) -> dict:
    """The network's weights out of what the file holds: a training checkpoint ({"model": ..., "optimizer": ...})
    keeps them under "model." and may carry more tensors; a file missing any is left for the strict load to name."""
    expected = set(net.state_dict())
    inner = {k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")}
    for candidate in (sd, inner):
        if expected <= set(candidate):
            return {k: candidate[k] for k in expected}
    return sd


@functools.lru_cache(maxsize=None)
def import_controlnet_aux() -> None:
    """controlnet_aux's package import pulls in every detector it has; they warn about optional packages
    (mediapipe) and timm names they re-register, which means nothing here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            importlib.import_module("controlnet_aux")
        except ImportError as e:
            raise AnnotatorUnavailableError(
                f"model-based ControlNet preprocessors need the controlnet_aux package ({e}); "
                f"install the requirements (pip install -r requirements.txt)") from e


def _has_meta(net: torch.nn.Module) -> bool:
    return any(t.is_meta for t in itertools.chain(net.parameters(), net.buffers()))


def build_from(build: Callable[[], torch.nn.Module], path: Path,
               convert: Callable[[torch.nn.Module, dict], dict] | None = None) -> torch.nn.Module:
    """The network with the file's weights (strict: a wrong file is an error naming it, not a garbage map)."""
    sd = read_state_dict(path)
    import_controlnet_aux()
    shaped = getattr(build, "reads_shapes", False)  # a network whose size the file's shapes say
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # timm: "mapping deprecated model name" for MiDaS's backbone
        try:
            net = build(sd) if shaped else build()
        except (KeyError, ValueError) as e:
            raise ModelLoadError(f"{path} does not hold the weights this preprocessor expects: {e}") from e
    try:
        original = sd
        sd = convert(net, sd) if convert is not None else fit_keys(net, sd)
        net.load_state_dict(sd, strict=True, assign=True)
        if _has_meta(net):  # a buffer the file does not hold: build it for real
            net = build(original) if shaped else build()
            net.load_state_dict(sd, strict=True)
    except (RuntimeError, KeyError) as e:
        raise ModelLoadError(f"{path} does not hold the weights this preprocessor expects: {e}") from e
    return net.float().eval()


def _device(ctx: RunContext) -> torch.device:
    if ctx.device is not None:
        return torch.device(ctx.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load(ctx: RunContext, relative: str) -> torch.nn.Module:
    """The network for a file (NETWORKS), reused while the file is unchanged (the least recently used go)."""
    build, convert = NETWORKS[relative]
    path = locate(ctx, relative)
    device = _device(ctx)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, relative, str(device))
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        net = build_from(build, path, convert).to(device)
        _cache[key] = net
        while len(_cache) > KEEP_LOADED:
            _cache.popitem(last=False)
        return net


def unload_all() -> None:
    """Free every loaded annotator network."""
    with _lock:
        _cache.clear()
    from modules import devices

    devices.torch_gc()


# --- shared steps ---

def _tensor(x: np.ndarray, device: torch.device) -> torch.Tensor:
    """HxWxC numpy -> 1xCxHxW float32 on the device."""
    return torch.from_numpy(np.ascontiguousarray(x)).float().permute(2, 0, 1)[None].to(device)


def _param_device(net: torch.nn.Module) -> torch.device:
    return next(net.parameters()).device


def safe_step(x: np.ndarray, step: int = 2) -> np.ndarray:
    """Quantise soft edges to a few levels ("safe" variants: fewer hidden details for the ControlNet to copy)."""
    y = x.astype(np.float32) * float(step + 1)
    return y.astype(np.int32).astype(np.float32) / float(step)


def nms(x: np.ndarray, threshold: int, sigma: float) -> np.ndarray:
    """Thin soft edges to one-pixel ridges above a threshold (the extension's annotator.util.nms)."""
    x = cv2.GaussianBlur(x.astype(np.float32), (0, 0), sigma)
    kernels = [np.array(k, dtype=np.uint8) for k in (
        [[0, 0, 0], [1, 1, 1], [0, 0, 0]], [[0, 1, 0], [0, 1, 0], [0, 1, 0]],
        [[1, 0, 0], [0, 1, 0], [0, 0, 1]], [[0, 0, 1], [0, 1, 0], [1, 0, 0]])]
    y = np.zeros_like(x)
    for k in kernels:
        np.putmask(y, cv2.dilate(x, kernel=k) == x, x)
    out = np.zeros_like(y, dtype=np.uint8)
    out[y > threshold] = 255
    return out


def to_scribble(edge: np.ndarray) -> np.ndarray:
    """Soft edges -> bold binary scribbles (the extension's scribble_hed / scribble_pidinet)."""
    x = nms(edge, 127, 3.0)
    x = cv2.GaussianBlur(x, (0, 0), 3.0)
    x[x > 4] = 255
    x[x < 255] = 0
    return x


def _fuse_side_outputs(outputs, height: int, width: int) -> np.ndarray:
    """HED/TEED: the side outputs resized to the picture, averaged, through a sigmoid -> [0, 1]."""
    maps = [cv2.resize(o.detach().cpu().numpy().astype(np.float32)[0, 0], (width, height),
                       interpolation=cv2.INTER_LINEAR) for o in outputs]
    mean = np.mean(np.stack(maps, axis=2), axis=2).astype(np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * mean))  # the logistic sigmoid, without exp's overflow on strong outputs


# --- HED / TEED / PiDiNet soft edges ---

def _hed_net():
    from controlnet_aux.hed import ControlNetHED_Apache2

    return ControlNetHED_Apache2()


def hed_edge(ctx: RunContext, padded: np.ndarray, safe: bool) -> np.ndarray:
    net = load(ctx, "hed/ControlNetHED.pth")
    h, w = padded.shape[:2]
    with torch.no_grad():
        edge = _fuse_side_outputs(net(_tensor(padded, _param_device(net))), h, w)
    if safe:
        edge = safe_step(edge)
    return (edge * 255.0).clip(0, 255).astype(np.uint8)


def _hed(img, res, a, b, ctx, safe=False, scribble=False):
    p = resize_with_pad(img, res)
    edge = p.crop(hed_edge(ctx, p.image, safe))
    return hwc3(to_scribble(edge) if scribble else edge)


def _ted_net():
    from controlnet_aux.teed.ted import TED

    return TED()


def teed_edge(ctx: RunContext, padded: np.ndarray, steps: int, relative: str) -> np.ndarray:
    net = load(ctx, relative)
    h, w = padded.shape[:2]
    with torch.no_grad():
        edge = _fuse_side_outputs(net(_tensor(padded, _param_device(net))), h, w)
    if steps != 0:
        edge = safe_step(edge, steps)
    return (edge * 255.0).clip(0, 255).astype(np.uint8)


def _teed(img, res, steps, b, ctx):
    p = resize_with_pad(img, res)
    return hwc3(p.crop(teed_edge(ctx, p.image, int(steps), "TEED/7_model.pth")))


def _small_components(mask: np.ndarray, min_voxels: int = 36) -> np.ndarray:
    """The extension removes objects under 36 voxels from the 3-channel mask (4-connected, each pixel counting
    three times); this is that on one channel."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=4)
    keep = np.zeros(count, dtype=bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] * 3 >= min_voxels
    return keep[labels]


def _anyline(img, res, steps, b, ctx):
    """MistoLine's Anyline: MTEED edges, with the faintest standard-lineart strokes (value 1) of real size
    stamped in as the extension does."""
    p = resize_with_pad(img, res)
    edges = hwc3(teed_edge(ctx, p.image, int(steps), "TEED/MTEED.pth"))
    lines = lineart_standard(p.image, min(p.image.shape[:2]))[:, :, 0]
    faint = (lines == 1) & _small_components(lines == 1)
    edges[faint] = 1
    return p.crop(edges)


def _pidinet_net():
    from controlnet_aux.pidi.model import pidinet

    return pidinet()


def pidinet_edge(ctx: RunContext, padded: np.ndarray, safe: bool = False, binary: bool = False) -> np.ndarray:
    """PiDiNet reads BGR in [0, 1]; its last output is the fused edge map."""
    net = load(ctx, "pidinet/table5_pidinet.pth")
    x = _tensor(padded[:, :, ::-1] / 255.0, _param_device(net))
    with torch.no_grad():
        edge = net(x)[-1].cpu().numpy()[0, 0]
    if binary:
        edge = edge > 0.5
    if safe:
        edge = safe_step(edge)
    return (edge * 255.0).clip(0, 255).astype(np.uint8)


def _pidinet(img, res, a, b, ctx, safe=False, binary=False, scribble=False):
    p = resize_with_pad(img, res)
    edge = p.crop(pidinet_edge(ctx, p.image, safe, binary))
    return hwc3(to_scribble(edge) if scribble else edge)


# --- line art ---

def _lineart_net():
    from controlnet_aux.lineart import Generator

    return Generator(3, 1, 3)


def _lineart(img, res, a, b, ctx, relative="lineart/sk_model.pth"):
    """Informative-drawings line art: the network draws black on white; the map is inverted as the extension's."""
    p = resize_with_pad(img, res)
    net = load(ctx, relative)
    with torch.no_grad():
        line = net(_tensor(p.image / 255.0, _param_device(net)))[0, 0].cpu().numpy()
    line = (line * 255.0).clip(0, 255).astype(np.uint8)
    return hwc3(p.crop(255 - line))


def _lineart_anime_net():
    import torch.nn as nn
    from controlnet_aux.lineart_anime import UnetGenerator

    norm = functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
    return UnetGenerator(3, 1, 8, 64, norm_layer=norm, use_dropout=False)


def _lineart_anime(img, res, a, b, ctx):
    """The anime U-Net needs sides in multiples of 256: resized up to them, run, resized back."""
    p = resize_with_pad(img, res)
    net = load(ctx, "lineart_anime/netG.pth")
    h, w = p.image.shape[:2]
    hn, wn = 256 * int(np.ceil(h / 256.0)), 256 * int(np.ceil(w / 256.0))
    x = cv2.resize(p.image, (wn, hn), interpolation=cv2.INTER_CUBIC)
    with torch.no_grad():
        line = net(_tensor(x / 127.5 - 1.0, _param_device(net)))[0, 0] * 127.5 + 127.5
    line = cv2.resize(line.cpu().numpy(), (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)
    return hwc3(p.crop(255 - line))


# --- MLSD straight lines ---

def _mlsd_net():
    from controlnet_aux.mlsd.models.mbv2_mlsd_large import MobileV2_MLSD_Large

    return MobileV2_MLSD_Large()


def _mlsd(img, res, score_thr, dist_thr, ctx):
    """Straight line segments drawn one pixel wide in white (none found: a black map)."""
    from controlnet_aux.mlsd.utils import pred_lines

    p = resize_with_pad(img, res)
    net = load(ctx, "mlsd/mlsd_large_512_fp32.pth")
    out = np.zeros_like(p.image)
    h, w = p.image.shape[:2]
    with torch.no_grad():
        try:
            lines = pred_lines(p.image, net, [h, w], score_thr, dist_thr)
        except IndexError:  # pred_lines cannot index an empty segment list
            lines = []
    for x0, y0, x1, y1 in lines:
        cv2.line(out, (int(x0), int(y0)), (int(x1), int(y1)), (255, 255, 255), 1)
    return hwc3(p.crop(out[:, :, 0]))


# --- MiDaS depth and normals ---

def _midas_net():
    from controlnet_aux.midas.midas.dpt_depth import DPTDepthModel

    return DPTDepthModel(path=None, backbone="vitb_rn50_384", non_negative=True)


def _midas_depth(ctx: RunContext, padded: np.ndarray) -> torch.Tensor:
    net = load(ctx, "midas/dpt_hybrid-midas-501f0c75.pt")
    with torch.no_grad():
        return net(_tensor(padded / 127.5 - 1.0, _param_device(net)))[0].float().cpu()


def _normalised(depth: torch.Tensor) -> np.ndarray:
    d = depth - depth.min()
    return (d / torch.clamp(d.max(), min=1e-8)).numpy()


def _depth_midas(img, res, a, b, ctx):
    p = resize_with_pad(img, res)
    depth = (_normalised(_midas_depth(ctx, p.image)) * 255.0).clip(0, 255).astype(np.uint8)
    return hwc3(p.crop(depth))


def _normal_midas(img, res, bg_threshold, b, ctx):
    """Normals from the depth's gradients; flat (facing the camera) where the depth is below the background
    threshold."""
    p = resize_with_pad(img, res)
    depth = _midas_depth(ctx, p.image)
    near = _normalised(depth)
    d = depth.numpy()
    x = cv2.Sobel(d, cv2.CV_32F, 1, 0, ksize=3)
    y = cv2.Sobel(d, cv2.CV_32F, 0, 1, ksize=3)
    x[near < bg_threshold] = 0
    y[near < bg_threshold] = 0
    normal = np.stack([x, y, np.full_like(x, np.pi * 2.0)], axis=2)
    normal /= np.sum(normal ** 2.0, axis=2, keepdims=True) ** 0.5
    image = (normal * 127.5 + 127.5).clip(0, 255).astype(np.uint8)[:, :, ::-1]
    return p.crop(image)


# --- OpenPose ---

def _body_net():
    from controlnet_aux.open_pose.model import bodypose_model

    return bodypose_model()


def _hand_net():
    from controlnet_aux.open_pose.model import handpose_model

    return handpose_model()


def _face_net():
    from controlnet_aux.open_pose.face import FaceNet

    return FaceNet()


def _openpose_keys(net: torch.nn.Module, sd: dict) -> dict:
    """The body/hand files name layers without the block prefix (the original pytorch-openpose transfer)."""
    return {k: sd[k.split(".", 1)[1]] for k in net.state_dict().keys()}


@functools.lru_cache(maxsize=None)
def _estimator_classes():
    """controlnet_aux's Body/Hand/Face take a file path and unpickle it freely: these take a network loaded here."""
    from controlnet_aux.open_pose.body import Body
    from controlnet_aux.open_pose.face import Face, params
    from controlnet_aux.open_pose.hand import Hand

    def holding(base):
        def __init__(self, model):
            self.model = model
        return type(f"Loaded{base.__name__}", (base,), {"__init__": __init__})

    face = holding(Face)
    face.inference_size = params["inference_img_size"]
    face.sigma = params["gaussian_sigma"]
    face.threshold = params["heatmap_peak_thresh"]
    return holding(Body), holding(Hand), face


def _estimators(ctx: RunContext, hand: bool, face: bool):
    body_cls, hand_cls, face_cls = _estimator_classes()
    body = body_cls(load(ctx, "openpose/body_pose_model.pth"))
    hands = hand_cls(load(ctx, "openpose/hand_pose_model.pth")) if hand else None
    faces = face_cls(load(ctx, "openpose/facenet.pth")) if face else None
    return body, hands, faces


_HAND_EDGES = [(0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11), (11, 12),
               (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20)]


def draw_hand(canvas: np.ndarray, keypoints) -> np.ndarray:
    """A hand as the extension draws it: bones in a rainbow, joints in blue (matplotlib's HSV via colorsys, so
    matplotlib is not needed)."""
    import colorsys

    from controlnet_aux.open_pose.util import eps

    if not keypoints:
        return canvas
    h, w = canvas.shape[:2]
    for i, (a, b) in enumerate(_HAND_EDGES):
        k1, k2 = keypoints[a], keypoints[b]
        if k1 is None or k2 is None:
            continue
        x1, y1, x2, y2 = int(k1.x * w), int(k1.y * h), int(k2.x * w), int(k2.y * h)
        if min(x1, y1, x2, y2) > eps:
            color = [c * 255 for c in colorsys.hsv_to_rgb(i / float(len(_HAND_EDGES)), 1.0, 1.0)]
            cv2.line(canvas, (x1, y1), (x2, y2), color, thickness=2)
    for k in keypoints:
        x, y = int(k.x * w), int(k.y * h)
        if x > eps and y > eps:
            cv2.circle(canvas, (x, y), 4, (0, 0, 255), thickness=-1)
    return canvas


def draw_poses(poses, h: int, w: int, body: bool, hand: bool, face: bool) -> np.ndarray:
    from controlnet_aux.open_pose.util import draw_bodypose, draw_facepose

    canvas = np.zeros((h, w, 3), dtype=np.uint8)
    for pose in poses:
        if body:
            canvas = draw_bodypose(canvas, pose.body.keypoints)
        if hand:
            canvas = draw_hand(draw_hand(canvas, pose.left_hand), pose.right_hand)
        if face:
            canvas = draw_facepose(canvas, pose.face)
    return canvas


def _openpose(img, res, a, b, ctx, body=True, hand=False, face=False):
    """CMU OpenPose skeletons (with hands / face landmarks) on black, drawn as the extension draws them."""
    from controlnet_aux.open_pose import OpenposeDetector

    p = resize_with_pad(img, res)
    detector = OpenposeDetector(*_estimators(ctx, hand, face))
    h, w = p.image.shape[:2]
    poses = detector.detect_poses(p.image, include_hand=hand, include_face=face)
    if ctx.pose_sink is not None:
        ctx.pose_sink(poses_json(poses, h, w))
    return p.crop(draw_poses(poses, h, w, body, hand, face))


def poses_json(poses, h: int, w: int) -> dict:
    """OpenPose's JSON output format, as the extension writes it: per person x, y (fractions of the canvas) and a
    confidence of 1 per keypoint, 0, 0, 0 for one not found; None for a part not looked for."""
    def flat(keypoints):
        if not keypoints:
            return None
        return [v for k in keypoints for v in ([float(k.x), float(k.y), 1.0] if k is not None else [0.0, 0.0, 0.0])]

    return {"people": [{"pose_keypoints_2d": flat(pose.body.keypoints), "face_keypoints_2d": flat(pose.face),
                        "hand_left_keypoints_2d": flat(pose.left_hand),
                        "hand_right_keypoints_2d": flat(pose.right_hand)} for pose in poses],
            "animals": [], "canvas_height": h, "canvas_width": w}


def _dw_openpose(img, res, a, b, ctx):
    """DWPose (dwpose.py): body, hands and face, drawn as the extension draws them; the pose JSON keeps DWPose's
    pixel coordinates, as the extension's does."""
    from controlnet_aux.open_pose import PoseResult
    from controlnet_aux.open_pose.body import BodyResult, Keypoint

    from modules.controlnet import dwpose

    p = resize_with_pad(img, res)
    h, w = p.image.shape[:2]
    try:
        found = dwpose.detect(locate(ctx, "openpose/yolox_l.onnx"), locate(ctx, "openpose/dw-ll_ucoco_384.onnx"),
                              p.image)
    except cv2.error as e:  # networks that load but do not answer as DWPose's do (another file under that name)
        raise ModelLoadError(f"DWPose could not run the ONNX networks in {ctx.annotator_dir}/openpose: "
                             f"{str(e).strip().splitlines()[-1][:160]}") from None
    if ctx.pose_sink is not None:
        ctx.pose_sink(poses_json(found, h, w))

    def scaled(points):
        return None if points is None else [None if k is None else Keypoint(k.x / w, k.y / h, k.score, k.id)
                                            for k in points]

    normalised = [PoseResult(BodyResult(scaled(q.body.keypoints), q.body.total_score, q.body.total_parts),
                             scaled(q.left_hand), scaled(q.right_hand), scaled(q.face)) for q in found]
    return p.crop(draw_poses(normalised, h, w, True, True, True))


def _animal_openpose(img, res, a, b, ctx):
    """AP-10K animal skeletons (dwpose.py: YOLOX's animal boxes, RTMPose-m 256×256)."""
    from modules.controlnet import dwpose

    p = resize_with_pad(img, res)
    h, w = p.image.shape[:2]
    found = dwpose.animals(locate(ctx, "openpose/yolox_l.onnx"), locate(ctx, ANIMAL_POSE_FILE), p.image)
    if ctx.pose_sink is not None:
        data = poses_json([], h, w)
        data["animals"] = [[v for k in animal for v in (float(k.x), float(k.y), 1.0)] for animal in found]
        ctx.pose_sink(data)
    return p.crop(dwpose.draw_animals(found, h, w))


ANIMAL_POSE_FILE = "openpose/rtmpose-m_simcc-ap10k_pt-aic-coco_210e-256x256-7a041aa1_20230206.onnx"


# --- which network each file holds ---

# --- NormalBAE (surface normals, ScanNet) ---

def _normal_bae_net():
    import contextlib
    import io
    import types

    from controlnet_aux.normalbae.nets.NNET import NNET

    args = types.SimpleNamespace(mode="client", architecture="BN", pretrained="scannet", sampling_ratio=0.4,
                                 importance_ratio=0.7)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its EfficientNet's construction
        return NNET(args)


def _unwrapped(net: torch.nn.Module, sd: dict) -> dict:
    """A training checkpoint's weights under "model." and DataParallel's "module." (NormalBAE's release)."""
    plain = {}
    for key, value in sd.items():
        for prefix in ("model.", "module."):
            key = key.removeprefix(prefix)
        plain[key] = value
    return fit_keys(net, plain)


_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _normal_bae(img, res, a, b, ctx):
    """Normals in the extension's colours: x, y, z from [-1, 1] to [0, 255] (the net's last, full-size output)."""
    p = resize_with_pad(img, res)
    net = load(ctx, "normal_bae/scannet.pt")
    device = _param_device(net)
    x = _tensor(p.image / 255.0, device)
    mean = torch.tensor(_IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(_IMAGENET_STD, device=device).view(1, 3, 1, 1)
    with torch.no_grad():
        normal = net((x - mean) / std)[0][-1][:, :3]
    normal = ((normal + 1) * 0.5).clip(0, 1)[0].permute(1, 2, 0).cpu().numpy()
    return p.crop((normal * 255.0).clip(0, 255).astype(np.uint8))


# --- Depth Anything v1 / v2 (depth_anything.py) ---

def _depth_anything(img, res, a, b, ctx, relative):
    p = resize_with_pad(img, res)
    return hwc3(p.crop(depth_anything.depth_map(load(ctx, relative), p.image)))


# --- ZoeDepth (depth_zoe: ZoeD_M12_N, metric depth on a BEiT-L 384 MiDaS core) ---

def _zoe_net():
    """ZoeD_M12_N as its "infer" config builds it. controlnet_aux's ZoeDepth.load_state_dict drops keys and loads
    non-strictly under timm 1.x: the network here takes torch's strict load instead, and its BEiT blocks get the
    buffers the file does not hold (timm 1.x computes them: zero key biases, the relative position index)."""
    from timm.models.beit import Attention, gen_relative_position_index

    from controlnet_aux.zoe.zoedepth.models.zoedepth.zoedepth_v1 import ZoeDepth
    from controlnet_aux.zoe.zoedepth.utils.config import get_config

    net = ZoeDepth.build_from_config(get_config("zoedepth", "infer"))
    net.load_state_dict = functools.partial(torch.nn.Module.load_state_dict, net)
    for module in net.modules():
        if isinstance(module, Attention):
            if getattr(module, "k_bias", None) is not None:
                module.register_buffer("k_bias", torch.zeros(module.k_bias.shape, device="cpu"), persistent=False)
            if getattr(module, "window_size", None):
                module.register_buffer("relative_position_index",
                                       gen_relative_position_index(module.window_size, device="cpu"),
                                       persistent=False)
    return net


def _zoe_keys(net: torch.nn.Module, sd: dict) -> dict:
    """The release is a training checkpoint ({"model": ...}) written with timm 0.6, which also saved each BEiT
    block's relative position index; timm 1.x computes it (for any picture size), so those are left out."""
    return fit_keys(net, {k: v for k, v in sd.items() if not k.endswith("attn.relative_position_index")})


def _depth_zoe(img, res, a, b, ctx):
    """The extension's ZoeDetector: RGB in [0, 1] through ZoeDepth's infer (reflect-padded, averaged with the
    mirrored picture), the metric depth scaled between its 2nd and 85th percentiles and inverted (near is white)."""
    p = resize_with_pad(img, res)
    net = load(ctx, "zoedepth/ZoeD_M12_N.pt")
    with torch.no_grad():
        depth = net.infer(_tensor(p.image / 255.0, _param_device(net)))[0, 0].float().cpu().numpy()
    low, high = np.percentile(depth, 2), np.percentile(depth, 85)
    depth = 1.0 - (depth - low) / max(float(high - low), 1e-8)
    return hwc3(p.crop((depth * 255.0).clip(0, 255).astype(np.uint8)))


# --- LeReS (depth_leres) and its boosted variant (depth_leres++: BoostingMonocularDepth's pix2pix merge) ---

def _leres_net():
    from controlnet_aux.leres.leres.multi_depth_model_woauxi import RelDepthModel

    return RelDepthModel(backbone="resnext101")


def _leres_keys(net: torch.nn.Module, sd: dict) -> dict:
    """res101.pth is AdelaiDepth's checkpoint: the depth network's DataParallel weights under "depth_model" (next
    to the point-cloud shift/focal networks, not used here); a bare state dict is read as it is."""
    expected = set(net.state_dict())
    inner = {k[len("depth_model."):].removeprefix("module."): v for k, v in sd.items()
             if k.startswith("depth_model.")}
    for candidate in (sd, inner):
        if expected <= set(candidate):
            return {k: candidate[k] for k in expected}
    return inner or sd


def _merge_net():
    """The pix2pix generator that merges two depth estimates (a 10-level U-Net, no normalisation, 2 -> 1)."""
    from controlnet_aux.leres.pix2pix.models.networks import UnetGenerator, get_norm_layer

    return UnetGenerator(2, 1, 10, 64, norm_layer=get_norm_layer("none"), use_dropout=False)


def _leres_estimate(net: torch.nn.Module, img: np.ndarray, w: int, h: int) -> np.ndarray:
    """The extension's estimateleres: the RGB picture's channels reversed, resized (bilinear) to w×h, its 0-255
    values through ImageNet's mean/std (torchvision's ToTensor leaves float input unscaled), the depth (larger is
    farther) resized back to the picture (cubic)."""
    device = _param_device(net)
    x = cv2.resize(np.ascontiguousarray(img[:, :, ::-1]), (w, h)).astype(np.float32)
    mean = torch.tensor(_IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(_IMAGENET_STD, device=device).view(1, 3, 1, 1)
    with torch.no_grad():
        depth = net.depth_model((_tensor(x, device) - mean) / std).squeeze().float().cpu().numpy()
    return cv2.resize(depth, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_CUBIC)


def _min_max(x):
    return (x - x.min()) / max(float(x.max() - x.min()), 1e-12)


def _merge_estimates(net: torch.nn.Module, outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The merge network on two estimates (each min-max scaled to [-1, 1]); its output mapped to [0, 1]."""
    device = _param_device(net)
    pair = np.stack([_min_max(outer.astype(np.float32)), _min_max(inner.astype(np.float32))], axis=2) * 2.0 - 1.0
    with torch.no_grad():
        fake = net(_tensor(pair, device))
    return ((fake + 1.0) / 2.0).squeeze().float().cpu().numpy()


BOOST_RECEPTIVE_FIELD = 448  # LeReS's receptive field: the low resolution of every double estimate
BOOST_MERGE_SIZE = 1024  # the merge network's input size
BOOST_MAX_SIZE = 1600  # R_max: the largest whole-picture estimate


def _max_pool(x: np.ndarray, size: int) -> np.ndarray:
    """skimage's block_reduce(x, (n, n), np.max) with n = side // size (zero-padded to whole blocks)."""
    n = max(1, x.shape[0] // size)
    h, w = -(-x.shape[0] // n) * n, -(-x.shape[1] // n) * n
    padded = np.zeros((h, w), dtype=x.dtype)
    padded[:x.shape[0], :x.shape[1]] = x
    return padded.reshape(h // n, n, w // n, n).max(axis=(1, 3))


def _gradient(img: np.ndarray) -> np.ndarray:
    gray = img[..., :3].astype(np.float64) @ np.array([0.2989, 0.5870, 0.1140])
    return np.abs(cv2.Sobel(gray, cv2.CV_64F, 0, 1, ksize=3)) + np.abs(cv2.Sobel(gray, cv2.CV_64F, 1, 0, ksize=3))


def _processing_resolution(img: np.ndarray, base: int, confidence: float = 0.2, scale_threshold: float = 3,
                           max_size: int = BOOST_MAX_SIZE) -> tuple[int, float]:
    """R_x of the boosting paper (section 5): the largest resolution at which at most `confidence` of the picture
    is further than the receptive field from an edge, searched in steps of 1/32 on the edge map; and the share of
    the picture near edges (the patch scale K of section 6)."""
    speed = 32
    side = int(min(img.shape[:2]))
    grad = cv2.resize(_gradient(img), (side, side))  # the extension's INTER_AREA lands in `dst`: bilinear
    middle = grad.min() + 0.4 * (grad.max() - grad.min())
    grad = (grad >= middle).astype(np.float64)
    kernel = np.ones((base // speed, base // speed))
    quarter = np.ones((int(base / (4 * speed)), int(base / (4 * speed))))
    limit = min(max_size, scale_threshold * max(img.shape[:2]))
    best, pooled = base / speed, None

    def edges_at(size):
        small = cv2.resize(_max_pool(grad, size), (size, size))
        return (small >= 0.5).astype(np.float64)

    for size in range(int(base / speed), int(limit / speed), int(base / (2 * speed))):
        pooled = edges_at(size)
        if (1 - cv2.dilate(pooled, kernel, iterations=1)).mean() > confidence:
            break
        best = size
    if pooled is None:  # a picture under R_x's first step (the extension fails here): the receptive field
        pooled = edges_at(int(base / speed))
    return int(best * speed), float(cv2.dilate(pooled, quarter, iterations=1).mean())


def _region_density(integral: np.ndarray, rect) -> float:
    x, y, w, h = rect
    return float(integral[y + h, x + w] - integral[y, x + w] - integral[y + h, x] + integral[y, x]) / (w * h)


def _select_patches(img: np.ndarray, base: int, factor: float) -> list[list[int]]:
    """Section 6's local patches (x, y, w, h): a grid of receptive-field-sized squares with a stride of 3/4, kept
    where the edge density is at least the picture's, each grown while it stays so; the largest first."""
    grad = _gradient(img)
    if (grad > 0).any():
        grad[grad < grad[grad > 0].mean()] = 0
    density = grad.sum() / grad.size
    integral = cv2.integral(grad)
    height, width = integral.shape
    half, step = int(round(base / 2)), int(32 / factor)
    stride = int(round(half * 0.75))
    grid = [[k - half, j - half, 2 * half, 2 * half] for k in range(half, img.shape[1] - half, stride)
            for j in range(half, img.shape[0] - half, stride)]
    chosen = []
    for rect in grid:
        if _region_density(integral, rect) < density:
            continue
        while True:
            grown = [rect[0] - step // 2, rect[1] - step // 2, rect[2] + step, rect[3] + step]
            if grown[0] < 0 or grown[1] < 0 or grown[1] + grown[3] >= height or grown[0] + grown[2] >= width:
                break
            if _region_density(integral, grown) < density:
                break
            rect = grown
        chosen.append(rect)
    return sorted(chosen, key=lambda r: r[2], reverse=True)


@functools.lru_cache(maxsize=1)
def _blend_mask() -> np.ndarray:
    """The mask that blends a patch into the whole estimate, as the extension makes it (at 3000 px, resized to each
    patch): a square of ones 15 % in from the edges, Gaussian-blurred (sigma 1/16 of the side), scaled to [0, 1].
    The blur is separable and so is the square, so it is the outer product of one blurred line (the same to
    ~1e-6, in milliseconds instead of the 2-D blur's seconds)."""
    size = 3000
    edge = int(0.15 * size)
    line = np.zeros((1, size), dtype=np.float32)
    line[0, edge:size - edge] = 1
    k = int(2 * np.ceil(2 * int(size / 16)) + 1)
    gauss = cv2.getGaussianKernel(k, int(size / 16), cv2.CV_32F)
    v = cv2.sepFilter2D(line, -1, gauss, np.ones((1, 1), np.float32), borderType=cv2.BORDER_REFLECT_101)[0]
    return _min_max(np.outer(v.astype(np.float64), v)).astype(np.float32)


def boost(img: np.ndarray, estimate: Callable[[np.ndarray, int, int], np.ndarray],
          merge: Callable[[np.ndarray, np.ndarray], np.ndarray], max_res: int) -> np.ndarray:
    """BoostingMonocularDepth as the extension runs it for LeReS (its estimateboost): a double estimate of the
    whole picture (at the receptive field and at R_x, merged); if R_x is within `max_res`, local patches of a
    larger picture are double-estimated too and merged into it. Returns the depth at the picture's size."""
    def double(x, low, high):
        e1 = cv2.resize(estimate(x, low, low), (BOOST_MERGE_SIZE,) * 2, interpolation=cv2.INTER_CUBIC)
        e2 = cv2.resize(estimate(x, high, high), (BOOST_MERGE_SIZE,) * 2, interpolation=cv2.INTER_CUBIC)
        return _min_max(merge(e1, e2))

    h_in, w_in = img.shape[:2]
    field = BOOST_RECEPTIVE_FIELD
    size, patch_scale = _processing_resolution(img, field)
    whole = double(img, field, size)
    if max_res < size:
        return cv2.resize(whole, (w_in, h_in), interpolation=cv2.INTER_CUBIC)
    factor = max(min(1.0, 4 * patch_scale * size / BOOST_MAX_SIZE), 0.2)
    if h_in > w_in:
        a, b = 2 * size, round(2 * size * w_in / h_in)
    else:
        a, b = round(2 * size * h_in / w_in), 2 * size
    big = cv2.resize(img, (int(round(b / factor)), int(round(a / factor))), interpolation=cv2.INTER_CUBIC)
    patches = _select_patches(big, 2 * field, factor)
    scale = h_in / big.shape[0]
    out_size = (round(big.shape[1] * scale), round(big.shape[0] * scale))
    rgb = cv2.resize(big, out_size, interpolation=cv2.INTER_CUBIC)
    base = cv2.resize(whole, out_size, interpolation=cv2.INTER_CUBIC)
    updated = base.copy()
    for rect in patches:
        x, y, w, h = np.round(np.array(rect) * scale).astype(int)
        region = (slice(max(y, 0), y + h), slice(max(x, 0), x + w))
        base_patch = base[region]
        if base_patch.size == 0:
            continue
        found = double(rgb[region], field, 2 * field)
        base_big = cv2.resize(base_patch, (BOOST_MERGE_SIZE,) * 2, interpolation=cv2.INTER_CUBIC)
        mapped = merge(base_big, found)
        fitted = np.polyval(np.polyfit(mapped.reshape(-1), base_big.reshape(-1), deg=1), mapped)
        ph, pw = base_patch.shape
        merged = cv2.resize(fitted, (pw, ph), interpolation=cv2.INTER_CUBIC)
        mask = cv2.resize(_blend_mask(), (pw, ph), interpolation=cv2.INTER_LINEAR)
        updated[region] = updated[region] * (1 - mask) + merged * mask
    return cv2.resize(updated, (w_in, h_in), interpolation=cv2.INTER_CUBIC)


def leres_map(depth: np.ndarray, remove_near: float, remove_background: float) -> np.ndarray:
    """The extension's apply_leres output: depth (larger is farther) scaled to 16 bits and then to 8, "Remove
    Near %" zeroes the depths at or below that share before inverting (so the nearest part turns flat white),
    inverted (near is white), then "Remove Background %" zeroes what is at or below that share (the far part)."""
    low, high = float(depth.min()), float(depth.max())
    if high - low > np.finfo("float").eps:
        out = 65535.0 * (depth - low) / (high - low)
    else:
        out = np.zeros(depth.shape)
    image = cv2.convertScaleAbs(out.astype(np.uint16), alpha=255.0 / 65535.0)
    if remove_near:
        image = cv2.threshold(image, remove_near / 100 * 255, 255, cv2.THRESH_TOZERO)[1]
    image = cv2.bitwise_not(image)
    if remove_background:
        image = cv2.threshold(image, remove_background / 100 * 255, 255, cv2.THRESH_TOZERO)[1]
    return image


def _leres(img, res, remove_near, remove_background, ctx, boosted=False):
    """depth_leres / depth_leres++: run on the padded picture at its own size (boosted: up to R_max, with the
    merge network), mapped as the extension maps it, cropped back."""
    p = resize_with_pad(img, res)
    net = load(ctx, "leres/res101.pth")
    h, w = p.image.shape[:2]
    if boosted:
        merger = load(ctx, "leres/latest_net_G.pth")
        depth = boost(p.image, functools.partial(_leres_estimate, net),
                      functools.partial(_merge_estimates, merger), max(w, h))
    else:
        depth = _leres_estimate(net, p.image, w, h)
    return hwc3(p.crop(leres_map(depth, remove_near or 0, remove_background or 0)))


# --- LaMa (inpaint_only+lama: the masked part filled first, big-lama as spandrel builds it) ---

def _lama_keys(net, sd: dict) -> dict:
    """The generator's weights: a training checkpoint names them `generator.model.*` (spandrel: `model.model.*`);
    its discriminator and loss networks are left out."""
    return {k.replace("generator.model.", "model.model.", 1): v for k, v in sd.items()
            if k.startswith(("generator.model.", "model.model."))}


def _lama_net(sd: dict):
    from spandrel.architectures.LaMa import LaMa

    sd = _lama_keys(None, sd)
    first = sd.get("model.model.1.ffc.convl2l.weight")
    if first is None:
        raise KeyError("model.model.1.ffc.convl2l.weight (a LaMa generator's first layer)")
    last = max(int(k.split(".")[2]) for k in sd)
    return LaMa(in_nc=first.shape[1], out_nc=sd[f"model.model.{last}.weight"].shape[0])


_lama_net.reads_shapes = True
LAMA_RESOLUTION = 256  # the extension always runs LaMa at 256 px: what it was trained on


def _lama(img, res, a, b, ctx):
    """inpaint_only+lama: LaMa fills the masked part (at 256 px), pasted into the picture through the mask; the
    mask stays the alpha channel, so the unit then inpaints as inpaint_only does (the extension's lama_inpaint)."""
    color, mask = np.ascontiguousarray(img[:, :, :3]), img[:, :, 3]
    h, w = color.shape[:2]
    pc = resize_with_pad(color, LAMA_RESOLUTION)
    pm = resize_with_pad(np.repeat(mask[:, :, None], 3, axis=2), LAMA_RESOLUTION)
    net = load(ctx, "lama/ControlNetLama.pth")
    device = _param_device(net)
    x = _tensor(pc.image / 255.0, device)
    m = (_tensor(pm.image[:, :, :1] / 255.0, device) > 0.5).float()
    with torch.no_grad():
        out = net(x, m)[0].permute(1, 2, 0).clamp(0, 1).cpu().numpy()
    filled = cv2.resize(pc.crop((out * 255.0).round().astype(np.uint8)), (w, h), interpolation=cv2.INTER_CUBIC)
    alpha = mask.astype(np.float32)[:, :, None] / 255.0
    final = (filled.astype(np.float32) * alpha + color.astype(np.float32) * (1 - alpha)).clip(0, 255)
    return np.concatenate([final.astype(np.uint8), mask[:, :, None]], axis=2)


Convert = Callable[[torch.nn.Module, dict], dict]

# "<subdir>/<file>" in the annotator folder -> (build the network, adapt the file's keys or None).
NETWORKS: dict[str, tuple[Callable[[], torch.nn.Module], Convert | None]] = {
    "hed/ControlNetHED.pth": (_hed_net, None),
    "pidinet/table5_pidinet.pth": (_pidinet_net, None),
    "TEED/7_model.pth": (_ted_net, None),
    "TEED/MTEED.pth": (_ted_net, None),
    "lineart/sk_model.pth": (_lineart_net, None),
    "lineart/sk_model2.pth": (_lineart_net, None),
    "lineart_anime/netG.pth": (_lineart_anime_net, None),
    "mlsd/mlsd_large_512_fp32.pth": (_mlsd_net, None),
    "midas/dpt_hybrid-midas-501f0c75.pt": (_midas_net, None),
    "openpose/body_pose_model.pth": (_body_net, _openpose_keys),
    "openpose/hand_pose_model.pth": (_hand_net, _openpose_keys),
    "openpose/facenet.pth": (_face_net, None),
    "normal_bae/scannet.pt": (_normal_bae_net, _unwrapped),
    "lama/ControlNetLama.pth": (_lama_net, _lama_keys),
    "depth_anything/depth_anything_vitl14.pth": (depth_anything.build("v1"), depth_anything.convert),
    "depth_anything_v2/depth_anything_v2_vitl.safetensors": (depth_anything.build("v2"), depth_anything.convert),
    "zoedepth/ZoeD_M12_N.pt": (_zoe_net, _zoe_keys),
    "leres/res101.pth": (_leres_net, _leres_keys),
    "leres/latest_net_G.pth": (_merge_net, None),
    more.MANGA_LINE_FILE: (more.MangaLineNet, None),
    more.MOBILE_SAM_FILE: (more.mobile_sam_net, None),
    more.DSINE_FILE: (more.dsine_net, more.dsine_keys),
    **segmentation.NETWORKS,  # seg_ufade20k, seg_ofade20k, seg_ofcoco, seg_anime_face
}


# --- dispatch ---

Runner = Callable[[np.ndarray, int, float, float, RunContext], np.ndarray]

RUNNERS: dict[str, Runner] = {
    "hed": _hed,
    "hed_safe": functools.partial(_hed, safe=True),
    "scribble_hed": functools.partial(_hed, scribble=True),
    "pidinet": _pidinet,
    "pidinet_safe": functools.partial(_pidinet, safe=True),
    "pidinet_scribble": functools.partial(_pidinet, scribble=True),
    "pidinet_sketch": functools.partial(_pidinet, binary=True),
    "softedge_teed": _teed,
    "softedge_anyline": _anyline,
    "lineart": _lineart,
    "lineart_coarse": functools.partial(_lineart, relative="lineart/sk_model2.pth"),
    "lineart_anime": _lineart_anime,
    "lineart_anime_denoise": more.manga_line,
    "mlsd": _mlsd,
    "depth": _depth_midas,
    "normal_map": _normal_midas,
    "normal_bae": _normal_bae,
    "normal_dsine": more.normal_dsine,
    "inpaint_only+lama": _lama,
    "depth_zoe": _depth_zoe,
    "depth_leres": _leres,
    "depth_leres++": functools.partial(_leres, boosted=True),
    "depth_anything": functools.partial(_depth_anything, relative="depth_anything/depth_anything_vitl14.pth"),
    "depth_anything_v2": functools.partial(_depth_anything,
                                           relative="depth_anything_v2/depth_anything_v2_vitl.safetensors"),
    "openpose": _openpose,
    "openpose_hand": functools.partial(_openpose, hand=True),
    "openpose_face": functools.partial(_openpose, face=True),
    "openpose_faceonly": functools.partial(_openpose, body=False, face=True),
    "openpose_full": functools.partial(_openpose, hand=True, face=True),
    "dw_openpose_full": _dw_openpose,
    "animal_openpose": _animal_openpose,
    "mobile_sam": more.mobile_sam,
    "densepose": more.densepose,
    "densepose_parula": functools.partial(more.densepose, parula=True),
    **segmentation.RUNNERS,
}


def run(name: str, img: np.ndarray, res: int, a, b, ctx: RunContext) -> np.ndarray:
    """Run a registered model-based preprocessor: every file it needs must be in the folder first."""
    preprocessor = get(name)
    ctx = replace(ctx, label=ctx.label or preprocessor.label)
    for relative in preprocessor.annotator_files:
        locate(ctx, relative)
    import_controlnet_aux()
    runner = RUNNERS.get(preprocessor.name)
    if runner is None:
        raise AnnotatorUnavailableError(
            f"ControlNet preprocessor '{preprocessor.label}' is listed as the extension lists it, but its network "
            f"is not part of this program yet; use another preprocessor or upload a ready-made map (preprocessor "
            f"'none')")
    return runner(img, res, a, b, ctx)

"""DWPose (whole body: body, feet, face, hands) for the dw_openpose_full preprocessor: the extension's two ONNX
files run with OpenCV's DNN module, as the extension runs them (no onnxruntime needed).

1. YOLOX-L (`yolox_l.onnx`) finds people: the picture letterboxed into 640×640 (grey 114 padding), the anchor-free
   grid decoded (strides 8/16/32), boxes kept by class-aware NMS (IoU 0.45, score 0.1), then people with score > 0.3.
2. RTMPose (`dw-ll_ucoco_384.onnx`) reads each person: the box widened 1.25× to the model's 288:384 aspect, cut out
   by an affine warp, ImageNet-normalised (0-255 scale); its SimCC outputs give 133 COCO-WholeBody keypoints
   (arg-max per axis, split ratio 2, score = the smaller of the two maxima).
3. A neck is added (the shoulders' mean) and the first 18 are reordered to OpenPose's body; face (68, plus the eyes
   to make OpenPose's 70) and hands (21 each) follow. Keypoints under 0.3 are dropped.

The picture is read as given (the extension passes its RGB array to networks trained on BGR; so do we).
"""
from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np

DETECT_SIZE = (640, 640)  # (h, w)
POSE_SIZE = (288, 384)  # (w, h)
_MEAN, _STD = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])
# COCO-WholeBody body order (+ neck at 17) → OpenPose's: OpenPose index ← COCO index
_OPENPOSE_FROM = {1: 17, 2: 6, 3: 8, 4: 10, 6: 7, 7: 9, 8: 12, 9: 14, 10: 16, 12: 13, 13: 15, 14: 2, 15: 1, 16: 4,
                  17: 3}

_nets: dict[tuple, object] = {}
_lock = threading.Lock()


def load(path: Path):
    """An OpenCV DNN network for an ONNX file, reused while the file is unchanged."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    with _lock:
        if key not in _nets:
            try:
                net = cv2.dnn.readNetFromONNX(str(path))
            except cv2.error as e:  # a user's bad file: a 4xx naming it, as for any model file
                from modules.models.loader import ModelLoadError

                raise ModelLoadError(f"{path.name}: not an ONNX network OpenCV can read ({path.parent}): "
                                     f"{str(e).strip().splitlines()[-1][:160]}") from None
            net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
            net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
            for old in [k for k in _nets if k[0] == key[0]]:
                del _nets[old]
            _nets[key] = net
        return _nets[key]


def _run(net, x: np.ndarray) -> list[np.ndarray]:
    net.setInput(np.ascontiguousarray(x, dtype=np.float32))
    return list(net.forward(net.getUnconnectedOutLayersNames()))


# --- people ---

def _nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        w = np.maximum(0.0, np.minimum(x2[i], x2[order[1:]]) - np.maximum(x1[i], x1[order[1:]]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[order[1:]]) - np.maximum(y1[i], y1[order[1:]]) + 1)
        overlap = w * h / (areas[i] + areas[order[1:]] - w * h)
        order = order[1:][overlap <= threshold]
    return keep


def people(net, image: np.ndarray, classes: tuple[int, ...] = (0,)) -> np.ndarray | None:
    """(N, 4) boxes x0, y0, x1, y1 in the picture's pixels of the COCO `classes` (0: people; 14-23: animals);
    None when nothing at all was detected (then the extension finds no pose), an empty array when only unsure or
    other boxes were (then it reads the whole picture for people)."""
    h, w = DETECT_SIZE
    ratio = min(h / image.shape[0], w / image.shape[1])
    size = (int(image.shape[1] * ratio), int(image.shape[0] * ratio))
    canvas = np.full((h, w, 3), 114, np.uint8)
    canvas[:size[1], :size[0]] = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR).astype(np.uint8)
    out = _run(net, canvas.transpose(2, 0, 1)[None].astype(np.float32))[0][0].astype(np.float64)
    grids, strides = [], []
    for stride in (8, 16, 32):
        xs, ys = np.meshgrid(np.arange(w // stride), np.arange(h // stride))
        grids.append(np.stack((xs, ys), 2).reshape(-1, 2))
        strides.append(np.full((grids[-1].shape[0], 1), stride))
    grid, stride = np.concatenate(grids), np.concatenate(strides)
    centre = (out[:, :2] + grid) * stride
    size_wh = np.exp(out[:, 2:4]) * stride
    boxes = np.concatenate([centre - size_wh / 2, centre + size_wh / 2], axis=1) / ratio
    scores = out[:, 4:5] * out[:, 5:]
    found = []
    for cls in range(scores.shape[1]):
        valid = scores[:, cls] > 0.1
        if not valid.any():
            continue
        kept = _nms(boxes[valid], scores[valid, cls], 0.45)
        for i in kept:
            found.append((*boxes[valid][i], scores[valid, cls][i], cls))
    if not found:
        return None
    found = np.array(found)
    return found[(found[:, 4] > 0.3) & np.isin(found[:, 5], classes), :4]


# --- keypoints ---

def _warp(centre: np.ndarray, scale: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The affine map of the box (centre, scale = w, h) onto the model's input (no rotation)."""
    w, h = size
    src = np.array([centre, centre + [0.0, -0.5 * scale[0]], centre + [-0.5 * scale[0], -0.5 * scale[0]]],
                   np.float32)
    dst = np.array([[w / 2, h / 2], [w / 2, h / 2 - w / 2], [w / 2 - w / 2, h / 2 - w / 2]], np.float32)
    return cv2.getAffineTransform(src, dst)


def keypoints(net, image: np.ndarray, boxes: np.ndarray,
              size: tuple[int, int] = POSE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(N, K, 2) keypoints in the picture's pixels and (N, K) scores, for a pose network reading `size` (w, h)
    crops; the whole picture when no box was found."""
    if len(boxes) == 0:
        boxes = np.array([[0, 0, image.shape[1], image.shape[0]]], np.float64)
    w, h = size
    all_points, all_scores = [], []
    for x0, y0, x1, y1 in boxes:
        centre = np.array([x0 + x1, y0 + y1]) * 0.5
        scale = np.array([x1 - x0, y1 - y0]) * 1.25
        if scale[0] > scale[1] * w / h:  # to the model's aspect ratio
            scale = np.array([scale[0], scale[0] * h / w])
        else:
            scale = np.array([scale[1] * w / h, scale[1]])
        crop = cv2.warpAffine(image, _warp(centre, scale, (w, h)), (w, h), flags=cv2.INTER_LINEAR)
        x = ((crop - _MEAN) / _STD).transpose(2, 0, 1)[None]
        simcc_x, simcc_y = _run(net, x)[:2]
        points = np.stack([simcc_x[0].argmax(1), simcc_y[0].argmax(1)], axis=-1).astype(np.float64) / 2.0
        score = np.minimum(simcc_x[0].max(1), simcc_y[0].max(1))
        points[score <= 0] = -0.5  # the extension's -1 before the split ratio
        all_points.append(points / (w, h) * scale + centre - scale / 2)
        all_scores.append(score)
    return np.array(all_points), np.array(all_scores)


def openpose_order(points: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(N, 134, 3) x, y, score: COCO-WholeBody with a neck inserted at 17 and the body in OpenPose's order."""
    info = np.concatenate([points, scores[..., None]], axis=-1)
    neck = info[:, [5, 6]].mean(axis=1)
    neck[:, 2] = np.logical_and(info[:, 5, 2] > 0.3, info[:, 6, 2] > 0.3).astype(float)
    info = np.insert(info, 17, neck, axis=1)
    reordered = info.copy()
    for op, coco in _OPENPOSE_FROM.items():
        reordered[:, op] = info[:, coco]
    return reordered


def poses(info: np.ndarray):
    """controlnet_aux PoseResults (pixel coordinates, as the extension's DWPose gives them)."""
    from controlnet_aux.open_pose import PoseResult
    from controlnet_aux.open_pose.body import BodyResult, Keypoint

    def part(rows: np.ndarray):
        points = [Keypoint(float(x), float(y), float(s), i) if s >= 0.3 else None for i, (x, y, s) in enumerate(rows)]
        return None if all(p is None for p in points) else points

    out = []
    for person in info:
        body = part(person[:18]) or [None] * 18
        face = part(person[24:92])
        if face is not None:  # OpenPose's face has the two eyes as its last points
            face += [body[14], body[15]]
        score = sum(k.score for k in body if k is not None)
        out.append(PoseResult(BodyResult(body, score, len(body)), part(person[92:113]), part(person[113:134]),
                              face))
    return out


ANIMAL_POSE_SIZE = (256, 256)  # RTMPose-m trained on AP-10K: 17 keypoints
_ANIMAL_CLASSES = tuple(range(14, 24))  # COCO's birds to giraffes
_ANIMAL_LIMBS = [(1, 2), (2, 3), (1, 3), (3, 4), (4, 9), (9, 10), (10, 11), (4, 6), (6, 7), (7, 8), (4, 5), (5, 15),
                 (15, 16), (16, 17), (5, 12), (12, 13), (13, 14)]
_ANIMAL_COLOURS = [(255, 255, 255), (100, 255, 100), (150, 255, 255), (100, 50, 255), (50, 150, 200), (0, 255, 255),
                   (0, 150, 0), (0, 0, 255), (0, 0, 150), (255, 50, 255), (255, 0, 255), (255, 0, 0), (150, 0, 0),
                   (255, 255, 100), (0, 150, 0), (255, 255, 0), (150, 150, 150)]


def animals(det_path: Path, pose_path: Path, image: np.ndarray) -> list:
    """Each animal's 17 AP-10K keypoints (controlnet_aux Keypoints in pixels, scores clipped to 0-1; all kept, as
    the extension keeps them); none when no animal box was found."""
    from controlnet_aux.open_pose.body import Keypoint

    boxes = people(load(det_path), image, _ANIMAL_CLASSES)
    if boxes is None or len(boxes) == 0:
        return []
    points, scores = keypoints(load(pose_path), image, boxes, ANIMAL_POSE_SIZE)
    return [[Keypoint(float(x), float(y), float(np.clip(s, 0, 1)), i) for i, ((x, y), s) in enumerate(zip(p, c))]
            for p, c in zip(points, scores)]


def draw_animals(found: list, h: int, w: int) -> np.ndarray:
    """The extension's animal skeletons: a 5-pixel line per limb in its colour, on black."""
    canvas = np.zeros((h, w, 3), np.uint8)
    for animal in found:
        for (i, j), colour in zip(_ANIMAL_LIMBS, _ANIMAL_COLOURS):
            a, b = animal[i - 1], animal[j - 1]
            cv2.line(canvas, (int(a.x), int(a.y)), (int(b.x), int(b.y)), colour, 5)
    return canvas


def detect(det_path: Path, pose_path: Path, image: np.ndarray) -> list:
    boxes = people(load(det_path), image)
    if boxes is None:
        return []
    points, scores = keypoints(load(pose_path), image, boxes)
    return poses(openpose_order(points, scores))

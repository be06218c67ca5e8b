"""InsightFace's buffalo_l pack for the ip-adapter_face_id / ip-adapter_face_id_plus preprocessors, run from the two
ONNX files the extension's FaceAnalysis reads (`models/ControlNetPreprocessor/insightface/models/buffalo_l/`) with
OpenCV's DNN module (no insightface package, no onnxruntime):

1. SCRFD (`det_10g.onnx`) finds faces: the picture scaled into a 640×640 canvas (top-left, black padding),
   normalised (x − 127.5) / 128 in RGB order; for strides 8/16/32 two anchors per grid point (centres at
   (x·stride, y·stride)) give a score, box distances (left, top, right, bottom) and five landmark offsets, all in
   stride units; anchors scoring ≥ 0.5 are kept, overlapping boxes removed (IoU > 0.4), the largest face is used.
2. The five landmarks (eyes, nose, mouth corners) are mapped onto the standard ArcFace template by the least-squares
   similarity transform (Umeyama's method) and the 112×112 crop cut out (bilinear, black outside the picture).
3. ArcFace (`w600k_r50.onnx`) reads the crop normalised (x − 127.5) / 127.5, RGB; its 512 numbers, divided by their
   length, are the face embedding (insightface's `normed_embedding`, what the extension hands to the adapter).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

SUBFOLDER = Path("insightface") / "models" / "buffalo_l"
DETECTOR, RECOGNISER = "det_10g.onnx", "w600k_r50.onnx"
DETECT_SIZE = 640
STRIDES = (8, 16, 32)
ANCHORS = 2  # per grid point (det_10g's 9 outputs)
SCORE_THRESHOLD, NMS_THRESHOLD = 0.5, 0.4
CROP = 112
# Where ArcFace's training crops put the eyes, nose tip and mouth corners in a 112×112 picture.
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                             [70.7299, 92.2041]], np.float64)


class NoFaceError(ValueError):
    """The detector found no face in the picture."""


class FaceNetworkError(RuntimeError):
    """A file in the buffalo_l folder is not the network its name says (its message names the file)."""


@dataclass
class Face:
    box: np.ndarray  # x0, y0, x1, y1 in the picture's pixels
    score: float
    landmarks: np.ndarray  # (5, 2): left eye, right eye, nose, left mouth corner, right mouth corner

    @property
    def area(self) -> float:
        return float((self.box[2] - self.box[0]) * (self.box[3] - self.box[1]))


def folder(annotator_dir: Path | None) -> Path:
    from modules.controlnet.preprocessors import ANNOTATOR_FOLDER

    return Path(annotator_dir if annotator_dir is not None else ANNOTATOR_FOLDER) / SUBFOLDER


def networks(annotator_dir: Path | None, label: str):
    """(detector, recogniser) OpenCV networks from the user's folder; a missing file is a MissingAnnotatorError
    naming it and the folder, a file OpenCV cannot read a ModelLoadError naming it."""
    from modules.controlnet import dwpose
    from modules.controlnet.preprocessors import MissingAnnotatorError

    where = folder(annotator_dir)
    nets = []
    for name in (DETECTOR, RECOGNISER):
        path = where / name
        if annotator_dir is None or not path.is_file():
            raise MissingAnnotatorError(label, name, where)
        nets.append(dwpose.load(path))
    return tuple(nets)


def _forward(net, blob: np.ndarray, name: str) -> list[np.ndarray]:
    try:
        net.setInput(np.ascontiguousarray(blob, dtype=np.float32))
        return [np.asarray(o, np.float64) for o in net.forward(net.getUnconnectedOutLayersNames())]
    except cv2.error as e:  # a network of another shape: it cannot read the picture it is given
        raise FaceNetworkError(f"{name}: not the network this file should hold (it cannot read a "
                               f"{blob.shape[3]}×{blob.shape[2]} picture: "
                               f"{str(e).strip().splitlines()[-1][:160]})") from None


# --- 1. detection ---

def _outputs_by_stride(outputs: list[np.ndarray]) -> dict[int, dict[int, np.ndarray]]:
    """SCRFD's outputs sorted by what they are, not by their order (OpenCV may list them in another order):
    {stride: {1: scores, 4: box distances, 10: landmark offsets}}, each (anchors, k)."""
    found: dict[int, dict[int, np.ndarray]] = {}
    for out in outputs:
        flat = out.reshape(-1, out.shape[-1]) if out.ndim >= 2 else out.reshape(-1, 1)
        for stride in STRIDES:
            if flat.shape[0] == (DETECT_SIZE // stride) ** 2 * ANCHORS and flat.shape[1] in (1, 4, 10):
                found.setdefault(stride, {})[flat.shape[1]] = flat
    if any(len(found.get(s, {})) != 3 for s in STRIDES):
        shapes = ", ".join(str(tuple(o.shape)) for o in outputs)
        raise FaceNetworkError(f"{DETECTOR}: not an SCRFD face detector with landmarks (outputs {shapes}; "
                               "det_10g gives scores, boxes and 5 landmarks for strides 8, 16 and 32)")
    return found


def _anchor_centres(stride: int) -> np.ndarray:
    side = DETECT_SIZE // stride
    ys, xs = np.mgrid[:side, :side]
    centres = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float64) * stride
    return np.repeat(centres, ANCHORS, axis=0)


def _nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Greedy non-maximum suppression, boxes as inclusive pixel ranges (insightface's convention)."""
    order = list(np.argsort(-scores, kind="stable"))
    areas = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    keep = []
    while order:
        best, rest = order[0], np.array(order[1:], dtype=int)
        keep.append(int(best))
        if not len(rest):
            break
        w = np.maximum(0.0, np.minimum(boxes[best, 2], boxes[rest, 2]) - np.maximum(boxes[best, 0], boxes[rest, 0]) + 1)
        h = np.maximum(0.0, np.minimum(boxes[best, 3], boxes[rest, 3]) - np.maximum(boxes[best, 1], boxes[rest, 1]) + 1)
        overlap = w * h / (areas[best] + areas[rest] - w * h)
        order = [int(i) for i in rest[overlap <= threshold]]
    return keep


def detect(net, rgb: np.ndarray) -> list[Face]:
    """Every face SCRFD finds in an RGB uint8 picture, best first."""
    h, w = rgb.shape[:2]
    if h / w > 1:
        new_h, new_w = DETECT_SIZE, int(DETECT_SIZE * w / h)
    else:
        new_w, new_h = DETECT_SIZE, int(DETECT_SIZE * h / w)
    scale = new_h / h
    canvas = np.zeros((DETECT_SIZE, DETECT_SIZE, 3), np.uint8)
    canvas[:new_h, :new_w] = cv2.resize(rgb, (max(1, new_w), max(1, new_h)))
    blob = ((canvas.astype(np.float32) - 127.5) / 128.0).transpose(2, 0, 1)[None]
    by_stride = _outputs_by_stride(_forward(net, blob, DETECTOR))
    boxes, scores, marks = [], [], []
    for stride in STRIDES:
        out = by_stride[stride]
        keep = out[1][:, 0] >= SCORE_THRESHOLD
        if not keep.any():
            continue
        centres = _anchor_centres(stride)[keep]
        d = out[4][keep] * stride
        boxes.append(np.concatenate([centres - d[:, :2], centres + d[:, 2:]], axis=1))
        marks.append(centres[:, None, :] + (out[10][keep] * stride).reshape(-1, 5, 2))
        scores.append(out[1][keep, 0])
    if not boxes:
        return []
    boxes, scores, marks = np.concatenate(boxes) / scale, np.concatenate(scores), np.concatenate(marks) / scale
    return [Face(boxes[i], float(scores[i]), marks[i]) for i in _nms(boxes, scores, NMS_THRESHOLD)]


def largest(faces: list[Face]) -> Face:
    """The biggest face (the extension uses only that one)."""
    if not faces:
        raise NoFaceError("no face found in the picture")
    return max(faces, key=lambda f: f.area)


# --- 2. alignment ---

def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2×3 rotation + uniform scale + shift taking `src` points closest (least squares) onto `dst`
    (Umeyama, 1991: SVD of the points' cross-covariance, no reflection)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    cov = b.T @ a / len(src)
    u, sv, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1
    rotation = u @ np.diag(sign) @ vt
    variance = a.var(axis=0).sum()
    scale = float(sv @ sign) / variance if variance > 0 else 1.0
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = mu_d - scale * rotation @ mu_s
    return matrix


def align(rgb: np.ndarray, landmarks: np.ndarray, size: int = CROP) -> np.ndarray:
    """The face cut out as ArcFace's training crops are (size × size, landmarks on the template)."""
    template = ARCFACE_TEMPLATE * (size / 112.0)
    return cv2.warpAffine(rgb, similarity(landmarks, template), (size, size), borderValue=0.0)


# --- 3. recognition ---

def embed(net, crop: np.ndarray) -> np.ndarray:
    """The 512 numbers ArcFace gives the aligned crop, unit length."""
    blob = ((crop.astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1)[None]
    out = _forward(net, blob, RECOGNISER)[0].reshape(-1)
    if out.size != 512:
        raise FaceNetworkError(f"{RECOGNISER}: not an ArcFace recogniser (it gives {out.size} numbers, w600k_r50 "
                               "gives 512)")
    length = float(np.linalg.norm(out))
    return out / length if length > 0 else out


def face_embedding(rgb: np.ndarray, annotator_dir: Path | None, label: str) -> tuple[np.ndarray, Face]:
    """(the largest face's unit-length embedding, that face) of an RGB uint8 picture."""
    detector, recogniser = networks(annotator_dir, label)
    face = largest(detect(detector, np.ascontiguousarray(rgb[:, :, :3])))
    return embed(recogniser, align(np.ascontiguousarray(rgb[:, :, :3]), face.landmarks)), face


def draw(rgb: np.ndarray, face: Face) -> np.ndarray:
    """A preview: the picture with the face's box and its five landmarks."""
    out = np.ascontiguousarray(rgb[:, :, :3]).copy()
    x0, y0, x1, y1 = (int(round(v)) for v in face.box)
    cv2.rectangle(out, (x0, y0), (x1, y1), (0, 255, 0), 2)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255)]
    for (x, y), colour in zip(face.landmarks, colours):
        cv2.circle(out, (int(round(x)), int(round(y))), 3, colour, -1)
    return out


def read_each(where: str, label: str, pictures: list, read, needs: str) -> list:
    """`read(rgb)` for each of a unit's pictures; a missing or wrong file and a picture without a face are
    RequestErrors naming the unit's field (`needs`: what wants the face, for the message)."""
    from modules.controlnet.preprocessors import MissingAnnotatorError
    from modules.models.loader import ModelLoadError
    from modules.request_types import RequestError

    out = []
    for n, picture in enumerate(pictures):
        try:
            out.append(read(np.asarray(picture.convert("RGB"))))
        except MissingAnnotatorError as e:
            raise RequestError(f"{where}.module: {e}") from None
        except (FaceNetworkError, ModelLoadError) as e:
            raise RequestError(f"{where}.module: {label}: {e}") from None
        except NoFaceError:
            which = f" (picture {n + 1} of {len(pictures)})" if len(pictures) > 1 else ""
            raise RequestError(f"{where}.image: {label} found no face in the unit's picture{which}; {needs} "
                               "needs a picture with a visible face") from None
    return out

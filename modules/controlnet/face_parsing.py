"""The face crop PuLID reads, as the sd-webui-controlnet extension's `facexlib` preprocessor makes it with the
facexlib package (here without it, from the same two weight files):

1. RetinaFace with a ResNet-50 body (`detection_Resnet50_Final.pth`) finds faces in the picture at its own size:
   BGR pixels minus (104, 117, 123); for strides 8/16/32 two square priors per grid cell (sizes 16/32, 64/128,
   256/512) give a face/not-face softmax, a box (centre offset × 0.1 × prior, size prior × exp(× 0.2)) and five
   landmarks (offsets × 0.1 × prior); scores > 0.97 are kept, overlaps (IoU > 0.4) removed, and the face whose box
   centre is nearest the picture's centre is used (facexlib's `only_center_face`).
2. The five landmarks are mapped onto facexlib's FFHQ 512×512 template (cv2.estimateAffinePartial2D with LMEDS,
   as facexlib does) and the 512×512 crop cut out (bilinear, grey (135, 133, 132) BGR outside the picture).
3. BiSeNet (`parsing_bisenet.pth`, ResNet-18 context path, 19 classes) labels the crop's pixels (ImageNet mean and
   std); background, hair, hat, neck, cloth, ears and earrings (labels 0, 7, 8, 9, 14, 15, 16, 18) turn white, the
   rest becomes grey (0.299 R + 0.587 G + 0.114 B). That picture, 1×3×512×512 in [0, 1], is what EVA-CLIP reads.

The files go in `models/ControlNetPreprocessor/facexlib/` (facexlib's own release names; the extension has them
downloaded into facexlib's weights folder). Every width is read from the files' tensors.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SUBFOLDER = Path("facexlib")
DETECTOR, PARSER = "detection_Resnet50_Final.pth", "parsing_bisenet.pth"
MIN_SIZES = ((16, 32), (64, 128), (256, 512))
STEPS = (8, 16, 32)
VARIANCE = (0.1, 0.2)
SCORE_THRESHOLD, NMS_THRESHOLD = 0.97, 0.4
BGR_MEAN = (104.0, 117.0, 123.0)
FACE_SIZE = 512
FFHQ_TEMPLATE = np.array([[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
                          [201.26117, 371.41043], [313.08905, 371.15118]])
BORDER_BGR = (135, 133, 132)
BACKGROUND_LABELS = (0, 16, 18, 7, 8, 9, 14, 15)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class FaceParsingError(RuntimeError):
    """A facexlib file is not the network its name says (the message names it)."""


def _conv_bn(sd: dict, prefix: str, stride: int = 1, padding: int | None = None) -> nn.Sequential:
    weight = sd[prefix + ".0.weight"] if prefix + ".0.weight" in sd else sd[prefix + ".conv.weight"]
    out, inp, k = int(weight.shape[0]), int(weight.shape[1]), int(weight.shape[2])
    return nn.Sequential(nn.Conv2d(inp, out, k, stride, k // 2 if padding is None else padding, bias=False),
                         nn.BatchNorm2d(out))


def _count(sd: dict, prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix)})


# --- RetinaFace ---

class _Bottleneck(nn.Module):
    def __init__(self, sd: dict, prefix: str, stride: int):
        super().__init__()
        shape = lambda n: sd[f"{prefix}.{n}.weight"].shape  # noqa: E731
        mid, inp, out = int(shape("conv1")[0]), int(shape("conv1")[1]), int(shape("conv3")[0])
        self.conv1, self.bn1 = nn.Conv2d(inp, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv2, self.bn2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = nn.Conv2d(mid, out, 1, bias=False), nn.BatchNorm2d(out)
        self.downsample = None
        if f"{prefix}.downsample.0.weight" in sd:
            self.downsample = nn.Sequential(nn.Conv2d(inp, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class _ResNetBody(nn.Module):
    """torchvision's ResNet-50 up to layer4 (the layers' block counts and widths from the file)."""

    def __init__(self, sd: dict):
        super().__init__()
        w = sd["body.conv1.weight"]
        self.conv1 = nn.Conv2d(int(w.shape[1]), int(w.shape[0]), 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(int(w.shape[0]))
        for i in range(1, 5):
            blocks = [_Bottleneck(sd, f"body.layer{i}.{b}", 2 if (b == 0 and i > 1) else 1)
                      for b in range(_count(sd, f"body.layer{i}."))]
            setattr(self, f"layer{i}", nn.Sequential(*blocks))

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        x = self.layer1(x)
        c2 = self.layer2(x)
        c3 = self.layer3(c2)
        return c2, c3, self.layer4(c3)


def _act(x, leaky: float):
    return F.leaky_relu(x, leaky) if leaky else F.relu(x)


class _SSH(nn.Module):
    def __init__(self, sd: dict, prefix: str, leaky: float):
        super().__init__()
        self.leaky = leaky
        for name in ("conv3X3", "conv5X5_1", "conv5X5_2", "conv7X7_2", "conv7x7_3"):
            setattr(self, name, _conv_bn(sd, f"{prefix}.{name}"))

    def forward(self, x):
        a = self.conv3X3(x)
        b1 = _act(self.conv5X5_1(x), self.leaky)
        b = self.conv5X5_2(b1)
        c = self.conv7x7_3(_act(self.conv7X7_2(b1), self.leaky))
        return F.relu(torch.cat([a, b, c], dim=1))


class RetinaFace(nn.Module):
    def __init__(self, sd: dict):
        super().__init__()
        self.body = _ResNetBody(sd)
        out = int(sd["fpn.output1.0.weight"].shape[0])
        self.leaky = 0.1 if out <= 64 else 0.0  # facexlib's rule for its FPN and SSH activations
        self.fpn = nn.Module()
        for name in ("output1", "output2", "output3", "merge1", "merge2"):
            setattr(self.fpn, name, _conv_bn(sd, f"fpn.{name}"))
        self.ssh1, self.ssh2, self.ssh3 = (_SSH(sd, f"ssh{i}", self.leaky) for i in (1, 2, 3))
        for head in ("ClassHead", "BboxHead", "LandmarkHead"):
            convs = nn.ModuleList()
            for i in range(3):
                w = sd[f"{head}.{i}.conv1x1.weight"]
                holder = nn.Module()
                holder.conv1x1 = nn.Conv2d(int(w.shape[1]), int(w.shape[0]), 1)
                convs.append(holder)
            setattr(self, head, convs)

    def forward(self, x):
        c2, c3, c4 = self.body(x)
        f = self.fpn
        o1, o2, o3 = (_act(m(c), self.leaky) for m, c in ((f.output1, c2), (f.output2, c3), (f.output3, c4)))
        o2 = _act(f.merge2(o2 + F.interpolate(o3, size=o2.shape[2:], mode="nearest")), self.leaky)
        o1 = _act(f.merge1(o1 + F.interpolate(o2, size=o1.shape[2:], mode="nearest")), self.leaky)
        feats = [self.ssh1(o1), self.ssh2(o2), self.ssh3(o3)]

        def head(name, k):
            return torch.cat([getattr(self, name)[i].conv1x1(feat).permute(0, 2, 3, 1).reshape(x.shape[0], -1, k)
                              for i, feat in enumerate(feats)], dim=1)

        return head("BboxHead", 4), head("ClassHead", 2).softmax(dim=-1), head("LandmarkHead", 10)


def priors(height: int, width: int) -> torch.Tensor:
    """(cx, cy, w, h) of every prior, relative to the picture, in the heads' order."""
    rows = []
    for step, sizes in zip(STEPS, MIN_SIZES):
        fh, fw = -(-height // step), -(-width // step)
        ys, xs = torch.meshgrid(torch.arange(fh, dtype=torch.float64), torch.arange(fw, dtype=torch.float64),
                                indexing="ij")
        cx, cy = ((xs + 0.5) * step / width).reshape(-1, 1), ((ys + 0.5) * step / height).reshape(-1, 1)
        per = [torch.cat([cx, cy, torch.full_like(cx, s / width), torch.full_like(cy, s / height)], dim=1)
               for s in sizes]
        rows.append(torch.stack(per, dim=1).reshape(-1, 4))
    return torch.cat(rows)


def _nms(boxes: np.ndarray, scores: np.ndarray) -> list[int]:
    import torchvision

    return [int(i) for i in torchvision.ops.nms(torch.from_numpy(boxes).float(), torch.from_numpy(scores).float(),
                                                NMS_THRESHOLD)]


@torch.no_grad()
def detect(net: RetinaFace, bgr: np.ndarray, threshold: float = SCORE_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """(boxes N×4, landmarks N×5×2) of the faces RetinaFace finds in a BGR uint8 picture, best first (scores above
    `threshold`: 0.97 as the extension's facexlib preprocessor, facexlib's own default 0.8 for face restoration)."""
    h, w = bgr.shape[:2]
    x = torch.from_numpy(bgr.astype(np.float32).transpose(2, 0, 1))[None]
    x = x - torch.tensor(BGR_MEAN).reshape(1, 3, 1, 1)
    param = next(net.parameters())
    try:
        loc, conf, marks = net(x.to(param.device, param.dtype))
    except RuntimeError as e:
        raise FaceParsingError(f"{DETECTOR}: not a RetinaFace network ({str(e).splitlines()[0][:160]})") from None
    p = priors(h, w)
    if loc.shape[1] != p.shape[0]:
        raise FaceParsingError(f"{DETECTOR}: not a RetinaFace network (it gives {loc.shape[1]} boxes for a {w}×{h} "
                               f"picture, not {p.shape[0]})")
    loc, marks = loc[0].double().cpu(), marks[0].double().cpu()
    v0, v1 = VARIANCE
    centre = p[:, :2] + loc[:, :2] * v0 * p[:, 2:]
    size = p[:, 2:] * torch.exp(loc[:, 2:] * v1)
    boxes = torch.cat([centre - size / 2, centre + size / 2], dim=1) * torch.tensor([w, h, w, h])
    points = p[:, None, :2] + marks.reshape(-1, 5, 2) * v0 * p[:, None, 2:]
    points = points * torch.tensor([w, h])
    scores = conf[0, :, 1].double().cpu().numpy()
    keep = np.where(scores > threshold)[0]
    order = keep[np.argsort(-scores[keep], kind="stable")]
    boxes, points, scores = boxes.numpy()[order], points.numpy()[order], scores[order]
    kept = _nms(boxes, scores) if len(order) else []
    return boxes[kept], points[kept]


def centre_face(boxes: np.ndarray, height: int, width: int) -> int:
    """The face whose box centre is nearest the picture's centre (facexlib's only_center_face)."""
    centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)
    return int(np.argmin(np.linalg.norm(centres - np.array([width / 2, height / 2]), axis=1)))


def align(bgr: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The 512×512 face crop on facexlib's FFHQ template (BGR uint8)."""
    matrix = cv2.estimateAffinePartial2D(np.asarray(landmarks, np.float64), FFHQ_TEMPLATE, method=cv2.LMEDS)[0]
    return cv2.warpAffine(bgr, matrix, (FACE_SIZE, FACE_SIZE), borderMode=cv2.BORDER_CONSTANT,
                          borderValue=BORDER_BGR)


# --- BiSeNet ---

class _ConvBNReLU(nn.Module):
    def __init__(self, sd: dict, prefix: str):
        super().__init__()
        w = sd[prefix + ".conv.weight"]
        k = int(w.shape[2])
        self.conv = nn.Conv2d(int(w.shape[1]), int(w.shape[0]), k, 1, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(int(w.shape[0]))

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class _Basic(nn.Module):
    def __init__(self, sd: dict, prefix: str, stride: int):
        super().__init__()
        w = sd[prefix + ".conv1.weight"]
        inp, out = int(w.shape[1]), int(w.shape[0])
        self.conv1, self.bn1 = nn.Conv2d(inp, out, 3, stride, 1, bias=False), nn.BatchNorm2d(out)
        self.conv2, self.bn2 = nn.Conv2d(out, out, 3, 1, 1, bias=False), nn.BatchNorm2d(out)
        self.downsample = None
        if prefix + ".downsample.0.weight" in sd:
            self.downsample = nn.Sequential(nn.Conv2d(inp, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class _Attention(nn.Module):  # the context path's attention refinement
    def __init__(self, sd: dict, prefix: str):
        super().__init__()
        self.conv = _ConvBNReLU(sd, prefix + ".conv")
        c = int(sd[prefix + ".conv_atten.weight"].shape[0])
        self.conv_atten, self.bn_atten = nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        feat = self.conv(x)
        return feat * torch.sigmoid(self.bn_atten(self.conv_atten(feat.mean(dim=(2, 3), keepdim=True))))


class BiSeNet(nn.Module):
    def __init__(self, sd: dict):
        super().__init__()
        self.cp = nn.Module()
        r = self.cp.resnet = nn.Module()
        w = sd["cp.resnet.conv1.weight"]
        r.conv1 = nn.Conv2d(int(w.shape[1]), int(w.shape[0]), 7, 2, 3, bias=False)
        r.bn1 = nn.BatchNorm2d(int(w.shape[0]))
        for i in range(1, 5):
            setattr(r, f"layer{i}", nn.Sequential(*[
                _Basic(sd, f"cp.resnet.layer{i}.{b}", 2 if (b == 0 and i > 1) else 1)
                for b in range(_count(sd, f"cp.resnet.layer{i}."))]))
        self.cp.arm16, self.cp.arm32 = _Attention(sd, "cp.arm16"), _Attention(sd, "cp.arm32")
        for name in ("conv_head32", "conv_head16", "conv_avg"):
            setattr(self.cp, name, _ConvBNReLU(sd, f"cp.{name}"))
        self.ffm = nn.Module()
        self.ffm.convblk = _ConvBNReLU(sd, "ffm.convblk")
        for name in ("conv1", "conv2"):
            w = sd[f"ffm.{name}.weight"]
            setattr(self.ffm, name, nn.Conv2d(int(w.shape[1]), int(w.shape[0]), 1, bias=False))
        for name in ("conv_out", "conv_out16", "conv_out32"):  # the two side outputs are only read (training aids)
            holder = nn.Module()
            holder.conv = _ConvBNReLU(sd, f"{name}.conv")
            w = sd[f"{name}.conv_out.weight"]
            holder.conv_out = nn.Conv2d(int(w.shape[1]), int(w.shape[0]), 1, bias=False)
            setattr(self, name, holder)

    def forward(self, x):
        """The 19 classes' logits at the input's size (facexlib's first output)."""
        h, w = x.shape[2:]
        r, cp = self.cp.resnet, self.cp
        y = F.max_pool2d(F.relu(r.bn1(r.conv1(x))), 3, 2, 1)
        feat8 = r.layer2(r.layer1(y))
        feat16 = r.layer3(feat8)
        feat32 = r.layer4(feat16)
        avg = cp.conv_avg(feat32.mean(dim=(2, 3), keepdim=True))
        up32 = F.interpolate(cp.arm32(feat32) + F.interpolate(avg, feat32.shape[2:], mode="nearest"),
                             feat16.shape[2:], mode="nearest")
        up32 = cp.conv_head32(up32)
        up16 = cp.conv_head16(F.interpolate(cp.arm16(feat16) + up32, feat8.shape[2:], mode="nearest"))
        feat = self.ffm.convblk(torch.cat([feat8, up16], dim=1))
        att = torch.sigmoid(self.ffm.conv2(F.relu(self.ffm.conv1(feat.mean(dim=(2, 3), keepdim=True)))))
        feat = feat * att + feat
        out = self.conv_out.conv_out(self.conv_out.conv(feat))
        return F.interpolate(out, (h, w), mode="bilinear", align_corners=True)


def gray(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).repeat(1, 3, 1, 1)


@torch.no_grad()
def face_features(parser: BiSeNet, face_bgr: np.ndarray) -> torch.Tensor:
    """The aligned crop with everything but the face's own features white, the rest grey (1×3×512×512, [0, 1])."""
    param = next(parser.parameters())
    x = torch.from_numpy(cv2.cvtColor(face_bgr, cv2.COLOR_BGR2RGB).transpose(2, 0, 1).copy()).float()[None] / 255.0
    x = x.to(param.device, param.dtype)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).reshape(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).reshape(1, 3, 1, 1)
    try:
        labels = parser((x - mean) / std).argmax(dim=1, keepdim=True)
    except RuntimeError as e:
        raise FaceParsingError(f"{PARSER}: not a BiSeNet face parser ({str(e).splitlines()[0][:160]})") from None
    background = torch.zeros_like(labels, dtype=torch.bool)
    for label in BACKGROUND_LABELS:
        background |= labels == label
    return torch.where(background, torch.ones_like(x), gray(x))


# --- files ---

def folder(annotator_dir: Path | None) -> Path:
    from modules.controlnet.preprocessors import ANNOTATOR_FOLDER

    return Path(annotator_dir if annotator_dir is not None else ANNOTATOR_FOLDER) / SUBFOLDER


_CACHE: dict = {}


def annotator_device() -> torch.device:
    """The GPU when there is one (as the other annotators; EVA-CLIP alone is 300M parameters), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load(annotator_dir: Path | None, label: str, name: str):
    """RetinaFace or BiSeNet from the user's facexlib folder; a missing file is a MissingAnnotatorError naming it
    and the folder."""
    from modules.controlnet.preprocessors import MissingAnnotatorError

    path = folder(annotator_dir) / name
    if annotator_dir is None or not path.is_file():
        raise MissingAnnotatorError(label, name, folder(annotator_dir))
    return load_file(path, RetinaFace if name == DETECTOR else BiSeNet)


def load_file(path: Path, cls: type = RetinaFace):
    """RetinaFace (or BiSeNet) from one facexlib file (face restoration reads the detector from its own folders
    too); a file of another network is a FaceParsingError naming it. The last two networks read stay cached."""
    from modules.models.loader import read_state_dict

    path, name = Path(path), Path(path).name
    key = (str(path), path.stat().st_mtime_ns, path.stat().st_size)
    if key in _CACHE:
        return _CACHE[key]
    sd = {k.removeprefix("module."): v for k, v in read_state_dict(path).items()}
    try:
        net = cls(sd)
        missing, unexpected = net.load_state_dict(sd, strict=False)
    except (KeyError, RuntimeError, IndexError) as e:
        raise FaceParsingError(f"{name}: not facexlib's {cls.__name__} weights ({type(e).__name__}: "
                               f"{str(e)[:120]})") from None
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing:
        raise FaceParsingError(f"{name}: not facexlib's {cls.__name__} weights ({len(missing)} tensors missing, "
                               f"e.g. {missing[0]})")
    net = net.float().eval().to(annotator_device())
    if len(_CACHE) >= 2:
        _CACHE.clear()
    _CACHE[key] = net
    return net

"""The face-parsing mask A1111 pastes restored faces with: facexlib's FaceRestoreHelper(use_parse=True) runs ParseNet
(`parsing_parsenet.pth`, from PSFRGAN) on each restored 512×512 face and blends only the face's own parts back in,
so the background and the other parts facexlib's colour map leaves out stay the original picture's.

ParseNet, as facexlib builds it for that file (written here without facexlib, its widths read from the file):
an encoder (a 3×3 convolution, then residual blocks that halve the size), residual blocks at the smallest size added
to their input, a decoder (residual blocks that double the size, nearest-neighbour), and a 19-class parsing head.
Every convolution is 3×3 after reflection padding; inside the blocks batch norm, and LeakyReLU(0.2) after the first
convolution. The mask (facexlib's paste_faces_to_input_image): the face in [-1, 1] RGB; the argmax class; classes
0 (background), 14, 16, 17 and 18 are 0 (facexlib's MASK_COLORMAP), the rest 255; two 101×101 Gaussian blurs
(sigma 11); a 10-pixel border set to 0; / 255; warped back with INTER_AREA.
"""
from __future__ import annotations

import re

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PARSER_FILE = "parsing_parsenet.pth"
FACE_SIZE = 512
OFF_FACE_CLASSES = (0, 14, 16, 17, 18)  # the zeros of facexlib's MASK_COLORMAP
BLUR_KERNEL, BLUR_SIGMA, BORDER = 101, 11, 10


class ParseNetError(ValueError):
    """A file that is not facexlib's ParseNet (the message names what is missing)."""


class _Norm(nn.Module):
    """facexlib's NormLayer('bn'): the batch norm under `.norm` (its key path)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, x):
        return self.norm(x)


class _Conv(nn.Module):
    """Reflection-padded 3×3 convolution; `scale` "down" strides by 2, "up" doubles the size first (nearest)."""

    def __init__(self, c_in: int, c_out: int, scale: str = "none", norm: bool = False, relu: bool = False):
        super().__init__()
        self.scale, self.relu = scale, relu
        self.conv2d = nn.Conv2d(c_in, c_out, 3, 2 if scale == "down" else 1, bias=not norm)
        self.norm = _Norm(c_out) if norm else None

    def forward(self, x):
        if self.scale == "up":
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = self.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"))
        if self.norm is not None:
            x = self.norm(x)
        return F.leaky_relu(x, 0.2) if self.relu else x


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, scale: str):
        super().__init__()
        first, second = {"down": ("none", "down"), "up": ("up", "none"), "none": ("none", "none")}[scale]
        self.shortcut_func = _Conv(c_in, c_out, scale) if (scale != "none" or c_in != c_out) else None
        self.conv1 = _Conv(c_in, c_out, first, norm=True, relu=True)
        self.conv2 = _Conv(c_out, c_out, second, norm=True)

    def forward(self, x):
        identity = x if self.shortcut_func is None else self.shortcut_func(x)
        return identity + self.conv2(self.conv1(x))


class ParseNet(nn.Module):
    """`blocks`: (in, out) channels of the encoder's, body's and decoder's residual blocks."""

    def __init__(self, base: int, encoder: list[tuple[int, int]], body: list[tuple[int, int]],
                 decoder: list[tuple[int, int]], classes: int = 19):
        super().__init__()
        self.encoder = nn.Sequential(_Conv(3, base), *(_Block(i, o, "down") for i, o in encoder))
        self.body = nn.Sequential(*(_Block(i, o, "none") for i, o in body))
        self.decoder = nn.Sequential(*(_Block(i, o, "up") for i, o in decoder))
        head = decoder[-1][1] if decoder else (body[-1][1] if body else encoder[-1][1])
        self.out_img_conv = _Conv(head, 3)
        self.out_mask_conv = _Conv(head, classes)

    def forward(self, x):
        feat = self.encoder(x)
        x = self.decoder(feat + self.body(feat))
        return self.out_mask_conv(x), self.out_img_conv(x)


def _blocks(sd: dict, part: str) -> list[tuple[int, int]]:
    start = 1 if part == "encoder" else 0
    indices = sorted({int(m.group(1)) for k in sd if (m := re.match(rf"{part}\.(\d+)\.conv1\.conv2d\.weight$", k))})
    if indices != list(range(start, start + len(indices))):
        raise ParseNetError(f"not facexlib's ParseNet: its {part} blocks are not numbered {start}, {start + 1}, …")
    return [tuple(sd[f"{part}.{i}.conv1.conv2d.weight"].shape[1::-1]) for i in indices]


def build(sd: dict) -> ParseNet:
    """ParseNet with the file's widths, its weights loaded (strict: every tensor where facexlib has it)."""
    for key in ("encoder.0.conv2d.weight", "out_mask_conv.conv2d.weight", "out_img_conv.conv2d.weight"):
        if key not in sd:
            raise ParseNetError(f"not facexlib's ParseNet ({PARSER_FILE}): {key} is missing")
    net = ParseNet(sd["encoder.0.conv2d.weight"].shape[0], _blocks(sd, "encoder"), _blocks(sd, "body"),
                   _blocks(sd, "decoder"), sd["out_mask_conv.conv2d.weight"].shape[0])
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ParseNetError(f"not facexlib's ParseNet ({PARSER_FILE}): {str(e).splitlines()[0]}") from None
    return net.eval()


def face_mask(net: ParseNet, face_bgr: np.ndarray, device: torch.device | str = "cpu") -> np.ndarray:
    """The soft mask (512×512 float64 in [0, 1]) of the face's own parts in a restored face (uint8 BGR)."""
    import cv2

    face = cv2.resize(face_bgr, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
    x = torch.from_numpy(np.ascontiguousarray(face[:, :, ::-1].transpose(2, 0, 1)))[None]
    x = ((x - 0.5) / 0.5).to(device)
    with torch.no_grad():
        labels = net(x)[0].argmax(dim=1).squeeze(0).cpu().numpy()
    mask = np.where(np.isin(labels, OFF_FACE_CLASSES), 0.0, 255.0)
    for _ in range(2):
        mask = cv2.GaussianBlur(mask, (BLUR_KERNEL, BLUR_KERNEL), BLUR_SIGMA)
    mask[:BORDER, :] = mask[-BORDER:, :] = 0
    mask[:, :BORDER] = mask[:, -BORDER:] = 0
    return cv2.resize(mask / 255.0, face_bgr.shape[:2])


def paste_with_mask(bgr: np.ndarray, face_bgr: np.ndarray, inverse: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The restored face warped back and blended in by its parse mask (facexlib, upscale factor 1)."""
    import cv2

    h, w = bgr.shape[:2]
    restored = cv2.warpAffine(face_bgr, inverse, (w, h)).astype(np.float32)
    soft = cv2.warpAffine(mask, inverse, (w, h), flags=cv2.INTER_AREA)[:, :, None]
    return soft * restored + (1 - soft) * bgr

"""More of the extension's model-based ControlNet preprocessors: manga line (lineart_anime_denoise), MobileSAM
(mobile_sam), DSINE normals (normal_dsine) and DensePose (densepose, densepose_parula).

Each network is built in torch (written here, or taken from controlnet_aux) and takes the user's released weight
file through `annotators.load` (tensors only, strict key match: a file of another network is an error naming the
file). DensePose's release is a TorchScript program rather than a weight file; see `load_torchscript`. Pre- and
post-processing follow the extension's annotator code (`annotator/manga_line`, `annotator/mobile_sam`,
`annotator/normaldsine`, `annotator/densepose`); where it deviates, the docstring says why.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn as nn

from modules.controlnet.preprocessors import RunContext, hwc3, resize_with_pad


def _base():
    """annotators.py (imported late: it registers the runners below, so importing it here at the top would be
    circular)."""
    from modules.controlnet import annotators

    return annotators


# --- manga line (lineart_anime_denoise: "erika", a residual U-Net on the grey picture) ---

class _Wrapped(nn.Module):
    """The release names every layer stack `<name>.model.<i>`."""

    def __init__(self, *layers: nn.Module):
        super().__init__()
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


def _norm_act_conv(cin: int, cout: int, kernel: int, stride: int = 1, upsample: bool = False) -> _Wrapped:
    """BatchNorm (eps 1e-3) -> LeakyReLU(0.2) -> conv, optionally followed by a 2x nearest upsampling."""
    layers = [nn.BatchNorm2d(cin, eps=1e-3), nn.LeakyReLU(0.2),
              nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2)]
    if upsample:
        layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
    return _Wrapped(*layers)


class _Shortcut(nn.Module):
    """x + y, x projected by a 1x1 conv (and upsampled in the decoder) when the channels or the stride change."""

    def __init__(self, cin: int, cout: int, stride: int = 1, upsample: bool = False):
        super().__init__()
        projected = cin != cout or (stride != 1 and not upsample)
        self.model = None
        if projected:
            layers = [nn.Conv2d(cin, cout, 1, stride=stride)]
            if upsample:
                layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
            self.model = nn.Sequential(*layers)

    def forward(self, x, y):
        return (self.model(x) if self.model is not None else x) + y


class _ResBlock(nn.Module):
    """Two pre-activation convs and a shortcut; the decoder's first block of a stage upsamples 2x."""

    def __init__(self, cin: int, cout: int, stride: int = 1, upsample: bool = False):
        super().__init__()
        self.conv1 = _norm_act_conv(cin, cout, 3, stride, upsample)
        self.residual = _norm_act_conv(cout, cout, 3)
        self.shortcut = _Shortcut(cin, cout, stride, upsample)

    def forward(self, x):
        return self.shortcut(x, self.residual(self.conv1(x)))


def _stage(cin: int, cout: int, repeat: int, down: bool = False, up: bool = False) -> _Wrapped:
    """A stage of blocks: an encoder stage halves the size in its last block, a decoder stage doubles it first."""
    blocks = []
    for i in range(repeat):
        stride = 2 if down and i == repeat - 1 else 1
        blocks.append(_ResBlock(cin if i == 0 else cout, cout, stride, upsample=up and i == 0))
    return _Wrapped(*blocks)


class MangaLineNet(nn.Module):
    """The manga line extractor ("erika.pth", the extension's `res_skip`): grey 0..255 in, a drawing out (white
    paper near 255, lines dark). Encoder 24-48-96-192-384 (halving four times), decoder back up with the encoder's
    maps added at each size."""

    ENCODER = ((1, 24, 2), (24, 48, 3), (48, 96, 5), (96, 192, 7), (192, 384, 12))
    DECODER = ((384, 192, 7), (192, 96, 5), (96, 48, 3), (48, 24, 2))

    def __init__(self):
        super().__init__()
        for i, (cin, cout, repeat) in enumerate(self.ENCODER):
            setattr(self, f"block{i}", _stage(cin, cout, repeat, down=i > 0))
        for i, (cin, cout, repeat) in enumerate(self.DECODER):
            setattr(self, f"block{i + 5}", _stage(cin, cout, repeat, up=True))
            setattr(self, f"res{i + 1}", _Shortcut(cout, cout))
        self.block9 = _stage(24, 16, 2)
        self.conv15 = _norm_act_conv(16, 1, 1)

    def forward(self, x):
        skips = []
        for i in range(5):
            x = getattr(self, f"block{i}")(x)
            skips.append(x)
        for i in range(4):
            x = getattr(self, f"res{i + 1}")(skips[3 - i], getattr(self, f"block{i + 5}")(x))
        return self.conv15(self.block9(x))


MANGA_LINE_FILE = "manga_line/erika.pth"


def manga_line(img, res, a, b, ctx: RunContext):
    """lineart_anime_denoise: the grey picture (0..255, not normalised) through the manga line network; its drawing
    is inverted (white lines on black), as the extension returns it."""
    base = _base()
    p = resize_with_pad(img, res)
    net = base.load(ctx, MANGA_LINE_FILE)
    grey = _grey(p.image)
    with torch.no_grad():
        x = torch.from_numpy(grey).float()[None, None].to(base._param_device(net))
        line = 255.0 - net(x)[0, 0].cpu().numpy()
    return hwc3(p.crop(line.clip(0, 255).astype(np.uint8)))


def _grey(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))


# --- MobileSAM (mobile_sam: every segment SAM's automatic mask generator finds, each in a colour) ---

MOBILE_SAM_FILE = "mobile_sam/mobile_sam.pt"
SAM_POINTS_PER_SIDE = 32  # the generator's default grid (32 x 32 prompts), as the extension runs it


def mobile_sam_net() -> nn.Module:
    """MobileSAM as controlnet_aux builds it ("vit_t": a TinyViT-5M image encoder with SAM's prompt encoder and
    mask decoder). TinyViT cannot be built on the meta device (it reads its drop-path rates with .item()), so it is
    built on the CPU: 10 M parameters, a fraction of a second."""
    import warnings

    with torch.device("cpu"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TinyViT re-registers timm's tiny_vit names
        from controlnet_aux.segment_anything import sam_model_registry

        return sam_model_registry["vit_t"]()


def colour_segments(masks: list[dict], height: int, width: int, rng: np.random.RandomState) -> np.ndarray:
    """The extension's (controlnet_aux's SamDetector.show_anns) colouring: the largest segment first, each painted
    over the map in one random colour (a red, green and blue level drawn in turn), so smaller segments stay on
    top; black where none is. Colours come from `rng` (the extension draws from numpy's global state)."""
    out = np.zeros((height, width, 3), dtype=np.uint8)
    for mask in sorted(masks, key=lambda m: m["area"], reverse=True):
        colour = [rng.randint(255, dtype=np.uint8) for _ in range(3)]
        out[np.asarray(mask["segmentation"], dtype=bool)] = colour
    return out


def mobile_sam(img, res, a, b, ctx: RunContext):
    """mobile_sam: SAM's automatic mask generator (its defaults: a 32 x 32 grid of point prompts) on the picture
    resized so its short side is the resolution, and the segments coloured as the extension colours them (a seeded
    generator: the same picture and seed give the same colours). controlnet_aux resizes to multiples of 64 first,
    which stretches the picture; here it keeps its shape and the map comes back at the resized size. On a CPU the
    grid's 1024 prompts take minutes (each mask is decoded at SAM's 1024 px)."""
    import warnings

    base = _base()
    p = resize_with_pad(img, res)
    picture = p.crop(p.image)
    net = base.load(ctx, MOBILE_SAM_FILE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from controlnet_aux.segment_anything import SamAutomaticMaskGenerator

        generator = SamAutomaticMaskGenerator(net, points_per_side=SAM_POINTS_PER_SIDE)
    with torch.no_grad():
        masks = generator.generate(picture)
    return colour_segments(masks, p.height, p.width, np.random.RandomState(ctx.seed))

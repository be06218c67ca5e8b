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


# --- DSINE (normal_dsine: surface normals from an EfficientNet-B5 U-Net refined with the camera's rays) ---

DSINE_FILE = "normal_dsine/dsine.pt"
DSINE_PATCH = 5  # the refinement's neighbourhood (5 x 5 normals at 1/8 size)
DSINE_RATIO = 8  # the coarse prediction's downsampling, undone by convex upsampling


def _efficientnet(variant: str) -> nn.Module:
    """geffnet's TF-style EfficientNet (same padding, BatchNorm eps 1e-3), as DSINE builds its encoder; the copy
    controlnet_aux ships for NormalBAE (loaded as torch.hub's local repository: its modules import `geffnet`).
    Classifier and pooling are dropped, as DSINE drops them."""
    import contextlib
    import io
    import os
    import warnings

    from controlnet_aux.normalbae.nets import submodules

    repo = os.path.join(os.path.dirname(submodules.__file__), "efficientnet_repo")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        net = torch.hub.load(repo, variant, pretrained=False, source="local")
    net.global_pool = nn.Identity()
    net.classifier = nn.Identity()
    return net


def _prediction_head(cin: int, hidden: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, hidden, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(hidden, hidden, 1),
                         nn.ReLU(inplace=True), nn.Conv2d(hidden, cout, 1))


class _StandardisedConv(nn.Conv2d):
    """A 3x3 conv whose weight is standardised (zero mean, unit std per output channel) before use."""

    def forward(self, x):
        w = self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)
        w = w / (w.flatten(1).std(dim=1).view(-1, 1, 1, 1) + 1e-5)
        return nn.functional.conv2d(x, w, self.bias, self.stride, self.padding)


class _UpGroupNorm(nn.Module):
    """Upsample (bilinear) to the skip's size, concatenate, two standardised convs with GroupNorm(8)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self._net = nn.Sequential(_StandardisedConv(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.LeakyReLU(),
                                  _StandardisedConv(cout, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.LeakyReLU())

    def forward(self, x, skip):
        x = nn.functional.interpolate(x, size=skip.shape[2:], mode="bilinear", align_corners=False)
        return self._net(torch.cat([x, skip], dim=1))


class _DsineEncoder(nn.Module):
    def __init__(self, variant: str):
        super().__init__()
        self.original_model = _efficientnet(variant)

    def forward(self, x):
        """The maps at 1/8, 1/16 (after the 3rd and 5th block stages) and 1/32 (after conv_head)."""
        m = self.original_model
        x = m.act1(m.bn1(m.conv_stem(x)))
        maps = []
        for stage in m.blocks:
            x = stage(x)
            maps.append(x)
        return maps[2], maps[4], m.conv_head(x)


class _DsineDecoder(nn.Module):
    """The 1/32 features (with the rays' uv) up to 1/8, then heads for the initial normal, the refinement's
    feature map and its initial hidden state."""

    def __init__(self, c32: int, c16: int, c8: int, features: int, dims=(3, 64, 64)):
        super().__init__()
        self.conv2 = nn.Conv2d(c32 + 2, features, 1)
        self.up1 = _UpGroupNorm(features + c16 + 2, features // 2)
        self.up2 = _UpGroupNorm(features // 2 + c8 + 2, features // 4)
        self.normal_head = _prediction_head(features // 4 + 2, 128, dims[0])
        self.feature_head = _prediction_head(features // 4 + 2, 128, dims[1])
        self.hidden_head = _prediction_head(features // 4 + 2, 128, dims[2])

    def forward(self, maps, uvs):
        (x8, x16, x32), (uv32, uv16, uv8) = maps, uvs
        x = self.conv2(torch.cat([x32, uv32], dim=1))
        x = self.up1(x, torch.cat([x16, uv16], dim=1))
        x = torch.cat([self.up2(x, torch.cat([x8, uv8], dim=1)), uv8], dim=1)
        normal = nn.functional.normalize(self.normal_head(x), dim=1)
        return normal, self.feature_head(x), self.hidden_head(x)


class _ConvGRU(nn.Module):
    def __init__(self, hidden: int, cin: int, kernel: int):
        super().__init__()
        self.convz = nn.Conv2d(hidden + cin, hidden, kernel, padding=kernel // 2)
        self.convr = nn.Conv2d(hidden + cin, hidden, kernel, padding=kernel // 2)
        self.convq = nn.Conv2d(hidden + cin, hidden, kernel, padding=kernel // 2)

    def forward(self, h, x):
        hx = torch.cat([h, x], dim=1)
        z, r = torch.sigmoid(self.convz(hx)), torch.sigmoid(self.convr(hx))
        q = torch.tanh(self.convq(torch.cat([r * h, x], dim=1)))
        return (1 - z) * h + z * q


def _ray_relu(normal, ray, eps: float = 1e-2):
    """Normals turned to face the camera: the component along the viewing ray kept at least eps."""
    cos = torch.cosine_similarity(normal, ray, dim=1).unsqueeze(1)
    return nn.functional.normalize(normal + ray * (torch.relu(cos - eps) + eps - cos), dim=1)


def _neighbours(x, size: int):
    """(B, C, H, W) -> (B, C, size*size, H, W): each pixel's size x size neighbourhood (edges replicated)."""
    b, c, h, w = x.shape
    pad = size // 2
    x = nn.functional.pad(x, (pad, pad, pad, pad), mode="replicate")
    return nn.functional.unfold(x, size).view(b, c, size * size, h, w)


def _convex_upsample(x, weights, k: int):
    """Each of the k x k output pixels a softmax-weighted mix of the coarse pixel's 3 x 3 neighbourhood."""
    b, c, h, w = x.shape
    weights = torch.softmax(weights.view(b, 1, 9, k, k, h, w), dim=2)
    up = (weights * _neighbours(x, 3).view(b, c, 9, 1, 1, h, w)).sum(dim=2)
    return up.permute(0, 1, 4, 2, 5, 3).reshape(b, c, k * h, k * w)


def _rotate(v, axis_angle):
    """Rodrigues' rotation of vectors v (..., 3) about axis_angle (..., 3): direction the axis, length the angle."""
    angle = axis_angle.norm(dim=-1, keepdim=True)
    axis = torch.where(angle > 0, axis_angle / angle.clamp_min(1e-12), torch.zeros_like(axis_angle))
    cos, sin = torch.cos(angle), torch.sin(angle)
    return (v * cos + torch.cross(axis, v, dim=-1) * sin
            + axis * (axis * v).sum(dim=-1, keepdim=True) * (1 - cos))


class DSINE(nn.Module):
    """DSINE (Bae & Davison, CVPR 2024): an initial normal at 1/8 size from the U-Net, refined `num_iter` times by a
    ConvGRU that rotates each pixel's neighbours' normals (axis and angle predicted, constrained by the camera's
    rays) and mixes them; every estimate is convex-upsampled to full size. `intrins` is the 3x3 camera matrix in
    input pixels. The released network: EfficientNet-B5 encoder, 2048 decoder features."""

    def __init__(self, variant: str = "tf_efficientnet_b5_ap", skips=(2048, 176, 64), features: int = 2048):
        super().__init__()
        self.num_iter = 5
        self.encoder = _DsineEncoder(variant)
        self.decoder = _DsineDecoder(*skips, features)
        hidden, ps = 64, DSINE_PATCH
        self.gru = _ConvGRU(hidden, 64 + 2, ps)
        self.prob_head = _prediction_head(hidden + 2, 64, ps * ps)
        self.xy_head = _prediction_head(hidden + 2, 64, ps * ps * 2)
        self.angle_head = _prediction_head(hidden + 2, 64, ps * ps)
        self.up_prob_head = _prediction_head(hidden + 2, 64, 9 * DSINE_RATIO * DSINE_RATIO)

    @staticmethod
    def _pixels(h: int, w: int, device):
        """Pixel centres (x + 0.5, y + 0.5) of an h x w grid: (1, 2, h, w)."""
        y, x = torch.meshgrid(torch.arange(h, device=device) + 0.5, torch.arange(w, device=device) + 0.5,
                              indexing="ij")
        return torch.stack([x, y])[None]

    @staticmethod
    def _camera(intrins, h: int, w: int, full_h: int, full_w: int):
        """fu, cu, fv, cv scaled to an h x w grid, each (B, 1, 1, 1)."""
        sx, sy = w / full_w, h / full_h
        return [t.view(-1, 1, 1, 1) for t in (intrins[:, 0, 0] * sx, intrins[:, 0, 2] * sx,
                                              intrins[:, 1, 1] * sy, intrins[:, 1, 2] * sy)]

    def _uv(self, intrins, h, w, full_h, full_w):
        fu, cu, fv, cv = self._camera(intrins, h, w, full_h, full_w)
        p = self._pixels(h, w, intrins.device)
        return torch.cat([(p[:, :1] - cu) / fu, (p[:, 1:] - cv) / fv], dim=1)

    def _refine(self, h, feat, normal, intrins, full_h, full_w, uv8, ray8):
        b, _, hh, ww = normal.shape
        ps = DSINE_PATCH
        fu, cu, fv, cv = self._camera(intrins, hh, ww, full_h, full_w)
        h = self.gru(h, feat)
        hu = torch.cat([h, uv8], dim=1)
        prob = torch.sigmoid(self.prob_head(hu)).unsqueeze(1)
        near = _neighbours(normal, ps)  # (B, 3, ps*ps, h, w)
        xs, ys = torch.split(self.xy_head(hu), [ps * ps, ps * ps], dim=1)
        xy = nn.functional.normalize(torch.stack([xs, ys], dim=1), dim=1)
        angle = torch.sigmoid(self.angle_head(hu)).unsqueeze(1) * np.pi
        pix = _neighbours(self._pixels(hh, ww, normal.device), ps)
        # the rotation axis that moves a neighbour's normal onto this pixel's plane (the camera's geometry)
        du, dv = xy[:, 0] / fu, xy[:, 1] / fv
        tu, tv = (pix[:, 0] + xy[:, 0] - cu) / fu, (pix[:, 1] + xy[:, 1] - cv) / fv
        nx, ny, nz = near[:, 0], near[:, 1], near[:, 2]
        denom = tu * nx + tv * ny + nz
        denom = torch.where(denom.abs() < 1e-8, 1e-8 * torch.sign(denom), denom)
        dz = -(du * nx + dv * ny) / denom
        axes = nn.functional.normalize(torch.stack([du + dz * tu, dv + dz * tv, dz], dim=1), dim=1)
        axes = torch.where(torch.isfinite(axes).all(dim=1, keepdim=True), axes, torch.zeros_like(axes))
        rotated = _rotate(near.permute(0, 2, 3, 4, 1), (axes * angle).permute(0, 2, 3, 4, 1))
        rotated = nn.functional.normalize(rotated.permute(0, 4, 1, 2, 3), dim=1)
        rotated = torch.stack([_ray_relu(rotated[:, :, i], ray8) for i in range(ps * ps)], dim=2)
        normal = nn.functional.normalize((prob * rotated).sum(dim=2), dim=1)
        up = _convex_upsample(normal, self.up_prob_head(hu), DSINE_RATIO)
        return h, normal, nn.functional.normalize(up, dim=1)

    def forward(self, img, intrins, iterations: int | None = None):
        _, _, full_h, full_w = img.shape
        intrins = intrins.clone()
        intrins[:, 0, 2] += 0.5
        intrins[:, 1, 2] += 0.5
        uvs = [self._uv(intrins, full_h // s, full_w // s, full_h, full_w) for s in (32, 16, 8)]
        uv8 = uvs[2]
        ray8 = nn.functional.normalize(torch.cat([uv8, torch.ones_like(uv8[:, :1])], dim=1), dim=1)
        normal, feat, h = self.decoder(self.encoder(img), uvs)
        normal = _ray_relu(normal, ray8)
        feat = torch.cat([feat, uv8], dim=1)
        up = _convex_upsample(normal, self.up_prob_head(torch.cat([h, uv8], dim=1)), DSINE_RATIO)
        estimates = [nn.functional.normalize(up, dim=1)]
        for _ in range(self.num_iter if iterations is None else iterations):
            h, normal, up = self._refine(h, feat, normal.detach(), intrins, full_h, full_w, uv8, ray8)
            estimates.append(up)
        return estimates


def _dsine_weights(sd: dict) -> dict:
    """The release is a training checkpoint ({"model": ...}, DataParallel's "module." prefixes)."""
    out = {}
    for key, value in sd.items():
        for prefix in ("model.", "module."):
            key = key.removeprefix(prefix)
        out[key] = value
    return out


def dsine_net(sd: dict) -> nn.Module:
    """DSINE sized by the file: its EfficientNet the geffnet variant whose shapes the encoder's weights have (B5 in
    the release), the decoder's width from its first conv."""
    sd = _dsine_weights(sd)
    conv2 = sd.get("decoder.conv2.weight")
    if conv2 is None:
        raise KeyError("decoder.conv2.weight (DSINE's decoder)")
    encoder = {k[len("encoder.original_model."):]: tuple(v.shape) for k, v in sd.items()
               if k.startswith("encoder.original_model.")}
    for b in (5, 0, 1, 2, 3, 4, 6, 7):
        variant = f"tf_efficientnet_b{b}_ap"
        candidate = _efficientnet(variant)
        if {k: tuple(v.shape) for k, v in candidate.state_dict().items()} == encoder:
            break
    else:
        raise KeyError("encoder.original_model.* (DSINE's EfficientNet encoder)")
    features = conv2.shape[0]
    c16 = sd["decoder.up1._net.0.weight"].shape[1] - features - 2
    c8 = sd["decoder.up2._net.0.weight"].shape[1] - features // 2 - 2
    return DSINE(variant, (conv2.shape[1] - 2, c16, c8), features)


dsine_net.reads_shapes = True


def dsine_keys(net: nn.Module, sd: dict) -> dict:
    return _base().fit_keys(net, _dsine_weights(sd))


def intrinsics_from_fov(fov: float, height: int, width: int) -> torch.Tensor:
    """DSINE's camera from a field of view (degrees) across the picture's longer side, centred. The slider's 0 and
    values from 180 up have no camera (an infinite or negative focal length): kept within 1..179 degrees."""
    fov = min(max(float(fov), 1.0), 179.0)
    f = (max(height, width) / 2.0) / np.tan(np.deg2rad(fov / 2.0))
    return torch.tensor([[f, 0, width / 2.0 - 0.5], [0, f, height / 2.0 - 0.5], [0, 0, 1]], dtype=torch.float32)


def normal_dsine(img, res, fov, iterations, ctx: RunContext):
    """normal_dsine: ImageNet-normalised RGB through DSINE with a camera of the "Fov" slider's field of view,
    refined "Iterations" times; the last (full-size) normal mapped from [-1, 1] to [0, 255] as the extension's.

    The extension computes the camera from the picture's size before resizing (so its field of view narrows as
    the picture grows beyond the resolution) and crops the map at offsets meant for centred padding it never
    applies (shifting the map by a few pixels when a side is not a multiple of 32); here the camera is the resized
    picture's, so Fov means the picture's field of view, and the map is cropped where the picture is."""
    base = _base()
    p = resize_with_pad(img, res)
    net = base.load(ctx, DSINE_FILE)
    device = base._param_device(net)
    x = base._tensor(p.image / 255.0, device)
    mean = torch.tensor(base._IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(base._IMAGENET_STD, device=device).view(1, 3, 1, 1)
    intrins = intrinsics_from_fov(fov if fov is not None else 60.0, p.height, p.width)[None].to(device)
    with torch.no_grad():
        normal = net((x - mean) / std, intrins, int(iterations) if iterations is not None else 5)[-1]
    normal = ((normal + 1) * 0.5).clip(0, 1)[0].permute(1, 2, 0).cpu().numpy()
    return p.crop((normal * 255.0).clip(0, 255).astype(np.uint8))


# --- DensePose (densepose, densepose_parula: body parts of each person, drawn in a colour map) ---

DENSEPOSE_FILE = "densepose/densepose_r50_fpn_dl.torchscript"
DENSEPOSE_PARTS = 24  # the chart's body parts (labels 1..24; 0 is background)


def load_torchscript(ctx: RunContext, relative: str) -> torch.jit.ScriptModule:
    """A TorchScript network from the annotator folder, cached with the other annotators (unload_all frees it).

    DensePose is released only as TorchScript (detectron2's R50-FPN-DL exported with its box post-processing), so
    there is no weight file to read into a network written here. Loading TorchScript is not unpickling: the archive
    holds tensors and TorchScript code, a typed subset of Python compiled against torch's operator registry, which
    cannot import modules or call arbitrary Python functions; torch.jit's loader rebuilds only tensors and
    TorchScript objects from it. So, like a weights-only checkpoint, it cannot run code of the file's choosing
    outside torch's operators. A file that is not TorchScript is refused naming it."""
    import importlib

    importlib.import_module("torchvision")  # registers torchvision::nms, which the exported network calls
    base = _base()
    path = base.locate(ctx, relative)
    device = base._device(ctx)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, relative, str(device))
    with base._lock:
        if key in base._cache:
            base._cache.move_to_end(key)
            return base._cache[key]
        try:
            net = torch.jit.load(str(path), map_location="cpu").to(device).eval()
        except (RuntimeError, ValueError) as e:
            raise base.ModelLoadError(f"{path} is not the TorchScript network this preprocessor expects: "
                                      f"{str(e)[:300]}") from e
        base._cache[key] = net
        while len(base._cache) > base.KEEP_LOADED:
            base._cache.popitem(last=False)
        return net


def _part_labels(fine: torch.Tensor, coarse: torch.Tensor, h: int, w: int) -> np.ndarray:
    """Each pixel of a h x w box: the fine part (argmax of the 25 part scores) where the coarse mask says person."""
    resize = dict(size=(h, w), mode="bilinear", align_corners=False)
    person = nn.functional.interpolate(coarse[None], **resize).argmax(dim=1) > 0
    parts = nn.functional.interpolate(fine[None], **resize).argmax(dim=1)
    return (parts * person)[0].cpu().numpy().astype(np.uint8)


def draw_densepose(boxes, coarse, fine, height: int, width: int, colour_map: int) -> np.ndarray:
    """The extension's DensePose picture (its masked colour-map visualiser, opaque): each person's box filled with
    its part labels scaled to 0..255 through the colour map, the background left black; later people over earlier
    ones. BGR, as OpenCV's colour maps are. Boxes are cut to the picture (the extension's slicing fails on a box
    reaching past it)."""
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    for i in range(len(boxes)):
        x0, y0, x1, y1 = (int(v) for v in boxes[i].long().tolist())
        w, h = x1 - x0, y1 - y0
        if w <= 0 or h <= 0:
            continue
        labels = _part_labels(fine[i], coarse[i], h, w)
        scaled = (labels.astype(np.float32) * (255.0 / DENSEPOSE_PARTS)).clip(0, 255).astype(np.uint8)
        coloured = cv2.applyColorMap(scaled, colour_map)
        top, left = max(y0, 0), max(x0, 0)
        bottom, right = min(y0 + h, height), min(x0 + w, width)
        if bottom <= top or right <= left:
            continue
        inside = (slice(top - y0, bottom - y0), slice(left - x0, right - x0))
        region = canvas[top:bottom, left:right]
        person = labels[inside] > 0
        region[person] = coloured[inside][person]
    return canvas


VIRIDIS_BACKGROUND = (68, 1, 84)  # viridis at 0: what the extension paints every channel left at 0


def densepose(img, res, a, b, ctx: RunContext, parula: bool = False):
    """densepose / densepose_parula: the TorchScript DensePose on the padded picture (uint8, CHW, as exported);
    each person's body parts in viridis with the background purple, or in parula on black."""
    base = _base()
    p = resize_with_pad(img, res)
    net = load_torchscript(ctx, DENSEPOSE_FILE)
    device = base._device(ctx)
    x = torch.from_numpy(p.image).permute(2, 0, 1).contiguous().to(device)
    with torch.no_grad():
        out = net(x)
    if not (isinstance(out, (tuple, list)) and len(out) == 5 and all(isinstance(t, torch.Tensor) for t in out)
            and out[0].ndim == 2 and out[0].shape[-1] == 4):
        path = base.locate(ctx, DENSEPOSE_FILE)
        raise base.ModelLoadError(f"{path} is not the DensePose network this preprocessor expects (it returns no "
                                  f"boxes, coarse and fine segmentation, U and V)")
    boxes, coarse, fine = (t.float().cpu() for t in out[:3])
    h, w = p.image.shape[:2]
    bgr = draw_densepose(boxes, coarse, fine, h, w, cv2.COLORMAP_PARULA if parula else cv2.COLORMAP_VIRIDIS)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    if not parula:
        for channel, value in enumerate(VIRIDIS_BACKGROUND):
            rgb[:, :, channel][rgb[:, :, channel] == 0] = value
    return p.crop(rgb)

"""PuLID's face networks from files, without patches: facexlib's RetinaFace (`detection_Resnet50_Final.pth`) and
BiSeNet (`parsing_bisenet.pth`) and EVA02-CLIP-L-14-336's vision tower (`EVA02_CLIP_L_336_psz14_s6B.pt`).

The state dicts are written here in the released files' key layouts (facexlib 0.3's `RetinaFace('resnet50')` and
`BiSeNet(19)`, EVA-CLIP's `visual.*` with its rotary buffers): at full size on the meta device, where the key count
and the number of values are those facexlib's / EVA-CLIP's own classes produce and our loaders must build exactly
those tensors; and tiny (widths and depths read from the file) with weights set by hand:

- the detector carries the picture's brightness (BGR minus facexlib's mean, channel average) down its identity paths
  to the stride-32 level, where its class head fires only on a white marker the test puts between the eyes; the box
  and landmark heads' biases hold the test's face box and five landmarks relative to that cell's prior;
- the parser carries the normalised brightness to its output, where one chosen label wins on the bright skin and
  label 0 (background) elsewhere.

The test picture: a skin oval on grey with five coloured dots at the landmarks (a similarity of facexlib's FFHQ
template) and the white marker."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from modules.controlnet import eva_clip, face_parsing, pulid

# facexlib 0.3 (face_restoration_helper.py: FaceRestoreHelper(face_size=512)) and the extension's facexlib
# preprocessor (its bg_label list), written out here rather than read from our modules
TEMPLATE = np.array([[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
                     [201.26117, 371.41043], [313.08905, 371.15118]])
EXTENSION_BACKGROUND = {0, 16, 18, 7, 8, 9, 14, 15}
BGR_MEAN = np.array([104.0, 117.0, 123.0])

# (tensors, values) of the full-size state dicts, counted from facexlib 0.3's RetinaFace(network_name='resnet50')
# and BiSeNet(num_class=19) and from EVA-CLIP's EVAVisionTransformer with the EVA02-CLIP-L-14-336 config
# (num_batches_tracked and the rotary buffers included)
FULL_RETINAFACE = (456, 27351657)
FULL_BISENET = (191, 13313119)
FULL_EVA = (562, 306276032)

PICTURE = 512
SCALE, SHIFT = 0.5, np.array([128.0, 128.0])
LANDMARKS = TEMPLATE * SCALE + SHIFT  # in the picture; the crop is the picture × 2 shifted back
BOX = np.array([181.0, 175.0, 331.0, 365.0])  # the skin oval's bounds
OVAL = ((256, 270), (75, 95))
MARKER = (256, 256)  # the white marker's centre: sampled by the stride-32 cell (8, 8)
CELL = (8, 8)
BACKGROUND_RGB = (123, 117, 104)  # facexlib's mean: the detector sees nothing there
SKIN_RGB = (210, 170, 150)
DOTS_RGB = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
DOT_RADIUS = 5.0
FIRE = 100.0  # the detector's class logit: channel-mean brightness (BGR − mean) − FIRE
PARSE = 0.6  # the parser's threshold on the channel-mean ImageNet-normalised brightness
EVA_WIDTH, EVA_DEPTH, EVA_GRID, EVA_HIDDEN, EVA_EMBED = 64, 21, 2, 32, 16


# --- state dicts in the released layouts ---

def _t(shape, device, fill=0.0):
    if device == "meta":
        return torch.empty(shape, device="meta")
    return torch.full(shape, float(fill))


def _conv(sd, name, out, inp, k, device, bias=False):
    sd[name + ".weight"] = _t((out, inp, k, k), device)
    if bias:
        sd[name + ".bias"] = _t((out,), device)


def _bn(sd, name, c, device):
    sd[name + ".weight"] = _t((c,), device, 1.0)
    sd[name + ".bias"] = _t((c,), device)
    sd[name + ".running_mean"] = _t((c,), device)
    sd[name + ".running_var"] = _t((c,), device, 1.0)
    sd[name + ".num_batches_tracked"] = torch.zeros((), dtype=torch.long, device=device)


def retinaface_state_dict(stem=64, mids=(64, 128, 256, 512), blocks=(3, 4, 6, 3), out=256, device="cpu"):
    """facexlib's RetinaFace('resnet50'): torchvision's ResNet-50 as `body` (to layer4), FPN, three SSH, heads."""
    sd = {}
    _conv(sd, "body.conv1", stem, 3, 7, device)
    _bn(sd, "body.bn1", stem, device)
    inp, widths = stem, []
    for i, (mid, n) in enumerate(zip(mids, blocks), 1):
        for b in range(n):
            p = f"body.layer{i}.{b}"
            _conv(sd, p + ".conv1", mid, inp, 1, device)
            _bn(sd, p + ".bn1", mid, device)
            _conv(sd, p + ".conv2", mid, mid, 3, device)
            _bn(sd, p + ".bn2", mid, device)
            _conv(sd, p + ".conv3", mid * 4, mid, 1, device)
            _bn(sd, p + ".bn3", mid * 4, device)
            if b == 0:
                _conv(sd, p + ".downsample.0", mid * 4, inp, 1, device)
                _bn(sd, p + ".downsample.1", mid * 4, device)
            inp = mid * 4
        widths.append(inp)
    for j, w in enumerate(widths[1:], 1):
        _conv(sd, f"fpn.output{j}.0", out, w, 1, device)
        _bn(sd, f"fpn.output{j}.1", out, device)
    for j in (1, 2):
        _conv(sd, f"fpn.merge{j}.0", out, out, 3, device)
        _bn(sd, f"fpn.merge{j}.1", out, device)
    for s in (1, 2, 3):
        for name, o, i in (("conv3X3", out // 2, out), ("conv5X5_1", out // 4, out), ("conv5X5_2", out // 4, out // 4),
                           ("conv7X7_2", out // 4, out // 4), ("conv7x7_3", out // 4, out // 4)):
            _conv(sd, f"ssh{s}.{name}.0", o, i, 3, device)
            _bn(sd, f"ssh{s}.{name}.1", o, device)
    for head, k in (("ClassHead", 2), ("BboxHead", 4), ("LandmarkHead", 10)):
        for i in range(3):
            _conv(sd, f"{head}.{i}.conv1x1", 2 * k, out, 1, device, bias=True)
    return sd


def bisenet_state_dict(stem=64, widths=(64, 128, 256, 512), arm=128, ffm=256, mid=256, side=64, classes=19,
                       device="cpu"):
    """facexlib's BiSeNet(19): ResNet-18 context path with attention refinement, feature fusion, three outputs."""
    sd = {}
    _conv(sd, "cp.resnet.conv1", stem, 3, 7, device)
    _bn(sd, "cp.resnet.bn1", stem, device)
    inp = stem
    for i, w in enumerate(widths, 1):
        for b in range(2):
            p = f"cp.resnet.layer{i}.{b}"
            _conv(sd, p + ".conv1", w, inp, 3, device)
            _bn(sd, p + ".bn1", w, device)
            _conv(sd, p + ".conv2", w, w, 3, device)
            _bn(sd, p + ".bn2", w, device)
            if inp != w or (b == 0 and i > 1):
                _conv(sd, p + ".downsample.0", w, inp, 1, device)
                _bn(sd, p + ".downsample.1", w, device)
            inp = w
    for name, i in (("arm16", widths[2]), ("arm32", widths[3])):
        _conv(sd, f"cp.{name}.conv.conv", arm, i, 3, device)
        _bn(sd, f"cp.{name}.conv.bn", arm, device)
        _conv(sd, f"cp.{name}.conv_atten", arm, arm, 1, device)
        _bn(sd, f"cp.{name}.bn_atten", arm, device)
    for name, i, k in (("conv_head32", arm, 3), ("conv_head16", arm, 3), ("conv_avg", widths[3], 1)):
        _conv(sd, f"cp.{name}.conv", arm, i, k, device)
        _bn(sd, f"cp.{name}.bn", arm, device)
    _conv(sd, "ffm.convblk.conv", ffm, widths[1] + arm, 1, device)
    _bn(sd, "ffm.convblk.bn", ffm, device)
    _conv(sd, "ffm.conv1", ffm // 4, ffm, 1, device)
    _conv(sd, "ffm.conv2", ffm, ffm // 4, 1, device)
    for name, i, m in (("conv_out", ffm, mid), ("conv_out16", arm, side), ("conv_out32", arm, side)):
        _conv(sd, f"{name}.conv.conv", m, i, 3, device)
        _bn(sd, f"{name}.conv.bn", m, device)
        _conv(sd, f"{name}.conv_out", classes, m, 1, device)
    return sd


def eva_state_dict(width=1024, depth=24, grid=24, hidden=2730, embed=768, patch=14, device="cpu", seed=0):
    """EVA-CLIP's `visual.*` (EVAVisionTransformer with subln, SwiGLU, rope; the rotary tables are persistent
    buffers, once on the tower and once per block), random for the tiny one."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.05, base=0.0):
        if device == "meta":
            return torch.empty(shape, device="meta")
        return base + torch.randn(shape, generator=gen) * scale

    def norm(name, c):
        sd[name + ".weight"], sd[name + ".bias"] = rnd(c, scale=0.05, base=1.0), rnd(c)

    sd = {"cls_token": rnd(1, 1, width, scale=0.5), "pos_embed": rnd(1, grid * grid + 1, width, scale=0.5),
          "patch_embed.proj.weight": rnd(width, 3, patch, patch, scale=0.1), "patch_embed.proj.bias": rnd(width)}
    head_dim = 64
    rope = [rnd(grid * grid, head_dim), rnd(grid * grid, head_dim)]
    sd["rope.freqs_cos"], sd["rope.freqs_sin"] = rope
    for b in range(depth):
        p = f"blocks.{b}."
        norm(p + "norm1", width)
        sd[p + "attn.q_bias"], sd[p + "attn.v_bias"] = rnd(width), rnd(width)
        for name in ("q_proj", "k_proj", "v_proj"):
            sd[p + f"attn.{name}.weight"] = rnd(width, width, scale=width ** -0.5)
        norm(p + "attn.inner_attn_ln", width)
        sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"] = rnd(width, width, scale=0.3 * width ** -0.5), rnd(width)
        sd[p + "attn.rope.freqs_cos"], sd[p + "attn.rope.freqs_sin"] = rope
        norm(p + "norm2", width)
        for name in ("w1", "w2"):
            sd[p + f"mlp.{name}.weight"], sd[p + f"mlp.{name}.bias"] = rnd(hidden, width, scale=width ** -0.5), \
                rnd(hidden)
        norm(p + "mlp.ffn_ln", hidden)
        sd[p + "mlp.w3.weight"], sd[p + "mlp.w3.bias"] = rnd(width, hidden, scale=0.3 * hidden ** -0.5), rnd(width)
    norm("norm", width)
    sd["head.weight"], sd["head.bias"] = rnd(embed, width, scale=width ** -0.5), rnd(embed)
    return sd


def _shapes(sd: dict) -> dict:
    return {k: tuple(v.shape) for k, v in sd.items()}


def _size(sd: dict) -> tuple[int, int]:
    return len(sd), sum(math.prod(v.shape) for v in sd.values())


def test_full_size_layouts_are_the_released_ones_and_load_as_they_are():
    sd = retinaface_state_dict(device="meta")
    assert _size(sd) == FULL_RETINAFACE
    assert sd["fpn.output1.0.weight"].shape == (256, 512, 1, 1)
    assert sd["ClassHead.2.conv1x1.weight"].shape == (4, 256, 1, 1)
    with torch.device("meta"):
        net = face_parsing.RetinaFace(sd)
    assert _shapes(net.state_dict()) == _shapes(sd) and net.leaky == 0.0

    sd = bisenet_state_dict(device="meta")
    assert _size(sd) == FULL_BISENET
    assert sd["conv_out.conv_out.weight"].shape == (19, 256, 1, 1)
    with torch.device("meta"):
        net = face_parsing.BiSeNet(sd)
    assert _shapes(net.state_dict()) == _shapes(sd)

    sd = eva_state_dict(device="meta")
    assert _size(sd) == FULL_EVA
    with torch.device("meta"):
        tower = eva_clip.EVAVision(sd)
    ours = _shapes(tower.state_dict())
    assert ours == {k: v for k, v in _shapes(sd).items() if "rope." not in k}  # the rotary tables are computed
    assert (tower.grid, tower.image_size, len(tower.blocks)) == (24, 336, 24)
    assert tower.rope_cos.shape == sd["rope.freqs_cos"].shape


# --- tiny networks with hand-set weights ---

def _prior(cell):
    i, j = cell
    return np.array([(j + 0.5) * 32, (i + 0.5) * 32]), 256.0  # stride 32, first anchor (min size 256)


def tiny_detector_state_dict(cell=CELL, box=BOX, landmarks=LANDMARKS) -> dict:
    """Brightness (channel mean of BGR − mean, centre tap) through the stem, every block's downsample path (the
    residual branch's last BN at 0), FPN output3 and SSH3's 3×3 branch into channel 0; the stride-32 class head fires
    on it, the box and landmark heads hold `box` and `landmarks` relative to `cell`'s prior in their biases."""
    sd = retinaface_state_dict(stem=8, mids=(4, 4, 4, 4), blocks=(1, 1, 1, 1), out=8)
    sd["body.conv1.weight"][0, :, 3, 3] = 1 / 3
    for i in range(1, 5):
        sd[f"body.layer{i}.0.bn3.weight"].zero_()
        sd[f"body.layer{i}.0.downsample.0.weight"][0, 0] = 1.0
    sd["fpn.output3.0.weight"][0, 0] = 1.0
    sd["ssh3.conv3X3.0.weight"][0, 0, 1, 1] = 1.0
    centre, size = _prior(cell)
    box_centre, box_size = (box[:2] + box[2:]) / 2, box[2:] - box[:2]
    loc = np.concatenate([(box_centre - centre) / (0.1 * size), np.log(box_size / size) / 0.2])
    marks = ((landmarks - centre) / (0.1 * size)).reshape(-1)
    for i in range(3):
        sd[f"ClassHead.{i}.conv1x1.bias"][:] = torch.tensor([0.0, -50.0, 0.0, -50.0])
        sd[f"BboxHead.{i}.conv1x1.bias"][:4] = torch.tensor(loc)
        sd[f"LandmarkHead.{i}.conv1x1.bias"][:10] = torch.tensor(marks)
    sd["ClassHead.2.conv1x1.weight"][1, 0] = 1.0
    sd["ClassHead.2.conv1x1.bias"][1] = -FIRE
    return sd


def tiny_parser_state_dict(label: int) -> dict:
    """Normalised brightness (channel mean, centre tap) through the stem and the identity paths to feat8, the fusion
    block and conv_out's 3×3 into channel 0, a constant 1 in channel 1 (a BN bias); `label`'s logit is channel 0,
    background's PARSE × channel 1, every other label's 0."""
    sd = bisenet_state_dict(stem=4, widths=(4, 4, 4, 4), arm=4, ffm=4, mid=4, side=4)
    sd["cp.resnet.conv1.weight"][0, :, 3, 3] = 1 / 3
    for i in range(1, 5):
        for b in range(2):
            sd[f"cp.resnet.layer{i}.{b}.bn2.weight"].zero_()
    sd["cp.resnet.layer2.0.downsample.0.weight"][0, 0] = 1.0
    sd["ffm.convblk.conv.weight"][0, 0] = 1.0
    sd["ffm.convblk.bn.bias"][1] = 1.0
    sd["conv_out.conv.conv.weight"][0, 0, 1, 1] = 1.0
    sd["conv_out.conv.conv.weight"][1, 1, 1, 1] = 1.0
    _set_label(sd["conv_out.conv_out.weight"], label)
    return sd


def _set_label(weight: torch.Tensor, label: int) -> None:
    weight.zero_()
    weight[0, 1] = PARSE
    weight[label, 0] += 1.0


def tiny_eva_file_dict() -> dict:
    sd = {"visual." + k: v for k, v in eva_state_dict(EVA_WIDTH, EVA_DEPTH, EVA_GRID, EVA_HIDDEN, EVA_EMBED).items()}
    sd["text.token_embedding.weight"] = torch.zeros(10, 8)  # the text tower and the scale are left alone
    sd["logit_scale"] = torch.tensor(4.6)
    return sd


def write_files(root, label=1):
    """The three files in a models/ControlNetPreprocessor layout under `root`."""
    facexlib, eva = root / "facexlib", root / "EVA-CLIP"
    facexlib.mkdir(parents=True, exist_ok=True)
    eva.mkdir(parents=True, exist_ok=True)
    # the detector as released (DataParallel's `module.` prefix, which facexlib strips), the parser plain
    torch.save({"module." + k: v for k, v in tiny_detector_state_dict().items()},
               str(facexlib / face_parsing.DETECTOR))
    torch.save(tiny_parser_state_dict(label), str(facexlib / face_parsing.PARSER))
    torch.save(tiny_eva_file_dict(), str(eva / eva_clip.FILE))
    return root


def face_picture() -> np.ndarray:
    """RGB: grey, a skin oval, five coloured dots at LANDMARKS and the white marker."""
    img = np.empty((PICTURE, PICTURE, 3), np.uint8)
    img[:] = BACKGROUND_RGB
    cv2.ellipse(img, OVAL[0], OVAL[1], 0, 0, 360, SKIN_RGB, -1)
    ys, xs = np.mgrid[0:PICTURE, 0:PICTURE]
    for (x, y), colour in zip(LANDMARKS, DOTS_RGB):
        img[(xs - x) ** 2 + (ys - y) ** 2 <= DOT_RADIUS ** 2] = colour
    mx, my = MARKER
    img[my - 3:my + 4, mx - 3:mx + 4] = 255
    return img


def _crop_by_hand(rgb: np.ndarray) -> np.ndarray:
    """The crop as facexlib cuts it, from the test's own landmarks (RGB)."""
    matrix = cv2.estimateAffinePartial2D(LANDMARKS, TEMPLATE, method=cv2.LMEDS)[0]
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    return cv2.cvtColor(cv2.warpAffine(bgr, matrix, (512, 512), borderMode=cv2.BORDER_CONSTANT,
                                       borderValue=(135, 133, 132)), cv2.COLOR_BGR2RGB)


# regions of the 512 crop: skin below the mouth, grey background in a corner
SKIN_PATCH = (slice(395, 440), slice(225, 285))
BACKGROUND_PATCH = (slice(10, 40), slice(10, 40))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_files(tmp_path_factory.mktemp("pulid_face") / "ControlNetPreprocessor")


def test_the_picture_is_what_the_networks_are_set_for():
    rgb = face_picture().astype(np.float64)
    bgr = rgb[:, :, ::-1] - BGR_MEAN
    bright = bgr.mean(axis=2)
    ys, xs = np.nonzero(bright[::2, ::2] > FIRE)  # the stem's centre taps: the marker's alone pass FIRE
    assert set(zip(ys * 2, xs * 2)) == {(y, x) for y in (254, 256, 258) for x in (254, 256, 258)}
    assert bright[MARKER[1], MARKER[0]] > FIRE + 30
    assert bright[rgb.sum(axis=2) < 765].max() < FIRE - 30


def test_detector_finds_the_box_and_landmarks_the_test_put(files):
    net = face_parsing.load(files, "facexlib", face_parsing.DETECTOR)
    bgr = cv2.cvtColor(face_picture(), cv2.COLOR_RGB2BGR)
    boxes, marks = face_parsing.detect(net, bgr)
    assert boxes.shape == (1, 4) and marks.shape == (1, 5, 2)
    assert np.abs(boxes[0] - BOX).max() < 1e-3
    assert np.abs(marks[0] - LANDMARKS).max() < 1e-3
    dark = np.full_like(bgr, 20)
    assert face_parsing.detect(net, dark)[0].shape == (0, 4)  # nothing bright: no face


def test_aligned_crop_puts_the_landmarks_on_facexlibs_template(files):
    net = face_parsing.load(files, "facexlib", face_parsing.DETECTOR)
    bgr = cv2.cvtColor(face_picture(), cv2.COLOR_RGB2BGR)
    boxes, marks = face_parsing.detect(net, bgr)
    crop = face_parsing.align(bgr, marks[face_parsing.centre_face(boxes, *bgr.shape[:2])])
    assert crop.shape == (512, 512, 3) and crop.dtype == np.uint8
    rgb = cv2.cvtColor(crop, cv2.COLOR_BGR2RGB).astype(np.int16)
    ys, xs = np.mgrid[0:512, 0:512]
    for point, colour in zip(TEMPLATE, DOTS_RGB):
        near = np.abs(rgb - np.array(colour)).max(axis=2) < 60
        assert near.sum() > 250  # a dot of radius 10 in the crop
        centroid = np.array([xs[near].mean(), ys[near].mean()])
        assert np.abs(centroid - point).max() < 1.0, (colour, centroid, point)
    assert np.abs(crop.astype(int) - cv2.cvtColor(_crop_by_hand(face_picture()), cv2.COLOR_RGB2BGR)).max() <= 1


def test_parser_whitens_the_extensions_background_labels_and_greys_the_rest(files):
    parser = face_parsing.load(files, "facexlib", face_parsing.PARSER)
    crop_rgb = _crop_by_hand(face_picture())
    crop = cv2.cvtColor(crop_rgb, cv2.COLOR_RGB2BGR)
    grey = (crop_rgb.astype(np.float64) / 255.0) @ np.array([0.299, 0.587, 0.114])
    weight = parser.conv_out.conv_out.weight
    saved = weight.detach().clone()
    try:
        for label in range(19):
            with torch.no_grad():
                _set_label(weight, label)
            out = face_parsing.face_features(parser, crop)
            assert out.shape == (1, 3, 512, 512)
            picture = out[0].permute(1, 2, 0).double().numpy()
            assert np.all(picture[BACKGROUND_PATCH] == 1.0)  # label 0 off the face
            skin = picture[SKIN_PATCH]
            if label in EXTENSION_BACKGROUND:
                assert np.all(skin == 1.0), label
            else:
                assert np.abs(skin - grey[SKIN_PATCH][..., None]).max() < 1e-5, label
    finally:
        with torch.no_grad():
            weight.copy_(saved)


def test_eva_gives_a_unit_embedding_and_five_hidden_states(files):
    tower = eva_clip.load(files, "ip-adapter_pulid")
    assert (tower.grid, tower.image_size, len(tower.blocks)) == (EVA_GRID, EVA_GRID * 14, EVA_DEPTH)
    picture = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(1))
    embedding, hidden = eva_clip.features(tower, picture)
    assert embedding.shape == (1, EVA_EMBED) and abs(float(embedding.norm()) - 1.0) < 1e-5
    assert len(hidden) == 5 and all(h.shape == (1, EVA_GRID ** 2 + 1, EVA_WIDTH) for h in hidden)
    assert all(torch.isfinite(h).all() for h in hidden)
    assert not torch.allclose(hidden[0], hidden[4])
    other, _ = eva_clip.features(tower, torch.ones(1, 3, 512, 512))
    assert (embedding - other).abs().max() > 1e-3  # the picture matters


def _expected_features(picture: np.ndarray) -> np.ndarray:
    crop = _crop_by_hand(picture).astype(np.float64) / 255.0
    return crop @ np.array([0.299, 0.587, 0.114]) * 255.0


def test_facexlib_preprocessor_runs_both_networks_from_files(files):
    from modules.controlnet import preprocessors as pp

    out = pp.get(pulid.FACEXLIB).run(face_picture(), 512, annotator_dir=files)
    assert out.shape == (512, 512, 3) and out.dtype == np.uint8
    expected = _expected_features(face_picture())
    assert np.abs(out[SKIN_PATCH][..., 0].astype(float) - expected[SKIN_PATCH]).max() <= 1.0
    assert np.all(out[BACKGROUND_PATCH] == 255)
    with pytest.raises(pp.AnnotatorUnavailableError, match="no face found"):
        pp.get(pulid.FACEXLIB).run(np.full((256, 256, 3), 20, np.uint8), 512, annotator_dir=files)


def _antelope(root):
    from tests.test_controlnet_instantid import _det_onnx, _rec_onnx

    ante = root / "insightface" / "models" / "antelopev2"
    ante.mkdir(parents=True, exist_ok=True)
    _det_onnx(ante / "scrfd_10g_bnkps.onnx")
    _rec_onnx(ante / "glintr100.onnx")


def test_pulid_preprocessor_reads_every_network_from_files(files):
    from modules.controlnet import preprocessors as pp

    _antelope(files)
    faces = pulid.read_face(face_picture(), files, pulid.MODULE)
    assert faces.id_embedding.shape == (1, 512) and torch.isfinite(faces.id_embedding).all()
    assert faces.eva_embedding.shape == (1, EVA_EMBED) and abs(float(faces.eva_embedding.norm()) - 1) < 1e-5
    assert [tuple(h.shape) for h in faces.hidden] == [(1, EVA_GRID ** 2 + 1, EVA_WIDTH)] * 5
    assert faces.features.shape == (1, 3, 512, 512)
    tower = eva_clip.load(files, pulid.MODULE)
    embedding, hidden = eva_clip.features(tower, faces.features)
    assert torch.allclose(embedding, faces.eva_embedding) and torch.allclose(hidden[2], faces.hidden[2])
    preview = pp.get(pulid.MODULE).run(face_picture(), annotator_dir=files)
    assert np.array_equal(preview, pp.get(pulid.FACEXLIB).run(face_picture(), 512, annotator_dir=files))


def test_a_file_of_another_network_is_refused_naming_it(tmp_path):
    from modules.controlnet import preprocessors as pp

    root = write_files(tmp_path / "ControlNetPreprocessor")
    facexlib = root / "facexlib"
    detector = (facexlib / face_parsing.DETECTOR).read_bytes()
    (facexlib / face_parsing.DETECTOR).write_bytes((facexlib / face_parsing.PARSER).read_bytes())
    with pytest.raises(pp.AnnotatorUnavailableError, match=r"detection_Resnet50_Final\.pth: not facexlib's "
                                                           r"RetinaFace"):
        pp.get(pulid.FACEXLIB).run(face_picture(), 512, annotator_dir=root)
    (facexlib / face_parsing.DETECTOR).write_bytes(detector)
    (facexlib / face_parsing.PARSER).write_bytes(detector)
    with pytest.raises(pp.AnnotatorUnavailableError, match=r"parsing_bisenet\.pth: not facexlib's BiSeNet"):
        pp.get(pulid.FACEXLIB).run(face_picture(), 512, annotator_dir=root)
    (facexlib / face_parsing.PARSER).unlink()
    torch.save(tiny_parser_state_dict(1), str(facexlib / face_parsing.PARSER))
    eva = root / "EVA-CLIP" / eva_clip.FILE
    eva.write_bytes(detector)
    _antelope(root)
    with pytest.raises(pp.AnnotatorUnavailableError, match=r"EVA02_CLIP_L_336_psz14_s6B\.pt: not EVA02-CLIP's "
                                                           r"vision tower"):
        pp.get(pulid.MODULE).run(face_picture(), annotator_dir=root)
    eva.write_bytes(b"not a checkpoint")
    with pytest.raises(pp.AnnotatorUnavailableError, match=r"EVA02_CLIP_L_336_psz14_s6B\.pt"):
        pp.get(pulid.MODULE).run(face_picture(), annotator_dir=root)


def test_an_eva_clip_too_shallow_for_five_hidden_states_is_refused_naming_it(tmp_path):
    from modules.controlnet.face_parsing import FaceParsingError

    root = tmp_path / "ControlNetPreprocessor"
    (root / "EVA-CLIP").mkdir(parents=True)
    base = {"visual." + k: v for k, v in eva_state_dict(EVA_WIDTH, 12, EVA_GRID, EVA_HIDDEN, EVA_EMBED).items()}
    torch.save(base, str(root / "EVA-CLIP" / eva_clip.FILE))  # a B-16-like depth: blocks 4 and 8 only
    with pytest.raises(FaceParsingError, match=r"EVA02_CLIP_L_336_psz14_s6B\.pt: .*12 blocks give 2 of the five"):
        eva_clip.load(root, pulid.MODULE)
    narrow = eva_state_dict(48, EVA_DEPTH, EVA_GRID, EVA_HIDDEN, EVA_EMBED)
    torch.save({"visual." + k: v for k, v in narrow.items()}, str(root / "EVA-CLIP" / eva_clip.FILE))
    with pytest.raises(FaceParsingError, match=r"EVA02_CLIP_L_336_psz14_s6B\.pt: .*64-wide heads"):
        eva_clip.load(root, pulid.MODULE)


def _encoder(eva_width, eva_embed):
    from tests.test_controlnet_pulid import _mlp

    gen = torch.Generator().manual_seed(0)
    sd = dict(_mlp("body", [(512 + eva_embed, 8), (8, 8), (8, 4 * 5)], gen))
    for i in range(5):
        for name in (f"mapping_{i}", f"mapping_patch_{i}"):
            sd.update(_mlp(name, [(eva_width, 8), (8, 8), (8, 4)], gen))
    encoder = pulid.IDEncoder(sd)
    encoder.load_state_dict(sd)
    return encoder


def test_face_readings_that_do_not_fit_the_pulid_model_are_a_message(files):
    from modules.request_types import RequestError

    _antelope(files)
    faces = [pulid.read_face(face_picture(), files, pulid.MODULE)]
    pulid._check_faces("controlnet[0]", pulid.MODULE, "pulid", _encoder(EVA_WIDTH, EVA_EMBED), faces)
    with pytest.raises(RequestError, match=r"controlnet\[0\]\.module: ip-adapter_pulid: pulid reads a 1280-number .*"
                                           r"5 EVA-CLIP hidden states 1024 wide; the face files give 528 and 5 × "
                                           r"\[64\] \(is EVA02_CLIP_L_336_psz14_s6B\.pt EVA02-CLIP-L-14-336\?\)"):
        pulid._check_faces("controlnet[0]", pulid.MODULE, "pulid", _encoder(1024, 768), faces)


@pytest.mark.slow
def test_pulid_unit_reads_the_face_from_files_in_txt2img(files, load_tiny, tmp_path, monkeypatch):
    """The whole unit without patches: the face read by the four networks from files, the tokens in the UNet."""
    from PIL import Image
    from safetensors.torch import save_file

    import tests.test_controlnet_pulid as tp
    from modules.controlnet.models import ControlNetLibrary
    from modules.controlnet.unit_request import UnitImage

    _antelope(files)
    monkeypatch.setattr(tp, "EVA_WIDTH", EVA_WIDTH)
    monkeypatch.setattr(tp, "EVA_EMBED", EVA_EMBED)
    model = load_tiny("sdxl.safetensors")
    folder = tmp_path / "cn"
    folder.mkdir()
    sd = tp.pulid_state_dict(model.unet)
    save_file({k: v.half().contiguous() for k, v in sd.items()}, str(folder / "ip-adapter_pulid_sdxl_fp16.safetensors"))
    library = ControlNetLibrary([folder])
    picture = [UnitImage(Image.fromarray(face_picture()))]
    ours = tp._run(model, library, [tp._unit(images=picture)], annotators=files)
    plain = tp._run(model, library, [])
    assert tp._diff(ours[:1], plain) > 3

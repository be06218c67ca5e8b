"""ControlNet preprocessors as the sd-webui-controlnet extension has them: the maps a user sees from real pictures
(drawn with PIL), the list/labels/sliders the UI and API show, and the model-based annotators reading only the
user's folder (random-weight networks written in the extension's layout; nothing downloaded)."""
from __future__ import annotations

import functools
import math
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from modules.controlnet import preprocessors as pp

W, H = 256, 192
SQUARE = (80, 48, 176, 144)  # left, top, right, bottom (inclusive)


def _square() -> np.ndarray:
    """A white square on black."""
    img = Image.new("RGB", (W, H), "black")
    ImageDraw.Draw(img).rectangle(SQUARE, fill="white")
    return np.array(img)


def _circle() -> np.ndarray:
    """A red circle on grey, with grey patches of growing contrast (weak to strong edges for the thresholds)."""
    img = Image.new("RGB", (W, H), (100, 100, 100))
    draw = ImageDraw.Draw(img)
    draw.ellipse((70, 40, 190, 160), fill=(200, 30, 30))
    for i, grey in enumerate((115, 140, 155, 180)):  # Sobel steps of about 60, 160, 220 and 320
        draw.rectangle((10 + 60 * i, 168, 40 + 60 * i, 186), fill=(grey, grey, grey))
    return np.array(img)


def _drawing() -> np.ndarray:
    """Black line art on white: a rectangle outline and a diagonal stroke."""
    img = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle(SQUARE, outline="black", width=3)
    draw.line((20, 170, 230, 20), fill="black", width=3)
    return np.array(img)


def _square_border() -> np.ndarray:
    mask = np.zeros((H, W), bool)
    left, top, right, bottom = SQUARE
    mask[top:bottom + 1, left:right + 1] = True
    inner = np.zeros_like(mask)
    inner[top + 1:bottom, left + 1:right] = True
    return mask & ~inner


def _distance_to(mask: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, 3)


# --- weight-free maps ---

def test_canny_edges_lie_on_the_squares_border():
    edges = pp.get("canny").run(_square(), resolution=H)
    assert edges.shape == (H, W, 3) and edges.dtype == np.uint8
    assert (edges[..., 0] == edges[..., 1]).all() and set(np.unique(edges)) == {0, 255}
    on = edges[..., 0] > 0
    far = _distance_to(_square_border()) > 2
    assert on.sum() > 300 and not (on & far).any()
    assert (_distance_to(on)[_square_border()] <= 1.5).mean() > 0.95  # the whole outline is found


def test_canny_thresholds_change_the_edge_count_and_minus_one_means_default():
    canny, img = pp.get("canny"), _circle()
    loose = (canny.run(img, H, 20, 40) > 0).sum()
    default = (canny.run(img, H) > 0).sum()
    strict = (canny.run(img, H, 200, 250) > 0).sum()
    assert loose > default > strict > 0
    assert np.array_equal(canny.run(img, H, -1, -1), canny.run(img, H, 100, 200))
    assert np.array_equal(canny.run(img, H, 999, 0), canny.run(img, H))  # out of range: defaults


def test_invert_inverts_and_ignores_the_resolution():
    img = _drawing()
    out = pp.get("invert (from white bg & black line)").run(img, resolution=512)
    assert np.array_equal(out, 255 - img)


@pytest.mark.parametrize("name", ["canny", "threshold", "blur_gaussian", "scribble_xdog", "lineart_standard",
                                  "t2ia_color_grid"])
def test_resolution_makes_the_short_side_that_size(name):
    p = pp.get(name)
    assert p.run(_square(), resolution=128).shape == (128, 171, 3)
    assert p.run(_square()).shape == (512, 683, 3)  # -1: the slider's default, 512
    assert p.run(_square()[:, :100], resolution=64).shape == (123, 64, 3)  # portrait: the width is short


def test_threshold_keeps_what_is_brighter_than_the_threshold():
    img = np.zeros((H, W, 3), np.uint8)
    img[:, W // 2:] = 150
    assert pp.get("threshold").run(img, H, 127)[0, -1].tolist() == [255] * 3
    assert pp.get("threshold").run(img, H, 200).max() == 0


def test_scribble_xdog_draws_along_the_squares_edges():
    out = pp.get("scribble_xdog").run(_square(), resolution=H)[..., 0] > 0
    assert out.any() and not (out & (_distance_to(_square_border()) > 8)).any()


def test_shuffle_is_deterministic_per_seed_and_runs_at_512():
    shuffle = pp.get("shuffle")
    a = shuffle.run(_circle(), seed=3)
    assert a.shape == (512, 683, 3)
    assert np.array_equal(a, shuffle.run(_circle(), resolution=64, seed=3))  # its resolution is fixed
    assert not np.array_equal(a, shuffle.run(_circle(), seed=4))
    assert not np.array_equal(a, pp.resize_short_side(_circle(), 512))


def test_tile_resample_downsamples_by_the_rate():
    tile = pp.get("tile_resample")
    assert tile.run(_circle(), slider_1=2.0).shape == (H // 2, W // 2, 3)
    assert np.array_equal(tile.run(_circle()), _circle())  # default rate 1: unchanged


def test_recolor_gives_grey_and_gamma_darkens():
    for name in ("recolor_luminance", "recolor_intensity"):
        out = pp.get(name).run(_circle())
        assert out.shape == (H, W, 3)
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
        assert pp.get(name).run(_circle(), slider_1=2.0).mean() < out.mean()


def test_lineart_standard_returns_lines_where_the_drawing_has_them():
    img = _drawing()
    out = pp.get("lineart_standard (from white bg & black line)").run(img, resolution=H)[..., 0]
    ink = img[..., 0] < 128
    assert out[ink].mean() > 120
    assert out[_distance_to(ink) > 6].max() == 0


def test_inpaint_only_returns_rgba_with_the_mask():
    img = _circle()
    mask = np.zeros((H, W), np.uint8)
    mask[50:100, 60:120] = 255
    rgba = np.concatenate([img, mask[..., None]], axis=2)
    for name in ("inpaint_only", "inpaint_global_harmonious"):
        p = pp.get(name)
        assert p.accepts_mask and p.requires_mask
        out = p.run(rgba)
        assert out.shape == (H, W, 4) and np.array_equal(out, rgba)
        assert np.array_equal(p.run(img), np.concatenate([img, np.zeros_like(mask)[..., None]], axis=2))


def test_reference_and_none_pass_the_picture_through():
    img = _circle()
    for name in ("none", "reference_only", "reference_adain", "reference_adain+attn", "tile_colorfix"):
        assert np.array_equal(pp.get(name).run(img), img)
    assert all(pp.get(n).model_free for n in ("reference_only", "reference_adain", "reference_adain+attn"))
    assert not pp.get("canny").model_free  # the extension's meaning: a ControlNet model is needed


def test_a_four_channel_picture_is_composited_on_white_for_the_others():
    rgba = np.zeros((H, W, 4), np.uint8)  # fully transparent
    assert pp.get("none").run(rgba).min() == 255


# --- the list, as the UI and API show it ---

def test_names_labels_and_old_names_resolve():
    assert pp.get("no_such_preprocessor") is None and pp.get(None) is None
    assert pp.get("invert") is pp.get("invert (from white bg & black line)")
    assert pp.get("depth") is pp.get("depth_midas") and pp.get("depth").label == "depth_midas"
    assert pp.get("pidinet_scribble") is pp.get("scribble_pidinet")
    assert pp.get("fake_scribble") is pp.get("scribble_hed")
    assert pp.get("color").label == "t2ia_color_grid"


def test_every_preprocessor_has_tags_and_sane_sliders():
    everything = pp.all_sorted()
    assert len({p.name for p in everything}) == len({p.label for p in everything}) == len(everything)
    assert sorted(p.name for p in everything if not p.tags) == ["facexlib", "threshold"]  # untagged there too
    for p in everything:
        for s in (p.resolution, p.slider_1, p.slider_2):
            if s is not None:
                assert s.minimum <= s.value <= s.maximum and s.step > 0, (p.name, s)
                assert s.api_json() == {"name": s.name, "value": s.value, "min": s.minimum, "max": s.maximum,
                                        "step": s.step}
    assert pp.get("canny").slider_1.api_json() == {"name": "Low Threshold", "value": 100, "min": 1, "max": 255,
                                                   "step": 1}
    assert pp.get("canny").resolution == pp.Slider("Resolution", 512, 64, 2048, 8)
    assert pp.get("invert").resolution is None and pp.get("tile_resample").resolution is None


def test_order_is_the_extensions():
    labels = [p.label for p in pp.all_sorted()]
    assert labels[0] == "none"
    priorities = [pp.get(label).sorting_priority for label in labels[1:]]
    assert priorities == sorted(priorities, reverse=True)
    assert labels.index("tile_resample") < labels.index("canny") < labels.index("invert (from white bg & black line)")


def test_control_types():
    types = pp.control_types()
    assert next(iter(types)) == "All" and types["All"]["default_option"] == "none"
    assert list(types)[1:] == sorted(list(types)[1:])
    assert types["Canny"]["module_list"] == ["none", "canny", "invert (from white bg & black line)"]
    defaults = {t: v["default_option"] for t, v in types.items()}
    assert defaults["Canny"] == "canny" and defaults["Depth"] == "depth_midas"
    assert defaults["Reference"] == "reference_only" and defaults["Inpaint"] == "inpaint_only"
    assert defaults["OpenPose"] == "openpose_full" and defaults["Tile"] == "tile_resample"
    assert all(v["module_list"][0] == "none" for v in types.values())


# --- model-based: weights only from the user's folder ---

def test_model_based_with_an_empty_folder_names_the_missing_file(tmp_path):
    with pytest.raises(pp.MissingAnnotatorError) as err:
        pp.get("softedge_hed").run(_square(), annotator_dir=tmp_path)
    assert err.value.file == "ControlNetHED.pth" and err.value.folder == tmp_path / "hed"
    assert "ControlNetHED.pth" in str(err.value) and str(tmp_path / "hed") in str(err.value)
    with pytest.raises(FileNotFoundError, match="dpt_hybrid-midas-501f0c75.pt"):
        pp.get("depth_midas").run(_square())  # no folder given


@functools.lru_cache(maxsize=None)
def _random_pool(seed: int) -> torch.Tensor:
    return torch.randn(1 << 25, generator=torch.Generator().manual_seed(seed)).mul_(0.05).half()


def _random_weights(build, seed: int = 0) -> dict:
    """A state dict of the network's shapes: small random values (BatchNorm statistics neutral), fp16 to keep the
    files small (the loader reads them into float32). Slices of one random pool: drawing ~250 M fresh numbers
    would cost seconds."""
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # timm's note on MiDaS's backbone name
        shapes = build().state_dict()
    return _random_like(shapes, seed)


def _random_like(shapes: dict, seed: int) -> dict:
    """Random tensors of `shapes`' (meta) tensors: BatchNorm statistics neutral, the rest slices of the pool."""
    pool = _random_pool(seed)
    out = {}
    for i, (key, t) in enumerate(shapes.items()):
        if key.endswith("running_var"):
            out[key] = torch.ones(t.shape)
        elif key.endswith("running_mean") or not t.dtype.is_floating_point:
            out[key] = torch.zeros(t.shape, dtype=t.dtype)
        else:
            start = (i * 7919) % (pool.numel() - t.numel() + 1)
            out[key] = pool[start:start + t.numel()].reshape(t.shape).clone()
    return out


def _as_released(relative: str, sd: dict) -> dict:
    """Written as the released files are: PiDiNet wrapped by DataParallel, OpenPose without block prefixes."""
    if relative.startswith("pidinet/"):
        return {"state_dict": {"module." + k: v for k, v in sd.items()}}
    if relative in ("openpose/body_pose_model.pth", "openpose/hand_pose_model.pth"):
        return {k.split(".", 1)[1]: v for k, v in sd.items()}
    if relative == "normal_bae/scannet.pt":  # a training checkpoint of a DataParallel model
        return {"model": {"module." + k: v for k, v in sd.items()}, "optimizer": {}}
    return sd


RUNNABLE = ["softedge_hed", "softedge_hedsafe", "scribble_hed", "softedge_pidinet", "scribble_pidinet",
            "t2ia_sketch_pidi", "softedge_teed", "softedge_anyline", "lineart_realistic", "lineart_coarse",
            "lineart_anime", "mlsd", "depth_midas", "normal_midas", "openpose", "normal_bae"]


@pytest.fixture(scope="module")
def annotator_dir(tmp_path_factory):
    from modules.controlnet import annotators

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core: on a shared machine a second thread only waits
    annotators.import_controlnet_aux()
    folder = tmp_path_factory.mktemp("ControlNetPreprocessor")
    needed = {f for label in RUNNABLE for f in pp.get(label).annotator_files}
    for relative in sorted(needed):
        build, _ = annotators.NETWORKS[relative]
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        torch.save(_as_released(relative, _random_weights(build)), folder / relative)
    yield folder
    annotators.unload_all()
    torch.set_num_threads(threads)


@pytest.mark.slow  # full-size annotator networks
@pytest.mark.parametrize("label", RUNNABLE)
def test_model_based_with_random_weights_gives_a_map_of_the_right_size(annotator_dir, label):
    p = pp.get(label)
    out = p.run(_circle()[:, :150], resolution=64, annotator_dir=annotator_dir, device="cpu")
    assert out.shape == (82, 64, 3) and out.dtype == np.uint8
    if label.startswith("scribble") or label == "mlsd":
        assert set(np.unique(out)) <= {0, 255}


@pytest.mark.slow  # full-size annotator networks
def test_a_file_holding_another_network_is_refused_by_name(annotator_dir, tmp_path):
    (tmp_path / "lineart").mkdir()
    (tmp_path / "lineart" / "sk_model.pth").write_bytes((annotator_dir / "hed" / "ControlNetHED.pth").read_bytes())
    with pytest.raises(RuntimeError, match="sk_model.pth"):
        pp.get("lineart_realistic").run(_square(), resolution=64, annotator_dir=tmp_path, device="cpu")


def test_every_listed_model_based_preprocessor_has_a_runner():
    from modules.controlnet import annotators

    listed = {p.name for p in pp.all_sorted() if p.annotator_files}
    assert listed and listed <= set(annotators.RUNNERS), sorted(listed - set(annotators.RUNNERS))


@pytest.mark.slow  # full-size annotator networks
def test_pose_json_is_openposes_format_with_the_padded_canvas(annotator_dir):
    from controlnet_aux.open_pose import PoseResult
    from controlnet_aux.open_pose.body import BodyResult, Keypoint

    from modules.controlnet.annotators import poses_json

    body = BodyResult([Keypoint(0.25, 0.5), None] + [None] * 16, 1.0, 1)
    data = poses_json([PoseResult(body, None, [Keypoint(0.1, 0.2)], None)], 128, 64)
    person = data["people"][0]
    assert person["pose_keypoints_2d"][:6] == [0.25, 0.5, 1.0, 0.0, 0.0, 0.0] and len(person["pose_keypoints_2d"]) == 54
    assert person["hand_right_keypoints_2d"] == [0.1, 0.2, 1.0] and person["face_keypoints_2d"] is None
    assert (data["canvas_height"], data["canvas_width"]) == (128, 64)
    seen = []
    pp.get("openpose").run(_circle()[:, :150], resolution=64, annotator_dir=annotator_dir, device="cpu",
                           pose_sink=seen.append)
    assert len(seen) == 1 and (seen[0]["canvas_height"], seen[0]["canvas_width"]) == (128, 64)  # 82 rows, padded



def _depth_anything_shapes(hidden: int = 384, layers: int = 12, features: int = 64,
                           outs: tuple = (48, 96, 192, 384)) -> dict:
    """A Depth Anything checkpoint's keys and shapes in the original repositories' names: a DINOv2 ViT and a DPT
    head (default ViT-S; the extension's files are ViT-L, and the loader reads the size from the shapes)."""
    shapes = {"pretrained.cls_token": (1, 1, hidden), "pretrained.mask_token": (1, hidden),
              "pretrained.pos_embed": (1, 1 + 37 * 37, hidden), "pretrained.patch_embed.proj.weight": (hidden, 3, 14, 14),
              "pretrained.patch_embed.proj.bias": (hidden,), "pretrained.norm.weight": (hidden,),
              "pretrained.norm.bias": (hidden,)}
    for i in range(layers):
        b = f"pretrained.blocks.{i}."
        shapes.update({b + "norm1.weight": (hidden,), b + "norm1.bias": (hidden,), b + "norm2.weight": (hidden,),
                       b + "norm2.bias": (hidden,), b + "attn.qkv.weight": (3 * hidden, hidden),
                       b + "attn.qkv.bias": (3 * hidden,), b + "attn.proj.weight": (hidden, hidden),
                       b + "attn.proj.bias": (hidden,), b + "ls1.gamma": (hidden,), b + "ls2.gamma": (hidden,),
                       b + "mlp.fc1.weight": (4 * hidden, hidden), b + "mlp.fc1.bias": (4 * hidden,),
                       b + "mlp.fc2.weight": (hidden, 4 * hidden), b + "mlp.fc2.bias": (hidden,)})
    h = "depth_head."
    for i, c in enumerate(outs):
        shapes.update({f"{h}projects.{i}.weight": (c, hidden, 1, 1), f"{h}projects.{i}.bias": (c,),
                       f"{h}scratch.layer{i + 1}_rn.weight": (features, c, 3, 3)})
    shapes.update({f"{h}resize_layers.0.weight": (outs[0], outs[0], 4, 4), f"{h}resize_layers.0.bias": (outs[0],),
                   f"{h}resize_layers.1.weight": (outs[1], outs[1], 2, 2), f"{h}resize_layers.1.bias": (outs[1],),
                   f"{h}resize_layers.3.weight": (outs[3], outs[3], 3, 3), f"{h}resize_layers.3.bias": (outs[3],)})
    for k in range(1, 5):
        r = f"{h}scratch.refinenet{k}."
        shapes.update({r + "out_conv.weight": (features, features, 1, 1), r + "out_conv.bias": (features,)})
        for unit in (1, 2):
            for conv in (1, 2):
                shapes.update({f"{r}resConfUnit{unit}.conv{conv}.weight": (features, features, 3, 3),
                               f"{r}resConfUnit{unit}.conv{conv}.bias": (features,)})
    shapes.update({f"{h}scratch.output_conv1.weight": (features // 2, features, 3, 3),
                   f"{h}scratch.output_conv1.bias": (features // 2,),
                   f"{h}scratch.output_conv2.0.weight": (32, features // 2, 3, 3), f"{h}scratch.output_conv2.0.bias": (32,),
                   f"{h}scratch.output_conv2.2.weight": (1, 32, 1, 1), f"{h}scratch.output_conv2.2.bias": (1,)})
    return shapes


@pytest.mark.slow  # full-size annotator networks
@pytest.mark.parametrize("label,relative", [
    ("depth_anything", "depth_anything/depth_anything_vitl14.pth"),
    ("depth_anything_v2", "depth_anything_v2/depth_anything_v2_vitl.safetensors")])
def test_depth_anything_files_in_the_original_layout_give_a_depth_map(tmp_path, label, relative):
    from safetensors.torch import save_file

    pool = _random_pool(3)  # a ViT narrower than ViT-S (2 heads): the same keys, the size read from the shapes
    sd = {k: pool[(i * 7919) % 1000:(i * 7919) % 1000 + math.prod(s)].reshape(s).float()
          for i, (k, s) in enumerate(_depth_anything_shapes(hidden=128).items())}
    sd["depth_head.scratch.output_conv2.2.bias"] = torch.ones(1)  # above the final ReLU: a depth that varies
    (tmp_path / relative).parent.mkdir(parents=True)
    if relative.endswith(".safetensors"):
        save_file(sd, str(tmp_path / relative))
    else:
        torch.save(sd, tmp_path / relative)
    out = pp.get(label).run(_circle()[:150, :150], resolution=64, annotator_dir=tmp_path, device="cpu")
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert out.min() == 0 and out.max() >= 250 and (out[..., 0] == out[..., 1]).all()  # min-max scaled, grey


def test_depth_anything_reads_the_vit_size_and_version_from_the_file():
    from modules.controlnet import depth_anything

    def meta(shapes):
        return {k: torch.empty(s, device="meta") for k, s in shapes.items()}

    assert depth_anything.config(meta(_depth_anything_shapes()), "v1").backbone_config.out_indices == [9, 10, 11, 12]
    large = meta(_depth_anything_shapes(1024, 24, 256, (256, 512, 1024, 1024)))  # the released ViT-L files
    config = depth_anything.config(large, "v2")
    assert (config.backbone_config.hidden_size, config.backbone_config.num_hidden_layers,
            config.backbone_config.num_attention_heads, config.fusion_hidden_size) == (1024, 24, 16, 256)
    assert config.backbone_config.out_indices == [5, 12, 18, 24] and config.neck_hidden_sizes == [256, 512, 1024, 1024]
    assert depth_anything.config(large, "v1").backbone_config.out_indices == [21, 22, 23, 24]
    with torch.device("meta"):  # and the whole ViT-L network takes every tensor of the file
        from transformers import DepthAnythingForDepthEstimation

        net = DepthAnythingForDepthEstimation(config)
    converted = depth_anything.to_transformers(large)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in net.state_dict().items()}


def _onnx(module, shape, path):
    """A module exported as the ONNX file OpenCV's DNN reads (the extension's DWPose files are ONNX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(module, (torch.zeros(shape),), str(path), dynamo=False)


class _Constant(torch.nn.Module):
    """Answers fixed outputs whatever the picture (what a detector / pose network would answer for it)."""

    def __init__(self, *outputs):
        super().__init__()
        for i, value in enumerate(outputs):
            self.register_buffer(f"out{i}", value)
        self.count = len(outputs)

    def forward(self, x):
        zero = x[:, :1, :1, :1].reshape(1, 1, 1) * 0
        outs = tuple(getattr(self, f"out{i}") + zero for i in range(self.count))
        return outs if self.count > 1 else outs[0]


def test_dw_openpose_full_decodes_people_and_whole_body_keypoints(tmp_path):
    """DWPose through OpenCV's DNN: a YOLOX answer with one person box (grid cell decoding, letterbox ratio) and
    RTMPose SimCC answers with known peaks give the keypoints where the boxes' affine maps put them, the neck
    between the shoulders, OpenPose's body order, 21-point hands and a 70-point face; the map has the skeleton."""
    det = torch.zeros(1, 8400, 85)
    anchor = 6400 + 1600 + 10 * 20 + 10  # stride 32, cell (10, 10): centre (320, 320) in the 640 letterbox
    det[0, anchor, :6] = torch.tensor([0.0, 0.0, math.log(200 / 32), math.log(400 / 32), 0.9, 0.9])
    _onnx(_Constant(det), (1, 3, 640, 640), tmp_path / "openpose" / "yolox_l.onnx")
    rng = np.random.default_rng(1)
    us, vs = rng.integers(20, 268, 133), rng.integers(20, 364, 133)  # each keypoint's place in the 288×384 crop
    simcc_x, simcc_y = torch.zeros(1, 133, 576), torch.zeros(1, 133, 768)
    simcc_x[0, np.arange(133), 2 * us] = 0.9
    simcc_y[0, np.arange(133), 2 * vs] = 0.8
    _onnx(_Constant(simcc_x, simcc_y), (1, 3, 384, 288), tmp_path / "openpose" / "dw-ll_ucoco_384.onnx")

    seen = []
    picture = np.full((64, 64, 3), 90, np.uint8)
    out = pp.get("dw_openpose_full").run(picture, resolution=64, annotator_dir=tmp_path, device="cpu",
                                         pose_sink=seen.append)
    assert out.shape == (64, 64, 3) and out.max() > 0  # the skeleton is drawn
    person = seen[0]["people"][0]
    # the box (22, 12)-(42, 52) in the 64-pixel picture, widened 1.25× and to 288:384: 37.5 × 50 around (32, 32)
    xs, ys = us / 288 * 37.5 + 32 - 18.75, vs / 384 * 50 + 32 - 25
    body = np.array(person["pose_keypoints_2d"]).reshape(18, 3)
    coco_for = {0: 0, 2: 6, 5: 5, 14: 2, 16: 4}  # OpenPose index → COCO-WholeBody index (nose, shoulders, eyes…)
    for op, coco in coco_for.items():
        assert body[op, :2] == pytest.approx([xs[coco], ys[coco]], abs=1e-4) and body[op, 2] == 1.0
    assert body[1, :2] == pytest.approx([(xs[5] + xs[6]) / 2, (ys[5] + ys[6]) / 2], abs=1e-4)  # the neck
    assert len(person["hand_left_keypoints_2d"]) == 63 and len(person["hand_right_keypoints_2d"]) == 63
    assert len(person["face_keypoints_2d"]) == 210  # 68 + both eyes
    assert person["hand_left_keypoints_2d"][:2] == pytest.approx([xs[91], ys[91]], abs=1e-4)


def test_animal_openpose_reads_animal_boxes_with_the_ap10k_network(tmp_path):
    """YOLOX's animal classes (COCO 14-23) and RTMPose-m (256×256, 17 AP-10K keypoints): the keypoints where the box's
    affine map puts them, limbs drawn; a person box is no animal (black map, no animals in the JSON)."""
    from modules.controlnet.annotators import ANIMAL_POSE_FILE

    def detector(cls: int):
        det = torch.zeros(1, 8400, 85)
        anchor = 6400 + 1600 + 10 * 20 + 10
        det[0, anchor, :4] = torch.tensor([0.0, 0.0, math.log(200 / 32), math.log(400 / 32)])
        det[0, anchor, 4] = det[0, anchor, 5 + cls] = 0.9
        _onnx(_Constant(det), (1, 3, 640, 640), tmp_path / "openpose" / "yolox_l.onnx")

    rng = np.random.default_rng(2)
    us, vs = rng.integers(10, 246, 17), rng.integers(10, 246, 17)
    simcc_x, simcc_y = torch.zeros(1, 17, 512), torch.zeros(1, 17, 512)
    simcc_x[0, np.arange(17), 2 * us] = 0.7
    simcc_y[0, np.arange(17), 2 * vs] = 0.9
    _onnx(_Constant(simcc_x, simcc_y), (1, 3, 256, 256), tmp_path / ANIMAL_POSE_FILE)
    picture = np.full((64, 64, 3), 90, np.uint8)

    detector(15)  # a cat
    seen = []
    out = pp.get("animal_openpose").run(picture, resolution=64, annotator_dir=tmp_path, device="cpu",
                                        pose_sink=seen.append)
    assert out.shape == (64, 64, 3) and out.max() > 0 and seen[0]["people"] == []
    points = np.array(seen[0]["animals"][0]).reshape(17, 3)
    assert points[:, 0] == pytest.approx(us / 256 * 50 + 32 - 25, abs=1e-4)  # the box widened to 50 × 50
    assert points[:, 1] == pytest.approx(vs / 256 * 50 + 32 - 25, abs=1e-4)

    detector(0)  # a person: not an animal
    seen.clear()
    out = pp.get("animal_openpose").run(picture, resolution=64, annotator_dir=tmp_path, device="cpu",
                                        pose_sink=seen.append)
    assert out.max() == 0 and seen[0]["animals"] == []


@pytest.mark.slow  # the full-size big-lama generator (51 M parameters)
def test_inpaint_only_lama_fills_the_masked_part_and_keeps_the_rest(tmp_path):
    """The extension's ControlNetLama.pth layout (a training checkpoint: `state_dict` with `generator.model.*` and
    its discriminator) read through spandrel's big-lama; only the masked pixels change, the mask stays alpha."""
    from spandrel.architectures.LaMa import LaMa

    with torch.device("meta"):
        shapes = LaMa(in_nc=4, out_nc=3).state_dict()
    sd = {k.replace("model.model.", "generator.model.", 1): v for k, v in _random_like(shapes, 3).items()}
    sd["discriminator.model0.0.weight"] = torch.zeros(4, 3, 3, 3)
    (tmp_path / "lama").mkdir()
    torch.save({"state_dict": sd}, tmp_path / "lama" / "ControlNetLama.pth")
    picture = _circle()[:96, :128]
    mask = np.zeros(picture.shape[:2], np.uint8)
    mask[30:70, 40:90] = 255
    out = pp.get("inpaint_only+lama").run(np.concatenate([picture, mask[:, :, None]], axis=2), resolution=512,
                                           annotator_dir=tmp_path, device="cpu")
    assert out.shape == (96, 128, 4) and np.array_equal(out[:, :, 3], mask)
    outside = mask == 0
    assert np.array_equal(out[:, :, :3][outside], picture[outside])  # untouched where not masked
    assert not np.array_equal(out[30:70, 40:90, :3], picture[30:70, 40:90])  # filled where masked


# --- depth_zoe / depth_leres / depth_leres++ ---

def test_zoe_and_leres_name_the_missing_file(tmp_path):
    with pytest.raises(pp.MissingAnnotatorError) as err:
        pp.get("depth_zoe").run(_square(), annotator_dir=tmp_path)
    assert err.value.file == "ZoeD_M12_N.pt" and err.value.folder == tmp_path / "zoedepth"
    with pytest.raises(pp.MissingAnnotatorError, match="res101.pth"):
        pp.get("depth_leres").run(_square(), annotator_dir=tmp_path)
    (tmp_path / "leres").mkdir()
    (tmp_path / "leres" / "res101.pth").write_bytes(b"")
    with pytest.raises(pp.MissingAnnotatorError) as err:  # ++ needs the merge network as well
        pp.get("depth_leres++").run(_square(), annotator_dir=tmp_path)
    assert err.value.file == "latest_net_G.pth" and err.value.folder == tmp_path / "leres"


def test_leres_sliders_are_the_extensions():
    for name in ("depth_leres", "depth_leres++"):
        p = pp.get(name)
        assert p.tags == ("Depth",) and p.resolution == pp.Slider("Resolution", 512, 64, 2048, 8)
        assert p.slider_1 == pp.Slider("Remove Near %", 0, 0, 100, 0.1)
        assert p.slider_2 == pp.Slider("Remove Background %", 0, 0, 100, 0.1)
    assert pp.get("depth_zoe").slider_1 is None and pp.get("depth_zoe").tags == ("Depth",)


@pytest.fixture(scope="module")
def leres_dir(tmp_path_factory):
    """res101.pth as AdelaiDepth released it (the depth network's DataParallel weights under "depth_model", next to
    the point-cloud networks) and the merge network's latest_net_G.pth (a bare state dict), random, fp16."""
    from modules.controlnet import annotators

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    annotators.import_controlnet_aux()
    folder = tmp_path_factory.mktemp("ControlNetPreprocessor")
    (folder / "leres").mkdir()
    depth = {"module." + k: v for k, v in _random_weights(annotators._leres_net, seed=1).items()}
    others = {"module.pcd.weight": torch.zeros(4, 3)}
    torch.save({"depth_model": depth, "shift_model": others, "focal_model": dict(others)}, folder / "leres/res101.pth")
    torch.save(_random_weights(annotators._merge_net, seed=2), folder / "leres/latest_net_G.pth")
    yield folder
    annotators.unload_all()
    torch.set_num_threads(threads)


@pytest.mark.slow  # the full-size LeReS network (ResNeXt-101, 116 M parameters)
def test_depth_leres_gives_a_grey_depth_map_whose_sliders_remove_near_and_background(leres_dir):
    leres, img = pp.get("depth_leres"), _circle()[:, :150]
    depth = leres.run(img, resolution=64, annotator_dir=leres_dir, device="cpu")
    assert depth.shape == (82, 64, 3) and depth.dtype == np.uint8 and (depth[..., 0] == depth[..., 2]).all()
    assert int(depth.max()) - int(depth.min()) > 64  # scaled to 0-255 over the padded picture, then cropped
    assert np.array_equal(leres.run(img, 64, 0, -1, leres_dir, device="cpu"), depth)
    near = leres.run(img, 64, 50, 0, leres_dir, device="cpu")
    far = leres.run(img, 64, 0, 50, leres_dir, device="cpu")
    assert np.array_equal(near, np.where(depth >= 128, 255, depth))  # the nearest half made flat white
    assert np.array_equal(far, np.where(depth > 127, depth, 0))  # the farthest half removed (black)
    assert (near == 255).sum() > (depth == 255).sum() and (far == 0).sum() > (depth == 0).sum()


@pytest.mark.slow  # LeReS and the merge network (80 M parameters, at 1024 px)
def test_depth_leres_plus_plus_merges_two_estimates_into_a_map_of_the_right_size(leres_dir):
    out = pp.get("depth_leres++").run(_circle()[:, :150], resolution=64, annotator_dir=leres_dir, device="cpu")
    assert out.shape == (82, 64, 3) and out.dtype == np.uint8 and (out[..., 0] == out[..., 1]).all()
    assert len(np.unique(out)) > 16


@pytest.mark.slow  # full-size annotator networks
def test_zoe_and_leres_refuse_a_file_of_another_network_by_name(leres_dir, tmp_path):
    # hard links: the same bytes under each name, without copying 160 MB three times
    for relative, other in (("zoedepth/ZoeD_M12_N.pt", "leres/latest_net_G.pth"),
                            ("leres/res101.pth", "leres/latest_net_G.pth")):
        (tmp_path / relative).parent.mkdir(exist_ok=True)
        os.link(leres_dir / other, tmp_path / relative)
    os.link(leres_dir / "leres/latest_net_G.pth", tmp_path / "leres" / "latest_net_G.pth")
    with pytest.raises(RuntimeError, match="ZoeD_M12_N.pt"):
        pp.get("depth_zoe").run(_square(), resolution=64, annotator_dir=tmp_path, device="cpu")
    with pytest.raises(RuntimeError, match="res101.pth"):
        pp.get("depth_leres++").run(_square(), resolution=64, annotator_dir=tmp_path, device="cpu")


def _ramp(h: int, w: int) -> np.ndarray:
    return np.tile(np.linspace(0.0, 1.0, w, dtype=np.float32), (h, 1))


def _detailed(h: int, w: int, spread: bool = False) -> np.ndarray:
    """A picture with a few sharp shapes on a flat background (edges in some places only): six overlapping
    outlines near a corner, or (spread) a 4×4 grid of them over the upper left part."""
    img = Image.new("RGB", (w, h), (90, 90, 90))
    draw = ImageDraw.Draw(img)
    corners = [(20 + 100 * i, 30 + 70 * j) for i in range(4) for j in range(4)] if spread else \
        [(20 + 12 * i, 30 + 10 * i) for i in range(6)]
    for x, y in corners:
        draw.rectangle((x, y, x + 40, y + 20), outline=(250, 250, 250), width=2)
    return np.array(img)


def _agreeing_estimates():
    """A depth network that always sees the same ramp, and a merge network that averages what it is given."""
    from modules.controlnet.annotators import _min_max

    calls = {"estimate": 0, "merge": 0}

    def estimate(img, w, h):
        calls["estimate"] += 1
        return _ramp(*img.shape[:2])

    def merge(outer, inner):
        calls["merge"] += 1
        return (_min_max(outer) + _min_max(inner)) / 2

    return estimate, merge, calls


def test_boost_merges_local_patches_and_keeps_a_depth_every_estimate_agrees_on():
    from modules.controlnet.annotators import boost

    estimate, merge, calls = _agreeing_estimates()
    # edges spread over the picture: a larger patch scale, so the patches are cut from it at 2262×1810, not at the
    # smallest factor's 4480×3585 (16 patches either way)
    img = _detailed(512, 640, spread=True)
    depth = boost(img, estimate, merge, max_res=640)
    assert depth.shape == (512, 640) and np.isfinite(depth).all()
    # the whole picture's double estimate (2 estimates, 1 merge), then per patch its own and its merge into the whole
    assert calls["merge"] >= 3 and calls["estimate"] == calls["merge"] + 1
    assert np.corrcoef(depth.ravel(), _ramp(512, 640).ravel())[0, 1] > 0.99


def test_boost_on_a_picture_smaller_than_the_receptive_field_is_the_double_estimate():
    """The extension's search for R_x fails on such a picture (it never tries a size); here it is the receptive
    field's, and with no room for patches the whole picture's double estimate is the map."""
    from modules.controlnet.annotators import _processing_resolution, boost

    assert _processing_resolution(_detailed(128, 64), 448)[0] == 448
    estimate, merge, calls = _agreeing_estimates()
    depth = boost(_detailed(128, 64), estimate, merge, max_res=128)
    assert depth.shape == (128, 64) and calls == {"estimate": 2, "merge": 1}
    assert np.corrcoef(depth.ravel(), _ramp(128, 64).ravel())[0, 1] > 0.99


@pytest.fixture(scope="module")
def zoe_dir(tmp_path_factory):
    """ZoeD_M12_N.pt as released: a training checkpoint ({"model": ...}) written with timm 0.6, whose BEiT blocks
    also saved their relative position index. Random and fp16 (345 M parameters: 690 MB instead of 1.4 GB)."""
    from modules.controlnet import annotators

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    annotators.import_controlnet_aux()
    folder = tmp_path_factory.mktemp("ControlNetPreprocessor")
    sd = _random_weights(annotators._zoe_net, seed=4)
    for key in [k for k in sd if k.endswith("attn.qkv.weight")]:  # 24×24 patches at 384 px: 577 tokens
        sd[key.replace("qkv.weight", "relative_position_index")] = torch.zeros(577, 577, dtype=torch.long)
    (folder / "zoedepth").mkdir()
    torch.save({"model": sd}, folder / "zoedepth/ZoeD_M12_N.pt")
    del sd
    yield folder
    annotators.unload_all()
    torch.set_num_threads(threads)


@pytest.mark.slow  # the full-size ZoeDepth (BEiT-L 384 core, 345 M parameters), run twice (mirrored)
def test_depth_zoe_gives_a_grey_map_spread_between_its_percentiles(zoe_dir):
    # a narrow strip across the circle: ZoeDepth resizes to 384 px high, so a tall picture is few BEiT tokens
    # (384×64: 96 a pass, where 82×64 padded to 128×64 is 384×224: 336)
    out = pp.get("depth_zoe").run(_circle()[:, 70:90], resolution=64, annotator_dir=zoe_dir, device="cpu")
    assert out.shape == (614, 64, 3) and out.dtype == np.uint8 and (out[..., 0] == out[..., 2]).all()
    assert out.min() == 0 and out.max() == 255 and len(np.unique(out)) > 16  # 2nd/85th percentiles, clipped

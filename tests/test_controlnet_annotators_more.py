"""lineart_anime_denoise, mobile_sam, normal_dsine and densepose(_parula) with weight files written in the released
layout (the exact key names of the files users download; values made up), run as a user runs them."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from modules.controlnet import preprocessors as pp

W, H = 256, 192
RESIZED = (64, 85)  # the short side at resolution 64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    from modules.controlnet import annotators

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core: on a shared machine a second thread only waits
    yield
    annotators.unload_all()
    torch.set_num_threads(threads)


def _drawing() -> np.ndarray:
    """Black line art on white: a rectangle outline and a diagonal stroke."""
    img = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle((80, 48, 176, 144), outline="black", width=4)
    draw.line((20, 170, 230, 20), fill="black", width=4)
    return np.array(img)


def _shapes(build) -> dict:
    with torch.device("meta"):
        return build().state_dict()


def _save(folder, relative: str, sd) -> None:
    (folder / relative).parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, folder / relative)


def _another_network() -> dict:
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 1, 1)).state_dict()


# --- lineart_anime_denoise (manga_line/erika.pth) ---

def _manga_line_that_copies_its_input() -> dict:
    """erika.pth's keys (a bare state dict, as released) with weights that pass the grey picture straight through:
    every conv zero except three 1x1 shortcuts carrying channel 0 from the input to the output, BatchNorm neutral.
    The deep path then adds nothing, so the network 'draws' the picture itself."""
    from modules.controlnet.annotators_more import MangaLineNet

    shapes = _shapes(MangaLineNet)
    sd = {}
    for key, t in shapes.items():
        norm = key.rsplit(".", 1)[0] + ".running_var" in shapes
        one = key.endswith("running_var") or (norm and key.endswith(".weight"))
        sd[key] = (torch.ones if one else torch.zeros)(t.shape, dtype=t.dtype if not t.dtype.is_floating_point
                                                       else torch.float16)
    for key in ("block0.model.0.shortcut.model.0.weight", "block9.model.0.shortcut.model.0.weight",
                "conv15.model.2.weight"):
        sd[key][0, 0] = 1.0
    return sd


def test_lineart_anime_denoise_returns_the_drawing_inverted_at_the_resized_size(tmp_path):
    _save(tmp_path, "manga_line/erika.pth", _manga_line_that_copies_its_input())
    out = pp.get("lineart_anime_denoise").run(_drawing(), resolution=64, annotator_dir=tmp_path, device="cpu")
    assert out.shape == (*RESIZED, 3) and out.dtype == np.uint8
    grey = pp.resize_with_pad(_drawing(), 64)
    expected = 255 - grey.crop(grey.image)[:, :, 0].astype(int)
    assert np.abs(out[:, :, 0].astype(int) - expected).max() <= 2  # white lines on black, where the drawing has them
    assert out.mean() < 80 and out.max() > 200


def test_lineart_anime_denoise_refuses_a_file_of_another_network_by_name(tmp_path):
    _save(tmp_path, "manga_line/erika.pth", _another_network())
    with pytest.raises(RuntimeError, match="erika.pth"):
        pp.get("lineart_anime_denoise").run(_drawing(), resolution=64, annotator_dir=tmp_path, device="cpu")


# --- mobile_sam (mobile_sam/mobile_sam.pt) ---

def _mobile_sam_that_finds_segments() -> dict:
    """mobile_sam.pt's keys (a bare state dict of controlnet_aux's "vit_t" Sam, as released) with random weights,
    made confident: the predicted IoU high and the mask logits far from 0, so the generator keeps what it finds."""
    from modules.controlnet import annotators, annotators_more

    annotators.import_controlnet_aux()
    g = torch.Generator().manual_seed(0)
    sd = {}
    for key, t in annotators_more.mobile_sam_net().state_dict().items():
        if key.endswith("running_var"):
            sd[key] = torch.ones(t.shape)
        elif key.endswith("running_mean") or not t.dtype.is_floating_point:
            sd[key] = torch.zeros(t.shape, dtype=t.dtype)
        else:
            sd[key] = (torch.randn(t.shape, generator=g) * 0.05).half()
    sd["mask_decoder.iou_prediction_head.layers.2.bias"].fill_(5.0)
    for i in range(4):
        key = f"mask_decoder.output_hypernetworks_mlps.{i}.layers.2.weight"
        sd[key] = sd[key].float() * 1e5
    return sd


def test_segments_are_coloured_largest_first_each_in_one_seeded_colour():
    from modules.controlnet.annotators_more import colour_segments

    big, small = np.zeros((8, 10), bool), np.zeros((8, 10), bool)
    big[1:7, 1:9], small[3:5, 4:6] = True, True
    masks = [{"segmentation": small, "area": int(small.sum())}, {"segmentation": big, "area": int(big.sum())}]
    out = colour_segments(masks, 8, 10, np.random.RandomState(7))
    rng = np.random.RandomState(7)
    first, second = ([rng.randint(255, dtype=np.uint8) for _ in range(3)] for _ in range(2))
    assert (out[~big] == 0).all()  # black where no segment is
    assert (out[big & ~small] == first).all() and (out[small] == second).all()  # the smaller one painted on top
    assert (colour_segments(masks, 8, 10, np.random.RandomState(7)) == out).all()
    assert colour_segments([], 8, 10, np.random.RandomState(7)).max() == 0


@pytest.mark.slow  # SAM encodes every picture at 1024 px (~2 s on one core), then decodes each prompt's masks
def test_mobile_sam_colours_the_segments_it_finds_at_the_resized_size(tmp_path, monkeypatch):
    from modules.controlnet import annotators_more

    monkeypatch.setattr(annotators_more, "SAM_POINTS_PER_SIDE", 2)  # 4 prompts instead of 1024
    _save(tmp_path, "mobile_sam/mobile_sam.pt", _mobile_sam_that_finds_segments())
    run = pp.get("mobile_sam").run
    out = run(_drawing(), resolution=64, annotator_dir=tmp_path, device="cpu", seed=1)
    assert out.shape == (*RESIZED, 3) and out.dtype == np.uint8
    colours = np.unique(out.reshape(-1, 3), axis=0)
    assert 2 <= len(colours) <= 5  # a few segments (at most one per prompt), each in one flat colour
    other = run(_drawing(), resolution=64, annotator_dir=tmp_path, device="cpu", seed=2)
    assert ((other == 0).all(axis=2) == (out == 0).all(axis=2)).all() and (other != out).any()  # same segments


def test_mobile_sam_refuses_a_file_of_another_network_by_name(tmp_path):
    _save(tmp_path, "mobile_sam/mobile_sam.pt", _another_network())
    with pytest.raises(RuntimeError, match="mobile_sam.pt"):
        pp.get("mobile_sam").run(_drawing(), resolution=64, annotator_dir=tmp_path, device="cpu")


# --- normal_dsine (normal_dsine/dsine.pt) ---

def _random(shapes: dict, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, t in shapes.items():
        if key.endswith("running_var"):
            out[key] = torch.ones(t.shape)
        elif key.endswith("running_mean") or not t.dtype.is_floating_point:
            out[key] = torch.zeros(t.shape, dtype=t.dtype)
        else:
            out[key] = (torch.randn(t.shape, generator=g) * 0.1).half()
    return out


def _as_dsine_release(sd: dict) -> dict:
    """dsine.pt is a training checkpoint of a DataParallel model: {"model": {"module.<key>": ...}}."""
    return {"model": {"module." + k: v for k, v in sd.items()}}


def _small_dsine_file(folder) -> None:
    """DSINE with an EfficientNet-B0 encoder and 64 decoder features (the release: B5 and 2048), read from the
    file's shapes as the released size is."""
    from modules.controlnet import annotators, annotators_more

    annotators.import_controlnet_aux()
    shapes = _shapes(lambda: annotators_more.DSINE("tf_efficientnet_b0_ap", (1280, 112, 40), 64))
    _save(folder, "normal_dsine/dsine.pt", _as_dsine_release(_random(shapes)))


def test_the_released_dsine_layout_builds_the_b5_network_with_2048_features():
    from modules.controlnet import annotators, annotators_more

    annotators.import_controlnet_aux()
    full = _shapes(annotators_more.DSINE)
    assert "encoder.original_model.blocks.6.2.conv_pwl.weight" in full  # B5: 3 blocks in the last stage
    assert full["decoder.up1._net.0.weight"].shape == (1024, 2048 + 176 + 2, 3, 3)
    flat = {"model.module." + k: v for k, v in full.items()}  # how the checkpoint reads (nested dicts flattened)
    with torch.device("meta"):
        net = annotators_more.dsine_net(flat)
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in full.items()}


def _view_rays(h: int, w: int, fov: float) -> np.ndarray:
    from modules.controlnet.annotators_more import intrinsics_from_fov

    k = intrinsics_from_fov(fov, h, w).numpy()
    x, y = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    rays = np.stack([(x - k[0, 2] - 0.5) / k[0, 0], (y - k[1, 2] - 0.5) / k[1, 1], np.ones_like(x)], axis=2)
    return rays / np.linalg.norm(rays, axis=2, keepdims=True)


def test_normal_dsine_gives_unit_normals_facing_along_the_view_rays_and_its_sliders_change_them(tmp_path):
    _small_dsine_file(tmp_path)
    run = pp.get("normal_dsine").run
    out = run(_drawing(), resolution=64, annotator_dir=tmp_path, device="cpu")  # Fov 60, 5 iterations
    assert out.shape == (*RESIZED, 3) and out.dtype == np.uint8
    normal = out.astype(np.float32) / 255.0 * 2.0 - 1.0
    assert np.abs(np.linalg.norm(normal, axis=2) - 1.0).max() < 0.03  # x, y, z of unit normals in [0, 255]
    assert ((normal * _view_rays(*RESIZED, 60.0)).sum(axis=2) > -0.02).all()  # none turned away (its ray ReLU)
    assert (run(_drawing(), resolution=64, slider_1=60, slider_2=5, annotator_dir=tmp_path, device="cpu")
            == out).all()  # the sliders' defaults
    assert (run(_drawing(), resolution=64, slider_1=20, annotator_dir=tmp_path, device="cpu") != out).any()
    assert (run(_drawing(), resolution=64, slider_2=1, annotator_dir=tmp_path, device="cpu") != out).any()


def test_normal_dsine_refuses_a_file_of_another_network_by_name(tmp_path):
    _save(tmp_path, "normal_dsine/dsine.pt", {"model": _another_network()})
    with pytest.raises(RuntimeError, match="dsine.pt"):
        pp.get("normal_dsine").run(_drawing(), resolution=64, annotator_dir=tmp_path, device="cpu")


# --- densepose / densepose_parula (densepose/densepose_r50_fpn_dl.torchscript) ---

class _OnePerson(torch.nn.Module):
    """DensePose's exported signature: a uint8 CHW picture in; boxes (N, 4, xyxy), coarse segmentation (N, 2, S, S),
    fine segmentation, U and V (N, 25, S, S) out. One person in a fixed box: torso (part 2) on the left half,
    part 14 on the right half, the box's outer quarter background."""

    def forward(self, image: torch.Tensor):
        assert image.dtype == torch.uint8 and image.shape[0] == 3
        s = 16
        boxes = torch.tensor([[10.0, 8.0, 50.0, 56.0]])
        coarse = torch.zeros(1, 2, s, s)
        coarse[0, 1, 4:12, :] = 1.0
        fine = torch.zeros(1, 25, s, s)
        fine[0, 2, :, :8] = 1.0
        fine[0, 14, :, 8:] = 1.0
        u = torch.zeros(1, 25, s, s)
        return boxes, coarse, fine, u, u.clone()


@pytest.fixture(scope="module")
def densepose_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ControlNetPreprocessor")
    (folder / "densepose").mkdir()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script's deprecation note
        torch.jit.save(torch.jit.script(_OnePerson()), str(folder / "densepose" / "densepose_r50_fpn_dl.torchscript"))
    return folder


def _colour(value: int, colour_map: int) -> tuple:
    import cv2

    return tuple(int(c) for c in cv2.applyColorMap(np.array([[value]], np.uint8), colour_map)[0, 0, ::-1])


@pytest.mark.parametrize("label,colour_map,background", [
    ("densepose (pruple bg & purple torso)", "COLORMAP_VIRIDIS", (68, 1, 84)),
    ("densepose_parula (black bg & blue torso)", "COLORMAP_PARULA", (0, 0, 0)),
])
def test_densepose_paints_each_body_part_in_the_colour_map_over_the_background(densepose_dir, label, colour_map,
                                                                               background):
    import cv2

    out = pp.get(label).run(_drawing(), resolution=64, annotator_dir=densepose_dir, device="cpu")
    assert out.shape == (*RESIZED, 3) and out.dtype == np.uint8
    torso, part14 = _colour(int(2 * 255 / 24), getattr(cv2, colour_map)), _colour(int(14 * 255 / 24),
                                                                                   getattr(cv2, colour_map))
    assert tuple(out[32, 20]) == torso and tuple(out[32, 40]) == part14  # inside the box: left, right half
    for y, x in ((2, 2), (60, 80), (10, 30), (53, 30)):  # outside the box, and the box's background rows
        assert tuple(out[y, x]) == background
    assert {tuple(c) for c in np.unique(out.reshape(-1, 3), axis=0)} == {torso, part14, background}


def test_densepose_refuses_a_file_that_is_not_torchscript_by_name(tmp_path):
    _save(tmp_path, "densepose/densepose_r50_fpn_dl.torchscript", _another_network())
    with pytest.raises(RuntimeError, match="densepose_r50_fpn_dl.torchscript"):
        pp.get("densepose").run(_drawing(), resolution=64, annotator_dir=tmp_path, device="cpu")

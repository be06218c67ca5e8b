"""Face restoration (GFPGAN, CodeFormer) from files, as A1111 runs it: facexlib's RetinaFace finds the face, the
FFHQ-aligned crop goes through the network, the result is pasted back with the face-parsing mask when
facexlib's ParseNet file is there (A1111's way), else with a soft square mask.

The files are written here in the released layouts: GFPGAN tiny (spandrel's GFPGANv1Clean with small widths, which
our loader reads from the file) and full size on the meta device; CodeFormer full size on meta (its widths are fixed
in the architecture) and, in a slow test, random at full size. The detector is facexlib's RetinaFace at tiny widths
with hand-set weights (as tests/test_controlnet_pulid_face.py): it fires only on a white marker at the centre of a
640×640 picture (stride-32 cell (10, 10)) and its box / landmark heads' biases hold the test's face."""
from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modules import face_restoration as fr
from tests import test_controlnet_pulid_face as pulid_face
from tests.test_controlnet_pulid_face import BGR_MEAN, TEMPLATE

PICTURE = 640  # facexlib scales pictures up to 640 on the short side: this one is seen as it is
SCALE, SHIFT = 0.5, np.array([192.0, 192.0])
LANDMARKS = TEMPLATE * SCALE + SHIFT
FACE_SQUARE = (192, 448)  # the aligned 512 crop maps back onto this square of the picture
BOX = np.array([250.0, 240.0, 390.0, 420.0])
MARKER, CELL = (320, 320), (10, 10)
BACKGROUND_RGB = tuple(int(v) for v in BGR_MEAN[::-1])  # facexlib's mean: the detector sees nothing there


def tiny_detector_state_dict() -> dict:
    """The PuLID tests' tiny RetinaFace, firing on this test's marker cell with its box and landmarks."""
    return pulid_face.tiny_detector_state_dict(CELL, BOX, LANDMARKS)


def tiny_gfpgan_state_dict() -> dict:
    from spandrel.architectures.GFPGAN import GFPGAN

    torch.manual_seed(0)
    net = GFPGAN(out_size=512, num_style_feat=16, channel_multiplier=2, narrow=1 / 16, num_mlp=2)
    return {k: v.clone() for k, v in net.state_dict().items()}


def face_picture() -> Image.Image:
    img = np.empty((PICTURE, PICTURE, 3), np.uint8)
    img[:] = BACKGROUND_RGB
    ys, xs = np.mgrid[0:PICTURE, 0:PICTURE]
    img[((xs - 320) / 70.0) ** 2 + ((ys - 330) / 95.0) ** 2 <= 1] = (210, 170, 150)
    for x, y in LANDMARKS:
        img[(xs - x) ** 2 + (ys - y) ** 2 <= 25] = (40, 30, 30)
    mx, my = MARKER
    img[my - 3:my + 4, mx - 3:mx + 4] = 255
    return Image.fromarray(img)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    models = tmp_path_factory.mktemp("face_models") / "models"
    (models / "GFPGAN").mkdir(parents=True)
    (models / "Codeformer").mkdir()
    torch.save({"params_ema": tiny_gfpgan_state_dict()}, str(models / "GFPGAN" / fr.GFPGAN_FILE))
    torch.save({"module." + k: v for k, v in tiny_detector_state_dict().items()},
               str(models / "GFPGAN" / fr.DETECTOR_FILE))
    torch.save({"params_ema": {"position_emb": torch.zeros(4, 4)}}, str(models / "Codeformer" / fr.CODEFORMER_FILE))
    return models


def restorers(models, **kw) -> fr.FaceRestorers:
    return fr.FaceRestorers([models / "GFPGAN"], [models / "Codeformer"], kw.pop("annotator_dir", None), **kw)


class SpyCodeFormer(torch.nn.Module):
    """Stands in for CodeFormer where only the call matters: records the weight, gives a flat mid-grey face."""

    def __init__(self):
        super().__init__()
        self.weights = []
        self.p = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, weight=0.5, adain=True):
        self.weights.append(weight)
        return (torch.zeros_like(x) + 0.2 + self.p,)


@pytest.fixture
def spy(monkeypatch):
    net = SpyCodeFormer()
    monkeypatch.setattr(fr, "build_codeformer", lambda sd, name=fr.CODEFORMER_FILE: net)
    return net


# --- layouts ---

def test_full_size_gfpgan_layout_gives_spandrels_own_sizes_and_codeformer_is_detected():
    from spandrel.architectures.GFPGAN import GFPGAN
    from spandrel_extra_arches.architectures.CodeFormer import CodeFormer, CodeFormerArch

    with torch.device("meta"):
        sd = GFPGAN().state_dict()  # spandrel's defaults: GFPGANv1.3/1.4 "clean"
        net = fr.build_gfpgan(sd)
    assert set(net.state_dict()) == set(sd)
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in sd.items()}
    assert sum(v.numel() for v in sd.values()) > 60_000_000  # full size, not a tiny one

    with torch.device("meta"):
        sd = CodeFormer().state_dict()
        assert CodeFormerArch().detect(sd)
        net = fr.build_codeformer(sd)
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in sd.items()}
    with pytest.raises(fr.FaceRestorationError, match="codeformer-v0.1.0.pth: not a CodeFormer"):
        fr.build_codeformer({"x": torch.zeros(1)})
    with pytest.raises(fr.FaceRestorationError, match="GFPGANv1.4.pth: not a GFPGAN"):
        fr.build_gfpgan({"x": torch.zeros(1)})


# --- the picture pipeline ---

def test_detector_finds_the_tests_face(models_dir):
    faces = fr.find_faces(restorers(models_dir).detector(), np.asarray(face_picture())[:, :, ::-1].copy())
    assert len(faces) == 1 and np.abs(faces[0] - LANDMARKS).max() < 1e-3


def test_gfpgan_restores_the_face_region_only(models_dir):
    before = np.asarray(face_picture())
    torch.manual_seed(1)
    after = np.asarray(restorers(models_dir).restore(face_picture(), "GFPGAN"))
    assert after.shape == before.shape
    changed = np.any(after != before, axis=2)
    lo, hi = FACE_SQUARE
    assert changed[lo + 40:hi - 40, lo + 40:hi - 40].mean() > 0.9  # the face was replaced
    outside = np.ones_like(changed)
    outside[lo - 2:hi + 2, lo - 2:hi + 2] = False
    assert not changed[outside].any()  # far from the face: exactly as before


def test_codeformer_weight_passes_through_and_face_becomes_the_networks(models_dir, spy):
    r = restorers(models_dir)
    out = np.asarray(r.restore(face_picture(), "codeformer", codeformer_weight=0.3))
    assert spy.weights == [0.3]
    grey = round((0.2 + 1) / 2 * 255)  # the spy's 0.2 in [-1, 1]
    assert np.abs(out[300:340, 300:340].astype(int) - grey).max() <= 1
    r.settings = {"code_former_weight": 0.7}
    r.restore(face_picture(), "CodeFormer")
    assert spy.weights[-1] == 0.7


def test_extras_visibility_blends_half_way_and_writes_the_keys(models_dir, spy):
    from modules import postprocessing

    r = restorers(models_dir)
    full = postprocessing.upscale(face_picture(), "None", 1, codeformer_visibility=1.0, codeformer_weight=0.25,
                                  face_restorers=r)
    half = postprocessing.upscale(face_picture(), "None", 1, codeformer_visibility=0.5, codeformer_weight=0.25,
                                  face_restorers=r)
    expected = Image.blend(face_picture(), full.image.convert("RGB"), 0.5)
    assert np.abs(np.asarray(half.image, int) - np.asarray(expected, int)).max() <= 1
    assert half.params == {"CodeFormer visibility": 0.5, "CodeFormer weight": 0.25}
    assert spy.weights == [0.25, 0.25]


def test_missing_files_name_the_file_and_folders(tmp_path, models_dir):
    empty = restorers(tmp_path, annotator_dir=tmp_path / "ControlNetPreprocessor")
    with pytest.raises(fr.MissingFaceModelError, match="GFPGANv1.4.pth") as e:
        empty.restore(face_picture(), "GFPGAN")
    assert str(tmp_path / "GFPGAN") in str(e.value)
    (tmp_path / "GFPGAN").mkdir()
    os.symlink(models_dir / "GFPGAN" / fr.GFPGAN_FILE, tmp_path / "GFPGAN" / fr.GFPGAN_FILE)
    with pytest.raises(fr.MissingFaceModelError, match="detection_Resnet50_Final.pth") as e:
        empty.restore(face_picture(), "GFPGAN")
    assert str(tmp_path / "ControlNetPreprocessor" / "facexlib") in str(e.value)
    # the ControlNet annotator folder's facexlib/ copy is accepted
    (tmp_path / "ControlNetPreprocessor" / "facexlib").mkdir(parents=True)
    os.symlink(models_dir / "GFPGAN" / fr.DETECTOR_FILE,
               tmp_path / "ControlNetPreprocessor" / "facexlib" / fr.DETECTOR_FILE)
    assert empty.detector_file().parent.name == "facexlib"
    with pytest.raises(fr.FaceRestorationError, match="not found"):
        empty.canonical("RestoreFormer")


# --- A1111's face-parsing mask (facexlib's ParseNet) ---

def test_full_size_parsenet_layout_loads_as_facexlib_builds_it():
    import json

    from modules import face_parse_mask as fpm

    shapes = json.loads((Path(__file__).parent / "data" / "parsenet-keys.json").read_text())
    sd = {k: torch.empty(shape, device="meta", dtype=torch.int64 if k.endswith("num_batches_tracked") else None)
          for k, shape in shapes.items()}
    with torch.device("meta"):
        net = fpm.build(sd)
    assert {k: list(v.shape) for k, v in net.state_dict().items()} == shapes
    assert (len(net.encoder), len(net.body), len(net.decoder)) == (5, 10, 4)
    with pytest.raises(fpm.ParseNetError, match="out_mask_conv.conv2d.weight is missing"):
        fpm.build({k: v for k, v in sd.items() if not k.startswith("out_mask_conv")})


def _parsenet_file(folder: Path, face_class: int) -> None:
    """A tiny ParseNet (one block each way) that labels every pixel `face_class`."""
    from modules.face_parse_mask import PARSER_FILE, ParseNet

    torch.manual_seed(0)
    net = ParseNet(8, [(8, 16)], [(16, 16)], [(16, 8)])
    with torch.no_grad():
        net.out_mask_conv.conv2d.weight.zero_()
        net.out_mask_conv.conv2d.bias.copy_(torch.nn.functional.one_hot(torch.tensor(face_class), 19) * 10.0)
    torch.save(net.state_dict(), str(folder / PARSER_FILE))


def test_with_a_parsenet_file_only_what_it_calls_the_face_is_pasted(tmp_path, models_dir, spy):
    """A1111 pastes by facexlib's parse mask: a face parsed as skin (class 1) is replaced inside the square but its
    10-pixel rim, one parsed as background (class 0) is left as it was; without the file, the soft square."""
    from modules.face_parse_mask import PARSER_FILE

    before = np.asarray(face_picture()).astype(int)
    square = np.asarray(restorers(models_dir).restore(face_picture(), "CodeFormer")).astype(int)
    grey = round((0.2 + 1) / 2 * 255)  # the spy's face
    lo, hi = FACE_SQUARE
    models = tmp_path / "models"
    for name in ("GFPGAN", "Codeformer"):
        (models / name).mkdir(parents=True)
        for f in (models_dir / name).iterdir():
            os.symlink(f, models / name / f.name)

    _parsenet_file(models / "GFPGAN", face_class=1)
    r = restorers(models)
    assert r.parser_file() == models / "GFPGAN" / PARSER_FILE
    skin = np.asarray(r.restore(face_picture(), "CodeFormer")).astype(int)
    inner = slice(lo + 40, hi - 40)
    assert np.abs(skin[inner, inner] - grey).max() <= 1  # replaced where the parse mask is 1
    assert np.abs(skin[lo + 2, inner] - before[lo + 2, inner]).max() <= 1  # the rim facexlib zeroes: kept
    assert np.abs(skin[lo + 8, inner] - grey).max() <= 2  # replaced up to that rim, where the soft square still
    assert np.abs(square[lo + 8, inner] - grey).max() > 10  # blends in most of the original
    outside = np.ones(before.shape[:2], bool)
    outside[lo - 2:hi + 2, lo - 2:hi + 2] = False
    assert (skin[outside] == before[outside]).all()

    _parsenet_file(models / "GFPGAN", face_class=0)
    os.utime(models / "GFPGAN" / PARSER_FILE, ns=(1, 1))  # a new file: the cached parser is replaced
    background = np.asarray(r.restore(face_picture(), "CodeFormer")).astype(int)
    assert np.abs(background - before).max() <= 1


def test_a_parsenet_file_that_is_not_one_is_named_and_the_picture_left_alone(tmp_path, models_dir, spy):
    from modules.face_parse_mask import PARSER_FILE

    annotators = tmp_path / "ControlNetPreprocessor"
    (annotators / "facexlib").mkdir(parents=True)
    torch.save({"encoder.0.conv2d.weight": torch.zeros(8, 3, 3, 3)}, str(annotators / "facexlib" / PARSER_FILE))
    r = restorers(models_dir, annotator_dir=annotators)
    assert r.parser_file() == annotators / "facexlib" / PARSER_FILE  # looked for where the detector is
    picture = face_picture()
    with pytest.raises(fr.FaceRestorationError, match=f"{PARSER_FILE}: not facexlib's ParseNet"):
        r.restore(picture, "CodeFormer")
    assert np.array_equal(np.asarray(picture), np.asarray(face_picture()))


# --- API and generation ---

def _b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _decode(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data.split(",", 1)[-1])))


@pytest.fixture(scope="module")
def client(tmp_path_factory, tiny_models, models_dir):
    from fastapi.testclient import TestClient

    from modules import cmd_args
    from modules.engine import Engine
    from modules.paths import Paths
    from modules.server import AppContext, create_app

    data = tmp_path_factory.mktemp("face-data")
    (data / "models" / "Stable-diffusion").mkdir(parents=True)
    os.symlink(tiny_models.path("sd1.safetensors"), data / "models" / "Stable-diffusion" / "sd1.safetensors")
    ns = cmd_args.parse_args(["--data-dir", str(data), "--skip-install", "--nowebui", "--api",
                              "--gfpgan-models-path", str(models_dir / "GFPGAN"),
                              "--codeformer-models-path", str(data / "nothing")], env={})
    engine = Engine.create(Paths.from_args(ns))
    with TestClient(create_app(AppContext(args=ns, engine=engine))) as c:
        c.engine = engine
        yield c


def test_api_lists_the_restorers_and_runs_gfpgan_in_extras(client):
    r = client.get("/sdapi/v1/face-restorers")
    assert [x["name"] for x in r.json()] == ["CodeFormer", "GFPGAN"]
    assert r.json()[1]["cmd_dir"].endswith("GFPGAN")
    torch.manual_seed(1)
    r = client.post("/sdapi/v1/extra-single-image", json={"image": _b64(face_picture()), "upscaler_1": "None",
                                                          "gfpgan_visibility": 1.0})
    assert r.status_code == 200, r.text
    out = np.asarray(_decode(r.json()["image"]).convert("RGB"))
    assert np.any(out != np.asarray(face_picture()))
    assert "GFPGAN visibility: 1.0" in r.json()["html_info"]
    r = client.post("/sdapi/v1/extra-batch-images", json={
        "upscaler_1": "None", "gfpgan_visibility": 0.5,
        "imageList": [{"data": _b64(face_picture()), "name": "a.png"}]})
    assert r.status_code == 200 and len(r.json()["images"]) == 1


def test_api_missing_codeformer_file_is_a_400_naming_it(client):
    for route, extra in (("extra-single-image", {"image": _b64(face_picture())}),
                         ("extra-batch-images", {"imageList": [{"data": _b64(face_picture()), "name": "a"}]})):
        r = client.post(f"/sdapi/v1/{route}", json={"codeformer_visibility": 0.5, **extra})
        assert r.status_code == 400 and "codeformer-v0.1.0.pth" in r.json()["detail"], r.text
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "a", "steps": 1, "width": 64, "height": 64,
                                               "restore_faces": True,
                                               "override_settings": {"face_restoration_model": "CodeFormer"}})
    assert r.status_code == 400 and "codeformer-v0.1.0.pth" in r.json()["detail"], r.text


def test_txt2img_restore_faces_runs_it_after_decoding_and_writes_the_infotext(client, monkeypatch):
    seen = []
    real = fr.FaceRestorers.restore

    def spy(self, image, name, **kw):
        seen.append((image.size, name, kw))
        return real(self, image, name, **kw)

    monkeypatch.setattr(fr.FaceRestorers, "restore", spy)
    body = {"prompt": "a", "steps": 1, "width": 64, "height": 64, "seed": 3, "batch_size": 2,
            "override_settings": {"face_restoration_model": "GFPGAN"}}
    r = client.post("/sdapi/v1/txt2img", json={**body, "restore_faces": True})
    assert r.status_code == 200, r.text
    assert [s[:2] for s in seen] == [((64, 64), "GFPGAN")] * 2
    info = r.json()["info"]
    assert "Face restoration: GFPGAN" in info
    seen.clear()
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200 and not seen and "Face restoration" not in r.json()["info"]


@pytest.mark.slow
def test_a_codeformer_file_restores_the_face(tmp_path, models_dir):
    """The released layout with a smaller transformer (spandrel reads its width, depth, codebook and connections
    from the file; the full-size layout is checked on `meta` above): the VQGAN at 512 px is what costs here."""
    from spandrel_extra_arches.architectures.CodeFormer import CodeFormer

    torch.manual_seed(0)
    small = CodeFormer(dim_embd=64, n_head=8, n_layers=1, codebook_size=64, connect_list=["32"])
    sd = {k: v.half() if v.is_floating_point() else v for k, v in small.state_dict().items()}
    (tmp_path / "Codeformer").mkdir()
    torch.save({"params_ema": sd}, str(tmp_path / "Codeformer" / fr.CODEFORMER_FILE))
    del sd
    r = fr.FaceRestorers([models_dir / "GFPGAN"], [tmp_path / "Codeformer"])
    before = np.asarray(face_picture())
    after = np.asarray(r.restore(face_picture(), "CodeFormer", codeformer_weight=0.5))
    changed = np.any(after != before, axis=2)
    lo, hi = FACE_SQUARE
    assert changed[lo + 40:hi - 40, lo + 40:hi - 40].mean() > 0.9
    assert not changed[:lo - 2].any() and not changed[hi + 2:].any()

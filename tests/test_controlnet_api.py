"""The sd-webui-controlnet extension's API, as its clients use it: `/controlnet/*` routes and
`alwayson_scripts.controlnet` units in txt2img/img2img (payload shapes from the extension's wiki and examples).
Bad units answer 422 naming the unit's field."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from modules import cmd_args, server
from tests import tiny_controlnets as tc

SIZE = 64


def _b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _image(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def _square() -> Image.Image:
    im = Image.new("RGB", (SIZE, SIZE), "black")
    ImageDraw.Draw(im).rectangle((16, 16, 47, 47), fill="white")
    return im


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tmp_path_factory.mktemp("cn-api")


@pytest.fixture(scope="module")
def client(data, tiny_models, load_tiny):
    import os

    ckpt = data / "models" / "Stable-diffusion"
    ckpt.mkdir(parents=True)
    os.symlink(tiny_models.path("sd1.safetensors"), ckpt / "sd1.safetensors")
    nets = data / "models" / "ControlNet"
    nets.mkdir(parents=True)
    sd1, xl = load_tiny("sd1.safetensors"), load_tiny("sdxl.safetensors")
    tc.write_original(tc.build_controlnet(sd1.unet, 1), sd1.unet, nets / "control_v11p_sd15_canny.pth")
    tc.write_diffusers_file(tc.build_controlnet(xl.unet, 2), nets / "controlnet-canny-sdxl-1.0.safetensors")
    ns = cmd_args.parse_args(["--data-dir", str(data), "--nowebui"], env={})
    with TestClient(server.create_app(server.build_context(ns))) as c:
        yield c


def _canny_title(client) -> str:
    return next(m for m in client.get("/controlnet/model_list").json()["model_list"] if "sd15_canny" in m)


def test_the_info_routes_answer_as_the_extension(client):
    assert client.get("/controlnet/version").json() == {"version": 3}
    models = client.get("/controlnet/model_list?update=true").json()["model_list"]
    assert len(models) == 2 and all(" [" in m for m in models) and "None" not in models
    modules = client.get("/controlnet/module_list").json()
    assert "canny" in modules["module_list"] and "none" in modules["module_list"]
    sliders = {s["name"]: s for s in modules["module_detail"]["canny"]["sliders"]}
    assert len(sliders) == 3 and all({"value", "min", "max", "step"} <= set(s) for s in sliders.values())
    assert modules["module_detail"]["canny"]["model_free"] is False  # the extension: "needs no ControlNet model"
    types = client.get("/controlnet/control_types").json()["control_types"]
    assert types["Canny"]["default_option"] == "canny"
    assert types["Canny"]["model_list"][0] == "None" and len(types["Canny"]["model_list"]) == 3
    assert types["Canny"]["default_model"] == _canny_title(client)  # "11" in the name is preferred
    assert client.get("/controlnet/settings").json() == {"control_net_unit_count": 3}


def test_detect_returns_the_map(client):
    r = client.post("/controlnet/detect", json={"controlnet_module": "canny", "controlnet_input_images": [
        _b64(_square())], "controlnet_processor_res": 64, "controlnet_threshold_a": 100,
        "controlnet_threshold_b": 200})
    assert r.status_code == 200, r.text
    edges = np.asarray(_image(r.json()["images"][0]).convert("L"))
    ys, xs = np.nonzero(edges > 127)
    assert len(ys) > 50 and ys.min() >= 14 and ys.max() <= 49  # the square's border, nothing else
    for body, message in (({"controlnet_module": "nope", "controlnet_input_images": [_b64(_square())]},
                           "Module not available"), ({"controlnet_module": "canny"}, "No image selected")):
        r = client.post("/controlnet/detect", json=body)
        assert r.status_code == 422 and message in r.text


def test_detect_returns_the_poses_a_pose_preprocessor_found(client, data, monkeypatch):
    """As the extension: `poses` (OpenPose JSON per picture) next to the drawn skeletons, for pose editors."""
    from modules.controlnet import annotators

    folder = data / "models" / "ControlNetPreprocessor" / "openpose"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"):
        (folder / name).touch()

    def found_one(img, res, a, b, ctx):  # the network's part is tested with weights elsewhere
        ctx.pose_sink({"people": [{"pose_keypoints_2d": [0.5, 0.5, 1.0]}], "canvas_width": 64, "canvas_height": 64})
        return np.zeros((64, 64, 3), np.uint8)

    monkeypatch.setitem(annotators.RUNNERS, "openpose", found_one)
    r = client.post("/controlnet/detect", json={"controlnet_module": "openpose", "controlnet_processor_res": 64,
                                                "controlnet_input_images": [_b64(_square()), _b64(_square())]})
    assert r.status_code == 200, r.text
    assert len(r.json()["images"]) == 2 and len(r.json()["poses"]) == 2
    assert r.json()["poses"][0]["people"][0]["pose_keypoints_2d"] == [0.5, 0.5, 1.0]
    assert "poses" not in client.post("/controlnet/detect", json={
        "controlnet_module": "canny", "controlnet_input_images": [_b64(_square())]}).json()


def test_a_broken_annotator_file_is_a_4xx_naming_it(client, data):
    """A user's bad preprocessor file (here DWPose's detector, not ONNX at all) is a 422 that names it, and the
    server answers the next request."""
    folder = data / "models" / "ControlNetPreprocessor" / "openpose"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "yolox_l.onnx").write_bytes(b"half a download")
    (folder / "dw-ll_ucoco_384.onnx").write_bytes(b"half a download")
    r = client.post("/controlnet/detect", json={"controlnet_module": "dw_openpose_full",
                                                "controlnet_input_images": [_b64(_square())]})
    assert r.status_code == 422 and "yolox_l.onnx" in r.text, r.text
    assert client.get("/controlnet/version").json() == {"version": 3}


def _txt2img(client, units, **extra):
    body = {"prompt": "a red ball", "steps": 3, "width": SIZE, "height": SIZE, "seed": 5, "cfg_scale": 5,
            "sampler_name": "Euler", **extra}
    if units is not None:
        body["alwayson_scripts"] = {"controlnet": {"args": units}}
    return client.post("/sdapi/v1/txt2img", json=body)


def test_a_client_written_for_the_extension_runs_unchanged(client):
    """The extension's example payload (example/txt2img_example/api_txt2img.py): legacy `input_image`, no
    `enabled`, module and model by name."""
    unit = {"input_image": _b64(_square()), "module": "canny", "model": _canny_title(client), "weight": 1.0,
            "resize_mode": "Crop and Resize", "processor_res": 64, "threshold_a": 100, "threshold_b": 200,
            "guidance_start": 0.0, "guidance_end": 1.0, "control_mode": 0, "pixel_perfect": False}
    r = _txt2img(client, [unit])
    assert r.status_code == 200, r.text
    images = r.json()["images"]
    assert len(images) == 2  # the picture, then the detected map
    info = json.loads(r.json()["info"])
    assert "ControlNet 0: \"Module: canny, Model: control_v11p_sd15_canny" in info["infotexts"][0]
    plain = _txt2img(client, None).json()["images"][0]
    diff = np.abs(np.asarray(_image(images[0]), np.int16) - np.asarray(_image(plain), np.int16)).max()
    assert diff > 3  # the unit really guided the picture
    mapped = np.asarray(_image(images[1]).convert("L"))
    assert mapped.shape == (SIZE, SIZE) and mapped.max() == 255
    r = _txt2img(client, [{**unit, "save_detected_map": False}, {**unit, "enabled": False}])
    assert len(r.json()["images"]) == 1


@pytest.mark.parametrize("change,field", [
    ({"model": "control_v11p_sd15_depth"}, "controlnet[0].model"),
    ({"module": "no_such_module"}, "controlnet[0].module"),
    ({"guidance_start": 0.8, "guidance_end": 0.5}, "controlnet[0].guidance_start"),
    ({"weight": 5}, "controlnet[0].weight"),
    ({"input_image": "bm90IGFuIGltYWdl"}, "controlnet[0].input_image"),
    ({"model": "controlnet-canny-sdxl-1.0"}, "SDXL ControlNet"),
    ({"model": "None", "enabled": True}, "controlnet[0].model: ControlNet unit 0 is enabled but has no model"),
])
def test_bad_units_answer_422_naming_the_field(client, change, field):
    unit = {"input_image": _b64(_square()), "module": "canny", "model": _canny_title(client), **change}
    r = _txt2img(client, [unit])
    assert r.status_code == 422 and field in r.json()["detail"], r.text


def test_img2img_units_without_an_image_use_the_init_image(client):
    body = {"init_images": [_b64(_square())], "prompt": "a red ball", "steps": 3, "width": SIZE, "height": SIZE,
            "seed": 5, "denoising_strength": 0.8, "alwayson_scripts": {"ControlNet": {"args": [
                {"enabled": True, "module": "canny", "model": _canny_title(client), "processor_res": 64}]}}}
    r = client.post("/sdapi/v1/img2img", json=body)
    assert r.status_code == 200, r.text
    assert len(r.json()["images"]) == 2
    r = _txt2img(client, [{"module": "canny", "model": _canny_title(client)}])
    assert r.status_code == 422 and "controlnet[0].image" in r.text  # txt2img has no picture to fall back on


def test_detected_maps_are_saved_when_the_setting_asks(client, data):
    unit = {"image": _b64(_square()), "module": "canny", "model": _canny_title(client), "processor_res": 64}
    assert not (data / "detected_maps").exists()
    client.post("/sdapi/v1/options", json={"control_net_detectmap_autosaving": True})
    try:
        assert _txt2img(client, [unit]).status_code == 200
    finally:
        client.post("/sdapi/v1/options", json={"control_net_detectmap_autosaving": False})
    saved = list((data / "detected_maps" / "canny").glob("*.png"))
    assert len(saved) == 1 and Image.open(saved[0]).size == (SIZE, SIZE)


def test_the_controlnet_routes_honour_api_auth(tmp_path):
    ns = cmd_args.parse_args(["--data-dir", str(tmp_path), "--nowebui", "--api-auth", "ann:secret"], env={})
    with TestClient(server.create_app(server.build_context(ns))) as c:
        assert c.get("/controlnet/version").status_code == 401
        assert c.post("/controlnet/detect", json={}).status_code == 401
        assert c.get("/controlnet/version", auth=("ann", "secret")).json() == {"version": 3}


def test_only_masked_inpainting_cuts_the_units_input_to_the_masked_region(client):
    """The control map must line up with the part of the picture being redrawn: with "Only masked", the unit's
    input is cut to the same region (unless inpaint_crop_input_image is false, as in the extension)."""
    picture = Image.new("RGB", (128, 128), "black")
    ImageDraw.Draw(picture).rectangle((8, 8, 40, 40), fill="white")  # edges only in the top-left corner
    mask = Image.new("L", (128, 128), 0)
    mask.paste(255, (80, 80, 120, 120))  # redraw the bottom-right corner

    def detected(crop: bool):
        body = {"init_images": [_b64(picture)], "mask": _b64(mask), "inpaint_full_res": True,
                "inpaint_full_res_padding": 0, "prompt": "x", "steps": 2, "width": SIZE, "height": SIZE, "seed": 1,
                "alwayson_scripts": {"controlnet": {"args": [{
                    "module": "canny", "model": _canny_title(client), "processor_res": 64,
                    "inpaint_crop_input_image": crop}]}}}
        r = client.post("/sdapi/v1/img2img", json=body)
        assert r.status_code == 200, r.text
        return np.asarray(_image(r.json()["images"][-1]).convert("L"))

    assert detected(True).max() == 0  # the cut-out holds no edge
    assert detected(False).max() == 255  # the whole picture's square


def _set(client, **options):
    assert client.post("/sdapi/v1/options", json=options).status_code == 200


def test_controlnet_settings_do_what_they_say(client):
    unit = {"image": _b64(_square()), "module": "canny", "model": _canny_title(client), "processor_res": 64}
    _set(client, control_net_no_detectmap=True)
    try:
        assert len(_txt2img(client, [unit]).json()["images"]) == 1  # no map appended
    finally:
        _set(client, control_net_no_detectmap=False)
    assert _txt2img(client, [unit, {**unit, "model": "missing_model"}]).status_code == 422
    _set(client, controlnet_skip_failed_units=True)
    try:
        r = _txt2img(client, [unit, {**unit, "model": "missing_model"}])
        assert r.status_code == 200 and len(r.json()["images"]) == 2  # the good unit's picture and map
        assert any("controlnet[1].model" in w for w in json.loads(r.json()["info"])["warnings"])
    finally:
        _set(client, controlnet_skip_failed_units=False)
    _set(client, control_net_unit_count=5)
    try:
        assert client.get("/controlnet/settings").json() == {"control_net_unit_count": 5}
    finally:
        _set(client, control_net_unit_count=3)


def test_controlnet_folder_flags(tmp_path, load_tiny):
    model = load_tiny("sd1.safetensors")
    extra, annotators = tmp_path / "my-controlnets", tmp_path / "my-annotators"
    extra.mkdir()
    annotators.mkdir()
    tc.write_diffusers_file(tc.build_controlnet(model.unet, 3), extra / "control_extra.safetensors")
    ns = cmd_args.parse_args(["--data-dir", str(tmp_path / "data"), "--nowebui", "--controlnet-dir", str(extra),
                              "--controlnet-annotator-models-path", str(annotators)], env={})
    with TestClient(server.create_app(server.build_context(ns))) as c:
        assert any(m.startswith("control_extra [") for m in c.get("/controlnet/model_list").json()["model_list"])
        r = c.post("/controlnet/detect", json={"controlnet_module": "softedge_hed",
                                               "controlnet_input_images": [_b64(_square())]})
        assert r.status_code == 422 and "my-annotators" in r.json()["detail"]  # looked for its weights there

"""Extensions that drive ControlNet from Python (ADetailer, AnimateDiff, …) through the sd-webui-controlnet
extension's `external_code` module: they find it as they do in A1111, see the units a client sent, and a unit they
set draws exactly what the same unit sent through the API draws."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests import ext_fixtures
from tests import tiny_controlnets as tc

SIZE = 64

# Imports external_code both ways real extensions do: ADetailer's (the active extension whose name holds
# "sd-webui-controlnet", imported by its folder path) and `from scripts import external_code`.
CN_USER = {
    "scripts/cn_user.py": '''
import importlib
import sys
from pathlib import Path

from modules import extensions, scripts

SEEN = []


def by_path():
    ext = next(e for e in extensions.active() if "sd-webui-controlnet" in e.name)
    root = Path(ext.path)
    if str(root.parent.parent) not in sys.path:
        sys.path.append(str(root.parent.parent))
    return importlib.import_module(".".join(root.parts[-2:]) + ".scripts.external_code")


class CnUser(scripts.Script):
    set_units = None  # the test puts unit dicts here

    def title(self):
        return "cn user"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def before_process(self, p, *args):
        from scripts import external_code
        SEEN[:] = [external_code.get_all_units_in_processing(p), by_path().ControlNetUnit is external_code.ControlNetUnit]
        if self.set_units is not None:
            cn = by_path()
            external_code.update_cn_script_in_processing(p, [cn.ControlNetUnit(**u) for u in self.set_units])
''',
    "metadata.ini": "[Extension]\nName = cn-user\n",
}


def _square() -> Image.Image:
    im = Image.new("RGB", (SIZE, SIZE), "black")
    ImageDraw.Draw(im).rectangle((16, 16, 47, 47), fill="white")
    return im


def _b64(im: Image.Image) -> str:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def setup(tiny_models, load_tiny, tmp_path_factory):
    from fastapi.testclient import TestClient

    from modules import cmd_args
    from modules.server import AppContext, create_app

    engine, _ = ext_fixtures.extension_engine(tiny_models, tmp_path_factory.mktemp("cn-external"),
                                              {"cn-user": CN_USER}, builtin=True)
    nets = engine.paths.data_dir / "models" / "ControlNet"
    nets.mkdir(parents=True, exist_ok=True)
    sd1 = load_tiny("sd1.safetensors")
    tc.write_original(tc.build_controlnet(sd1.unet, 1), sd1.unet, nets / "control_v11p_sd15_canny.pth")
    ns = cmd_args.parse_args(["--data-dir", str(engine.paths.data_dir), "--skip-install", "--nowebui"], env={})
    with TestClient(create_app(AppContext(args=ns, engine=engine))) as client:
        # the class the server's scripts were made from (the server loads the extensions again as it starts)
        script = type(next(s for s in engine.scripts.txt2img.alwayson_scripts if s.title() == "cn user"))
        title = next(m for m in client.get("/controlnet/model_list").json()["model_list"] if "canny" in m)
        yield client, script, title
    script.set_units = None


def _seen():
    import sys

    return sys.modules["cn_user.py"].SEEN


def _txt2img(client, units=None, status=200):
    payload = {"prompt": "a red circle", "steps": 3, "width": SIZE, "height": SIZE, "seed": 5,
               "sampler_name": "Euler", "cfg_scale": 5}
    if units is not None:
        payload["alwayson_scripts"] = {"controlnet": {"args": units}}
    r = client.post("/sdapi/v1/txt2img", json=payload)
    assert r.status_code == status, r.text
    return r.json()


def _pixels(answer) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["images"][0]))).convert("RGB"), dtype=np.int16)


def test_an_extension_sees_the_units_a_client_sent(setup):
    client, script, title = setup
    script.set_units = None
    _txt2img(client, [{"enabled": True, "model": title, "module": "canny", "weight": 0.7,
                      "image": _b64(_square()), "control_mode": "ControlNet is more important"}])
    units, same_class = _seen()
    assert same_class  # both import paths give the one module
    assert len(units) == 3 and [u.enabled for u in units] == [True, False, False]  # padded to the unit count
    first = units[0]
    assert (first.model, first.module, first.weight) == (title, "canny", 0.7)
    assert first.control_mode.value == "ControlNet is more important"
    assert first.image["image"].shape == (SIZE, SIZE, 3) and first.image["image"][32, 32].tolist() == [255, 255, 255]

    _txt2img(client)
    assert [u.enabled for u in _seen()[0]] == [False, False, False]


def test_a_unit_an_extension_sets_draws_what_the_same_api_unit_draws(setup):
    client, script, title = setup
    unit = {"enabled": True, "model": title, "module": "canny", "weight": 1.0, "guidance_end": 0.8}
    script.set_units = None
    plain = _txt2img(client)
    through_api = _txt2img(client, [{**unit, "image": _b64(_square())}])
    script.set_units = [{**unit, "image": np.asarray(_square())}]
    try:
        from_extension = _txt2img(client)
    finally:
        script.set_units = None
    assert np.abs(_pixels(from_extension) - _pixels(through_api)).max() == 0
    assert np.abs(_pixels(from_extension) - _pixels(plain)).max() > 10  # the unit really steered it
    assert "ControlNet 0" in from_extension["info"] and "Module: canny" in from_extension["info"]


def test_a_bad_unit_from_an_extension_is_a_request_error_naming_the_field(setup):
    client, script, title = setup
    script.set_units = [{"enabled": True, "model": title, "module": "canny", "weight": 3.0,
                         "image": np.asarray(_square())}]
    try:
        answer = _txt2img(client, status=422)
    finally:
        script.set_units = None
    assert "controlnet[0].weight" in str(answer)
    _txt2img(client)  # and the next request is fine


def test_a_p_object_an_extension_builds_itself_generates(setup):
    from modules import processing

    p = processing.StableDiffusionProcessingTxt2Img(prompt="a red circle", steps=2, width=SIZE, height=SIZE,
                                                    do_not_save_samples=True, do_not_save_grid=True)
    result = processing.process_images(p)
    assert len(result.images) == 1 and result.images[0].size == (SIZE, SIZE)


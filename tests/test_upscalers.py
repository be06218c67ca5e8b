"""Model upscalers (spandrel), tiling, Extras and its API, and hires fix with a model upscaler.

Two tiny random-weight upscalers are written in real on-disk formats: an ESRGAN (RRDBNet) in Real-ESRGAN's
`params_ema` key layout as `.pth`, and a Real-ESRGAN Compact (SRVGGNetCompact, 2×) as `.safetensors`.
"""
from __future__ import annotations

import base64
import dataclasses
import io
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin
from safetensors.torch import save_file

from modules import postprocessing
from modules.upscaling import UnknownUpscalerError, UpscalerLoadError, UpscalerRegistry
from modules.upscaling.tiling import plan_tiles

ESRGAN_NAME, COMPACT_NAME = "4x-tiny-esrgan", "2x-tiny-compact"
INFOTEXT = "a castle\nSteps: 2, Sampler: Euler a, Seed: 42, Size: 40x28"


def _real_esrgan_layout(old: dict[str, torch.Tensor]) -> dict:
    """ESRGAN's `model.N…` keys → Real-ESRGAN's (basicsr) `conv_first`, `body.i.rdbN…`, … under `params_ema`."""
    tail = {"model.3": "conv_up1", "model.6": "conv_up2", "model.8": "conv_hr", "model.10": "conv_last",
            "model.0": "conv_first"}
    n_blocks = 1 + max(int(m.group(1)) for k in old if (m := re.match(r"model\.1\.sub\.(\d+)\.RDB", k)))
    new = {}
    for key, value in old.items():
        prefix, kind = key.rsplit(".", 1)
        if m := re.match(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0$", prefix):
            new[f"body.{m[1]}.rdb{m[2]}.conv{m[3]}.{kind}"] = value
        elif prefix == f"model.1.sub.{n_blocks}":
            new[f"conv_body.{kind}"] = value
        else:
            new[f"{tail[prefix]}.{kind}"] = value
    return {"params_ema": new}


def _tiny_esrgan() -> torch.nn.Module:
    from spandrel.architectures.ESRGAN import ESRGAN  # imported when used: spandrel costs every worker 2 s to collect

    torch.manual_seed(0)
    model = ESRGAN(num_filters=8, num_blocks=1, scale=4).eval()
    with torch.no_grad():  # larger weights so the output varies like an image instead of sitting near one grey
        for conv in model.modules():
            if isinstance(conv, torch.nn.Conv2d):
                conv.weight.mul_(2.0)
        model.model[-1].bias.fill_(0.5)
    return model


class _TouchOnLoad:
    """A pickle that would create a file when unpickled by an unsafe loader."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return Path.touch, (self.path,)


@pytest.fixture(scope="module")
def upscaler_files(tmp_path_factory):
    models = tmp_path_factory.mktemp("upscalers")
    (models / "ESRGAN").mkdir()
    (models / "RealESRGAN").mkdir()
    esrgan = _tiny_esrgan()
    torch.save(_real_esrgan_layout(esrgan.state_dict()), models / "ESRGAN" / f"{ESRGAN_NAME}.pth")
    torch.manual_seed(1)
    from spandrel.architectures.Compact import Compact

    save_file(Compact(num_feat=8, num_conv=2, upscale=2).state_dict(),
              models / "RealESRGAN" / f"{COMPACT_NAME}.safetensors")
    (models / "ESRGAN" / "broken.pth").write_bytes(b"not a model at all")
    save_file({"weight": torch.zeros(3, 3)}, models / "RealESRGAN" / "not-an-upscaler.safetensors")
    marker = models / "pwned"
    with open(models / "ESRGAN" / "evil.pth", "wb") as f:
        pickle.dump({"weight": _TouchOnLoad(marker)}, f)
    return models, esrgan, marker


@pytest.fixture(scope="module")
def registry(upscaler_files):
    models = upscaler_files[0]
    return UpscalerRegistry([models / "ESRGAN", models / "RealESRGAN", models / "DAT"])


def _picture(width=40, height=28, infotext: str | None = INFOTEXT) -> Image.Image:
    """A smooth test picture carrying an infotext, as PNG Info would read it from a file."""
    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 255, (7, 10, 3), dtype=np.uint8))
    image = small.resize((width, height), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    info = PngImagePlugin.PngInfo()
    if infotext:
        info.add_text("parameters", infotext)
    image.save(buf, format="PNG", pnginfo=info)
    buf.seek(0)
    return Image.open(buf)


def _b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    info = PngImagePlugin.PngInfo()
    for k, v in image.info.items():
        if isinstance(v, str):
            info.add_text(k, v)
    image.save(buf, format="PNG", pnginfo=info)
    return base64.b64encode(buf.getvalue()).decode()


def _decode(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


# -- the registry ------------------------------------------------------------------------------------------------


def test_lists_builtins_and_model_files(registry, upscaler_files):
    names = registry.names()
    assert names[:3] == ["None", "Lanczos", "Nearest"]
    assert {ESRGAN_NAME, COMPACT_NAME, "broken", "not-an-upscaler"} <= set(names)
    item = next(u.to_api() for u in registry.list() if u.name == ESRGAN_NAME)
    assert item == {"name": ESRGAN_NAME, "model_name": "ESRGAN", "model_url": None, "scale": 4,
                    "model_path": str(upscaler_files[0] / "ESRGAN" / f"{ESRGAN_NAME}.pth")}
    assert registry.load(COMPACT_NAME).scale == 2 and registry.load(COMPACT_NAME) is registry.load(COMPACT_NAME)
    assert registry.load(ESRGAN_NAME).architecture == "ESRGAN"


def test_real_esrgan_file_runs_the_same_network(registry, upscaler_files):
    """The Real-ESRGAN key layout is converted by spandrel into the very network that was saved."""
    tile = np.asarray(_picture(16, 12).convert("RGB"))
    x = torch.from_numpy(tile.transpose(2, 0, 1).copy()).float().unsqueeze(0) / 255
    with torch.no_grad():
        expected = (upscaler_files[1](x).clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255).round()
    got = registry.load(ESRGAN_NAME)(tile).astype(float)
    assert got.shape == (48, 64, 3) and np.abs(got - expected).max() <= 1
    assert got.std() > 10  # an image, not a flat grey


def test_scale_by_and_scale_to_sizes(registry):
    picture = _picture()
    by = postprocessing.upscale(picture, ESRGAN_NAME, 2.0, registry=registry)
    assert by.image.size == (80, 56)  # 4× by the model, then Lanczos down to 2×
    lanczos = postprocessing.upscale(picture, "Lanczos", 2.0, registry=registry)
    assert np.abs(np.asarray(by.image, float) - np.asarray(lanczos.image, float)).mean() > 5  # the model ran
    three = postprocessing.upscale(picture, COMPACT_NAME, 3.0, registry=registry)  # two 2× passes, then down
    assert three.image.size == (120, 84)
    to = postprocessing.upscale(picture, COMPACT_NAME, width=100, height=50, registry=registry)
    assert to.image.size == (100, 50) and to.params["Postprocess upscale to"] == "100x50"
    uncropped = postprocessing.upscale(picture, COMPACT_NAME, width=100, height=50, crop=False, registry=registry)
    assert uncropped.image.size == (100, 70)
    blended = postprocessing.upscale(picture, ESRGAN_NAME, 2.0, upscaler_2="Nearest", upscaler_2_visibility=0.5,
                                     registry=registry)
    assert blended.params["Postprocess upscaler 2"] == "Nearest" and blended.image.size == (80, 56)


def test_infotext_kept_and_upscale_parameters_added(registry, tmp_path):
    done = postprocessing.upscale(_picture(), ESRGAN_NAME, 2.0, registry=registry)
    assert done.original_infotext == INFOTEXT
    assert done.image.info["parameters"] == INFOTEXT
    assert done.image.info["postprocessing"] == f"Postprocess upscale by: 2, Postprocess upscaler: {ESRGAN_NAME}"
    settings = {"samples_format": "png"}
    first = postprocessing.save_upscaled(done, tmp_path, settings)
    second = postprocessing.save_upscaled(done, tmp_path, settings)
    assert (first.name, second.name) == ("00000.png", "00001.png")
    with Image.open(first) as saved:
        assert saved.size == (80, 56) and saved.info["parameters"] == INFOTEXT
        assert f"Postprocess upscaler: {ESRGAN_NAME}" in saved.info["postprocessing"]
    done.name = "photo.jpg"  # batches keep the input's name (use_original_name_batch)
    assert postprocessing.save_upscaled(done, tmp_path, settings).name == "photo.png"


@pytest.mark.parametrize("name", [ESRGAN_NAME, COMPACT_NAME])
def test_tiling_matches_untiled(registry, name):
    picture = _picture(44, 30)
    assert len(plan_tiles(44, 30, 16, 4)) == 15  # 5 × 3
    whole = np.asarray(registry.upscale_to(picture, name, 88, 60, tile=0), dtype=float)
    tiled = np.asarray(registry.upscale_to(picture, name, 88, 60, tile=16, overlap=4), dtype=float)
    assert tiled.shape == whole.shape == (60, 88, 3)
    assert np.abs(tiled - whole).mean() < 0.5 and np.abs(tiled - whole).max() <= 8


def test_tiles_cover_the_image_once():
    tiles = plan_tiles(100, 37, 32, 8)
    covered = np.zeros((37, 100), int)
    for t in tiles:
        x0, y0, x1, y1 = t.core
        covered[y0:y1, x0:x1] += 1
        wx0, wy0, wx1, wy1 = t.window
        assert wx0 <= x0 and wy0 <= y0 and wx1 >= x1 and wy1 >= y1 and wx1 - wx0 <= 32 and wy1 - wy0 <= 32
    assert (covered == 1).all()


def test_bad_files_and_names_are_clear_errors(registry, upscaler_files):
    with pytest.raises(UpscalerLoadError, match="broken.pth"):
        registry.load("broken")
    with pytest.raises(UpscalerLoadError, match="not-an-upscaler.safetensors"):
        registry.load("not-an-upscaler")
    with pytest.raises(UpscalerLoadError, match="evil.pth"):
        registry.load("evil")
    assert not upscaler_files[2].exists()  # the pickle's payload never ran
    with pytest.raises(UnknownUpscalerError, match=f"R-ESRGAN 8x.*not found; available: .*{ESRGAN_NAME}"):
        postprocessing.upscale(_picture(), "R-ESRGAN 8x", 2.0, registry=registry)


class _Settings(dict):
    def get(self, key, default=None):
        return super().get(key, default)


def test_real_esrgan_models_are_offered_by_a1111s_names_and_downloaded_on_first_use(tmp_path, monkeypatch):
    """A1111's Real-ESRGAN list: the enabled ones (setting `realesrgan_enabled_models`; default the two 4x+) are
    offered before their files exist; the first use downloads the release file into models/RealESRGAN (here from a
    loopback server standing in for GitHub), later uses and lists take the file; offline, the error says what to
    download and where to put it."""
    import http.server
    import threading

    from spandrel.architectures.Compact import Compact

    from modules.upscaling import UpscalerDownloadError, realesrgan

    site = tmp_path / "site" / "v0.1.0"
    site.mkdir(parents=True)
    torch.manual_seed(2)
    torch.save({"params": Compact(num_feat=8, num_conv=2, upscale=4).state_dict()}, site / "RealESRGAN_x4plus.pth")
    hits = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(tmp_path / "site"), **kw)

        def do_GET(self):
            hits.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(realesrgan, "RELEASES", f"http://127.0.0.1:{server.server_port}")
        folder = tmp_path / "models" / "RealESRGAN"  # not made yet, as on a fresh install
        registry = UpscalerRegistry([tmp_path / "models" / "ESRGAN", folder])
        offered = {u.name: u for u in registry.list()}
        assert [n for n in offered if n.startswith("R-ESRGAN")] == ["R-ESRGAN 4x+", "R-ESRGAN 4x+ Anime6B"]
        assert offered["R-ESRGAN 4x+"].to_api()["model_url"].endswith("/v0.1.0/RealESRGAN_x4plus.pth")

        out = registry.upscale(_picture(), "R-ESRGAN 4x+", 2.0)
        assert out.size == (80, 56) and (folder / "RealESRGAN_x4plus.pth").is_file()
        assert hits == ["/v0.1.0/RealESRGAN_x4plus.pth"]
        registry.upscale(_picture(), "R-ESRGAN 4x+", 2.0)
        fresh = UpscalerRegistry([folder], settings=_Settings(realesrgan_enabled_models=["R-ESRGAN 2x+"]))
        assert fresh.upscale(_picture(), "R-ESRGAN 4x+", 2.0).size == (80, 56) and len(hits) == 1  # never again
        by_name = {u.name: u for u in fresh.list()}
        assert by_name["R-ESRGAN 4x+"].url is None and by_name["R-ESRGAN 2x+"].url is not None
        assert "R-ESRGAN 4x+ Anime6B" not in by_name  # not enabled, not there
    finally:
        server.shutdown()
        server.server_close()

    monkeypatch.setattr(realesrgan, "RELEASES", f"http://127.0.0.1:{server.server_port}")  # nothing answers now
    with pytest.raises(UpscalerDownloadError, match=f"R-ESRGAN 2x\\+ needs RealESRGAN_x2plus.pth.*{folder}"):
        fresh.upscale(_picture(), "R-ESRGAN 2x+", 2.0)


# -- through the engine and the HTTP API ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api_client(tmp_path_factory, tiny_models, upscaler_files):
    from fastapi.testclient import TestClient

    from modules import cmd_args
    from modules.engine import Engine
    from modules.paths import Paths
    from modules.server import AppContext, create_app

    data = tmp_path_factory.mktemp("extras-data")
    (data / "models" / "Stable-diffusion").mkdir(parents=True)
    os.symlink(tiny_models.path("sd1.safetensors"), data / "models" / "Stable-diffusion" / "sd1.safetensors")
    for folder in ("ESRGAN", "RealESRGAN"):
        os.symlink(upscaler_files[0] / folder, data / "models" / folder)
    ns = cmd_args.parse_args(["--data-dir", str(data), "--skip-install", "--nowebui", "--api"], env={})
    engine = Engine.create(Paths.from_args(ns))
    with TestClient(create_app(AppContext(args=ns, engine=engine))) as client:
        client.engine = engine
        yield client


def test_api_lists_upscalers_and_the_face_restorers(api_client):
    ups = api_client.get("/sdapi/v1/upscalers").json()
    assert [u["name"] for u in ups][:3] == ["None", "Lanczos", "Nearest"]
    model = next(u for u in ups if u["name"] == ESRGAN_NAME)
    assert model["model_name"] == "ESRGAN" and model["model_path"].endswith(f"{ESRGAN_NAME}.pth")
    assert [r["name"] for r in api_client.get("/sdapi/v1/face-restorers").json()] == ["CodeFormer", "GFPGAN"]


def test_api_extras_with_model_upscalers(api_client):
    r = api_client.post("/sdapi/v1/extra-single-image", json={
        "image": _b64(_picture()), "upscaler_1": ESRGAN_NAME, "upscaling_resize": 2})
    assert r.status_code == 200, r.text
    out = _decode(r.json()["image"])
    assert out.size == (80, 56) and out.info["parameters"] == INFOTEXT
    assert f"Postprocess upscaler: {ESRGAN_NAME}" in r.json()["html_info"]
    r = api_client.post("/sdapi/v1/extra-batch-images", json={
        "upscaler_1": COMPACT_NAME, "resize_mode": 1, "upscaling_resize_w": 60, "upscaling_resize_h": 60,
        "imageList": [{"data": _b64(_picture()), "name": "a.png"}, {"data": _b64(_picture(20, 20)), "name": "b"}]})
    assert r.status_code == 200, r.text
    assert [_decode(b).size for b in r.json()["images"]] == [(60, 60), (60, 60)]


@pytest.mark.parametrize("body,status,message", [
    ({"upscaler_1": "R-ESRGAN 8x"}, 400, "R-ESRGAN 8x"),
    ({"upscaler_1": "broken"}, 422, "broken.pth"),
    ({"upscaler_1": ESRGAN_NAME, "codeformer_visibility": 0.5}, 400, "codeformer-v0.1.0.pth"),  # not brought
])
def test_api_extras_bad_input(api_client, body, status, message):
    r = api_client.post("/sdapi/v1/extra-single-image", json={"image": _b64(_picture()), **body})
    assert r.status_code == status and message in r.json()["detail"]


@pytest.mark.slow
def test_hires_fix_with_a_model_upscaler(api_client):
    base = {"prompt": "castle", "steps": 1, "width": 64, "height": 64, "seed": 5, "enable_hr": True,
            "hr_scale": 1.5, "hr_second_pass_steps": 1, "denoising_strength": 0.5}
    r = api_client.post("/sdapi/v1/txt2img", json={**base, "hr_upscaler": ESRGAN_NAME})
    assert r.status_code == 200, r.text
    assert _decode(r.json()["images"][0]).size == (96, 96)
    assert f"Hires upscaler: {ESRGAN_NAME}" in r.json()["info"]
    r = api_client.post("/sdapi/v1/txt2img", json={**base, "hr_upscaler": "4x-missing"})
    assert r.status_code == 400 and ESRGAN_NAME in r.json()["detail"]


def test_use_cpu_keeps_the_named_upscalers_and_face_restorers_on_the_cpu(upscaler_files):
    """--use-cpu esrgan / gfpgan / all (A1111's names): those networks load on the CPU in fp32 whatever the
    engine's device; others go to the engine's device (here a stand-in device, `meta`)."""
    from modules import devices
    from modules.face_restoration import FaceRestorers
    from modules.upscaling.model import load_upscaler

    path = upscaler_files[0] / "ESRGAN" / f"{ESRGAN_NAME}.pth"
    gpu = devices.DeviceConfig(device=torch.device("meta"), dtype=torch.float16, vae_dtype=torch.float16)
    assert load_upscaler(path, gpu).descriptor.device.type == "meta"
    for flags in (("esrgan",), ("all",)):
        kept = load_upscaler(path, dataclasses.replace(gpu, cpu_modules=flags)).descriptor
        assert (kept.device.type, kept.dtype) == ("cpu", torch.float32)
    assert load_upscaler(path, dataclasses.replace(gpu, cpu_modules=("swinir",))).descriptor.device.type == "meta"
    assert devices.from_flags(use_cpu=["esrgan", "gfpgan"]).cpu_modules == ("esrgan", "gfpgan")

    faces = FaceRestorers([], [], device=torch.device("meta"), cpu_modules=("gfpgan",))
    assert faces.device_for("GFPGAN").type == "cpu" and faces.device_for("CodeFormer").type == "meta"


def test_api_says_503_with_the_reason_when_a_real_esrgan_download_fails(api_client, monkeypatch):
    """Offline, Extras with a listed Real-ESRGAN model not downloaded yet: 503 naming the file and its folder (the
    server is fine; the network is not), nothing left behind."""
    from modules.upscaling import realesrgan

    monkeypatch.setattr(realesrgan, "RELEASES", "http://127.0.0.1:9/releases")  # the discard port: refused
    r = api_client.post("/sdapi/v1/extra-single-image", json={"image": _b64(_picture()), "upscaler_1": "R-ESRGAN 4x+"})
    assert r.status_code == 503, r.text
    assert "RealESRGAN_x4plus.pth" in r.json()["detail"] and "RealESRGAN" in r.json()["detail"]
    assert api_client.get("/sdapi/v1/upscalers").status_code == 200  # and it goes on answering

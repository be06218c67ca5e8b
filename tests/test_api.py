"""The A1111-compatible HTTP API (/sdapi/v1), over HTTP against the app `python launch.py --api` serves
(tests/servers.py; `--api-server-stop` against launch.py itself) with the tiny models: every route, concurrency,
interrupt, options, model switching, auth, bad inputs, and a schema fuzz."""
from __future__ import annotations

import base64
import io
import json
import os
import threading
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image, PngImagePlugin

from tests.servers import Server as InProcessServer
from tests.test_launch import Server, free_port

FAST = {"steps": 2, "width": 64, "height": 64}


def b64png(image: Image.Image, infotext: str | None = None) -> str:
    info = PngImagePlugin.PngInfo()
    if infotext:
        info.add_text("parameters", infotext)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return base64.b64encode(buf.getvalue()).decode()


def decode(b64: str) -> Image.Image:
    im = Image.open(io.BytesIO(base64.b64decode(b64)))
    im.load()
    return im


def _data_dir(root: Path, tiny_models) -> Path:
    ckpt = root / "models" / "Stable-diffusion"
    ckpt.mkdir(parents=True)
    for name in ("sd1.safetensors", "sdxl.safetensors"):
        os.symlink(tiny_models.path(name), ckpt / name)
    return root


@pytest.fixture(scope="module")
def api(tmp_path_factory, tiny_models):
    data = _data_dir(tmp_path_factory.mktemp("apidata"), tiny_models)
    srv = InProcessServer(data, tmp_path_factory.mktemp("apilog") / "server.log").start("--api")
    client = httpx.Client(base_url=srv.url + "/sdapi/v1", timeout=120)
    client.data_dir = data
    client.srv = srv
    client.root = srv.url
    # pin the checkpoint so the tests do not depend on the listing order
    titles = [m["title"] for m in client.get("/sd-models").json()]
    sd1 = next(t for t in titles if t.startswith("sd1"))
    assert client.post("/options", json={"sd_model_checkpoint": sd1}).status_code == 200
    yield client
    client.close()
    srv.stop()


def txt2img(client, **fields):
    r = client.post("/txt2img", json={**FAST, **fields})
    assert r.status_code == 200, r.text
    return r.json()


def assert_healthy(client):
    r = client.get("/progress")
    assert r.status_code == 200 and "progress" in r.json()


# ---------------------------------------------------------------------------------------------------------------
# Generation


@pytest.mark.slow
def test_txt2img_image_info_and_echo(api):
    body = {**FAST, "prompt": "a red cube", "negative_prompt": "blurry", "seed": 1234, "cfg_scale": 5,
            "sampler_name": "Euler a", "unknown_field": 1}
    r = api.post("/txt2img", json=body)
    assert r.status_code == 200, r.text
    assert float(r.headers["X-Process-Time"]) >= 0
    out = r.json()
    assert len(out["images"]) == 1
    im = decode(out["images"][0])
    assert im.size == (64, 64)
    text = im.info["parameters"]
    assert text.startswith("a red cube\nNegative prompt: blurry\n") and "Seed: 1234" in text
    assert "Sampler: Euler a" in text and "Size: 64x64" in text
    params = out["parameters"]
    for k in ("prompt", "negative_prompt", "seed", "steps", "width", "height", "sampler_name"):
        assert params[k] == body[k]
    assert params["cfg_scale"] == 5 and params["sampler_index"] == "Euler" and "unknown_field" not in params
    info = json.loads(out["info"])
    assert info["seed"] == 1234 and info["all_seeds"] == [1234] and info["width"] == 64 and info["steps"] == 2
    assert info["sampler_name"] == "Euler a" and info["sd_model_name"] == "sd1"
    assert info["infotexts"] == [text] and info["index_of_first_image"] == 0
    # save_images defaults to false: nothing written
    outputs = api.data_dir / "outputs"
    assert not any(p.is_file() for p in outputs.rglob("*")) if outputs.exists() else True


@pytest.mark.slow
def test_txt2img_batch_send_images_and_save(api):
    out = txt2img(api, seed=5, batch_size=2, send_images=False)
    assert out["images"] == [] and json.loads(out["info"])["all_seeds"] == [5, 6]
    out = txt2img(api, seed=9, save_images=True)
    saved = [p for p in (api.data_dir / "outputs").rglob("*.png")]
    assert saved and "Seed: 9" in Image.open(saved[0]).info["parameters"]
    for p in saved:
        p.unlink()


def test_txt2img_infotext_fills_unset_fields(api):
    text = "a green sphere\nNegative prompt: ugly\nSteps: 3, Sampler: Euler, CFG scale: 4.5, Seed: 77, Size: 64x64"
    out = txt2img(api, infotext=text, steps=2, width=64)
    info = json.loads(out["info"])
    assert info["prompt"] == "a green sphere" and info["negative_prompt"] == "ugly"
    assert info["seed"] == 77 and info["cfg_scale"] == 4.5 and info["height"] == 64
    assert info["steps"] == 2  # set in the request: kept


@pytest.mark.slow
def test_img2img_data_uri_and_mask(api):
    src = decode(txt2img(api, seed=3)["images"][0])
    init = "data:image/png;base64," + b64png(src)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    r = api.post("/img2img", json={**FAST, "init_images": [init], "denoising_strength": 0.6, "seed": 11,
                                   "mask": b64png(mask), "inpaint_full_res": False})
    assert r.status_code == 200, r.text
    out = r.json()
    assert decode(out["images"][0]).size == (64, 64)
    assert out["parameters"]["init_images"] is None and out["parameters"]["mask"] is None
    assert out["parameters"]["denoising_strength"] == 0.6
    info = json.loads(out["info"])
    assert info["seed"] == 11 and "Denoising strength: 0.6" in info["infotexts"][0]
    out = api.post("/img2img", json={**FAST, "init_images": [init], "include_init_images": True}).json()
    assert out["parameters"]["init_images"] == [init]


@pytest.mark.slow
def test_two_concurrent_requests_each_get_their_own_seed(api):
    results = {}

    def run(seed):
        results[seed] = api.post("/txt2img", json={**FAST, "seed": seed, "prompt": f"p{seed}"})

    threads = [threading.Thread(target=run, args=(s,)) for s in (101, 202)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for seed, r in results.items():
        assert r.status_code == 200, r.text
        info = json.loads(r.json()["info"])
        assert info["seed"] == seed and info["prompt"] == f"p{seed}"
        assert f"Seed: {seed}" in decode(r.json()["images"][0]).info["parameters"]
    assert len(results) == 2


def test_interrupt_long_job_returns_finished_images(api):
    n_iter = 40
    box = {}  # 10 steps each: several seconds in all, so the interrupt finds it running
    body = {**FAST, "steps": 10, "n_iter": n_iter, "seed": 1}
    t = threading.Thread(target=lambda: box.update(r=api.post("/txt2img", json=body)))
    t.start()
    deadline = time.time() + 60
    seen = None
    while time.time() < deadline:
        p = api.get("/progress").json()
        if p["state"]["job_no"] >= 1:
            seen = p
            break
        time.sleep(0.05)
    assert seen is not None, "the job never progressed"
    assert 0 < seen["progress"] < 1 and seen["state"]["job_count"] == n_iter and seen["state"]["job"]
    assert set(seen["state"]) >= {"skipped", "interrupted", "job", "job_count", "job_timestamp", "job_no",
                                  "sampling_step", "sampling_steps"}
    assert api.post("/skip").status_code == 200
    assert api.post("/interrupt").json() == {}
    t.join(60)
    r = box["r"]
    assert r.status_code == 200, r.text
    n = len(r.json()["images"])
    assert 1 <= n < n_iter
    idle = api.get("/progress", params={"skip_current_image": True}).json()
    assert idle["progress"] == 0 and idle["current_image"] is None


# ---------------------------------------------------------------------------------------------------------------
# Options and models


def test_options_round_trip_and_flags(api):
    opts = api.get("/options").json()
    assert opts["samples_format"] == "png" and "sd_model_checkpoint" in opts
    assert api.post("/options", json={"samples_format": "jpg", "jpeg_quality": 70}).status_code == 200
    now = api.get("/options").json()
    assert now["samples_format"] == "jpg" and now["jpeg_quality"] == 70
    stored = json.loads((api.data_dir / "config.json").read_text())
    assert stored["samples_format"] == "jpg"
    r = api.post("/options", json={"samples_format": "png", "jpeg_quality": "very high"})
    assert r.status_code == 400 and "jpeg_quality" in r.json()["detail"]
    assert api.get("/options").json()["samples_format"] == "jpg"  # nothing applied from a bad request
    assert api.post("/options", json={"samples_format": opts["samples_format"],
                                      "jpeg_quality": opts["jpeg_quality"]}).status_code == 200
    assert api.get("/options").json()["samples_format"] == "png"
    flags = api.get("/cmd-flags").json()
    assert flags["api"] is True and flags["nowebui"] is False and "port" in flags


@pytest.mark.slow
def test_model_switch_via_options(api):
    models = api.get("/sd-models").json()
    assert {m["model_name"] for m in models} == {"sd1", "sdxl"}
    for m in models:
        assert set(m) == {"title", "model_name", "hash", "sha256", "filename", "config", "family"}
        assert m["family"] == {"sd1": "SD 1.x", "sdxl": "SDXL"}[m["model_name"]]
    sdxl = next(m for m in models if m["model_name"] == "sdxl")
    before = api.get("/options").json()["sd_model_checkpoint"]
    r = api.post("/options", json={"sd_model_checkpoint": "sdxl"})
    assert r.status_code == 200, r.text
    title = api.get("/options").json()["sd_model_checkpoint"]
    assert title.startswith("sdxl.safetensors")
    assert json.loads((api.data_dir / "config.json").read_text())["sd_model_checkpoint"] == title
    info = json.loads(txt2img(api, seed=1)["info"])
    assert info["sd_model_name"] == "sdxl"
    if sdxl["hash"]:
        assert info["sd_model_hash"] == sdxl["hash"]
    r = api.post("/options", json={"sd_model_checkpoint": "no-such-model.safetensors"})
    assert r.status_code == 400 and "no-such-model.safetensors" in r.json()["detail"]
    assert api.post("/options", json={"sd_model_checkpoint": before}).status_code == 200
    assert json.loads(txt2img(api)["info"])["sd_model_name"] == "sd1"
    # per-request override, restored afterwards
    info = json.loads(txt2img(api, override_settings={"sd_model_checkpoint": "sdxl"})["info"])
    assert info["sd_model_name"] == "sdxl"
    assert api.get("/options").json()["sd_model_checkpoint"] == before


def test_model_routes(api):
    assert api.post("/refresh-checkpoints").status_code == 200
    assert api.post("/unload-checkpoint").status_code == 200
    assert api.post("/reload-checkpoint").status_code == 200
    for route in ("refresh-vae", "refresh-loras", "refresh-embeddings"):
        assert api.post(f"/{route}").status_code == 200
    assert txt2img(api)["images"]


def test_list_routes(api):
    samplers = api.get("/samplers").json()
    euler = next(s for s in samplers if s["name"] == "Euler a")
    assert set(euler) == {"name", "aliases", "options"} and "k_euler_a" in euler["aliases"]
    scheds = api.get("/schedulers").json()
    assert {"name", "label", "aliases", "default_rho", "need_inner_model"} <= set(scheds[0])
    assert any(s["label"] == "Karras" for s in scheds)
    ups = api.get("/upscalers").json()
    assert {u["name"] for u in ups} >= {"None", "Lanczos", "Nearest"}
    assert set(ups[0]) == {"name", "model_name", "model_path", "model_url", "scale"}
    assert {m["name"] for m in api.get("/latent-upscale-modes").json()} >= {"Latent", "Latent (nearest-exact)"}
    assert api.get("/sd-vae").json() == []
    assert api.get("/embeddings").json() == {"loaded": {}, "skipped": {}}
    for route in ("hypernetworks", "prompt-styles", "loras"):
        r = api.get(f"/{route}")
        assert r.status_code == 200 and r.json() == [], route
    real = api.get("/realesrgan-models").json()  # A1111's six, each with its release URL
    assert len(real) == 6 and {"name": "R-ESRGAN 4x+", "scale": 4, "path": "https://github.com/xinntao/Real-ESRGAN"
                               "/releases/download/v0.1.0/RealESRGAN_x4plus.pth"} in real
    listed = {u["name"]: u for u in ups}  # the two enabled by default are offered before their files are there
    assert listed["R-ESRGAN 4x+"]["model_url"].endswith("/RealESRGAN_x4plus.pth") and "R-ESRGAN 2x+" not in listed
    faces = api.get("/face-restorers").json()  # listed with the folder their file goes in, as A1111
    assert [f["name"] for f in faces] == ["CodeFormer", "GFPGAN"] and faces[1]["cmd_dir"].endswith("GFPGAN")
    scripts = api.get("/scripts").json()
    assert set(scripts) == {"txt2img", "img2img"} and all(t == t.lower() for t in scripts["txt2img"])
    info = api.get("/script-info").json()
    assert {s["name"] for s in info if not s["is_alwayson"] and not s["is_img2img"]} == set(scripts["txt2img"])
    assert all(set(s) == {"name", "is_alwayson", "is_img2img", "args"} for s in info)
    built_in = [e for e in api.get("/extensions").json() if e["name"] == "builtin-scripts"]
    assert built_in and built_in[0]["enabled"] is True
    mem = api.get("/memory").json()
    assert mem["ram"]["total"] > 0 and "cuda" in mem
    # A1111: server-stop exists only with --api-server-stop
    assert api.post("/server-stop").status_code == 404
    schema = httpx.get(api.root + "/openapi.json").json()
    assert "/sdapi/v1/txt2img" in schema["paths"] and "/sdapi/v1/progress" in schema["paths"]


def test_png_info_and_extras(api):
    out = txt2img(api, seed=42, prompt="castle")
    r = api.post("/png-info", json={"image": out["images"][0]})
    assert r.status_code == 200
    pi = r.json()
    assert pi["info"].startswith("castle") and str(pi["parameters"]["Seed"]) == "42"
    assert pi["parameters"]["Prompt"] == "castle" and pi["items"]["parameters"] == pi["info"]
    assert api.post("/png-info", json={"image": ""}).json() == {"info": "", "items": {}, "parameters": {}}

    r = api.post("/extra-single-image", json={"image": out["images"][0], "upscaler_1": "Lanczos",
                                              "upscaling_resize": 2})
    assert r.status_code == 200, r.text
    im = decode(r.json()["image"])
    assert im.size == (128, 128) and im.info["parameters"].startswith("castle")
    assert "Postprocess upscale by: 2" in r.json()["html_info"]
    r = api.post("/extra-single-image", json={"image": out["images"][0], "upscaler_1": "Nearest", "resize_mode": 1,
                                              "upscaling_resize_w": 100, "upscaling_resize_h": 80})
    assert decode(r.json()["image"]).size == (100, 80)
    r = api.post("/extra-batch-images", json={"upscaler_1": "Nearest", "upscaling_resize": 0.5, "imageList": [
        {"data": out["images"][0], "name": "a.png"}, {"data": b64png(Image.new("RGB", (32, 16))), "name": "b"}]})
    assert r.status_code == 200, r.text
    assert [decode(b).size for b in r.json()["images"]] == [(32, 32), (16, 8)]


# ---------------------------------------------------------------------------------------------------------------
# Bad input: 4xx with a reason, and the server keeps serving


NOT_IMAGE = base64.b64encode(b"this is not an image").decode()
BAD_INPUTS = [
    ("post", "/txt2img", {"steps": "many"}, 422, "steps"),
    ("post", "/txt2img", {"steps": 0}, 422, "steps"),
    ("post", "/txt2img", {"steps": 100000}, 422, "steps"),
    ("post", "/txt2img", {"width": 10, **{"steps": 2}}, 422, "width"),
    ("post", "/txt2img", {"width": 100000}, 422, "width"),
    ("post", "/txt2img", {"batch_size": 10000}, 422, "batch_size"),
    ("post", "/txt2img", {"n_iter": 10 ** 6}, 422, "n_iter"),
    ("post", "/txt2img", {"cfg_scale": "x"}, 422, "cfg_scale"),
    ("post", "/txt2img", {"seed": 10 ** 30}, 422, "seed"),
    ("post", "/txt2img", {"eta": -1}, 422, "eta"),
    ("post", "/txt2img", {"seed_resize_from_w": 10 ** 6}, 422, "seed_resize_from_w"),
    ("post", "/txt2img", {"enable_hr": True, "hr_scale": 1000}, 422, "hr_scale"),
    ("post", "/txt2img", {"enable_hr": True, "hr_scale": 10, "width": 1024}, 422, "hires"),
    ("post", "/txt2img", {"enable_hr": True, "hr_upscaler": "ESRGAN_9x"}, 400, "ESRGAN_9x"),
    ("post", "/txt2img", {"sampler_name": "No Such Sampler"}, 400, "No Such Sampler"),
    ("post", "/txt2img", {"sampler_index": "Bogus"}, 400, "Bogus"),
    ("post", "/txt2img", {"scheduler": "Bogus schedule"}, 400, "Bogus schedule"),
    ("post", "/txt2img", {"script_name": "my script"}, 422, "my script"),
    ("post", "/txt2img", {"alwayson_scripts": {"ADetailer": {"args": []}}}, 422, "ADetailer"),
    ("post", "/txt2img", {"override_settings": {"sd_model_checkpoint": "missing-ckpt"}}, 400, "missing-ckpt"),
    ("post", "/txt2img", {"override_settings": {"jpeg_quality": "abc"}}, 422, "jpeg_quality"),
    ("post", "/txt2img", {"cfg_scale": float("nan")}, 422, "cfg_scale"),
    ("post", "/txt2img", "not json at all", 422, ""),
    ("post", "/txt2img", [1, 2], 422, ""),
    ("post", "/img2img", {}, 404, "Init image"),
    ("post", "/img2img", {"init_images": []}, 404, "Init image"),
    ("post", "/img2img", {"init_images": ["%%%not base64%%%"]}, 422, "init_images"),
    ("post", "/img2img", {"init_images": [NOT_IMAGE]}, 422, "init_images"),
    ("post", "/img2img", {"init_images": ["http://127.0.0.1:1/x.png"]}, 422, "local address"),
    ("post", "/img2img", {"init_images": ["http://localhost/x.png"]}, 422, "local address"),
    ("post", "/img2img", {"init_images": ["http://10.0.0.1/x.png"]}, 422, "local address"),
    ("post", "/img2img", {"init_images": ["file:///etc/passwd"]}, 422, "init_images"),
    ("post", "/img2img", {"init_images": [b64png(Image.new("RGB", (64, 64)))], "denoising_strength": 3}, 422,
     "denoising_strength"),
    ("post", "/img2img", {"init_images": [b64png(Image.new("RGB", (64, 64)))], "mask": NOT_IMAGE}, 422, "mask"),
    ("post", "/png-info", {"image": NOT_IMAGE}, 422, "image"),
    ("post", "/png-info", {}, 422, "image"),
    ("post", "/extra-single-image", {"image": NOT_IMAGE, "upscaler_1": "Lanczos"}, 422, "image"),
    ("post", "/extra-single-image", {"image": "", "upscaler_1": "Lanczos"}, 404, "Image"),
    ("post", "/extra-single-image", {"image": b64png(Image.new("RGB", (8, 8))), "upscaler_1": "R-ESRGAN"}, 400,
     "R-ESRGAN"),
    ("post", "/extra-single-image", {"image": b64png(Image.new("RGB", (8, 8))), "upscaling_resize": 100}, 422,
     "upscaling_resize"),
    ("post", "/extra-batch-images", {"imageList": [{"data": NOT_IMAGE}]}, 422, "imageList"),
    ("post", "/options", {"samples_format": "tiffany"}, 400, "samples_format"),
    ("post", "/options", {"no_such_option_xyz": 1}, 400, "no_such_option_xyz"),
    ("post", "/options", {"sd_model_checkpoint": 5}, 400, "sd_model_checkpoint"),
    ("post", "/options", [1], 422, ""),
    ("get", "/progress?skip_current_image=maybe", None, 422, "skip_current_image"),
]


@pytest.mark.parametrize("method,route,body,status,needle", BAD_INPUTS,
                         ids=[f"{r}-{i}" for i, (_, r, *_) in enumerate(BAD_INPUTS)])
def test_bad_input(api, method, route, body, status, needle):
    if method == "get":
        r = api.get(route)
    elif isinstance(body, str):
        r = api.post(route, content=body, headers={"content-type": "application/json"})
    elif isinstance(body, dict) and any(isinstance(v, float) and v != v for v in body.values()):
        r = api.post(route, content=json.dumps({**FAST, **body}), headers={"content-type": "application/json"})
    else:
        r = api.post(route, json={**FAST, **body} if route == "/txt2img" and isinstance(body, dict) else body)
    assert r.status_code == status, r.text
    err = r.json()
    assert {"error", "detail"} <= set(err)
    assert needle.lower() in json.dumps(err).lower()
    assert "X-Process-Time" in r.headers
    assert_healthy(api)


def test_url_images_disabled_by_option(api):
    assert api.post("/options", json={"api_enable_requests": False}).status_code == 200
    try:
        r = api.post("/img2img", json={**FAST, "init_images": ["https://example.com/a.png"]})
        assert r.status_code == 422 and "api_enable_requests" in r.json()["detail"]
    finally:
        api.post("/options", json={"api_enable_requests": True})


# ---------------------------------------------------------------------------------------------------------------
# Schema-driven fuzz: bodies built from /openapi.json, no 5xx


@pytest.mark.slow
def test_openapi_fuzz_no_server_errors(api):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    root = api.root
    schema = httpx.get(root + "/openapi.json").json()
    comps = schema["components"]["schemas"]

    def resolve(s):
        while "$ref" in s:
            s = comps[s["$ref"].rsplit("/", 1)[-1]]
        return s

    junk = st.one_of(st.none(), st.booleans(), st.integers(-10 ** 12, 10 ** 12), st.floats(allow_nan=False),
                     st.text(max_size=20), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5),
                                                                                                st.integers(),
                                                                                                max_size=2))

    def for_schema(s, depth=0):
        s = resolve(s)
        if "anyOf" in s:
            return st.one_of([for_schema(x, depth) for x in s["anyOf"]])
        t = s.get("type")
        if t == "integer":
            return st.integers(s.get("minimum", -1000), s.get("maximum", 1000))
        if t == "number":
            return st.floats(s.get("minimum", -100), s.get("maximum", 100), allow_nan=False)
        if t == "boolean":
            return st.booleans()
        if t == "string":
            return st.text(max_size=30)
        if t == "null":
            return st.none()
        if t == "array":
            return st.lists(for_schema(s.get("items", {}), depth + 1) if depth < 2 else junk, max_size=2)
        if t == "object" and "properties" in s and depth < 2:
            return body_for(s, depth + 1)
        return junk

    def body_for(s, depth=0):
        props = resolve(s).get("properties", {})
        return st.fixed_dictionaries({}, optional={k: st.one_of(for_schema(v, depth), junk)
                                                   for k, v in props.items()})

    init = b64png(Image.new("RGB", (64, 64), (90, 20, 200)))
    cheap = {"steps": 2, "width": 64, "height": 64, "batch_size": 1, "n_iter": 1, "enable_hr": False}
    routes = []
    for path, ops in schema["paths"].items():
        if not path.startswith("/sdapi/v1") or path.endswith(("server-stop", "server-kill", "interrupt", "skip",
                                                              "queue/pause")):
            continue  # (a paused queue holds every later generation, blocking calls too, until resumed)
        for method, op in ops.items():
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if path.endswith("/options") and method == "post":
                continue  # random settings would be persisted; covered by the options tests
            routes.append((method, path, body))

    @st.composite
    def case(draw):
        method, path, body_schema = draw(st.sampled_from(routes))
        body = draw(body_for(body_schema)) if body_schema else None
        if body is not None and draw(st.booleans()):
            body = draw(junk)
        if isinstance(body, dict) and path.endswith(("txt2img", "img2img")):
            for k in ("hr_resize_x", "hr_resize_y", "seed_resize_from_w", "seed_resize_from_h", "firstphase_width",
                      "firstphase_height", "override_settings", "infotext"):
                body.pop(k, None)
            body.update(cheap)
            if path.endswith("img2img") and draw(st.booleans()):
                body["init_images"] = [init]
                body.pop("mask", None)
        return method, path, body

    statuses = []
    client = httpx.Client(timeout=60)  # one for all the cases: each new one loads the CA store (~25 ms)

    @settings(max_examples=50, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case())
    def run(c):
        method, path, body = c
        url = root + path
        r = client.request(method.upper(), url, json=body) if body is not None else \
            client.request(method.upper(), url)
        statuses.append(r.status_code)
        assert r.status_code < 500, (method, path, body, r.text)
        assert "X-Process-Time" in r.headers

    with client:
        run()
    assert any(s == 200 for s in statuses) and any(400 <= s < 500 for s in statuses)
    assert_healthy(api)


# ---------------------------------------------------------------------------------------------------------------
# --nowebui, --api-auth, --api-server-stop


@pytest.mark.slow
def test_api_only_auth_and_server_stop(tmp_path, tiny_models):
    data = _data_dir(tmp_path / "d", tiny_models)
    srv = Server("--skip-install", "--nowebui", "--api-auth", "alice:s3cret,bob:pw", "--api-server-stop",
                 "--port", str(free_port()), "--data-dir", str(data))
    try:
        assert srv.url, (srv.stdout, srv.stderr)
        index = httpx.get(srv.url + "/")
        assert index.status_code == 200 and "API only" in index.text and "X-Process-Time" in index.headers
        base = srv.url + "/sdapi/v1"
        r = httpx.get(base + "/sd-models")
        assert r.status_code == 401 and r.json()["error"] and r.headers["www-authenticate"].startswith("Basic")
        assert httpx.get(base + "/sd-models", auth=("alice", "wrong")).status_code == 401
        assert httpx.post(base + "/txt2img", json=FAST).status_code == 401
        r = httpx.get(base + "/sd-models", auth=("bob", "pw"))
        assert r.status_code == 200 and len(r.json()) == 2
        flags = httpx.get(base + "/cmd-flags", auth=("alice", "s3cret")).json()
        assert flags["nowebui"] is True and "s3cret" not in json.dumps(flags)
        assert httpx.get(srv.url + "/healthz").status_code == 200  # only /sdapi is behind the password
        r = httpx.post(base + "/server-stop", auth=("alice", "s3cret"))
        assert r.status_code == 200
        srv.proc.wait(30)
        assert srv.proc.returncode is not None
    finally:
        srv.stop()


def test_loras_embeddings_and_styles_are_listed(api):
    import torch
    from safetensors.torch import save_file

    data = api.data_dir
    (data / "models" / "Lora").mkdir(parents=True, exist_ok=True)
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 4)},
              str(data / "models" / "Lora" / "tiny_style.safetensors"))
    (data / "embeddings").mkdir(exist_ok=True)
    save_file({"emb_params": torch.randn(2, 64)}, str(data / "embeddings" / "mytoken.safetensors"))
    save_file({"emb_params": torch.randn(1, 999)}, str(data / "embeddings" / "wrongwidth.safetensors"))
    (data / "styles.csv").write_text("name,prompt,negative_prompt\nnoir,\"film noir, {prompt}\",color\n")

    assert api.post("/refresh-loras").status_code == 200
    loras = api.get("/loras").json()
    assert [entry["name"] for entry in loras] == ["tiny_style"]
    assert api.post("/reload-checkpoint").status_code == 200  # widths are checked against the loaded model
    assert api.post("/refresh-embeddings").status_code == 200
    emb = api.get("/embeddings").json()
    assert emb["loaded"]["mytoken"]["vectors"] == 2 and "wrongwidth" in emb["skipped"]
    assert api.get("/prompt-styles").json() == [{"name": "noir", "prompt": "film noir, {prompt}",
                                                  "negative_prompt": "color"}]


def test_request_caps_are_configurable(api):
    assert api.post("/options", json={"api_max_steps": 10}).status_code == 200
    try:
        r = api.post("/txt2img", json={"steps": 20, "width": 64, "height": 64})
        assert r.status_code == 422 and "api_max_steps" in r.json()["detail"]
    finally:
        assert api.post("/options", json={"api_max_steps": 150}).status_code == 200
    assert api.post("/txt2img", json={"steps": 2, "width": 64, "height": 64}).status_code == 200


@pytest.mark.slow
def test_flux_over_the_api(api):
    """A Flux file dropped in with its parts: listed with its family, picked by `forge_additional_modules`, drawn
    with `distilled_cfg_scale`; an SD-only sampler is a 4xx naming the ones that work."""
    from tests import tiny_flow_models as tfm

    models = api.data_dir / "models"
    comps = tfm.build_flux()
    parts = tfm.write_parts(comps, models)
    path = tfm.write_transformer_only(comps, models / "Stable-diffusion" / "flux-api.safetensors", "bfl")
    pinned = {"sd_model_checkpoint": "flux-api.safetensors"}
    try:
        assert api.post("/refresh-checkpoints").status_code == 200
        families = {m["model_name"]: m["family"] for m in api.get("/sd-models").json()}
        assert families["flux-api"] == "Flux.1 dev" and families["sd1"] == "SD 1.x"
        picked = [p.name for p in parts.values()]
        assert api.post("/options", json={"forge_additional_modules": picked}).status_code == 200
        assert api.get("/options").json()["forge_additional_modules"] == picked
        r = api.post("/txt2img", json={**FAST, "prompt": "a cube", "cfg_scale": 1, "distilled_cfg_scale": 2.5,
                                       "sampler_name": "Euler", "override_settings": pinned})
        assert r.status_code == 200, r.text
        info = json.loads(r.json()["info"])
        assert "Distilled CFG Scale: 2.5" in info["infotexts"][0] and "Model: flux-api" in info["infotexts"][0]
        bad = api.post("/txt2img", json={**FAST, "prompt": "a cube", "sampler_name": "Euler a",
                                         "override_settings": pinned})
        assert 400 <= bad.status_code < 500 and "Euler, Heun, DPM++ 2M" in bad.text
    finally:
        path.unlink()
        api.post("/options", json={"forge_additional_modules": []})
        api.post("/refresh-checkpoints")


@pytest.mark.slow
def test_internal_progress_follows_a_task_by_its_forced_id_as_a1111s_page_polls_it(api):
    """A1111's requestProgress polls POST /internal/progress with the task's id; an API call names its task with
    force_task_id. Waiting, running (fraction, ETA, live preview) and done are told apart; an unknown id waits."""
    root = httpx.Client(base_url=api.root, timeout=60)
    unknown = root.post("/internal/progress", json={"id_task": "task(nobody)"}).json()
    assert unknown["active"] is False and unknown["completed"] is False and unknown["textinfo"] == "Waiting..."

    answers = []
    call = threading.Thread(target=lambda: answers.append(api.post("/txt2img", json={
        **FAST, "steps": 24, "force_task_id": "task(mine)", "override_settings": {"show_progress_every_n_steps": 1}})))
    call.start()
    seen = []
    deadline = time.time() + 120
    while call.is_alive() and time.time() < deadline:
        r = root.post("/internal/progress", json={"id_task": "task(mine)", "id_live_preview": -1,
                                                  "live_preview": True})
        assert r.status_code == 200
        seen.append(r.json())
        time.sleep(0.05)
    call.join()
    assert answers[0].status_code == 200
    running = [s for s in seen if s["active"]]
    assert running, seen[:3]
    assert all(0 <= s["progress"] <= 1 for s in running)
    assert any(s["progress"] > 0 for s in running)
    previews = [s for s in running if s["live_preview"]]
    assert previews and previews[0]["live_preview"].startswith("data:image/jpeg;base64,")
    done = root.post("/internal/progress", json={"id_task": "task(mine)"}).json()
    assert done["completed"] is True and done["active"] is False
    assert root.get("/internal/pending-tasks").json() == {"size": 0, "tasks": []}
    assert root.get("/internal/ping").json() == {}


def test_progress_previews_come_in_the_live_preview_file_format():
    """A1111's "Live preview file format" (png, jpeg, webp) for the previews /sdapi/v1/progress hands out."""
    import base64
    import io

    from PIL import Image

    from modules.api.api import encode_preview

    picture = Image.new("RGB", (8, 8), (10, 200, 30))
    for fmt, pil_name in (("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")):
        with Image.open(io.BytesIO(base64.b64decode(encode_preview(picture, fmt)))) as back:
            assert back.format == pil_name and back.size == (8, 8)

"""The OpenAPI document tells the truth: schemathesis (``st run --checks all``) against a real server (UI and API)
finds no answer the document does not describe (status, body shape, ``Allow``), no 5xx, no refused valid request
and no accepted invalid one. A small deterministic bound keeps it fast; generation is kept tiny (64², 1-2 steps).

This module is also the schemathesis hooks module of that run (``SCHEMATHESIS_HOOKS``)."""
from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import schemathesis
from PIL import Image

from tests.frozen_gc import gc_frozen
from tests.servers import Server

pytestmark = pytest.mark.slow  # servers, browsers or full-size parity runs: left out by -m "not slow"

ROOT = Path(__file__).resolve().parent.parent

# A schema-valid value the server still refuses for its content, which JSON Schema cannot state (an image's bytes,
# a sampler's or option's name, api_max_steps): a documented 400/404/422, not a success.
SEMANTIC_REFUSALS = ["2xx", "400", "404", "422"]
CHEAP = {"steps": 1, "width": 64, "height": 64, "batch_size": 1, "n_iter": 1}


def _tiny_png() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (40, 90, 160)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@schemathesis.hook
def before_call(context, case, kwargs):
    """Generation stays tiny whatever was drawn: sizes and counts that are valid numbers become the cheapest ones
    (an invalid one is left, so it is still refused); no hires fix, scripts, infotext or per-request settings.
    Schemathesis re-judges the edited case valid or invalid before sending it."""
    path = case.operation.path
    body = case.body
    if not path.endswith(("/txt2img", "/img2img")) or not isinstance(body, dict):
        return
    for name, value in CHEAP.items():
        current = body.get(name)
        if current is None or (isinstance(current, (int, float)) and not isinstance(current, bool)
                               and float(current).is_integer()):
            body[name] = value
    negative = case.meta is not None and case.meta.generation.mode.is_negative
    if negative:
        return  # anything else may be what makes the case invalid: left as drawn
    if isinstance(body.get("enable_hr"), bool):
        body["enable_hr"] = False
    for name in ("override_settings", "infotext", "script_name", "alwayson_scripts", "script_args", "mask"):
        body.pop(name, None)
    if path.endswith("/img2img") and isinstance(body.get("init_images"), list) and body["init_images"]:
        body["init_images"] = [_tiny_png()]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tests.tiny_models import build_tiny, write_single_file

    data = tmp_path_factory.mktemp("openapi")
    ckpt = data / "models" / "Stable-diffusion"
    ckpt.mkdir(parents=True)
    write_single_file(build_tiny("sd1"), "sd1", ckpt / "sd1.safetensors")
    srv = Server(data, data / "server.log").start("--api")
    # the app too is out of the collector's sight (unload/reload-checkpoint and ControlNet's annotators free
    # models with gc.collect()); the model is made after this
    try:
        with gc_frozen():
            # the model loads now, not inside the first generation schemathesis times
            r = httpx.post(srv.url + "/sdapi/v1/txt2img", json=CHEAP, timeout=120)
            assert r.status_code == 200, r.text
            yield srv
    finally:
        srv.stop()


def test_openapi_describes_every_answer(server, tmp_path):
    schema = httpx.get(server.url + "/openapi.json").json()
    txt2img = schema["paths"]["/sdapi/v1/txt2img"]["post"]["responses"]
    assert set(txt2img) == {"200", "400", "403", "422"}
    assert txt2img["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    assert "HTTPValidationError" not in schema["components"]["schemas"]

    config = tmp_path / "schemathesis.toml"
    # txt2img/img2img: the coverage phase's hundreds of boundary cases only as invalid ones (each refused at once);
    # valid generations come from the fuzzing phase's 5 per operation
    config.write_text("[checks.positive_data_acceptance]\n"
                      f"expected-statuses = {json.dumps(SEMANTIC_REFUSALS)}\n"
                      "[[operations]]\n"
                      'include-path-regex = "/(txt2img|img2img)$"\n'
                      'phases.coverage.generation.mode = "negative"\n')
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.test_openapi", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "--no-color", "run",
           server.url + "/openapi.json", "--checks", "all", "--max-examples", "5", "--seed", "1",
           "--generation-deterministic", "--workers", "1",
           "--request-timeout", "60", "--no-shrink", "--exclude-path-regex", "server-(stop|kill)"]
    run = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=240)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-20000:]
    assert "Tested: " in out
    assert httpx.get(server.url + "/sdapi/v1/progress").status_code == 200

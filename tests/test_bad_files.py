"""A user's bad model file (truncated download, unknown architecture, a pickle with code) is their file, not our
bug: it is found at listing where the header shows it, never becomes the default, answers 4xx naming the file,
and the model in use stays loaded."""
from __future__ import annotations

import logging
import pickle
import shutil

import pytest
from fastapi.testclient import TestClient
from safetensors.torch import save_file

from modules import cmd_args, server
from modules.models.loader import ModelLoadError


@pytest.fixture
def bad_data(tmp_path, tiny_models):
    ckpt = tmp_path / "models" / "Stable-diffusion"
    ckpt.mkdir(parents=True)
    good = tiny_models.path("sd1.safetensors")
    shutil.copy(good, ckpt / "good.safetensors")
    data = good.read_bytes()
    (ckpt / "a-truncated.safetensors").write_bytes(data[: len(data) // 2])
    import torch

    save_file({"mystery.weight": torch.zeros(3, 3)}, str(ckpt / "b-unknown.safetensors"))

    class Evil:
        def __reduce__(self):
            import os
            return os.system, ("echo pwned",)

    (ckpt / "z-evil.ckpt").write_bytes(pickle.dumps({"state_dict": Evil()}))
    return tmp_path


def _engine(data):
    from modules.engine import Engine
    from modules.paths import Paths

    return Engine.create(Paths.from_args(cmd_args.parse_args(["--data-dir", str(data)], env={})))


def test_truncated_file_is_marked_at_listing_once_and_never_the_default(bad_data, caplog):
    with caplog.at_level(logging.WARNING):
        engine = _engine(bad_data)
        engine.registry.refresh()
    infos = {i.name: i for i in engine.registry.list()}
    assert "truncated" in infos["a-truncated.safetensors"].problem
    assert "no Stable Diffusion UNet" in infos["b-unknown.safetensors"].problem
    assert infos["good.safetensors"].problem is None
    assert sum("a-truncated.safetensors" in r.getMessage() for r in caplog.records) == 1
    assert engine.models.resolve().name == "good.safetensors"  # listed first, but not the default


@pytest.mark.parametrize("name, why", [("a-truncated.safetensors", "truncated"),
                                       ("b-unknown.safetensors", "no Stable Diffusion UNet"), ("z-evil.ckpt", "")])
def test_a_bad_file_fails_with_its_name_and_the_model_in_use_stays(bad_data, name, why):
    engine = _engine(bad_data)
    good = engine.models.get("good.safetensors")
    with pytest.raises((ModelLoadError, ValueError), match=name.split(".")[0]) as err:
        engine.models.get(name)
    assert why in str(err.value)
    assert engine.models.current is not None and engine.models.current.title == good.title


def test_the_api_answers_4xx_naming_the_file(bad_data):
    ns = cmd_args.parse_args(["--data-dir", str(bad_data), "--nowebui"], env={})
    app = server.create_app(server.build_context(ns))
    with TestClient(app) as client:
        for name in ("a-truncated.safetensors", "b-unknown.safetensors", "z-evil.ckpt"):
            r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1, "width": 64, "height": 64,
                                                       "override_settings": {"sd_model_checkpoint": name}})
            assert 400 <= r.status_code < 500 and name.split(".")[0] in r.json()["detail"], (name, r.text)
            r = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": name})
            assert 400 <= r.status_code < 500 and name.split(".")[0] in r.json()["detail"], (name, r.text)
        r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1, "width": 64, "height": 64,
                                                   "enable_hr": True, "hr_upscaler": "no-such-upscaler"})
        assert 400 <= r.status_code < 500 and "no-such-upscaler" in r.text

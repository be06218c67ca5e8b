"""A checkpoint may carry its own architecture in its safetensors metadata (`sd_webui_architecture`): the loader
lays it over what the tensor shapes tell, and a model marked as the demo steps aside for any real checkpoint."""
from __future__ import annotations

import json
import os

from safetensors import safe_open
from safetensors.torch import load_file, save_file

from modules import cmd_args, devices
from modules.engine import Engine
from modules.models import loader
from modules.paths import Paths

ARCH = {"demo": True, "description": "test demo model", "default_size": 64, "default_cfg": 5,
        "unet": {"sample_size": 8}, "prediction_type": "epsilon"}


def _with_architecture(src, dst, arch) -> None:
    save_file(load_file(str(src)), str(dst), metadata={"sd_webui_architecture": json.dumps(arch)})


def test_embedded_architecture_overrides_what_shapes_cannot_tell(tiny_models, tmp_path):
    path = tmp_path / "odd.safetensors"
    _with_architecture(tiny_models.path("sd1.safetensors"), path, ARCH)
    with safe_open(str(path), framework="pt") as f:
        assert "sd_webui_architecture" in f.metadata()
    model = loader.load_model(path, devices.cpu(), name=path.name)
    assert model.spec.is_demo and model.spec.embedded["description"] == "test demo model"
    assert model.unet.config.sample_size == 8  # only the embedded config says so
    plain = loader.load_model(tiny_models.path("sd1.safetensors"), devices.cpu(), name="sd1.safetensors")
    assert not plain.spec.is_demo and plain.unet.config.sample_size != 8


def test_demo_model_is_chosen_only_when_it_is_the_only_checkpoint(tiny_models, tmp_path):
    ckpt = tmp_path / "models" / "Stable-diffusion"
    ckpt.mkdir(parents=True)
    _with_architecture(tiny_models.path("sd1.safetensors"), ckpt / "a-demo.safetensors", ARCH)
    ns = cmd_args.parse_args(["--data-dir", str(tmp_path), "--skip-install"], env={})
    engine = Engine.create(Paths.from_args(ns), no_hashing=True)
    assert engine.models.demo_note()["description"] == "test demo model"
    os.symlink(tiny_models.path("sd1.safetensors"), ckpt / "real.safetensors")
    engine.registry.refresh()
    assert engine.models.resolve().name == "real.safetensors"
    assert engine.models.demo_note() is None

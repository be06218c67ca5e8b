"""The demo recipe end to end at toy size: one command draws the data, trains VAE, UNet and text encoder from
scratch, and writes an fp16 A1111 single file that the engine loads as the demo model and samples from."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from modules import cmd_args
from modules.engine import Engine
from modules.paths import Paths
from modules.training import demo_recipe, shapes

TOY = ["--images", "64", "--held-out", "16", "--vae-steps", "3", "--vae-batch", "4", "--unet-steps", "3", "--unet-batch", "4",
       "--threads", "1"]


@pytest.fixture(autouse=True)
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.slow  # about 10 s
def test_recipe_writes_a_checkpoint_the_engine_loads_as_the_demo(tmp_path):
    out = tmp_path / "models" / "Stable-diffusion" / "toy-demo.safetensors"
    out.parent.mkdir(parents=True)
    cache = tmp_path / "vae.pt"
    figures = demo_recipe.main(["--out", str(out), "--vae-cache", str(cache), *TOY])
    assert out.is_file() and figures["file_bytes"] == out.stat().st_size <= 16 * 2**20
    assert set(figures["parameters"]) == {"vae", "unet", "text_encoder"}

    with safe_open(str(out), framework="pt") as f:
        arch = json.loads(f.metadata()["sd_webui_architecture"])
        assert {f.get_tensor(k).dtype for k in list(f.keys())[:20]} == {torch.float16}
        assert any(k.startswith("model.diffusion_model.") for k in f.keys())
        assert any(k.startswith("cond_stage_model.transformer.") for k in f.keys())
    assert arch["demo"] and arch["family"] == "sd1" and arch["recipe"]["unet_steps"] == 3
    assert arch["vae"]["scaling_factor"] != 1.0  # measured on the trained VAE's latents

    engine = Engine.create(Paths.from_args(cmd_args.parse_args(["--data-dir", str(tmp_path), "--skip-install"],
                                                               env={})), no_hashing=True)
    assert "draws coloured shapes" in engine.models.demo_note()["description"]
    result = engine.txt2img({"prompt": "a red circle on a blue background", "steps": 2, "width": 64, "height": 64,
                             "seed": 1, "do_not_save_samples": True, "do_not_save_grid": True})
    assert result.images[0].size == (64, 64)

    again = tmp_path / "again.safetensors"
    demo_recipe.main(["--out", str(again), "--vae-cache", str(cache), *TOY])
    assert again.read_bytes() == out.read_bytes()  # the cached VAE is the one training gives: same file

    cache.write_bytes(b"not a torch file")  # a broken cache is retrained and replaced, not a crash
    demo_recipe.main(["--out", str(again), "--vae-cache", str(cache), *TOY])
    assert again.read_bytes() == out.read_bytes() and cache.stat().st_size > 1000


def test_reader_reads_every_drawn_scene_back_and_ignores_a_stray_speck():
    """The accuracy bench and the demo tests judge pictures with this reader, so it must be right on the data."""
    rng = np.random.default_rng(5)
    for scene in shapes.all_scenes():
        picture = shapes.draw(scene, rng)
        seen = shapes.read_scene(picture)
        assert (seen.colour, seen.background, seen.shape) == (scene.colour, scene.background, scene.shape)
        specked = np.asarray(picture).copy()
        specked[0:3, 30:34] = shapes.COLOURS[scene.colour]
        assert shapes.read_scene(Image.fromarray(specked)).shape == scene.shape

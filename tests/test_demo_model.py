"""The bundled demo checkpoint (trained from scratch by `modules.training.demo_recipe`) understands its prompts.

Same file the user gets, loaded through the engine like any checkpoint: what a prompt says (colours, shapes),
negative prompts, prompt editing, emphasis, img2img and inpainting must show in the pictures.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from modules.training.shapes import COLOURS, Scene, all_scenes, centre_rgb, draw, nearest_colour, read_scene

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "Stable-diffusion" / "demo-shapes.safetensors"
BASE = {"steps": 20, "cfg_scale": 5, "width": 64, "height": 64, "sampler_name": "Euler",
        "do_not_save_samples": True, "do_not_save_grid": True}

TI_STEPS, TI_LR = 80, 0.02

pytestmark = pytest.mark.skipif(not DEMO.is_file(), reason="demo checkpoint missing: python -m modules.training.demo_recipe")


@pytest.fixture(scope="module")
def demo_engine(tmp_path_factory):
    from modules import cmd_args
    from modules.engine import Engine
    from modules.paths import Paths

    data = tmp_path_factory.mktemp("demo-data")
    (data / "models" / "Stable-diffusion").mkdir(parents=True)
    os.symlink(DEMO, data / "models" / "Stable-diffusion" / DEMO.name)
    ns = cmd_args.parse_args(["--data-dir", str(data), "--skip-install"], env={})
    return Engine.create(Paths.from_args(ns))


def txt2img(engine, prompt: str, seed: int, **extra) -> Image.Image:
    return engine.txt2img({**BASE, "prompt": prompt, "seed": seed, **extra}).images[0]


def img2img(engine, init: Image.Image, prompt: str, seed: int, strength: float, **extra) -> Image.Image:
    return engine.img2img({**BASE, "prompt": prompt, "seed": seed, "init_images": [init],
                           "denoising_strength": strength, **extra}).images[0]


def hue_lean(rgb, towards: str, away: str) -> float:
    """How much closer `rgb` is to palette colour `towards` than to `away` (positive: leans to `towards`)."""
    rgb = np.asarray(rgb, dtype=np.float64)
    return float(np.linalg.norm(rgb - COLOURS[away]) - np.linalg.norm(rgb - COLOURS[towards]))


def foreground_centroid(image: Image.Image, background: str) -> np.ndarray:
    a = np.asarray(image.convert("RGB"), dtype=np.float64)
    mask = np.linalg.norm(a - COLOURS[background], axis=-1) > 80
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def test_loads_as_the_demo_model_with_its_embedded_architecture(demo_engine):
    model = demo_engine.models.get()
    assert model.spec.is_demo and model.spec.family == "sd1"
    assert "draws coloured shapes" in model.spec.embedded["description"]
    assert model.vae.config.norm_num_groups == 4  # only the embedded config knows this
    assert model.unet.config.sample_size * model.vae_scale_factor == model.spec.embedded["default_size"] == 64
    assert DEMO.stat().st_size <= 16 * 2**20


@pytest.mark.slow
def test_txt2img_draws_the_colours_the_prompt_names(demo_engine):
    scenes = all_scenes()[::4]
    misses = []
    for i, scene in enumerate(scenes):
        seen = read_scene(txt2img(demo_engine, scene.caption, seed=100 + i))
        if (seen.colour, seen.background) != (scene.colour, scene.background):
            misses.append(f"{scene.caption}: saw {seen.colour} on {seen.background}")
    assert len(misses) <= 0.05 * len(scenes), misses


@pytest.mark.slow
def test_negative_prompt_removes_the_colour_it_names(demo_engine):
    """With the shape's colour left open the model picks green or black; "green" as negative prompt leaves no green.
    (One-word prompts are outside the captions it learned, so not every colour word works as well: see issue 8.)"""
    prompt = "a circle on a white background"
    plain = [nearest_colour(centre_rgb(txt2img(demo_engine, prompt, seed))) for seed in range(1, 7)]
    negated = [nearest_colour(centre_rgb(txt2img(demo_engine, prompt, seed, negative_prompt="green")))
               for seed in range(1, 7)]
    assert plain.count("green") >= 2, plain
    assert "green" not in negated, negated


def test_prompt_editing_ends_with_the_second_colour(demo_engine):
    red_then_blue = centre_rgb(txt2img(demo_engine, "a [red:blue:0.5] square on a white background", seed=5))
    blue_then_red = centre_rgb(txt2img(demo_engine, "a [blue:red:0.5] square on a white background", seed=5))
    assert hue_lean(red_then_blue, "blue", "red") > 0
    assert hue_lean(blue_then_red, "red", "blue") > 0


def test_emphasis_moves_the_colour(demo_engine):
    strong = centre_rgb(txt2img(demo_engine, "a (red:1.4) yellow circle on a black background", seed=3))
    weak = centre_rgb(txt2img(demo_engine, "a (red:0.6) yellow circle on a black background", seed=3))
    assert hue_lean(strong, "red", "yellow") - hue_lean(weak, "red", "yellow") > 30


def _off_centre_circle() -> Image.Image:
    """A red circle 5.5 px up and left of the centre, a little further out than the training pictures put one."""
    img = Image.new("RGB", (64, 64), COLOURS["blue"])
    ImageDraw.Draw(img).ellipse([14, 14, 38, 38], fill=COLOURS["red"])
    return img


@pytest.mark.slow
def test_img2img_low_strength_keeps_the_place_high_strength_follows_the_prompt(demo_engine):
    init = _off_centre_circle()
    prompt = "a green square on a blue background"
    place = foreground_centroid(init, "blue")
    low_moves, high_moves = [], []
    for seed in (7, 8, 9):
        low = img2img(demo_engine, init, prompt, seed=seed, strength=0.3)
        high = img2img(demo_engine, init, prompt, seed=seed, strength=0.9)
        low_moves.append(np.linalg.norm(foreground_centroid(low, "blue") - place))
        high_moves.append(np.linalg.norm(foreground_centroid(high, "blue") - place))
        seen = read_scene(high)
        assert (seen.colour, seen.background, seen.shape) == ("green", "blue", "square")
    assert np.mean(low_moves) < 4 and np.mean(high_moves) > np.mean(low_moves) + 3, (low_moves, high_moves)


def test_inpainting_a_masked_square_green_changes_only_that_region(demo_engine):
    init = draw(Scene("circle", "white", "black"), np.random.default_rng(0))
    mask = np.zeros((64, 64), np.uint8)
    mask[20:44, 20:44] = 255
    out = img2img(demo_engine, init, "a green square on a black background", seed=11, strength=1.0,
                  mask=Image.fromarray(mask), mask_blur=2, inpainting_fill=1, inpaint_full_res=False)
    a, b = np.asarray(out, dtype=np.int16), np.asarray(init, dtype=np.int16)
    assert nearest_colour(np.median(a[26:38, 26:38].reshape(-1, 3), axis=0)) == "green"
    outside = np.ones((64, 64), bool)
    outside[14:50, 14:50] = False
    assert np.abs(a[outside] - b[outside]).mean() < 3


@pytest.mark.slow
def test_textual_inversion_token_learns_its_training_colour(demo_engine, tmp_path):
    """A one-vector embedding trained on yellow shapes (initialised from "white") draws yellow where it is used."""
    import torch

    from modules.training.config import EmbeddingTrainingConfig
    from modules.training.embedding_trainer import train_embedding
    from modules.training.session import engine_session

    folder = tmp_path / "yellow"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, scene in enumerate(s for s in all_scenes() if s.colour == "yellow"):
        draw(scene, rng).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"{scene.shape} on a {scene.background} background")
    prompt = "a zqcol square on a black background"
    before = nearest_colour(centre_rgb(txt2img(demo_engine, prompt, seed=4)))
    config = EmbeddingTrainingConfig(dataset_dir=str(folder), output_name="zqcol", num_vectors=1, init_text="white",
                                     template="a [name] [filewords]", steps=TI_STEPS, batch_size=4, resolution=64,
                                     learning_rate=TI_LR, seed=1, resume=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with engine_session(demo_engine, "train-embedding", None) as session:
            train_embedding(session, config)
    finally:
        torch.set_num_threads(threads)
    demo_engine.embeddings.load(demo_engine.models.get())
    after = [nearest_colour(centre_rgb(txt2img(demo_engine, prompt, seed))) for seed in (4, 5, 6)]
    assert before != "yellow" and after.count("yellow") >= 2, (before, after)

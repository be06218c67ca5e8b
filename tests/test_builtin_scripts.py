"""The built-in scripts (extensions-builtin/builtin-scripts), driven the way users drive them: by `script_name` and
`script_args` in a request, through the engine and the HTTP API."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from modules import cmd_args, script_callbacks
from modules.request_types import RequestError

BASE = {"prompt": "a red circle", "negative_prompt": "blue", "steps": 2, "width": 64, "height": 64, "seed": 7,
        "cfg_scale": 5.0, "sampler_name": "Euler", "do_not_save_samples": True, "do_not_save_grid": True}

# X/Y/Z plot's arguments in A1111's order
XYZ_KEYS = ("x_type", "x_values", "x_values_dropdown", "y_type", "y_values", "y_values_dropdown", "z_type", "z_values",
            "z_values_dropdown", "draw_legend", "include_lone_images", "include_sub_grids", "no_fixed_seeds",
            "vary_seeds_x", "vary_seeds_y", "vary_seeds_z", "margin_size", "csv_mode")


def xyz_args(**given) -> list:
    defaults = {"x_type": "Nothing", "x_values": "", "x_values_dropdown": [], "y_type": "Nothing", "y_values": "",
                "y_values_dropdown": [], "z_type": "Nothing", "z_values": "", "z_values_dropdown": [],
                "draw_legend": True, "include_lone_images": True, "include_sub_grids": False,
                "no_fixed_seeds": False, "vary_seeds_x": False, "vary_seeds_y": False, "vary_seeds_z": False,
                "margin_size": 0, "csv_mode": True}
    defaults.update(given)
    return [defaults[k] for k in XYZ_KEYS]


@pytest.fixture(scope="module")
def script_engine(tiny_models, tmp_path_factory):
    """An engine with the real extensions-builtin folder loaded (the built-in scripts) and a tiny SD1 model."""
    from tests.ext_fixtures import extension_engine

    engine, _ = extension_engine(tiny_models, tmp_path_factory.mktemp("builtin-scripts"), {}, builtin=True)
    yield engine
    script_callbacks.clear_callbacks()


@pytest.fixture(scope="module")
def api(script_engine):
    """The HTTP API (--api --nowebui) over the same engine."""
    from fastapi.testclient import TestClient

    from modules.server import AppContext, create_app

    ns = cmd_args.parse_args(["--data-dir", str(script_engine.paths.data_dir), "--skip-install", "--nowebui"],
                             env={})
    with TestClient(create_app(AppContext(args=ns, engine=script_engine))) as client:
        yield client


class ApiResult:
    """A /sdapi/v1 answer's images (decoded) and info."""

    def __init__(self, body: dict):
        self.images = [Image.open(io.BytesIO(base64.b64decode(b))) for b in body["images"]]
        info = json.loads(body["info"])
        self.infotexts, self.index_of_first_image = info["infotexts"], info["index_of_first_image"]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_builtin_scripts_load_on_their_tabs(script_engine):
    txt2img, img2img = script_engine.scripts.txt2img.titles, script_engine.scripts.img2img.titles
    for title in ("X/Y/Z plot", "Prompt matrix", "Prompts from file or textbox"):
        assert title in txt2img and title in img2img
    for title in ("Loopback", "Poor man's outpainting", "SD upscale"):
        assert title in img2img and title not in txt2img
    assert not [e for e in script_engine.extension_errors if "builtin-scripts" in e]


@pytest.mark.slow
def test_xyz_plot_through_the_api_makes_a_labelled_grid_of_the_separate_runs(script_engine, api):
    r = api.post("/sdapi/v1/txt2img", json={**BASE, "script_name": "X/Y/Z plot", "script_args": xyz_args(
        x_type="Steps", x_values="1-2", y_type="Prompt S/R", y_values="red, green")})
    assert r.status_code == 200, r.text
    result = ApiResult(r.json())
    grid, cells = result.images[0], result.images[1:]
    assert result.index_of_first_image == 1 and len(cells) == 4
    # the cells sit in the bottom-right corner; everything above and left of them is the label area
    pad_left, pad_top = grid.width - 2 * 64, grid.height - 2 * 64
    assert pad_left > 0 and pad_top > 0
    label_top = pixels(grid.crop((pad_left, 0, grid.width, pad_top)))
    label_left = pixels(grid.crop((0, pad_top, pad_left, grid.height)))
    assert (label_top.max(axis=2) < 100).sum() > 20 and (label_left.max(axis=2) < 100).sum() > 20  # dark text
    for row, word in enumerate(("red", "green")):
        for col in range(2):
            box = (pad_left + col * 64, pad_top + row * 64, pad_left + (col + 1) * 64, pad_top + (row + 1) * 64)
            assert np.array_equal(pixels(grid.crop(box)), pixels(cells[row * 2 + col]))
            assert result.infotexts[1 + row * 2 + col].startswith(f"a {word} circle")
            assert f"Steps: {col + 1}," in result.infotexts[1 + row * 2 + col]
    for row, col, word in ((0, 0, "red"), (1, 1, "green")):  # two cells against runs of their own
        alone = script_engine.txt2img({**BASE, "steps": col + 1, "prompt": f"a {word} circle"}).images[0]
        assert np.array_equal(pixels(cells[row * 2 + col]), pixels(alone))
    assert "Script: X/Y/Z plot" in result.infotexts[0] and "X Type: Steps" in result.infotexts[0]
    assert "Y Type: Prompt S/R" in result.infotexts[0]


def test_xyz_plot_rejects_unknown_samplers_with_the_valid_names(script_engine):
    with pytest.raises(RequestError, match="valid values: .*Euler"):
        script_engine.txt2img({**BASE, "script_name": "X/Y/Z plot", "script_args": xyz_args(
            x_type="Sampler", x_values="Euler, Nope")})


def test_xyz_plot_refuses_a_grid_over_the_maximum_image_size(script_engine):
    """A1111's "Maximum image size, in megapixels" (img_max_size_mp): checked before anything is sampled."""
    script_engine.settings.set("img_max_size_mp", 1)
    try:
        with pytest.raises(RequestError, match=r"too large \(1 MPixels\) \(max configured size is 1 MPixels"):
            script_engine.txt2img({**BASE, "width": 512, "height": 512, "script_name": "X/Y/Z plot",
                                   "script_args": xyz_args(x_type="Steps", x_values="1, 2, 3, 4")})
    finally:
        script_engine.settings.set("img_max_size_mp", 200)


def test_extensions_add_xyz_axes_as_in_a1111(script_engine):
    """ADetailer, FreeU and others find the X/Y/Z script's module in `scripts_data` and extend its `axis_options`
    list with A1111-style options: `prepare` parses the text, `confirm(p, xs)` raises on a bad value."""
    from modules import scripts

    xyz = next(d.module for d in scripts.scripts_data if d.script_class.__module__ == "xyz_grid.py")
    applied = []

    def confirm(p, xs):
        if "bad" in xs:
            raise RuntimeError("the fixture axis refuses 'bad'")

    def apply(p, x, xs):
        applied.append(x)
        p.steps = int(x)

    axis = xyz.AxisOptionTxt2Img("[Fixture] Steps twice", str, apply, confirm=confirm,
                                 prepare=lambda text: [str(2 * int(v)) for v in text.split("+")])
    xyz.axis_options.append(axis)
    try:
        result = script_engine.txt2img({**BASE, "script_name": "X/Y/Z plot", "script_args": xyz_args(
            x_type="[Fixture] Steps twice", x_values="1+2")})
        assert applied == ["2", "4"] and len(result.images) == 3  # the grid and its two cells
        assert "X Type: [Fixture] Steps twice" in result.infotexts[0]
        with pytest.raises(Exception, match="refuses 'bad'"):
            axis.prepare = None
            script_engine.txt2img({**BASE, "script_name": "X/Y/Z plot", "script_args": xyz_args(
                x_type="[Fixture] Steps twice", x_values="bad")})
        assert axis not in xyz.options_for(True)  # a txt2img-only axis is not offered on img2img
    finally:
        xyz.axis_options.remove(axis)


def test_prompt_matrix_makes_every_combination_and_a_grid(script_engine):
    result = script_engine.txt2img({**BASE, "steps": 1, "prompt": "a circle|red|blue", "script_name": "Prompt matrix",
                                    "script_args": [False, False, "positive", "comma", 0]})
    assert len(result.images) == 1 + 4 and result.index_of_first_image == 1
    assert result.all_prompts == ["a circle", "a circle, red", "a circle, blue", "a circle, red, blue"]
    assert [t.split("\n")[0] for t in result.infotexts[1:]] == result.all_prompts
    grid = result.images[0]
    assert grid.width > 2 * 64 and grid.height > 2 * 64  # 2×2 cells plus the labels


def test_prompts_from_textbox_runs_each_line_with_its_own_args(script_engine):
    text = 'a red circle\n--prompt "a blue square" --steps 1 --seed 5\n'
    result = script_engine.txt2img({**BASE, "prompt": "", "script_name": "Prompts from file or textbox",
                                    "script_args": [False, False, "start", text]})
    assert len(result.images) == 2
    assert result.infotexts[0].startswith("a red circle") and "Steps: 2," in result.infotexts[0]
    assert result.infotexts[1].startswith("a blue square") and "Steps: 1," in result.infotexts[1]
    assert "Seed: 5," in result.infotexts[1] and "Seed: 7," in result.infotexts[0]
    with pytest.raises(RequestError, match="line 1: unknown commandline option: --colour"):
        script_engine.txt2img({**BASE, "script_name": "Prompts from file or textbox",
                               "script_args": [False, False, "start", "--colour red"]})


def init_image(size=64) -> Image.Image:
    image = Image.new("RGB", (size, size), (200, 40, 40))
    ImageDraw.Draw(image).ellipse((size // 4, size // 4, size * 3 // 4, size * 3 // 4), fill=(30, 30, 220))
    return image


IMG2IMG = {**BASE, "denoising_strength": 0.5}


def test_loopback_feeds_each_output_into_the_next_loop(script_engine):
    result = script_engine.img2img({**IMG2IMG, "init_images": [init_image()], "script_name": "Loopback",
                                    "script_args": [2, 0.3, "Linear", "None"]})
    loops = result.images[result.index_of_first_image:]
    assert len(loops) == 2 and result.index_of_first_image == 1  # the grid of the loops comes first
    assert not np.array_equal(pixels(loops[0]), pixels(loops[1]))
    assert "Final denoising strength: 0.3" in result.infotexts[0]


@pytest.mark.slow
def test_poor_mans_outpainting_grows_the_canvas_and_keeps_the_centre(script_engine):
    original = init_image()
    result = script_engine.img2img({**IMG2IMG, "width": 128, "height": 128, "init_images": [original],
                                    "script_name": "Poor man's outpainting",
                                    "script_args": [32, 2, "fill", ["left", "right", "up", "down"]]})
    out = result.images[0]
    assert out.size == (128, 128)
    centre = pixels(out.crop((52, 52, 76, 76))) - pixels(original.crop((20, 20, 44, 44)))  # clear of the blur
    assert np.abs(centre).max() <= 3
    border = pixels(out.crop((0, 0, 128, 16)))
    assert border.std() > 0  # the new strip was painted, not left black


def test_sd_upscale_returns_the_upscaled_size(script_engine):
    result = script_engine.img2img({**IMG2IMG, "batch_size": 4, "init_images": [init_image()],
                                    "script_name": "SD upscale", "script_args": [None, 0, "Lanczos", 2.0]})
    assert len(result.images) == 1 and result.images[0].size == (128, 128)
    assert "SD upscale upscaler: Lanczos" in result.infotexts[0]


def test_xyz_controlnet_axes_drive_the_units(script_engine, load_tiny):
    """The extension's X/Y/Z axes ([ControlNet] Weight, Preprocessor …) set the units' fields per cell."""
    from tests import tiny_controlnets as tc

    model = load_tiny("sd1.safetensors")
    folder = script_engine.paths.controlnet_dirs[0]
    folder.mkdir(parents=True, exist_ok=True)
    tc.write_original(tc.build_controlnet(model.unet, 21), model.unet, folder / "control_sd15_canny.safetensors")
    square = Image.new("RGB", (64, 64), "black")
    square.paste((255, 255, 255), (16, 16, 48, 48))
    unit = {"image": square, "module": "canny", "model": "control_sd15_canny", "processor_res": 64}
    request = {**BASE, "alwayson_scripts": {"controlnet": {"args": [unit]}}}
    result = script_engine.txt2img({**request, "script_name": "X/Y/Z plot", "script_args": xyz_args(
        x_type="[ControlNet] Weight", x_values="0, 1.5")})
    cells = result.images[result.index_of_first_image:]
    plain = script_engine.txt2img(BASE).images[0]
    guided = script_engine.txt2img({**request, "alwayson_scripts": {"controlnet": {"args": [
        {**unit, "weight": 1.5}]}}}).images[0]
    assert len(cells) == 4  # each cell's picture, then its detected map
    assert np.array_equal(pixels(cells[0]), pixels(plain))  # weight 0: as if no unit
    assert np.array_equal(pixels(cells[2]), pixels(guided))
    assert "X Type: [ControlNet] Weight" in result.infotexts[0]
    with pytest.raises(RequestError, match="valid values: .*canny"):
        script_engine.txt2img({**request, "script_name": "X/Y/Z plot", "script_args": xyz_args(
            x_type="[ControlNet] Preprocessor", x_values="canny, nope")})

"""A1111's img2img Batch tab (modules/img2img_batch.py): a folder of pictures (and masks) run as img2img jobs,
saved under the inputs' names; PNG info; interrupt/skip; clear messages for missing or empty folders; the
ControlNet extension's batch units (`input_mode: "batch"`, `batch_images`)."""
from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, ImageDraw, PngImagePlugin

from modules import img2img_batch
from modules.img2img_batch import BatchOptions
from modules.request_types import RequestError

FIELDS = {"prompt": "a cat", "negative_prompt": "", "steps": 2, "width": 64, "height": 64, "cfg_scale": 5,
          "sampler_name": "Euler", "denoising_strength": 0.6, "seed": 11, "inpainting_fill": 1,
          "mask_blur": 0, "resize_mode": 0}


def _picture(i: int) -> Image.Image:
    x = np.linspace(0, 255, 64 * 64 * 3).reshape(64, 64, 3).astype(np.uint8)
    return Image.fromarray(np.roll(x, i * 20, axis=1))


def _mask() -> Image.Image:
    m = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(m).rectangle((16, 16, 47, 47), fill=255)
    return m


def _square(offset: int) -> Image.Image:
    im = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(im).rectangle((8 + offset, 8, 30 + offset, 40), fill="white")
    return im


@pytest.fixture(scope="module")
def engine(tmp_path_factory, tiny_models, load_tiny):
    from modules import cmd_args
    from modules.engine import Engine
    from modules.paths import Paths
    from tests import tiny_controlnets as tc

    data = tmp_path_factory.mktemp("i2i-batch")
    ckpt = data / "models" / "Stable-diffusion"
    ckpt.mkdir(parents=True)
    os.symlink(tiny_models.path("sd1.safetensors"), ckpt / "sd1.safetensors")
    nets = data / "models" / "ControlNet"
    nets.mkdir(parents=True)
    tc.write_original(tc.build_controlnet(load_tiny("sd1.safetensors").unet, 1), load_tiny("sd1.safetensors").unet,
                      nets / "control_v11p_sd15_canny.pth")
    ns = cmd_args.parse_args(["--data-dir", str(data), "--skip-install"], env={})
    return Engine.create(Paths.from_args(ns))


@pytest.fixture
def folders(tmp_path):
    inp, masks, out = tmp_path / "in", tmp_path / "masks", tmp_path / "out"
    inp.mkdir()
    masks.mkdir()
    for i, name in enumerate(("b.png", "a.png", "c.jpg")):
        _picture(i).save(inp / name)
        _mask().save(masks / f"{os.path.splitext(name)[0]}.png")
    (inp / "notes.txt").write_text("not a picture")
    return inp, masks, out


def test_a_folder_runs_as_img2img_saved_under_the_inputs_names(engine, folders):
    inp, _, out = folders
    seen = []
    r = img2img_batch.run_batch(engine, dict(FIELDS), BatchOptions(input_dir=str(inp), output_dir=str(out)),
                                on_picture=lambda k, n, name: seen.append((k, n, name)))
    assert seen == [(1, 3, "a.png"), (2, 3, "b.png"), (3, 3, "c.jpg")]
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.png"]  # stem + samples_format
    assert len(r.images) == 3 and len(r.infotexts) == 3 and not r.interrupted
    assert "Seed: 11" in Image.open(out / "a.png").info["parameters"]
    normal = engine.paths.outputs_dir / "img2img-images"
    assert not [p for p in normal.rglob("*") if p.is_file()]  # nothing saved the normal way


def test_masks_inpaint_and_keep_the_pixels_outside_and_no_output_dir_saves_normally(engine, folders):
    inp, masks, _ = folders
    (masks / "c.png").unlink()  # c has no mask: skipped, said so
    r = img2img_batch.run_batch(engine, dict(FIELDS), BatchOptions(input_dir=str(inp), inpaint_mask_dir=str(masks)))
    assert len(r.images) == 2 and any("c.jpg" in w and "no mask" in w for w in r.warnings)
    outside = np.asarray(_mask()) == 0
    for result, i in zip(r.images, (1, 0)):  # a.png, b.png
        got, want = np.asarray(result.convert("RGB")), np.asarray(_picture(i))
        assert np.abs(got[outside].astype(int) - want[outside]).max() <= 2
        assert np.abs(got[~outside].astype(int) - want[~outside]).mean() > 5  # repainted inside
    assert len(r.saved_paths) == 2 and all("img2img-images" in str(p) for p in r.saved_paths)


def test_png_info_takes_each_inputs_prompt_and_seed(engine, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    for i, seed in enumerate((101, 202)):
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", f"red circle {i}\nNegative prompt: blur\nSteps: 3, Sampler: Euler, Seed: {seed}, "
                                    "CFG scale: 6, Size: 64x64")
        _picture(i).save(inp / f"p{i}.png", pnginfo=info)
    opts = BatchOptions(input_dir=str(inp), output_dir=str(out), use_png_info=True, png_info_props=["Prompt", "Seed"])
    r = img2img_batch.run_batch(engine, dict(FIELDS), opts)
    texts = [Image.open(out / f"p{i}.png").info["parameters"] for i in range(2)]
    assert texts[0].startswith("a cat red circle 0\n") and "Seed: 101," in texts[0]
    assert texts[1].startswith("a cat red circle 1\n") and "Seed: 202," in texts[1]
    assert "Steps: 2," in texts[0] and "CFG scale: 5" in texts[0]  # not chosen: the tab's values
    assert r.all_seeds == [101, 202]


def test_interrupt_stops_the_batch_and_skip_goes_to_the_next_picture(engine, folders):
    inp, _, out = folders
    state = engine.state
    begin = state.begin
    count = {"n": 0}

    def begin_then(action):
        def wrapped(*a, **kw):
            begin(*a, **kw)
            count["n"] += 1
            if count["n"] == 2:  # during picture 2, before its first step
                action()
        return wrapped

    object.__setattr__(state, "begin", begin_then(engine.skip))
    try:
        r = img2img_batch.run_batch(engine, dict(FIELDS), BatchOptions(input_dir=str(inp), output_dir=str(out)))
    finally:
        object.__delattr__(state, "begin")
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "c.png"] and not r.interrupted
    for p in out.iterdir():
        p.unlink()
    count["n"] = 0
    object.__setattr__(state, "begin", begin_then(engine.interrupt))
    try:
        r = img2img_batch.run_batch(engine, dict(FIELDS), BatchOptions(input_dir=str(inp), output_dir=str(out)))
    finally:
        object.__delattr__(state, "begin")
    assert sorted(p.name for p in out.iterdir()) == ["a.png"] and r.interrupted
    assert "Interrupted after picture 2 of 3" in r.warnings
    assert engine.control_hooks == []  # the batch's listener is gone


def test_missing_or_empty_folders_say_so(engine, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    cases = [(BatchOptions(input_dir=str(tmp_path / "nope")), "Input directory does not exist"),
             (BatchOptions(input_dir=str(tmp_path / "empty")), "No pictures in"),
             (BatchOptions(input_dir=""), "give an input directory"),
             (BatchOptions(input_dir=str(tmp_path / "empty"), hide_dirs=True), "--hide-ui-dir-config")]
    for options, message in cases:
        with pytest.raises(RequestError, match=message):
            img2img_batch.check(engine, dict(FIELDS), options)
    _picture(0).save(tmp_path / "empty" / "x.png")
    with pytest.raises(RequestError, match="mask directory does not exist"):
        img2img_batch.check(engine, dict(FIELDS), BatchOptions(input_dir=str(tmp_path / "empty"),
                                                               inpaint_mask_dir=str(tmp_path / "nomasks")))


def _unit(engine, folder, **extra) -> dict:
    title = next(t for t in engine.controlnets.titles() if "canny" in t)
    return {"enabled": True, "module": "none", "model": title, "weight": 1.5, "input_mode": "batch",
            "batch_images": str(folder), **extra}


def test_a_controlnet_batch_unit_takes_the_matching_picture_of_its_folder(engine, folders, tmp_path):
    inp, _, out = folders
    maps = tmp_path / "maps"
    maps.mkdir()
    for i in range(3):
        _square(i * 12).save(maps / f"m{i}.png")
    fields = {**FIELDS, "alwayson_scripts": {"controlnet": {"args": [_unit(engine, maps)]}}}
    r = img2img_batch.run_batch(engine, fields, BatchOptions(input_dir=str(inp), output_dir=str(out)))
    assert len(r.images) == 3 and all("ControlNet 0" in t for t in r.infotexts)  # no detected maps in the batch
    single = dict(FIELDS, init_images=[_picture(0)], do_not_save_samples=True,  # b.png is picture 2, map m1
                  alwayson_scripts={"controlnet": {"args": [_unit(engine, maps, input_mode="simple",
                                                                   image=_square(12))]}})
    want = engine.img2img(single).images[0]
    assert np.array_equal(np.asarray(r.images[1]), np.asarray(want))
    assert not np.array_equal(np.asarray(r.images[0]), np.asarray(want))


def test_api_batch_units_run_once_per_control_picture(engine, tmp_path):
    from modules.controlnet.unit_request import ControlNetUnitRequest, InputMode
    from modules.request_types import Txt2ImgRequest

    maps, out = tmp_path / "maps", tmp_path / "cn-out"
    maps.mkdir()
    for i in range(2):
        _square(i * 20).save(maps / f"pose{i}.png")
    unit = ControlNetUnitRequest.from_dict({"model": "x", "input_mode": "BATCH", "batch_images": str(maps),
                                            "output_dir": str(out)})
    assert unit.input_mode is InputMode.BATCH and unit.batch_images == str(maps) and unit.output_dir == str(out)
    assert ControlNetUnitRequest.from_dict({"input_mode": "merge", "batch_images": "x"}).batch_images is None
    with pytest.raises(RequestError, match=r"controlnet\[0\]\.input_mode"):
        ControlNetUnitRequest.from_dict({"input_mode": "folder"})
    req = Txt2ImgRequest.from_dict({**FIELDS, "alwayson_scripts": {"controlnet": {"args": [_unit(engine, maps)]}}})
    r = engine.generate(req)
    assert len(r.images) == 2 and r.all_seeds == [11, 11]
    req = Txt2ImgRequest.from_dict({**FIELDS, "alwayson_scripts": {"controlnet": {"args": [
        _unit(engine, maps, output_dir=str(out))]}}})
    r = engine.generate(req)
    assert sorted(p.name for p in out.iterdir()) == ["pose0.png", "pose1.png"] and r.images == []


def test_the_page_queues_the_folder_as_one_job_saying_which_picture(engine, folders):
    from webui.runner import progress_html, run_batch_streaming

    inp, _, out = folders
    updates = list(run_batch_streaming(engine, lambda: dict(FIELDS), BatchOptions(input_dir=str(inp),
                                                                                    output_dir=str(out)),
                                       client="tester"))
    jobs = [j for j in engine.visible_queue.jobs() if j.client == "tester"]
    assert len(jobs) == 1 and jobs[0].status == "done" and jobs[0].summary()["stage"] == "Picture 3 of 3: c.jpg"
    gallery = updates[-1][0]
    assert len(gallery) == 3 and sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.png"]
    running = SimpleNamespace(active=True, sampling_steps=2, sampling_step=1, job_no=0, job_count=1, textinfo=None,
                              progress=lambda: 0.5, eta=lambda: 1.0)
    assert "Picture 2 of 3: b.png · Step 1/2" in progress_html(engine, False, state=running,
                                                                stage="Picture 2 of 3: b.png")
    bad = list(run_batch_streaming(engine, lambda: dict(FIELDS), BatchOptions(input_dir=str(inp / "nope"))))
    assert len(bad) == 1 and "Input directory does not exist" in bad[0][2]
    assert len([j for j in engine.visible_queue.jobs() if j.client == "tester"]) == 1  # nothing queued

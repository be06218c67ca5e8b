"""The engine as a user meets it: seeds, batches, infotext, saved files, img2img steps, inpaint, hires fix,
interrupt/skip, and clear errors for bad requests."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modules import images as images_mod
from modules import infotext
from modules.request_types import RequestError

BASE = {"prompt": "a cat", "negative_prompt": "ugly", "steps": 3, "width": 64, "height": 64, "cfg_scale": 7,
        "sampler_name": "Euler a", "do_not_save_grid": True}


def arr(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("RGB"), dtype=np.int16)


def same_picture(a: Image.Image, b: Image.Image) -> bool:
    """Equal up to float rounding: a batch of 3 runs the UNet with other matrix shapes than a batch of 1, and a
    random tiny model amplifies the last-bit differences into a pixel level or two."""
    d = np.abs(arr(a) - arr(b))
    return int(d.max()) <= 3 and float(d.mean()) < 0.2


def _init() -> Image.Image:
    x = np.linspace(0, 255, 64 * 64 * 3).reshape(64, 64, 3).astype(np.uint8)
    return Image.fromarray(x)


def _mask() -> Image.Image:
    m = np.zeros((64, 64), np.uint8)
    m[20:44, 20:44] = 255
    return Image.fromarray(m)


# -- seeds -------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_batch_image_equals_single_run_with_seed_plus_i(engine):
    batch = engine.txt2img({**BASE, "seed": 100, "batch_size": 3, "do_not_save_samples": True})
    assert batch.all_seeds == [100, 101, 102]
    imgs = batch.images[batch.index_of_first_image:]
    single = engine.txt2img({**BASE, "seed": 102, "do_not_save_samples": True})
    assert same_picture(imgs[2], single.images[0])
    assert not np.array_equal(arr(imgs[0]), arr(imgs[1]))
    # A1111's "Make K-diffusion samplers produce same images in a batch as when making a single image" off: the
    # ancestral sampler's step noise is drawn for the batch at once, so the third picture is no longer seed 102's
    shared = engine.txt2img({**BASE, "seed": 100, "batch_size": 3, "do_not_save_samples": True,
                             "override_settings": {"enable_batch_seeds": False}})
    assert not same_picture(shared.images[shared.index_of_first_image + 2], single.images[0])


@pytest.mark.slow
def test_n_iter_batches_continue_the_seeds(engine):
    r = engine.txt2img({**BASE, "seed": 7, "batch_size": 2, "n_iter": 2, "do_not_save_samples": True,
                        "do_not_save_grid": False})
    assert r.all_seeds == [7, 8, 9, 10]
    assert r.index_of_first_image == 1 and len(r.images) == 5  # grid first, then the four images
    assert r.images[0].size == (128, 128)
    third = engine.txt2img({**BASE, "seed": 9, "do_not_save_samples": True})
    assert same_picture(r.images[3], third.images[0])


@pytest.mark.slow
def test_random_seed_is_reported_and_reproducible(engine):
    r = engine.txt2img({**BASE, "seed": -1, "do_not_save_samples": True})
    assert 0 <= r.seed < 4294967294
    again = engine.txt2img({**BASE, "seed": r.seed, "do_not_save_samples": True})
    assert np.array_equal(arr(r.images[0]), arr(again.images[0]))


@pytest.mark.slow
def test_variation_seed_strength_ends(engine):
    base = engine.txt2img({**BASE, "seed": 5, "do_not_save_samples": True}).images[0]
    other = engine.txt2img({**BASE, "seed": 77, "do_not_save_samples": True}).images[0]
    s0 = engine.txt2img({**BASE, "seed": 5, "subseed": 77, "subseed_strength": 0.0, "do_not_save_samples": True})
    mid = engine.txt2img({**BASE, "seed": 5, "subseed": 77, "subseed_strength": 0.5, "do_not_save_samples": True})
    assert np.array_equal(arr(s0.images[0]), arr(base))
    assert not np.array_equal(arr(mid.images[0]), arr(base)) and not np.array_equal(arr(mid.images[0]), arr(other))
    assert "Variation seed: 77, Variation seed strength: 0.5" in mid.infotexts[0]


@pytest.mark.slow
def test_resize_seed_from_same_size_is_a_no_op_and_other_size_changes(engine):
    base = engine.txt2img({**BASE, "seed": 3, "do_not_save_samples": True}).images[0]
    same = engine.txt2img({**BASE, "seed": 3, "seed_resize_from_w": 64, "seed_resize_from_h": 64,
                           "do_not_save_samples": True})
    other = engine.txt2img({**BASE, "seed": 3, "seed_resize_from_w": 32, "seed_resize_from_h": 48,
                            "do_not_save_samples": True})
    assert np.array_equal(arr(same.images[0]), arr(base))
    assert not np.array_equal(arr(other.images[0]), arr(base))
    assert "Seed resize from: 32x48" in other.infotexts[0]


@pytest.mark.slow
def test_img2img_and_inpaint_batches_follow_seeds(engine):
    req = {**BASE, "init_images": [_init()], "denoising_strength": 0.6, "do_not_save_samples": True}
    for extra in ({}, {"mask": _mask(), "mask_blur": 0}):
        batch = engine.img2img({**req, **extra, "seed": 50, "batch_size": 2})
        single = engine.img2img({**req, **extra, "seed": 51})
        assert same_picture(batch.images[-1], single.images[0])


# -- infotext and files -------------------------------------------------------------------------------------------


def test_infotext_exact_text(engine):
    r = engine.txt2img({**BASE, "seed": 1234, "sampler_name": "DPM++ 2M Karras", "do_not_save_samples": True})
    model = engine.models.current
    assert r.infotexts[0] == (
        "a cat\nNegative prompt: ugly\n"
        f"Steps: 3, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 64x64, "
        f"Model hash: {model.shorthash}, Model: sd1, Version: {infotext_version()}"
    )
    parsed = infotext.parse_generation_parameters(r.infotexts[0])
    fields = infotext.infotext_to_request_fields(parsed)
    assert fields["prompt"] == "a cat" and fields["negative_prompt"] == "ugly"
    assert (fields["width"], fields["height"], fields["seed"], fields["steps"]) == (64, 64, 1234, 3)
    assert fields["sampler_name"] == "DPM++ 2M" and fields["scheduler"] == "Karras"


def infotext_version() -> str:
    from modules.version import VERSION

    return VERSION


@pytest.mark.slow
def test_saved_files_names_and_pnginfo(engine):
    r = engine.txt2img({**BASE, "seed": 42, "batch_size": 2, "do_not_save_grid": False})
    names = [p.name for p in r.saved_paths]
    assert names == ["00000-42.png", "00001-43.png"]
    day_dir = r.saved_paths[0].parent
    assert day_dir.parent == engine.paths.outputs_dir / "txt2img-images"
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", day_dir.name)
    with Image.open(r.saved_paths[1]) as im:
        assert images_mod.read_infotext(im) == r.infotexts[2]
    assert r.grid_path is not None and r.grid_path.name == "grid-0000.png"
    r2 = engine.txt2img({**BASE, "seed": 9})
    assert r2.saved_paths[0].name == "00002-9.png"
    assert not list(day_dir.glob(".*"))  # no temp files left behind


def test_override_settings_apply_to_one_job(engine):
    r = engine.txt2img({**BASE, "seed": 1, "override_settings": {"samples_format": "jpg",
                                                                 "CLIP_stop_at_last_layers": 2}})
    assert r.saved_paths[0].suffix == ".jpg"
    assert "Clip skip: 2" in r.infotexts[0]
    assert engine.settings.get("samples_format") == "png"
    with pytest.raises(RequestError, match="CLIP_stop_at_last_layers"):
        engine.txt2img({**BASE, "override_settings": {"CLIP_stop_at_last_layers": 99}})


# -- img2img -------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("strength,fix,expected", [(0.5, False, 5), (0.75, False, 7), (0.5, True, 10),
                                                    (0.0, False, 0)])
def test_img2img_step_count_follows_a1111(engine, strength, fix, expected):
    steps_seen = []
    original = engine.state.next_job

    def spy():
        steps_seen.append(engine.state.sampling_steps)
        original()

    engine.state.next_job = spy
    engine.img2img({**BASE, "steps": 10, "init_images": [_init()], "denoising_strength": strength,
                    "do_not_save_samples": True, "override_settings": {"img2img_fix_steps": fix}})
    assert steps_seen == [expected]


@pytest.mark.slow
@pytest.mark.parametrize("mode", [0, 1, 2, 3])
def test_img2img_resize_modes_give_requested_size(engine, mode):
    wide = Image.new("RGB", (96, 48), (200, 30, 30))
    r = engine.img2img({**BASE, "init_images": [wide], "resize_mode": mode, "width": 64, "height": 80,
                        "denoising_strength": 0.5, "do_not_save_samples": True})
    assert r.images[0].size == (64, 80)


def test_inpaint_only_masked_keeps_everything_outside_the_mask(engine):
    big = Image.fromarray(np.random.RandomState(0).randint(0, 255, (96, 128, 3)).astype(np.uint8))
    m = np.zeros((96, 128), np.uint8)
    m[30:60, 40:80] = 255
    r = engine.img2img({**BASE, "init_images": [big], "mask": Image.fromarray(m), "mask_blur": 4,
                        "inpaint_full_res": True, "inpaint_full_res_padding": 8, "inpainting_fill": 0,
                        "denoising_strength": 0.8, "do_not_save_samples": True})
    out = arr(r.images[0])
    assert out.shape == (96, 128, 3)
    outside = np.ones((96, 128), bool)
    outside[30 - 12:60 + 12, 40 - 12:80 + 12] = False  # the blurred edge may blend
    assert np.array_equal(out[outside], arr(big)[outside])
    assert not np.array_equal(out[35:55, 45:75], arr(big)[35:55, 45:75])
    assert "Inpaint area: Only masked" in r.infotexts[0] and "Masked content: fill" in r.infotexts[0]


def test_mask_round_off_blends_the_blurred_edge_softly(engine, monkeypatch):
    """A1111's mask_round (default on): the blurred mask is rounded to 0/1 for the latent blend; off, its soft edge
    blends the latents and the picture changes along it."""
    from modules import processing

    masks = []
    original = processing._inpaint_tensors

    def recording(*args, **kwargs):
        out = original(*args, **kwargs)
        masks.append(out["latent_mask"])
        return out

    monkeypatch.setattr(processing, "_inpaint_tensors", recording)
    request = {**BASE, "init_images": [_init()], "mask": _mask(), "mask_blur": 8, "inpainting_fill": 1,
               "inpaint_full_res": False, "denoising_strength": 0.75, "seed": 5, "do_not_save_samples": True}
    rounded = engine.img2img(dict(request)).images[0]
    soft = engine.img2img({**request, "mask_round": False}).images[0]
    assert set(masks[0].unique().tolist()) == {0.0, 1.0}
    assert ((masks[1] > 0.05) & (masks[1] < 0.95)).any()
    assert not np.array_equal(arr(rounded), arr(soft))


@pytest.mark.slow
@pytest.mark.parametrize("fill", [2, 3])
def test_inpaint_latent_fill_modes_run(engine, fill):
    r = engine.img2img({**BASE, "init_images": [_init()], "mask": _mask(), "inpainting_fill": fill,
                        "inpaint_full_res": False, "do_not_save_samples": True})
    assert r.images[0].size == (64, 64)
    assert f"Masked content: {('latent noise', 'latent nothing')[fill - 2]}" in r.infotexts[0]


# -- hires fix -----------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_hires_fix_upscales_and_records_parameters(engine, upscaler):
    r = engine.txt2img({**BASE, "seed": 11, "enable_hr": True, "hr_scale": 1.5, "hr_upscaler": upscaler,
                        "hr_second_pass_steps": 2, "denoising_strength": 0.5, "do_not_save_samples": True})
    assert r.images[0].size == (96, 96)
    text = r.infotexts[0]
    assert "Size: 64x64" in text and "Denoising strength: 0.5" in text
    assert f"Hires upscale: 1.5, Hires steps: 2, Hires upscaler: {upscaler}" in text


@pytest.mark.slow
def test_hires_resize_to_exact_size(engine):
    r = engine.txt2img({**BASE, "enable_hr": True, "hr_resize_x": 96, "hr_resize_y": 128,
                        "do_not_save_samples": True})
    assert r.images[0].size == (96, 128)


# -- interrupt and skip ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_interrupt_keeps_finished_images_and_skip_drops_the_current(engine):
    calls = {"n": 0}
    original = engine.state.next_job

    def interrupt_after_first():
        calls["n"] += 1
        original()
        if calls["n"] == 1:
            engine.interrupt()

    engine.state.next_job = interrupt_after_first
    r = engine.txt2img({**BASE, "seed": 1, "n_iter": 3, "do_not_save_samples": True})
    assert r.interrupted and len(r.images) == 1 and r.infotexts[0].count("Seed: 1,") == 1
    engine.state.next_job = original

    seen = {"step": 0}
    import modules.processing as processing

    real_on_step = processing.Generation._on_step

    def skip_first_batch(self, info):
        seen["step"] += 1
        if seen["step"] == 1:
            self.ctx.state.skip()
        real_on_step(self, info)

    processing.Generation._on_step = skip_first_batch
    try:
        r = engine.txt2img({**BASE, "seed": 1, "n_iter": 2, "do_not_save_samples": True, "do_not_save_grid": True})
    finally:
        processing.Generation._on_step = real_on_step
    assert not r.interrupted and r.skipped_batches == 1
    assert len(r.images) == 1 and "Seed: 2," in r.infotexts[0]


# -- bad requests --------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("patch,message", [
    ({"sampler_name": "Bogus sampler"}, "Bogus sampler"),
    ({"steps": 0}, "steps"),
    ({"width": 10}, "width"),
    ({"steps": "many"}, "steps"),
    ({"hr_upscaler": "Nope", "enable_hr": True}, "hr_upscaler"),
])
def test_bad_requests_are_clear_errors(engine, patch, message):
    with pytest.raises(RequestError, match=message):
        engine.txt2img({**BASE, **patch})
    assert engine.txt2img({**BASE, "do_not_save_samples": True}).images  # the engine still works


def test_unknown_sampler_lists_valid_names(engine):
    with pytest.raises(RequestError) as e:
        engine.txt2img({**BASE, "sampler_name": "k_bogus"})
    assert "DPM++ 2M" in str(e.value) and "Euler a" in str(e.value)


@pytest.mark.slow
def test_legacy_and_alias_sampler_names(engine):
    a = engine.txt2img({**BASE, "seed": 3, "sampler_name": "k_euler_a", "do_not_save_samples": True})
    b = engine.txt2img({**BASE, "seed": 3, "sampler_name": "Euler a", "do_not_save_samples": True})
    assert np.array_equal(arr(a.images[0]), arr(b.images[0]))


def test_img2img_without_image_is_an_error(engine):
    with pytest.raises(RequestError, match="init_images"):
        engine.img2img({**BASE})


# -- the command-line client ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_txt2img_and_img2img(data_dir, tmp_path, capsys):
    """`python -m modules.cli` as a process once; its img2img and error paths through the same main()."""
    from modules import cli

    req = tmp_path / "req.json"
    req.write_text(json.dumps({**BASE, "seed": 21, "batch_size": 2}))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "modules.cli", "txt2img", "--data-dir", str(data_dir), "--request", str(req),
           "--out", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent.parent)
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    # do_not_save_grid: no grid is saved or returned (A1111)
    assert info["all_seeds"] == [21, 22] and info["index_of_first_image"] == 0 and len(info["infotexts"]) == 2
    assert sorted(f.name for f in out.iterdir()) == ["00000-21.png", "00001-22.png"]

    _init().save(tmp_path / "init.png")
    req.write_text(json.dumps({**BASE, "seed": 5, "init_images": ["init.png"], "denoising_strength": 0.5}))
    argv = ["img2img", *cmd[4:]]
    assert cli.main(argv) == 0
    assert "Denoising strength: 0.5" in json.loads(capsys.readouterr().out)["infotexts"][0]

    req.write_text(json.dumps({**BASE, "init_images": ["missing.png"]}))
    assert cli.main(argv) != 0
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "init_images" in err and "Traceback" not in err


def test_progress_and_live_preview_during_sampling(engine):
    seen = []
    import modules.processing as processing

    real_on_step = processing.Generation._on_step

    def spy(self, info):
        real_on_step(self, info)
        state = self.ctx.state
        seen.append((state.sampling_step, state.sampling_steps, state.progress(), state.current_image_step))

    processing.Generation._on_step = spy
    try:
        engine.txt2img({**BASE, "steps": 4, "do_not_save_samples": True,
                        "override_settings": {"show_progress_every_n_steps": 2}})
    finally:
        processing.Generation._on_step = real_on_step
    assert [s[:2] for s in seen] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert [round(s[2], 2) for s in seen] == [0.25, 0.5, 0.75, 1.0]
    assert [s[3] for s in seen] == [-1, 2, 2, 4]
    # the cheap live preview is drawn at the latent's size: 64 px / 8
    assert engine.state.current_image is None or engine.state.current_image.size == (8, 8)


def test_live_preview_method_and_batch_grid_follow_the_settings(engine, monkeypatch):
    """A1111's "Live preview method" (Full: the VAE's own picture) and "Show previews of all images generated in a
    batch as a grid"."""
    import modules.processing as processing

    previews = []
    real_on_step = processing.Generation._on_step

    def spy(self, info):
        real_on_step(self, info)
        previews.append(self.ctx.state.current_image)

    monkeypatch.setattr(processing.Generation, "_on_step", spy)

    def last_preview(**options):
        previews.clear()
        engine.txt2img({**BASE, "steps": 2, "batch_size": 2, "seed": 12, "do_not_save_samples": True,
                        "override_settings": {"show_progress_every_n_steps": 1, **options}})
        return previews[-1]

    assert last_preview().size == (16, 8)  # two cheap 8x8 previews side by side
    assert last_preview(show_progress_grid=False).size == (8, 8)
    full = last_preview(show_progress_type="Full", show_progress_grid=False)
    final = engine.txt2img({**BASE, "steps": 2, "batch_size": 2, "seed": 12, "do_not_save_samples": True}).images[0]
    assert full.size == (64, 64) and np.abs(arr(full) - arr(final)).max() <= 2  # the last step is the picture


@pytest.mark.slow
def test_inpainting_model_also_does_txt2img_and_plain_img2img(tmp_path, tiny_models):
    """A 9-channel model without a mask is conditioned on "repaint everything", as A1111 does."""
    from modules import cmd_args
    from modules.engine import Engine
    from modules.paths import Paths

    ckpt = tmp_path / "models" / "Stable-diffusion"
    ckpt.mkdir(parents=True)
    (ckpt / "inp.safetensors").symlink_to(tiny_models.path("sd1-inpainting.safetensors"))
    eng = Engine.create(Paths.from_args(cmd_args.parse_args(["--data-dir", str(tmp_path)], env={})))
    r = eng.txt2img({**BASE, "do_not_save_samples": True})
    assert r.images[0].size == (64, 64)
    r = eng.img2img({**BASE, "init_images": [_init()], "do_not_save_samples": True})
    assert r.images[0].size == (64, 64)
    # A1111's "Inpainting conditioning mask strength": below 1 the model sees some of the masked area's picture
    req = {**BASE, "seed": 3, "init_images": [_init()], "mask": _mask(), "do_not_save_samples": True}
    full, half = (eng.img2img({**req, "override_settings": {"inpainting_mask_weight": w}}) for w in (1.0, 0.5))
    assert "Conditional mask weight: 0.5" in half.infotexts[0] and "Conditional mask" not in full.infotexts[0]
    assert not np.array_equal(arr(full.images[0]), arr(half.images[0]))


def test_styles_from_styles_csv_apply_to_requests(data_dir):
    from modules import cmd_args
    from modules.engine import Engine
    from modules.paths import Paths

    (data_dir / "styles.csv").write_text('name,prompt,negative_prompt\nfilm,"analog film, {prompt}, grain",lowres\n'
                                         'sharp,"highly detailed",\n')
    eng = Engine.create(Paths.from_args(cmd_args.parse_args(["--data-dir", str(data_dir)], env={})))
    assert eng.styles.names() == ["film", "sharp"]
    r = eng.txt2img({**BASE, "prompt": "a cat", "negative_prompt": "ugly", "styles": ["film", "sharp"],
                     "do_not_save_samples": True})
    assert r.infotexts[0].startswith("analog film, a cat, grain, highly detailed\nNegative prompt: ugly, lowres\n")


def test_prompt_comments_are_left_out_of_the_generation_and_the_infotext_as_in_a1111(engine):
    """A1111's Comments script (setting "Enable comments", on by default): `#` to the end of a line, and lines that
    are all comment, are not generated from nor written into the infotext; turned off, `#` is prompt text."""
    from modules.prompt_comments import strip_comments

    assert strip_comments("a red ball # a blue sky\n# draft notes") == "a red ball \n"  # A1111's two passes
    assert strip_comments("first\n#c1\n#c2\nlast") == "first\n\nlast" and strip_comments("(red:1.2)") == "(red:1.2)"
    job = {**BASE, "seed": 5, "do_not_save_samples": True, "do_not_save_grid": True}
    commented = engine.txt2img({**job, "prompt": "a red ball # a blue sky\n# draft notes",
                                "negative_prompt": "ugly # but keep this out"})
    plain = engine.txt2img({**job, "prompt": "a red ball \n", "negative_prompt": "ugly \n"})
    assert commented.all_prompts == ["a red ball \n"] and commented.all_negative_prompts == ["ugly \n"]
    assert "blue sky" not in commented.info and "draft" not in commented.info and "keep this" not in commented.info
    assert np.array_equal(np.asarray(commented.images[0]), np.asarray(plain.images[0]))
    kept = engine.txt2img({**job, "prompt": "a red ball # a blue sky\n# draft notes",
                           "negative_prompt": "ugly # but keep this out",
                           "override_settings": {"enable_prompt_comments": False}})
    assert "# a blue sky" in kept.info and not np.array_equal(np.asarray(kept.images[0]),
                                                              np.asarray(plain.images[0]))
    from webui.generation_tabs import token_count  # the page's counter counts what is generated

    assert token_count("a cat # one two three", True) == token_count("a cat") == "2/75"
    assert token_count("a cat # one two three", False) != "2/75"


def test_save_txt_writes_the_parameters_next_to_each_picture(engine):
    """A1111's "Create a text file next to every image with generation parameters" (`save_txt`, off by default)."""
    off = engine.txt2img({**BASE, "seed": 8, "do_not_save_grid": True})
    assert not off.saved_paths[0].with_suffix(".txt").exists()
    on = engine.txt2img({**BASE, "seed": 9, "batch_size": 2, "do_not_save_grid": True,
                         "override_settings": {"save_txt": True}})
    for path, text in zip(on.saved_paths, on.infotexts):
        assert path.with_suffix(".txt").read_text(encoding="utf-8") == text + "\n"
    assert "Seed: 10" in on.saved_paths[1].with_suffix(".txt").read_text(encoding="utf-8")


def test_add_to_generation_information_settings_leave_their_keys_out(engine):
    """A1111's "Add model hash / model name / VAE hash / VAE name / program version to generation information"
    (all on by default): turned off, the key is not written."""
    job = {**BASE, "seed": 4, "do_not_save_samples": True, "do_not_save_grid": True}
    full = engine.txt2img(job).info
    assert "Model hash: " in full and "Model: " in full and "Version: " in full
    off = {name: False for name in ("add_model_hash_to_info", "add_model_name_to_info", "add_vae_hash_to_info",
                                    "add_vae_name_to_info", "add_version_to_infotext")}
    short = engine.txt2img({**job, "override_settings": off}).info
    assert "Model hash:" not in short and "Model:" not in short and "Version:" not in short
    assert short.split("Steps: ")[1].startswith(full.split("Steps: ")[1][:40])  # the rest as before


def test_save_images_before_highres_fix_keeps_the_first_pass(engine):
    """A1111's "Save a copy of image before applying highres fix" (off by default): the first pass is saved too,
    at its own size, as NNNNN-SEED-before-highres-fix with the picture's infotext."""
    job = {**BASE, "seed": 12, "batch_size": 2, "enable_hr": True, "hr_scale": 2, "hr_upscaler": "Latent",
           "denoising_strength": 0.5, "do_not_save_grid": True}
    plain = engine.txt2img(job)
    folder = plain.saved_paths[0].parent
    assert not list(folder.glob("*-before-highres-fix.*"))
    kept = engine.txt2img({**job, "override_settings": {"save_images_before_highres_fix": True}})
    before = sorted(folder.glob("*-before-highres-fix.png"))
    assert [p.name.split("-")[1] for p in before] == ["12", "13"]
    for path, final, seed in zip(before, kept.saved_paths, (12, 13)):
        with Image.open(path) as first, Image.open(final) as done:
            assert first.size == (64, 64) and done.size == (128, 128)
            assert "Hires upscale: 2" in first.info["parameters"] and f"Seed: {seed}," in first.info["parameters"]


def test_save_init_img_keeps_each_init_picture_once_by_its_hash(engine):
    """A1111's "Save init images when using img2img" (off by default): the init picture, as given, in
    outputs/init-images named by the md5 of its pixels (the same picture once), and "Init image hash" in the
    infotext."""
    import hashlib

    init = _init()
    folder = engine.paths.outputs_dir / "init-images"
    req = {**BASE, "init_images": [init], "denoising_strength": 0.6, "do_not_save_samples": True}
    assert "Init image hash" not in engine.img2img(req).info and not list(folder.glob("*"))
    digest = hashlib.md5(init.tobytes()).hexdigest()
    for seed in (1, 2):
        r = engine.img2img({**req, "seed": seed, "override_settings": {"save_init_img": True}})
        assert f"Init image hash: {digest}" in r.info
    assert [p.name for p in folder.iterdir()] == [f"{digest}.png"]
    with Image.open(folder / f"{digest}.png") as saved:
        assert np.array_equal(np.asarray(saved.convert(init.mode)), np.asarray(init))


def test_grid_settings_one_picture_grids_and_no_empty_spots(engine):
    """A1111's "Do not save grids consisting of one picture" (on by default) and "Prevent empty spots in grid"."""
    one = {**BASE, "seed": 21, "do_not_save_samples": True, "do_not_save_grid": False}
    assert engine.txt2img(one).index_of_first_image == 0  # one picture: no grid
    r = engine.txt2img({**one, "override_settings": {"grid_only_if_multiple": False}})
    assert r.index_of_first_image == 1 and len(r.images) == 2 and r.grid_path is not None
    assert r.images[0].size == r.images[1].size == (64, 64)
    five = {**one, "seed": 22, "batch_size": 5}
    assert engine.txt2img(five).images[0].size == (3 * 64, 2 * 64)  # round(sqrt(5)) rows: one spot empty
    packed = engine.txt2img({**five, "override_settings": {"grid_prevent_empty_spots": True}})
    assert packed.images[0].size == (5 * 64, 64)


def _inpaint_request(**extra) -> dict:
    init = Image.fromarray(np.random.RandomState(5).randint(0, 255, (64, 64, 3)).astype(np.uint8))
    return {**BASE, "init_images": [init], "mask": _mask(), "mask_blur": 0, "denoising_strength": 0.9, "seed": 4,
            "inpaint_full_res": False, **extra}


def test_img2img_color_correction_brings_back_the_init_colours(engine):
    """A1111's "Apply color correction to img2img results to match original colors": the result's colours are
    matched to the init picture's (the tiny random model drifts far from them), its luminosity kept; "Save a copy
    of image before applying color correction" keeps the uncorrected picture too."""
    import cv2

    warm = np.zeros((64, 64, 3), np.uint8)
    warm[..., 0] = np.linspace(120, 250, 64).astype(np.uint8)[None, :]
    warm[..., 1] = 70
    warm[..., 2] = 30
    req = {**BASE, "init_images": [Image.fromarray(warm)], "denoising_strength": 0.9, "seed": 8}
    plain = engine.img2img({**req, "do_not_save_samples": True}).images[0]
    r = engine.img2img({**req, "override_settings": {"img2img_color_correction": True,
                                                     "save_images_before_color_correction": True}})
    corrected = r.images[0]

    def colour(im):  # the mean a and b of LAB: the colour, whatever the lightness
        return cv2.cvtColor(np.asarray(im.convert("RGB")), cv2.COLOR_RGB2LAB).reshape(-1, 3)[:, 1:].mean(0)

    target = colour(Image.fromarray(warm))
    assert np.abs(colour(corrected) - target).sum() < np.abs(colour(plain) - target).sum() / 4
    grey = np.array([0.299, 0.587, 0.114])  # the detail (luminosity) is the sampled picture's
    assert np.corrcoef((arr(corrected) @ grey).ravel(), (arr(plain) @ grey).ravel())[0, 1] > 0.9
    before = sorted(engine.paths.outputs_dir.rglob("*-before-color-correction.png"))
    assert len(before) == 1 and np.array_equal(arr(Image.open(before[0])), arr(plain))


def test_inpaint_mask_and_masked_composite_are_returned_and_saved_when_asked(engine):
    """save_mask / save_mask_composite / return_mask / return_mask_composite: the greyscale mask and the picture
    where it was masked (transparent elsewhere), beside each picture and after it in the results."""
    r = engine.img2img(_inpaint_request(override_settings={"return_mask": True, "return_mask_composite": True,
                                                           "save_mask": True, "save_mask_composite": True}))
    picture, mask, composite = r.images
    assert len(r.infotexts) == 3 and r.infotexts[1] == r.infotexts[0]
    assert np.array_equal(np.asarray(mask.convert("L")), np.asarray(_mask()))
    assert composite.mode == "RGBA"
    alpha = np.asarray(composite)[..., 3]
    assert np.array_equal(alpha, np.asarray(_mask()))
    inside = np.asarray(_mask()) == 255
    assert np.array_equal(np.asarray(composite)[..., :3][inside], arr(picture)[inside])
    folder = r.saved_paths[0].parent
    assert len(list(folder.glob("*-mask.png"))) == 1 and len(list(folder.glob("*-mask-composite.png"))) == 1
    assert len(engine.img2img(_inpaint_request(do_not_save_samples=True)).images) == 1  # off by default


def test_overlay_inpaint_off_gives_the_picture_as_sampled(engine):
    """"Overlay original for inpaint" (on by default) puts the original back outside the mask; off, the sampled
    picture comes as it is."""
    original = arr(_inpaint_request()["init_images"][0])
    outside = np.asarray(_mask()) == 0
    kept = arr(engine.img2img(_inpaint_request(do_not_save_samples=True)).images[0])
    raw = arr(engine.img2img(_inpaint_request(do_not_save_samples=True,
                                              override_settings={"overlay_inpaint": False})).images[0])
    assert np.array_equal(kept[outside], original[outside])
    assert not np.array_equal(raw[outside], original[outside])
    inside = ~outside
    assert np.array_equal(kept[inside], raw[inside])


def test_restore_faces_on_an_inpaint_leaves_the_unmasked_part_alone(engine, monkeypatch):
    """A1111 restores faces on the sampled picture, before the original is put back over what was not masked: a
    face outside the mask is never touched."""
    from modules import face_restoration

    class Darken:
        infotext = {"Face restoration": "CodeFormer"}

        def __call__(self, image):
            return Image.new("RGB", image.size, (0, 0, 0))

    monkeypatch.setattr(face_restoration, "for_request", lambda ctx, req: Darken())
    r = engine.img2img(_inpaint_request(do_not_save_samples=True, restore_faces=True))
    out, original = arr(r.images[0]), arr(_inpaint_request()["init_images"][0])
    outside = np.asarray(_mask()) == 0
    assert np.array_equal(out[outside], original[outside])
    assert (out[~outside] == 0).all()


def test_filename_and_folder_patterns_name_the_saved_pictures(engine):
    """A1111's "Images filename pattern", "Directory name pattern" (nested folders allowed, never outside the
    outputs folder), "Add number to filename when saving" off (a taken name gets -1: a picture is never written
    over) and "Add extended info (seed, prompt) to filename when saving grid"."""
    engine.settings.update({"samples_filename_pattern": "[seed]-[prompt_words]-[steps]",
                            "directories_filename_pattern": "[model_name]/../[prompt_words]",
                            "directories_max_prompt_words": 2})
    r = engine.txt2img({**BASE, "prompt": "a red fox, sitting", "seed": 31})
    root = engine.paths.outputs_dir / "txt2img-images"
    assert r.saved_paths[0].relative_to(root).as_posix() == "sd1/a red/00000-31-a red-3.png"
    engine.settings.update({"save_images_add_number": False, "samples_filename_pattern": "[prompt_spaces]"})
    paths = [engine.txt2img({**BASE, "prompt": "same name", "seed": s}).saved_paths[0] for s in (1, 2)]
    assert [p.name for p in paths] == ["same name.png", "same name-1.png"]
    grid = engine.txt2img({**BASE, "prompt": "two of them", "batch_size": 2, "do_not_save_grid": False,
                           "override_settings": {"grid_extended_filename": True, "save_images_add_number": True}})
    assert grid.grid_path.name == "grid-0000-two of them.png"
    assert grid.grid_path.parent == engine.paths.outputs_dir / "txt2img-grids" / "sd1" / "two of"


def test_upscaler_for_img2img_grows_a_small_init_picture(engine, monkeypatch):
    """A1111's "Upscaler for img2img": an init picture smaller than the generation grows through that upscaler (a
    picture of the right size, and the mask, do not)."""
    calls = []
    grow = engine.upscalers.upscale_to

    def spy(image, name, width, height, **kw):
        calls.append((name, image.size, (width, height), image.mode))
        return grow(image, "Nearest", width, height)

    monkeypatch.setattr(engine.upscalers, "upscale_to", spy)
    small = _init().resize((32, 32))
    req = {**BASE, "init_images": [small], "denoising_strength": 0.3, "do_not_save_samples": True}
    engine.img2img(req)
    assert calls == []  # unset: Lanczos, as before
    engine.settings.set("upscaler_for_img2img", "R-ESRGAN 4x+")  # listed; the spy stands in for its download
    engine.img2img({**req, "mask": _mask().resize((32, 32)), "inpaint_full_res": False})
    assert calls == [("R-ESRGAN 4x+", (32, 32), (64, 64), "RGB")]  # once: the overlay is that picture too
    calls.clear()
    engine.img2img({**req, "init_images": [_init()]})
    assert calls == []
    with pytest.raises(RequestError, match="upscaler_for_img2img: upscaler 'No such one' not found"):
        engine.img2img({**req, "override_settings": {"upscaler_for_img2img": "No such one"}})


def test_jpeg_quality_and_the_jpeg_copy_of_large_pictures(engine):
    """A1111's "Quality for saved jpeg images" for every saved picture, and "Save copy of large images as JPG"
    (on by default): a picture over the size limit, or over the side limit (then downscaled to it), also as a
    JPEG beside it."""
    req = {**BASE, "prompt": "a noisy picture", "seed": 3}
    low = engine.txt2img({**req, "override_settings": {"samples_format": "jpg", "jpeg_quality": 5}}).saved_paths[0]
    high = engine.txt2img({**req, "override_settings": {"samples_format": "jpg", "jpeg_quality": 95}}).saved_paths[0]
    assert low.stat().st_size < high.stat().st_size
    assert not list(low.parent.glob("*.png"))  # a JPEG is not copied to itself
    png = engine.txt2img({**req, "override_settings": {"target_side_length": 32}}).saved_paths[0]
    copy = png.with_suffix(".jpg")
    with Image.open(copy) as small:
        assert small.size == (32, 32) and "a noisy picture" in images_mod.read_infotext(small)
    heavy = engine.txt2img({**req, "override_settings": {"img_downscale_threshold": 0}}).saved_paths[0]
    with Image.open(heavy.with_suffix(".jpg")) as same_size:
        assert same_size.size == (64, 64)
    plain = engine.txt2img({**req, "override_settings": {"img_downscale_threshold": 0, "export_for_4chan": False}})
    assert not plain.saved_paths[0].with_suffix(".jpg").exists()


def test_negative_guidance_minimum_sigma_and_skip_early_cfg_leave_the_negative_pass_out(engine):
    """A1111's "Ignore negative prompt during early sampling" (all of it: the picture of CFG scale 1) and
    "Negative Guidance minimum sigma" (every other step below that sigma), each named in the infotext."""
    req = {**BASE, "sampler_name": "Euler", "seed": 44, "steps": 4, "do_not_save_samples": True}
    plain = engine.txt2img(req)
    no_cfg = engine.txt2img({**req, "cfg_scale": 1.0}).images[0]
    early = engine.txt2img({**req, "override_settings": {"skip_early_cond": 1.0}})
    assert np.array_equal(arr(early.images[0]), arr(no_cfg)) and "Skip Early CFG: 1," in early.infotexts[0]
    ngms = engine.txt2img({**req, "s_min_uncond": 100.0})
    assert "NGMS: 100," in ngms.infotexts[0] and "NGMS" not in plain.infotexts[0]
    assert not np.array_equal(arr(ngms.images[0]), arr(plain.images[0]))
    assert not np.array_equal(arr(ngms.images[0]), arr(no_cfg))  # only every other step
    every = engine.txt2img({**req, "s_min_uncond": 100.0, "override_settings": {"s_min_uncond_all": True}})
    assert "NGMS all steps: True" in every.infotexts[0]


def test_token_merging_ratios_merge_tokens_for_their_pass_only(engine):
    """A1111's "Token merging ratio" (ToMe for SD): the picture changes a little, the infotext names the ratio,
    and afterwards the UNet computes as before (the next job without a ratio gives the plain picture)."""
    req = {**BASE, "width": 128, "height": 128, "seed": 7, "do_not_save_samples": True}
    plain = engine.txt2img(req)
    merged = engine.txt2img({**req, "override_settings": {"token_merging_ratio": 0.5}})
    assert "Token merging ratio: 0.5" in merged.infotexts[0] and "Token merging" not in plain.infotexts[0]
    assert not np.array_equal(arr(merged.images[0]), arr(plain.images[0]))
    assert np.array_equal(arr(engine.txt2img(req).images[0]), arr(plain.images[0]))
    assert not getattr(engine.models.current.unet, "_token_merging_ratio", 0)
    img2img = engine.img2img({**req, "init_images": [plain.images[0]], "denoising_strength": 0.5,
                              "override_settings": {"token_merging_ratio_img2img": 0.3}})
    assert "Token merging ratio: 0.3" in img2img.infotexts[0]


def test_a_16_bit_vae_that_decodes_to_nan_is_retried_as_the_settings_say():
    """A1111's "Automatically revert VAE to 32-bit floats" (on by default), "Automatically convert VAE to
    bfloat16", and neither: a clear error instead of a black picture."""
    from types import SimpleNamespace

    import torch

    from modules.models.manager import vae_nan_retry
    from modules.processing import decode

    class HalfVae:
        config = SimpleNamespace(scaling_factor=1.0, shift_factor=None)
        dtype = torch.float16
        tried: list = []

        def to(self, dtype):
            self.dtype = dtype
            return self

        def decode(self, x, return_dict=False):
            self.tried.append(x.dtype)
            return (torch.full((1, 3, 8, 8), float("nan") if x.dtype == torch.float16 else 0.5),)

    def run(**settings):
        HalfVae.tried = []
        model = SimpleNamespace(vae=HalfVae(), extra={"vae_nan_retry": vae_nan_retry(SimpleNamespace(
            get=lambda k, d=None: settings.get(k, d)))})
        out = decode(model, torch.zeros(1, 4, 1, 1))
        return out, HalfVae.tried, model.vae.dtype

    out, tried, after = run()
    assert tried == [torch.float16, torch.float32] and float(out.mean()) == 0.5 and after == torch.float16
    assert run(auto_vae_precision_bfloat16=True)[1] == [torch.float16, torch.bfloat16]
    with pytest.raises(RequestError, match="NaNs was produced in VAE"):
        run(auto_vae_precision=False)


def test_zero_terminal_snr_and_extra_noise_change_the_sampling_and_say_so(engine):
    """A1111's "Noise schedule for sampling: Zero Terminal SNR" (where diffusers' scheduler has it) and "Extra
    noise multiplier for img2img and hires fix"."""
    req = {**BASE, "sampler_name": "Euler", "seed": 9, "do_not_save_samples": True}
    plain = engine.txt2img(req)
    zero = engine.txt2img({**req, "override_settings": {"sd_noise_schedule": "Zero Terminal SNR"}})
    assert "Noise Schedule: Zero Terminal SNR" in zero.infotexts[0] and "Noise Schedule" not in plain.infotexts[0]
    assert not np.array_equal(arr(zero.images[0]), arr(plain.images[0]))
    heun = engine.txt2img({**req, "sampler_name": "Heun",
                           "override_settings": {"sd_noise_schedule": "Zero Terminal SNR"}})
    assert "Noise Schedule" not in heun.infotexts[0]  # diffusers' Heun has no such schedule: not claimed
    i2i = {**req, "init_images": [_init()], "denoising_strength": 0.5}
    calm = engine.img2img(i2i)
    noisy = engine.img2img({**i2i, "override_settings": {"img2img_extra_noise": 0.5}})
    assert "Extra noise: 0.5" in noisy.infotexts[0] and "Extra noise" not in calm.infotexts[0]
    assert not np.array_equal(arr(noisy.images[0]), arr(calm.images[0]))


def test_sigma_churn_reaches_euler_and_the_infotext(engine):
    """A1111's "sigma churn" / "sigma noise" (the request's fields, else the settings): Euler's step takes them
    (diffusers' EulerDiscreteScheduler), the infotext names them; samplers without them are left as they are."""
    req = {**BASE, "sampler_name": "Euler", "seed": 9, "do_not_save_samples": True}
    plain = engine.txt2img(req)
    churned = engine.txt2img({**req, "s_churn": 2.0, "s_noise": 1.003})
    assert "Sigma churn: 2" in churned.infotexts[0] and "Sigma noise: 1.003" in churned.infotexts[0]
    assert not np.array_equal(arr(churned.images[0]), arr(plain.images[0]))
    assert "Sigma churn" not in plain.infotexts[0]
    dpm = engine.txt2img({**req, "sampler_name": "DPM++ 2M", "override_settings": {"s_churn": 2.0}})
    assert "Sigma churn" not in dpm.infotexts[0]


def test_interrupt_mid_batch_shows_the_incomplete_picture_saved_only_when_asked(engine):
    """A1111: Interrupt while a batch samples gives that batch as far as it got (the sampler's estimate of the
    finished picture), shown but not saved unless "Save incomplete images"; "Return image with chosen live preview
    method on interrupt" gives the live preview's picture instead of the VAE's."""
    import modules.processing as processing

    real_on_step = processing.Generation._on_step

    def interrupt_at_step_2(self, info):
        if info.step == 2:
            self.ctx.state.interrupt()
        real_on_step(self, info)

    processing.Generation._on_step = interrupt_at_step_2
    try:
        req = {**BASE, "sampler_name": "Euler", "steps": 6, "seed": 5, "n_iter": 2}
        shown = engine.txt2img(req)
        kept = engine.txt2img({**req, "override_settings": {"save_incomplete_images": True}})
        fast = engine.txt2img({**req, "do_not_save_samples": True,
                               "override_settings": {"live_preview_fast_interrupt": True}})
    finally:
        processing.Generation._on_step = real_on_step
    full = engine.txt2img({**req, "n_iter": 1, "do_not_save_samples": True}).images[0]
    assert shown.interrupted and len(shown.images) == 1 and shown.saved_paths == []
    assert shown.images[0].size == (64, 64) and not np.array_equal(arr(shown.images[0]), arr(full))
    assert len(kept.saved_paths) == 1 and kept.saved_paths[0].is_file()
    assert fast.images[0].size == (64, 64) and not np.array_equal(arr(fast.images[0]), arr(shown.images[0]))


def test_interrupt_button_first_lets_the_batch_finish_then_stops_at_once(engine):
    """A1111's Interrupt with "Don't Interrupt in the middle" (on by default): with batches still to make, the first
    click finishes the batch being made and stops after it (a whole picture, not a half one), a second click stops
    at once; off, or with one batch, it stops at once."""
    import modules.processing as processing
    from webui.generation_tabs import interrupt_click

    clicks = []
    real_on_step = processing.Generation._on_step

    def click_at_step_2(self, info):
        if info.step == 2 and not clicks:
            clicks.append(interrupt_click(engine))
        real_on_step(self, info)

    processing.Generation._on_step = click_at_step_2
    try:
        r = engine.txt2img({**BASE, "sampler_name": "Euler", "steps": 4, "seed": 5, "n_iter": 3,
                            "do_not_save_samples": True})
    finally:
        processing.Generation._on_step = real_on_step
    alone = engine.txt2img({**BASE, "sampler_name": "Euler", "steps": 4, "seed": 5, "do_not_save_samples": True})
    assert clicks == ["stopping"] and r.interrupted and len(r.images) == 1
    assert np.array_equal(arr(r.images[0]), arr(alone.images[0]))  # finished, not half made
    engine.state.begin("txt2img", 3)
    try:
        assert interrupt_click(engine) == "stopping" and interrupt_click(engine) == "interrupted"
        engine.state.begin("txt2img", 3)
        engine.settings.set("interrupt_after_current", False)
        assert interrupt_click(engine) == "interrupted"
    finally:
        engine.state.end()
        engine.settings.set("interrupt_after_current", True)

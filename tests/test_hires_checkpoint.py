"""A1111's hires-fix Checkpoint (`hr_checkpoint_name`, 1.6+): the hires pass runs on another checkpoint, loaded
through the model manager between the passes, with that checkpoint's text encoders and its VAE for the pass's
encode/decode. Checked against diffusers (the first pass by StableDiffusionPipeline on the base, the hires pass by
StableDiffusionImg2ImgPipeline built from the second checkpoint's components), infotext/paste, the API's 422 and
the model cache (limit 1 unloads the base; the next job loads it again)."""
from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from modules import infotext as infotext_mod
from modules.processing import ProcessingContext, txt2img
from modules.request_types import RequestError, Txt2ImgRequest
from modules.sampling import samplers

SEED = 77
SIZE = 64
HASH = "0123456789"
OTHER = "sd1-other.safetensors"


@pytest.fixture(scope="module")
def other_sd1(tmp_path_factory):
    """A second SD1 checkpoint: other random weights in every part (UNet, text encoder, VAE)."""
    from modules import devices
    from modules.models import loader
    from tests.tiny_models import build_tiny, write_single_file

    path = tmp_path_factory.mktemp("sd1-other") / OTHER
    write_single_file(build_tiny("sd1", seed=5), "sd1", path)
    return path, loader.load_model(path, devices.cpu(), name=OTHER, shorthash=HASH)


class _Models:
    """The model manager's face that processing uses (resolve, get), over the tiny models."""

    def __init__(self, tiny_models, load, other):
        self.tiny_models, self.load, (self.other_path, self.other) = tiny_models, load, other
        self.loaded: list[str] = []

    def resolve(self, title):
        from modules.models.manager import ModelNotFoundError

        name = title.split(" [")[0]
        name = name if name.endswith(".safetensors") else name + ".safetensors"
        path = self.other_path if name == OTHER else self.tiny_models.path(name)
        if not path.exists():
            raise ModelNotFoundError(f"checkpoint {title!r} not found")
        stem = name.removesuffix(".safetensors")
        return SimpleNamespace(filename=path, title=f"{name} [{HASH}]", short_title=f"{stem} [{HASH}]")

    def get(self, title, remember=True):
        name = self.resolve(title).title.split(" [")[0]
        self.loaded.append(name)
        return self.other if name == OTHER else self.load(name)


def _run(model, models, **fields):
    req = Txt2ImgRequest(**{**dict(prompt="a red house", negative_prompt="blurry", seed=SEED, steps=6, width=SIZE,
                                   height=SIZE, sampler_name="Euler", cfg_scale=6.0, enable_hr=True, hr_scale=2.0,
                                   denoising_strength=0.5), **fields})
    ctx = ProcessingContext(model=model, options={"return_grid": False}, outputs=None, models=models)
    return txt2img(ctx, req)


def _diff(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max())


def _components(m):
    return dict(vae=m.vae, text_encoder=m.text_encoder, tokenizer=m.tokenizer, unet=m.unet, safety_checker=None,
                feature_extractor=None, requires_safety_checker=False)


def _scheduler(model):
    return samplers.build_scheduler(*samplers.resolve("Euler", None), model.scheduler_config, seed=SEED).scheduler


@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
@pytest.mark.slow  # a second or more of parity/size checks: out of the -m "not slow" loop
def test_hires_pass_runs_on_the_hires_checkpoint(load_tiny, tiny_models, other_sd1, upscaler):
    """Reference (diffusers): the base's StableDiffusionPipeline for the first pass, then an img2img pipeline made of
    the second checkpoint's UNet, text encoder and VAE (A1111's hires steps: 6 of a 12-step schedule at 0.5),
    each pass with a fresh generator of the seed as our engine. Latent: the latents upscaled bilinearly; Lanczos:
    the first pass decoded by the base's VAE, resized, encoded by the second's."""
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    base, other = load_tiny("sd1.safetensors"), other_sd1[1]
    models = _Models(tiny_models, load_tiny, other_sd1)
    ours = _run(base, models, hr_upscaler=upscaler, hr_checkpoint_name="sd1-other")
    assert models.loaded == [OTHER]
    same = _run(base, None, hr_upscaler=upscaler)

    first = StableDiffusionPipeline(scheduler=_scheduler(base), **_components(base))
    kw = dict(prompt="a red house", negative_prompt="blurry", guidance_scale=6.0)
    out = first(num_inference_steps=6, width=SIZE, height=SIZE, generator=torch.Generator().manual_seed(SEED),
                output_type="latent" if upscaler == "Latent" else "pil", **kw).images
    if upscaler == "Latent":
        image = torch.nn.functional.interpolate(out, size=(SIZE * 2 // 8, SIZE * 2 // 8), mode="bilinear")
    else:
        image = out[0].resize((SIZE * 2, SIZE * 2), Image.Resampling.LANCZOS)
    second = StableDiffusionImg2ImgPipeline(scheduler=_scheduler(other), **_components(other))
    ref = second(image=image, strength=0.5, num_inference_steps=12, generator=torch.Generator().manual_seed(SEED),
                 **kw).images[0]
    assert ours.images[0].size == (SIZE * 2, SIZE * 2)
    assert _diff(ours.images[0], ref) <= 2
    assert _diff(ours.images[0], same.images[0]) > 8  # "Use same checkpoint" is another picture


def test_same_checkpoint_none_and_the_model_in_use_load_nothing(load_tiny, tiny_models, other_sd1):
    base = load_tiny("sd1.safetensors")
    plain = _run(base, None, steps=3)
    for title in (None, "", "Use same checkpoint", "sd1"):
        models = _Models(tiny_models, load_tiny, other_sd1)
        result = _run(base, models, steps=3, hr_checkpoint_name=title)
        assert models.loaded == []
        assert _diff(result.images[0], plain.images[0]) == 0
        assert ("Hires checkpoint: sd1 [0123456789]" in result.infotexts[0]) == (title == "sd1")  # as A1111


def test_unknown_hires_checkpoint_is_a_request_error_only_with_hires_fix(load_tiny, tiny_models, other_sd1):
    base = load_tiny("sd1.safetensors")
    models = _Models(tiny_models, load_tiny, other_sd1)
    with pytest.raises(RequestError, match="hr_checkpoint_name.*no-such-model"):
        _run(base, models, hr_checkpoint_name="no-such-model")
    assert models.loaded == []  # found out before any sampling
    _run(base, models, steps=2, enable_hr=False, hr_checkpoint_name="no-such-model")  # A1111: unused, unchecked


def test_infotext_records_the_hires_checkpoint_and_paste_restores_it(load_tiny, tiny_models, other_sd1):
    base = load_tiny("sd1.safetensors")
    result = _run(base, _Models(tiny_models, load_tiny, other_sd1), steps=3, hr_checkpoint_name="sd1-other")
    text = result.infotexts[0]
    assert "Hires checkpoint: sd1-other [0123456789], Hires upscale: 2," in text
    fields = infotext_mod.infotext_to_request_fields(infotext_mod.parse_generation_parameters(text))
    assert fields["hr_checkpoint_name"] == "sd1-other [0123456789]" and fields["enable_hr"] is True
    again = _run(base, _Models(tiny_models, load_tiny, other_sd1), steps=3, hr_checkpoint_name=fields[
        "hr_checkpoint_name"])
    assert _diff(again.images[0], result.images[0]) == 0


# ---------------------------------------------------------------------------------------------------------------
# The API and the model manager


@pytest.fixture(scope="module")
def client(tmp_path_factory, tiny_models, other_sd1):
    from fastapi.testclient import TestClient

    from modules import cmd_args, server

    data = tmp_path_factory.mktemp("hires-checkpoint-api")
    ckpt = data / "models" / "Stable-diffusion"
    ckpt.mkdir(parents=True)
    os.symlink(tiny_models.path("sd1.safetensors"), ckpt / "sd1.safetensors")
    os.symlink(other_sd1[0], ckpt / OTHER)
    ns = cmd_args.parse_args(["--data-dir", str(data), "--nowebui"], env={})
    ctx = server.build_context(ns)
    ctx.engine.settings.set("sd_model_checkpoint", "sd1.safetensors")
    ctx.engine.settings.set("sd_checkpoints_limit", 1)
    with TestClient(server.create_app(ctx)) as c:
        c.engine = ctx.engine
        yield c


BODY = dict(prompt="a red house", negative_prompt="blurry", seed=SEED, steps=4, width=SIZE, height=SIZE,
            sampler_name="Euler", cfg_scale=6.0, enable_hr=True, hr_scale=1.5, denoising_strength=0.5)


def test_api_unknown_hires_checkpoint_is_422_naming_the_field(client):
    r = client.post("/sdapi/v1/txt2img", json={**BODY, "hr_checkpoint_name": "nope"})
    assert r.status_code == 422 and "hr_checkpoint_name" in r.text and "nope" in r.text
    queued = client.post("/sdapi/v1/queue/txt2img", json={**BODY, "hr_checkpoint_name": "nope"})
    assert queued.status_code == 422 and "hr_checkpoint_name" in queued.text  # at once, not as a failed job
    off = client.post("/sdapi/v1/txt2img", json={**BODY, "enable_hr": False, "steps": 2, "hr_checkpoint_name": "x"})
    assert off.status_code == 200, off.text


def test_api_hires_checkpoint_with_limit_one_unloads_the_base_and_the_next_job_reloads_it(client):
    models = client.engine.models
    plain = client.post("/sdapi/v1/txt2img", json=BODY).json()
    assert [m.name for m in models.loaded] == ["sd1.safetensors"]
    r = client.post("/sdapi/v1/txt2img", json={**BODY, "hr_checkpoint_name": "sd1-other"})
    assert r.status_code == 200, r.text
    assert "Hires checkpoint: sd1-other [" in r.json()["info"]
    assert [m.name for m in models.loaded] == [OTHER]  # the base was unloaded for the hires pass
    again = client.post("/sdapi/v1/txt2img", json=BODY).json()
    assert [m.name for m in models.loaded] == ["sd1.safetensors"]
    assert again["images"] == plain["images"] and r.json()["images"] != plain["images"]


# ---------------------------------------------------------------------------------------------------------------
# The UI: A1111's dropdown (elem_id hr_checkpoint) in the Hires fix accordion, a request field


def test_hires_checkpoint_dropdown_paste_and_request(engine, tmp_path, other_sd1):
    import gradio as gr

    from webui import generation_tabs as gt

    ckpt = engine.paths.ckpt_dirs[0]
    os.symlink(other_sd1[0], ckpt / OTHER)
    engine.registry.refresh()
    engine.settings.set("hires_fix_show_sampler", True)
    with gr.Blocks():
        c = gt.build_txt2img(engine)
    names = dict(c.fields)
    dropdown = names["hr_checkpoint_name"]
    assert dropdown.elem_id == "hr_checkpoint" and dropdown.value == "Use same checkpoint"
    short = next(i.short_title for i in engine.registry.list() if i.name == OTHER)
    choices = [ch[0] for ch in dropdown.choices]
    assert choices[0] == "Use same checkpoint" and short in choices

    text = ("a red house\nSteps: 6, Sampler: Euler, CFG scale: 6, Seed: 7, Size: 64x64, Denoising strength: 0.5, "
            f"Hires checkpoint: {short}, Hires upscale: 2, Hires upscaler: Latent")
    updates = dict(zip([n for n, _ in c.fields], gt.paste_updates(c, text)))
    assert updates["hr_checkpoint_name"]["value"] == short and updates["enable_hr"]["value"] is True
    plain = dict(zip([n for n, _ in c.fields], gt.paste_updates(c, text.replace(f"Hires checkpoint: {short}, ", ""))))
    assert plain["hr_checkpoint_name"]["value"] == "Use same checkpoint"  # A1111 resets it

    values = {n: comp.value for n, comp in c.fields}
    assert gt._clean({**values, "hr_checkpoint_name": short})["hr_checkpoint_name"] == short
    assert gt._clean(values)["hr_checkpoint_name"] is None


def test_hires_sampler_schedule_and_prompts_are_fields_that_paste_and_reset(engine, tmp_path):
    """A1111's rows 3 and 4 of the Hires fix accordion (with their settings): the hires sampler / schedule type
    ("Use same …" → the first pass's) and the hires prompts, pasted from infotext and reset when it has none."""
    import gradio as gr

    from webui import generation_tabs as gt

    engine.settings.set("hires_fix_show_sampler", True)
    engine.settings.set("hires_fix_show_prompts", True)
    with gr.Blocks():
        c = gt.build_txt2img(engine)
    names = dict(c.fields)
    assert (names["hr_sampler_name"].elem_id, names["hr_sampler_name"].value) == ("hr_sampler", "Use same sampler")
    assert names["hr_scheduler"].value == "Use same scheduler" and names["hr_prompt"].elem_id == "hires_prompt"
    assert names["hr_negative_prompt"].elem_id == "hires_neg_prompt"

    text = ("a red house\nSteps: 6, Sampler: Euler, CFG scale: 6, Seed: 7, Size: 64x64, Denoising strength: 0.5, "
            "Hires upscale: 2, Hires upscaler: Latent, Hires sampler: DPM++ 2M, Hires schedule type: Karras, "
            'Hires prompt: "a blue house"')
    order = [n for n, _ in c.fields]
    updates = dict(zip(order, gt.paste_updates(c, text)))
    assert updates["hr_sampler_name"]["value"] == "DPM++ 2M" and updates["hr_scheduler"]["value"] == "Karras"
    assert updates["hr_prompt"]["value"] == "a blue house"
    plain = dict(zip(order, gt.paste_updates(c, text.split(", Hires sampler")[0])))
    assert plain["hr_sampler_name"]["value"] == "Use same sampler" and plain["hr_prompt"]["value"] == ""

    values = {n: comp.value for n, comp in c.fields}
    cleaned = gt._clean({**values, "hr_sampler_name": "DPM++ 2M"})
    assert cleaned["hr_sampler_name"] == "DPM++ 2M" and cleaned["hr_scheduler"] is None
    assert gt._clean(values)["hr_sampler_name"] is None

"""A1111's Refiner (1.6+): part-way through sampling the rest runs on another checkpoint's UNet with conditioning from
that checkpoint's own text encoders. Checked against diffusers' ensemble of experts (SDXL base `denoising_end` →
refiner `denoising_start` over the same components), an SD1 → SD1 switch against diffusers' pipeline with its UNet
and prompt embeddings swapped at the same step, A1111's switch rule, infotext/paste, the API and the model cache."""
from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from modules import infotext as infotext_mod
from modules.processing import ProcessingContext, refiner_switch_step, txt2img
from modules.request_types import RequestError, Txt2ImgRequest
from modules.sampling import samplers

SEED = 77
SIZE = 64
HASH = "0123456789"


class _Models:
    """The model manager's face that processing uses for the refiner, over the session's tiny models."""

    def __init__(self, tiny_models, load, extra: dict | None = None):
        self.tiny_models, self.load, self.extra = tiny_models, load, extra or {}
        self.loaded: list[str] = []

    def _path(self, name):
        return self.extra.get(name) or self.tiny_models.path(name)

    def resolve(self, title):
        from modules.models.manager import ModelNotFoundError

        name = title.split(" [")[0]
        name = name if name.endswith(".safetensors") else name + ".safetensors"
        if name not in self.extra and not self.tiny_models.path(name).exists():
            raise ModelNotFoundError(f"checkpoint {title!r} not found")
        stem = name.removesuffix(".safetensors")
        return SimpleNamespace(filename=self._path(name), title=f"{name} [{HASH}]", short_title=f"{stem} [{HASH}]")

    def get(self, title, remember=True):
        name = self.resolve(title).title.split(" [")[0]
        self.loaded.append(name)
        return self.load(name)


def _scheduler(model, name):
    return samplers.build_scheduler(*samplers.resolve(name, None), model.scheduler_config, seed=SEED).scheduler


def _gens(n=1):
    return [torch.Generator("cpu").manual_seed(SEED + i) for i in range(n)]


def _diff(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max())


def _run(model, models, **fields):
    req = Txt2ImgRequest(**{**dict(prompt="a red house", negative_prompt="blurry", seed=SEED, steps=10, width=SIZE,
                                   height=SIZE, sampler_name="Euler", cfg_scale=6.0), **fields})
    ctx = ProcessingContext(model=model, options={"return_grid": False}, outputs=None, models=models)
    return txt2img(ctx, req)


@pytest.mark.parametrize("sampler", ["Euler", "Euler a"])
def test_sdxl_refiner_equals_diffusers_ensemble_of_experts(load_tiny, tiny_models, sampler):
    """At 0.8 of 10 steps A1111 switches when (999 - t)/1000 ≥ 0.8, i.e. t ≤ 199: the same steps as diffusers'
    denoising_end=0.8 (t ≥ 200 on the base), so the reference is the plain ensemble."""
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    base, refiner = load_tiny("sdxl.safetensors"), load_tiny("sdxl-refiner.safetensors")
    ours = _run(base, _Models(tiny_models, load_tiny), sampler_name=sampler,
                refiner_checkpoint="sdxl-refiner", refiner_switch_at=0.8).images[0]

    gens = _gens()
    first = StableDiffusionXLPipeline(
        vae=base.vae, text_encoder=base.text_encoder, text_encoder_2=base.text_encoder_2, tokenizer=base.tokenizer,
        tokenizer_2=base.tokenizer_2, unet=base.unet, scheduler=_scheduler(base, sampler))
    latents = first(prompt="a red house", negative_prompt="blurry", num_inference_steps=10, guidance_scale=6.0,
                    width=SIZE, height=SIZE, generator=gens, denoising_end=0.8, output_type="latent").images
    second = StableDiffusionXLImg2ImgPipeline(
        vae=refiner.vae, text_encoder=None, text_encoder_2=refiner.text_encoder_2, tokenizer=None,
        tokenizer_2=refiner.tokenizer_2, unet=refiner.unet, scheduler=_scheduler(refiner, sampler),
        requires_aesthetics_score=True, force_zeros_for_empty_prompt=False)
    ref = second(prompt="a red house", negative_prompt="blurry", image=latents, num_inference_steps=10,
                 guidance_scale=6.0, denoising_start=0.8, generator=gens).images[0]
    plain = _run(base, None).images[0]
    assert _diff(ours, ref) <= 2
    assert _diff(ours, plain) > 2  # the refiner did something


@pytest.fixture(scope="module")
def second_sd1(tmp_path_factory):
    """Another SD1 checkpoint (other random weights) to refine with."""
    from modules import devices
    from modules.models import loader
    from tests.tiny_models import build_tiny, write_single_file

    path = tmp_path_factory.mktemp("sd1b") / "sd1-other.safetensors"
    write_single_file(build_tiny("sd1", seed=5), "sd1", path)
    return path, loader.load_model(path, devices.cpu(), name=path.name, shorthash=HASH)


def test_sd1_to_sd1_switch_runs_the_remaining_steps_on_the_second_model(load_tiny, tiny_models, second_sd1):
    from diffusers import StableDiffusionPipeline

    path, other = second_sd1
    base = load_tiny("sd1.safetensors")
    models = _Models(tiny_models, lambda name: other if name == path.name else load_tiny(name), {path.name: path})
    result = _run(base, models, refiner_checkpoint="sd1-other", refiner_switch_at=0.5)
    plain = _run(base, None).images[0]
    assert _diff(result.images[0], plain) > 2

    # Euler over 10 steps: t = 999, 888, … 0; (999 - t)/1000 ≥ 0.5 first at t = 444, the 6th step (index 5)
    def components(m):
        return dict(vae=m.vae, text_encoder=m.text_encoder, tokenizer=m.tokenizer, unet=m.unet,
                    safety_checker=None, feature_extractor=None, requires_safety_checker=False)

    pipe = StableDiffusionPipeline(scheduler=_scheduler(base, "Euler"), **components(base))
    helper = StableDiffusionPipeline(scheduler=_scheduler(other, "Euler"), **components(other))
    pos, neg = helper.encode_prompt("a red house", "cpu", 1, True, "blurry")

    def swap(pipeline, i, t, kwargs):
        if i == 4:  # after the 5th step the second model takes over
            pipeline.unet, pipeline.vae = other.unet, other.vae
            return {"prompt_embeds": torch.cat([neg, pos])}
        return {}

    ref = pipe(prompt="a red house", negative_prompt="blurry", num_inference_steps=10, guidance_scale=6.0,
               width=SIZE, height=SIZE, generator=_gens(), callback_on_step_end=swap,
               callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"]).images[0]
    assert _diff(result.images[0], ref) <= 2
    assert "Refiner: sd1-other [0123456789]" in result.infotexts[0]


def test_switch_rule_follows_a1111(load_tiny):
    model = load_tiny("sd1.safetensors")
    sched = _scheduler(model, "Euler")
    sched.set_timesteps(10)
    ts = sched.timesteps
    assert [int(t) for t in ts] == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]  # A1111's spacing
    assert refiner_switch_step(sched, ts, 0.8) == 8  # t = 111: (999 - 111)/1000 ≥ 0.8; t = 222 is 0.777
    assert refiner_switch_step(sched, ts, 0.777) == 7
    assert refiner_switch_step(sched, ts, 0.8, by_steps=True) == 8
    assert refiner_switch_step(sched, ts, 0.75, by_steps=True) == 8  # 7/10 < 0.75 ≤ 8/10
    assert refiner_switch_step(sched, ts, 0.0) == 0
    assert refiner_switch_step(sched, ts, 0.9999) is None
    ddim = _scheduler(model, "DDIM")
    ddim.set_timesteps(10)  # no sigma table: the timestep itself
    first = next(i for i, t in enumerate(ddim.timesteps) if (999 - int(t)) / 1000 >= 0.8)
    assert refiner_switch_step(ddim, ddim.timesteps, 0.8) == first


def test_one_none_and_the_model_in_use_mean_no_refiner(load_tiny, tiny_models):
    base = load_tiny("sdxl.safetensors")
    plain = _run(base, None)
    for at, title in ((1.0, "sdxl-refiner"), (None, "sdxl-refiner"), (0.5, "sdxl"), (0.5, "None"), (0.5, "")):
        models = _Models(tiny_models, load_tiny)
        result = _run(base, models, refiner_checkpoint=title, refiner_switch_at=at)
        assert models.loaded == [] and "Refiner" not in result.infotexts[0]
        assert _diff(result.images[0], plain.images[0]) == 0


def test_unknown_refiner_or_bad_switch_is_a_request_error(load_tiny, tiny_models):
    base = load_tiny("sd1.safetensors")
    with pytest.raises(RequestError, match="refiner_checkpoint.*no-such-model"):
        _run(base, _Models(tiny_models, load_tiny), refiner_checkpoint="no-such-model", refiner_switch_at=0.8)
    with pytest.raises(RequestError, match="refiner_switch_at"):
        _run(base, _Models(tiny_models, load_tiny), refiner_checkpoint="sdxl-refiner", refiner_switch_at=1.5)


def test_infotext_records_the_refiner_and_paste_restores_it(load_tiny, tiny_models):
    base = load_tiny("sdxl.safetensors")
    result = _run(base, _Models(tiny_models, load_tiny), refiner_checkpoint="sdxl-refiner", refiner_switch_at=0.8,
                  steps=4)
    text = result.infotexts[0]
    assert "Refiner: sdxl-refiner [0123456789], Refiner switch at: 0.8" in text
    fields = infotext_mod.infotext_to_request_fields(infotext_mod.parse_generation_parameters(text))
    assert fields["refiner_checkpoint"] == "sdxl-refiner [0123456789]" and fields["refiner_switch_at"] == 0.8


def test_progress_counts_one_run_and_interrupt_stops_on_the_refiner(load_tiny, tiny_models):
    from modules.jobs import JobState

    base = load_tiny("sdxl.safetensors")
    steps_seen = []

    class State(JobState):
        def __setattr__(self, name, value):
            if name == "sampling_step" and value:
                steps_seen.append((value, self.sampling_steps))
                if value == 9:
                    self.interrupted = True
            super().__setattr__(name, value)

    req = Txt2ImgRequest(prompt="a red house", seed=SEED, steps=10, width=SIZE, height=SIZE, sampler_name="Euler",
                         refiner_checkpoint="sdxl-refiner", refiner_switch_at=0.8)
    ctx = ProcessingContext(model=base, options={}, outputs=None, models=_Models(tiny_models, load_tiny))
    ctx.state = State()
    result = txt2img(ctx, req)
    assert steps_seen == [(i, 10) for i in range(1, 10)]  # one run of 10 steps; step 9 ran on the refiner
    assert result.interrupted


# ---------------------------------------------------------------------------------------------------------------
# Engine and API: the model manager loads the refiner (limit 1 unloads the base; the next job loads it again)


@pytest.fixture(scope="module")
def client(tmp_path_factory, tiny_models):
    from fastapi.testclient import TestClient

    from modules import cmd_args, server

    data = tmp_path_factory.mktemp("refiner-api")
    ckpt = data / "models" / "Stable-diffusion"
    ckpt.mkdir(parents=True)
    for name in ("sdxl.safetensors", "sdxl-refiner.safetensors"):
        os.symlink(tiny_models.path(name), ckpt / name)
    ns = cmd_args.parse_args(["--data-dir", str(data), "--nowebui"], env={})
    ctx = server.build_context(ns)
    ctx.engine.settings.set("sd_model_checkpoint", "sdxl.safetensors")
    ctx.engine.settings.set("sd_checkpoints_limit", 1)
    with TestClient(server.create_app(ctx)) as c:
        c.engine = ctx.engine
        yield c


BODY = dict(prompt="a red house", negative_prompt="blurry", seed=SEED, steps=6, width=SIZE, height=SIZE,
            sampler_name="Euler", cfg_scale=6.0)


def test_api_unknown_refiner_is_422_naming_the_field(client):
    r = client.post("/sdapi/v1/txt2img", json={**BODY, "refiner_checkpoint": "nope", "refiner_switch_at": 0.8})
    assert r.status_code == 422 and "refiner_checkpoint" in r.text
    r = client.post("/sdapi/v1/txt2img", json={**BODY, "refiner_checkpoint": "sdxl-refiner",
                                                "refiner_switch_at": 1.5})
    assert r.status_code == 422 and "refiner_switch_at" in r.text
    queued = client.post("/sdapi/v1/queue/txt2img", json={**BODY, "refiner_checkpoint": "nope"})
    assert queued.status_code == 422 and "refiner_checkpoint" in queued.text  # at once, not as a failed job


def test_api_refiner_with_limit_one_unloads_the_base_and_the_next_job_reloads_it(client):
    models = client.engine.models
    plain = client.post("/sdapi/v1/txt2img", json=BODY).json()
    assert [m.name for m in models.loaded] == ["sdxl.safetensors"]
    r = client.post("/sdapi/v1/txt2img", json={**BODY, "refiner_checkpoint": "sdxl-refiner",
                                                "refiner_switch_at": 0.5})
    assert r.status_code == 200, r.text
    info = r.json()["info"]
    assert "Refiner: sdxl-refiner [" in info and "Refiner switch at: 0.5" in info
    assert [m.name for m in models.loaded] == ["sdxl-refiner.safetensors"]  # the base was unloaded
    again = client.post("/sdapi/v1/txt2img", json=BODY).json()
    assert [m.name for m in models.loaded] == ["sdxl.safetensors"]
    assert again["images"] == plain["images"] and r.json()["images"] != plain["images"]


# ---------------------------------------------------------------------------------------------------------------
# The UI: the accordion's controls are request fields (Generate, paste, send-to use that one table)


def test_refiner_accordion_fields_paste_and_request(engine, tiny_models, tmp_path):
    import gradio as gr

    from webui import generation_tabs as gt

    ckpt = engine.paths.ckpt_dirs[0]
    os.symlink(tiny_models.path("sdxl-refiner.safetensors"), ckpt / "sdxl-refiner.safetensors")
    engine.registry.refresh()
    with gr.Blocks():
        for build in (gt.build_txt2img, gt.build_img2img):
            c = build(engine)
            names = dict(c.fields)
            tab = c.tab
            assert names["refiner_checkpoint"].elem_id == f"{tab}_checkpoint"
            assert names["refiner_switch_at"].elem_id == f"{tab}_switch_at"
            assert names["refiner_enable"].elem_id == f"{tab}_enable-checkbox"
            slider = names["refiner_switch_at"]
            assert (slider.minimum, slider.maximum, slider.value) == (0.01, 1.0, 0.8)
            title = next(t for t in engine.registry.titles() if t.startswith("sdxl-refiner"))
            assert title in [ch[0] for ch in names["refiner_checkpoint"].choices]

            text = ("a red house\nSteps: 6, Sampler: Euler, CFG scale: 6, Seed: 7, Size: 64x64, "
                    "Refiner: sdxl-refiner, Refiner switch at: 0.6")
            updates = dict(zip([n for n, _ in c.fields], gt.paste_updates(c, text)))
            assert updates["refiner_enable"]["value"] is True
            assert updates["refiner_checkpoint"]["value"] == title
            assert updates["refiner_switch_at"]["value"] == 0.6

            values = {n: comp.value for n, comp in c.fields}
            on = gt._clean({**values, "refiner_enable": True, "refiner_checkpoint": title, "refiner_switch_at": 0.6})
            assert (on["refiner_checkpoint"], on["refiner_switch_at"]) == (title, 0.6) and "refiner_enable" not in on
            off = gt._clean({**values, "refiner_enable": False, "refiner_checkpoint": title})
            assert off["refiner_checkpoint"] is None and off["refiner_switch_at"] is None


def test_the_jobs_loras_also_patch_the_refiner_and_a_later_job_without_them_restores_it(
        load_tiny, tiny_models, second_sd1, tmp_path):
    """A1111 applies the prompt's LoRAs to whichever model is loaded: the refiner that takes over gets them (here a
    LoRA written for the second model's UNet), and a refiner job without them puts its weights back."""
    from modules.networks import lora
    from tests.test_lora import Builder, weight

    path, other = second_sd1
    base = load_tiny("sd1.safetensors")
    models = _Models(tiny_models, lambda name: other if name == path.name else load_tiny(name), {path.name: path})
    target = "unet:down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    builder = Builder(other, seed=3, magnitude=1.0)
    builder.lora(target)
    builder.save(tmp_path / "Lora" / "house.safetensors")
    registry = lora.LoraRegistry([tmp_path / "Lora"])
    registry.refresh()
    original = weight(other, target).clone()

    def run(prompt):
        req = Txt2ImgRequest(prompt=prompt, negative_prompt="blurry", seed=SEED, steps=10, width=SIZE, height=SIZE,
                             sampler_name="Euler", cfg_scale=6.0, refiner_checkpoint="sd1-other",
                             refiner_switch_at=0.5)
        ctx = ProcessingContext(model=base, options={"return_grid": False}, outputs=None, models=models,
                                loras=registry)
        return txt2img(ctx, req)

    with_lora = run("a red house <lora:house:1>")
    assert torch.allclose(weight(other, target), original + builder.expected[target], atol=1e-5)
    plain = run("a red house")
    assert torch.equal(weight(other, target), original)
    assert _diff(with_lora.images[0], plain.images[0]) > 2

"""Flux.1 and SD3/SD3.5 through our loop give diffusers' FluxPipeline / StableDiffusion3Pipeline images.

Tiny random-weight models of the real architectures are written in the layouts users have, loaded through the
user's path, and both sides run on the very same loaded components, scheduler config, seeds (one CPU generator per
image, seed+i) and steps. Same method and bound as the SD1/SDXL parity tests (≤ 2/255).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests import tiny_flow_models as tfm
from modules import devices
from modules.models import loader
from modules.models.flow_loader import PartSources
from modules.processing import ProcessingContext, img2img, txt2img
from modules.request_types import Img2ImgRequest, Txt2ImgRequest

SEED = 4321
SIZE = 64
PROMPT = "a photo of a cat"


@pytest.fixture(scope="module")
def flow_models(tmp_path_factory):
    """name → LoadedModel, each written in a different layout and loaded as a user's file would be."""
    root = tmp_path_factory.mktemp("flow")
    dev, schnell, sd3, sd35 = tfm.build_flux(True), tfm.build_flux(False, seed=1), tfm.build_sd3(), tfm.build_sd3(True)
    cpu = devices.cpu()
    models = {
        "flux-dev all-in-one": loader.load_model(tfm.write_all_in_one(dev, root / "dev.safetensors"), cpu),
        "sd3 all-in-one": loader.load_model(tfm.write_all_in_one(sd3, root / "sd3.safetensors"), cpu),
        "sd3.5-large-like sai all-in-one": loader.load_model(
            tfm.write_all_in_one(tfm.build_sd3(large35=True, seed=2), root / "sd35l.safetensors"), cpu),
        "sd3.5-medium diffusers folder": loader.load_model(tfm.write_diffusers_folder(sd35, root / "sd35"), cpu),
    }
    parts = root / "models"
    tfm.write_parts(schnell, parts)
    path = tfm.write_transformer_only(schnell, parts / "Stable-diffusion" / "schnell.safetensors", "bfl")
    models["flux-schnell bfl + parts"] = loader.load_model(
        path, cpu, sources=PartSources([parts / "text_encoder"], [parts / "VAE"]))
    tfm.write_parts(dev, root / "dev-parts")
    models["flux-dev gguf Q8_0"] = loader.load_model(
        tfm.write_gguf(dev, root / "dev-parts" / "dev-Q8_0.gguf"), cpu,
        sources=PartSources([root / "dev-parts" / "text_encoder"], [root / "dev-parts" / "VAE"]))
    return models


def _gens(n):
    return [torch.Generator("cpu").manual_seed(SEED + i) for i in range(n)]


def _max_diff(ours: list[Image.Image], ref: list[Image.Image]) -> int:
    assert len(ours) == len(ref)
    return max(int(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max()) for a, b in zip(ours, ref))


def _ours(model, req) -> list[Image.Image]:
    ctx = ProcessingContext(model=model, options={"return_grid": False}, outputs=None)
    return (img2img if isinstance(req, Img2ImgRequest) else txt2img)(ctx, req).images


def _pipeline(model, img2img_pipe: bool = False):
    from diffusers import (FlowMatchEulerDiscreteScheduler, FluxImg2ImgPipeline, FluxPipeline,
                           StableDiffusion3Img2ImgPipeline, StableDiffusion3Pipeline)

    scheduler = FlowMatchEulerDiscreteScheduler.from_config(model.scheduler_config)
    parts = dict(transformer=model.unet, scheduler=scheduler, vae=model.vae, text_encoder=model.text_encoder,
                 tokenizer=model.tokenizer, text_encoder_2=model.text_encoder_2, tokenizer_2=model.tokenizer_2)
    if model.family == "flux":
        return (FluxImg2ImgPipeline if img2img_pipe else FluxPipeline)(**parts)
    parts.update(text_encoder_3=model.text_encoder_3, tokenizer_3=model.tokenizer_3)
    return (StableDiffusion3Img2ImgPipeline if img2img_pipe else StableDiffusion3Pipeline)(**parts)


def _reference_kwargs(model, cfg: float, negative: str) -> dict:
    kw = dict(max_sequence_length=model.spec.defaults["t5_max_length"])
    if model.family == "flux":
        kw.update(guidance_scale=3.5)
        if cfg > 1:
            kw.update(true_cfg_scale=cfg, negative_prompt=negative)
    else:
        kw.update(guidance_scale=cfg, negative_prompt=negative)
    return kw


CASES = [("flux-dev all-in-one", 1.0), ("flux-dev all-in-one", 3.0), ("flux-schnell bfl + parts", 1.0),
         ("flux-dev gguf Q8_0", 1.0),
         ("sd3 all-in-one", 5.0), ("sd3.5-medium diffusers folder", 4.0), ("sd3.5-large-like sai all-in-one", 4.5)]


@pytest.mark.parametrize("name,cfg", CASES)
@pytest.mark.slow  # a second or more of parity/size checks: out of the -m "not slow" loop
def test_txt2img_matches_diffusers_pipeline(flow_models, name, cfg):
    model = flow_models[name]
    negative = "blurry, low quality"
    req = Txt2ImgRequest(prompt=PROMPT, negative_prompt=negative, steps=4, cfg_scale=cfg, distilled_cfg_scale=3.5,
                         width=SIZE, height=SIZE, seed=SEED, sampler_name="Euler", batch_size=2)
    ours = _ours(model, req)
    ref = _pipeline(model)(PROMPT, num_inference_steps=4, height=SIZE, width=SIZE, generator=_gens(2),
                           num_images_per_prompt=2, **_reference_kwargs(model, cfg, negative)).images
    assert _max_diff(ours, ref) <= 2


@pytest.mark.parametrize("name,cfg", [("flux-dev all-in-one", 1.0), ("sd3 all-in-one", 5.0)])
def test_img2img_matches_diffusers_pipeline(flow_models, name, cfg):
    model = flow_models[name]
    rs = np.random.RandomState(0)
    init = Image.fromarray(rs.randint(0, 255, (SIZE, SIZE, 3)).astype(np.uint8))
    req = Img2ImgRequest(prompt=PROMPT, init_images=[init], denoising_strength=0.6, steps=5, cfg_scale=cfg,
                         width=SIZE, height=SIZE, seed=SEED, sampler_name="Euler", negative_prompt="")
    ours = _ours(model, req)
    kw = _reference_kwargs(model, cfg, "")
    ref = _pipeline(model, img2img_pipe=True)(PROMPT, image=init, strength=0.6, num_inference_steps=5,
                                               height=SIZE, width=SIZE, generator=_gens(1), **kw).images
    assert _max_diff(ours, ref) <= 2


def test_distilled_cfg_changes_flux_dev_and_is_ignored_by_schnell(flow_models):
    def run(name, distilled):
        req = Txt2ImgRequest(prompt=PROMPT, steps=2, cfg_scale=1, distilled_cfg_scale=distilled, width=SIZE,
                             height=SIZE, seed=SEED)
        return np.asarray(_ours(flow_models[name], req)[0], np.int16)

    assert np.abs(run("flux-dev all-in-one", 3.5) - run("flux-dev all-in-one", 1.0)).max() > 0
    assert np.array_equal(run("flux-schnell bfl + parts", 3.5), run("flux-schnell bfl + parts", 1.0))


@pytest.mark.slow  # a second or more of parity/size checks: out of the -m "not slow" loop
def test_flux_fill_inpaint_matches_fluxfillpipeline(tmp_path):
    """Flux Fill (detected from its input width) inpaints as FluxFillPipeline does; A1111 pastes the original back
    outside the mask, so the reference gets the same paste."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxFillPipeline

    model = loader.load_model(tfm.write_all_in_one(tfm.build_flux(fill=True), tmp_path / "fill.safetensors"),
                              devices.cpu())
    assert model.spec.label == "Flux.1 Fill" and model.spec.inpainting
    rs = np.random.RandomState(1)
    init = Image.fromarray(rs.randint(0, 255, (SIZE, SIZE, 3)).astype(np.uint8))
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[16:48, 8:40] = 255
    mask = Image.fromarray(mask)
    req = Img2ImgRequest(prompt=PROMPT, init_images=[init], mask=mask, mask_blur=0, inpainting_fill=1,
                         inpaint_full_res=False, denoising_strength=1.0, steps=4, cfg_scale=1, width=SIZE,
                         height=SIZE, seed=SEED, sampler_name="Euler", distilled_cfg_scale=30)
    ours = _ours(model, req)
    pipe = FluxFillPipeline(transformer=model.unet, vae=model.vae, text_encoder=model.text_encoder,
                            tokenizer=model.tokenizer, text_encoder_2=model.text_encoder_2,
                            tokenizer_2=model.tokenizer_2,
                            scheduler=FlowMatchEulerDiscreteScheduler.from_config(model.scheduler_config))
    raw = pipe(PROMPT, image=init, mask_image=mask, height=SIZE, width=SIZE, num_inference_steps=4,
               guidance_scale=30, generator=_gens(1), max_sequence_length=512).images
    assert _max_diff(ours, [Image.composite(r, init, mask) for r in raw]) <= 2
    keep = np.asarray(mask) == 0
    assert np.array_equal(np.asarray(ours[0])[keep], np.asarray(init)[keep])
    txt = _ours(model, Txt2ImgRequest(prompt=PROMPT, steps=2, cfg_scale=1, width=SIZE, height=SIZE, seed=SEED))
    assert txt[0].size == (SIZE, SIZE)  # a Fill model without a mask repaints everything, as A1111 does

"""Flux.1 ControlNets (InstantX / Shakker-Labs, diffusers layout) from models/ControlNet, through our loop, equal
diffusers' FluxControlNetPipeline on the same tiny Flux dev, ControlNet, map and seed."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from modules import devices
from modules.controlnet.models import ControlNetLibrary
from modules.controlnet.unit_request import ControlNetUnitRequest, UnitImage
from modules.models import loader
from modules.processing import ProcessingContext, txt2img
from modules.request_types import RequestError, Txt2ImgRequest
from tests import tiny_flow_models as tfm

SEED, SIZE = 4321, 64


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    root = tmp_path_factory.mktemp("flux-cn")
    model = loader.load_model(tfm.write_all_in_one(tfm.build_flux(True), root / "dev.safetensors"), devices.cpu())
    from diffusers import FluxControlNetModel

    torch.manual_seed(3)
    net = FluxControlNetModel.from_transformer(model.unet, num_layers=1, num_single_layers=1,
                                               attention_head_dim=16, num_attention_heads=2)
    with torch.no_grad():  # from_transformer zero-initialises its output layers: give them weights so they act
        for p in net.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.3)
    (root / "cn").mkdir()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()},
              str(root / "cn" / "flux-controlnet-canny.safetensors"))
    return model, net.eval(), ControlNetLibrary([root / "cn"])


def _map() -> Image.Image:
    rs = np.random.RandomState(5)
    edges = np.zeros((SIZE, SIZE, 3), np.uint8)
    edges[rs.randint(0, SIZE, 300), rs.randint(0, SIZE, 300)] = 255
    return Image.fromarray(edges)


def _ours(model, library, weight=0.8, start=0.0, end=1.0):
    units = [ControlNetUnitRequest(module="none", model="flux-controlnet-canny", weight=weight, guidance_start=start,
                                   guidance_end=end, images=[UnitImage(_map())])] if weight is not None else []
    req = Txt2ImgRequest(prompt="a photo of a cat", steps=4, cfg_scale=1.0, distilled_cfg_scale=3.5, width=SIZE,
                         height=SIZE, seed=SEED, sampler_name="Euler", controlnet_units=units)
    ctx = ProcessingContext(model=model, options={"return_grid": False}, outputs=None, controlnets=library)
    return txt2img(ctx, req).images


def _diff(a, b) -> int:
    return max(int(np.abs(np.asarray(x, np.int16) - np.asarray(y, np.int16)).max()) for x, y in zip(a, b))


@pytest.mark.parametrize("window", [(0.0, 1.0), (0.25, 0.75)])
def test_flux_controlnet_matches_its_pipeline(flux, window):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxControlNetPipeline

    model, net, library = flux
    ours = _ours(model, library, 0.8, *window)
    assert len(ours) == 1  # module "none": no detected map to return
    pipe = FluxControlNetPipeline(
        transformer=model.unet, controlnet=library.load("flux-controlnet-canny", model.device, model.dtype,
                                                        model.unet.config, "flux").model,
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(model.scheduler_config), vae=model.vae,
        text_encoder=model.text_encoder, tokenizer=model.tokenizer, text_encoder_2=model.text_encoder_2,
        tokenizer_2=model.tokenizer_2)
    theirs = pipe("a photo of a cat", control_image=_map(), controlnet_conditioning_scale=0.8,
                  control_guidance_start=window[0], control_guidance_end=window[1], guidance_scale=3.5,
                  num_inference_steps=4, height=SIZE, width=SIZE, generator=[torch.Generator().manual_seed(SEED)],
                  max_sequence_length=model.spec.defaults["t5_max_length"]).images
    assert _diff(ours, theirs) <= 2
    assert _diff(ours, _ours(model, library, None)) > 3


def test_an_sd_controlnet_on_flux_and_a_flux_one_on_sd_are_refused(flux, load_tiny, tmp_path):
    from tests import tiny_controlnets as tc

    model, _, library = flux
    sd1 = load_tiny("sd1.safetensors")
    tc.write_diffusers_file(tc.build_controlnet(sd1.unet, 1), tmp_path / "control_sd15_canny.safetensors")
    both = ControlNetLibrary([tmp_path, *library.dirs])
    for checkpoint, name in ((model, "control_sd15_canny"), (sd1, "flux-controlnet-canny")):
        unit = ControlNetUnitRequest(module="none", model=name, images=[UnitImage(_map())])
        req = Txt2ImgRequest(prompt="x", steps=1, width=SIZE, height=SIZE, controlnet_units=[unit])
        with pytest.raises(RequestError, match=r"controlnet\[0\]\.model: .*(SD1.x ControlNet|Flux.1 ControlNet)"):
            txt2img(ProcessingContext(model=checkpoint, options={}, outputs=None, controlnets=both), req)

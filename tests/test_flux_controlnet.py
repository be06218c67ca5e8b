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


def _xlabs_file(model, path):
    """A Flux ControlNet in XLabs-AI's release layout (BFL block names, `pos_embed_input`, an 8-conv pixel hint
    block), made from the tiny transformer's first block."""
    from diffusers import FluxControlNetModel

    from modules.controlnet.flux_controlnet import _XLABS_HINT
    from modules.models.flux_keys import diffusers_to_bfl

    torch.manual_seed(8)
    config = {k: v for k, v in model.unet.config.items() if k in (
        "in_channels", "attention_head_dim", "num_attention_heads", "joint_attention_dim", "pooled_projection_dim",
        "guidance_embeds", "axes_dims_rope")}
    net = FluxControlNetModel(num_layers=1, num_single_layers=0, conditioning_embedding_channels=16, patch_size=2,
                              **config)
    net.load_state_dict({k: v for k, v in model.unet.state_dict().items() if k in net.state_dict()}, strict=False)
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.3)
    sd = net.state_dict()
    control = ("controlnet_x_embedder.", "input_hint_block.", "controlnet_blocks.")
    out = diffusers_to_bfl({k: v for k, v in sd.items() if not k.startswith(control)})
    for key, value in sd.items():
        if key.startswith("controlnet_x_embedder."):
            out["pos_embed_input." + key.split(".", 1)[1]] = value
        elif key.startswith("controlnet_blocks."):
            out[key] = value
        elif key.startswith("input_hint_block."):
            name, part = key.removeprefix("input_hint_block.").rsplit(".", 1)
            out[f"input_hint_block.{2 * _XLABS_HINT.index(name)}.{part}"] = value
    save_file({k: v.contiguous() for k, v in out.items()}, str(path))
    return net.eval()


def test_xlabs_flux_controlnet_matches_its_pipeline(tmp_path):
    """XLabs' hint block reads pixels down to 1/8 (the real Flux VAE's factor): this test's Flux has an 8× VAE."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxControlNetPipeline

    comps = tfm.build_flux(True, seed=5)
    scale, shift = tfm._SCALE["flux"]
    comps["vae"] = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(32,) * 4,
                                 down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                                 layers_per_block=1, latent_channels=16, norm_num_groups=32, sample_size=32,
                                 scaling_factor=scale, shift_factor=shift, use_quant_conv=False,
                                 use_post_quant_conv=False).eval()
    model = loader.load_model(tfm.write_all_in_one(comps, tmp_path / "dev8.safetensors"), devices.cpu())
    assert model.vae_scale_factor == 8
    net = _xlabs_file(model, tmp_path / "flux-canny-controlnet-v3.safetensors")
    library = ControlNetLibrary([tmp_path])
    loaded = library.load("flux-canny-controlnet-v3", model.device, model.dtype, model.unet.config, "flux")
    assert loaded.model.input_hint_block is not None
    for ours_t, theirs_t in zip(loaded.model.state_dict().values(), net.state_dict().values()):
        torch.testing.assert_close(ours_t, theirs_t)
    units = [ControlNetUnitRequest(module="none", model="flux-canny-controlnet-v3", weight=0.7,
                                   images=[UnitImage(_map())])]
    req = Txt2ImgRequest(prompt="a photo of a cat", steps=4, cfg_scale=1.0, distilled_cfg_scale=3.5, width=SIZE,
                         height=SIZE, seed=SEED, sampler_name="Euler", controlnet_units=units)
    ours = txt2img(ProcessingContext(model=model, options={"return_grid": False}, outputs=None, controlnets=library),
                   req).images
    pipe = FluxControlNetPipeline(
        transformer=model.unet, controlnet=loaded.model,
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(model.scheduler_config), vae=model.vae,
        text_encoder=model.text_encoder, tokenizer=model.tokenizer, text_encoder_2=model.text_encoder_2,
        tokenizer_2=model.tokenizer_2)
    theirs = pipe("a photo of a cat", control_image=_map(), controlnet_conditioning_scale=0.7, guidance_scale=3.5,
                  num_inference_steps=4, height=SIZE, width=SIZE, generator=[torch.Generator().manual_seed(SEED)],
                  max_sequence_length=model.spec.defaults["t5_max_length"]).images
    assert _diff(ours, theirs) <= 2
    assert _diff(ours, _ours(model, library, None)) > 3


def test_flux_union_reads_the_mode_its_preprocessor_implies(flux, tmp_path):
    """InstantX/Shakker Flux Union: a canny unit runs mode 0 (their numbering), as the pipeline with control_mode=0."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxControlNetModel, FluxControlNetPipeline

    model, _, _ = flux
    torch.manual_seed(9)
    config = {k: v for k, v in model.unet.config.items() if k in (
        "in_channels", "attention_head_dim", "num_attention_heads", "joint_attention_dim", "pooled_projection_dim",
        "guidance_embeds", "axes_dims_rope")}
    net = FluxControlNetModel(num_layers=1, num_single_layers=1, num_mode=10, **config)
    net.load_state_dict({k: v for k, v in model.unet.state_dict().items() if k in net.state_dict()}, strict=False)
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.3)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "flux-union-pro.safetensors"))
    library = ControlNetLibrary([tmp_path])
    picture = _map()

    def ours(module, union="Unknown"):
        unit = ControlNetUnitRequest(module=module, model="flux-union-pro", weight=0.9, processor_res=SIZE,
                                     union_control_type=union, images=[UnitImage(picture)])
        req = Txt2ImgRequest(prompt="a photo of a cat", steps=3, cfg_scale=1.0, width=SIZE, height=SIZE, seed=SEED,
                             sampler_name="Euler", controlnet_units=[unit])
        return txt2img(ProcessingContext(model=model, options={"return_grid": False}, outputs=None,
                                         controlnets=library), req).images[:1]

    with pytest.raises(RequestError, match=r"controlnet\[0\]\.union_control_type"):
        ours("none")
    loaded = library.load("flux-union-pro", model.device, model.dtype, model.unet.config, "flux").model
    pipe = FluxControlNetPipeline(
        transformer=model.unet, controlnet=loaded,
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(model.scheduler_config), vae=model.vae,
        text_encoder=model.text_encoder, tokenizer=model.tokenizer, text_encoder_2=model.text_encoder_2,
        tokenizer_2=model.tokenizer_2)
    theirs = pipe("a photo of a cat", control_image=picture, control_mode=2, controlnet_conditioning_scale=0.9,
                  guidance_scale=3.5, num_inference_steps=3, height=SIZE, width=SIZE,
                  generator=[torch.Generator().manual_seed(SEED)],
                  max_sequence_length=model.spec.defaults["t5_max_length"]).images
    assert _diff(ours("none", "Depth"), theirs) <= 2  # "Depth" → mode 2
    assert _diff(ours("none", "Tile"), theirs) > 0  # another mode draws otherwise


@pytest.mark.slow  # a second or more of parity/size checks: out of the -m "not slow" loop
def test_flux_depth_checkpoint_reads_its_units_map_as_the_control_pipeline(tmp_path):
    """Flux.1 Depth/Canny: the checkpoint itself reads a control image; a unit with a preprocessor (here a ready
    map, "none") and model None gives it, equal to FluxControlPipeline."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxControlPipeline

    model = loader.load_model(tfm.write_all_in_one(tfm.build_flux(True, seed=7, depth=True),
                                                   tmp_path / "flux1-depth-dev.safetensors"), devices.cpu())
    assert model.spec.variant == "Flux.1 Depth"

    def ours(units):
        req = Txt2ImgRequest(prompt="a photo of a cat", steps=4, cfg_scale=1.0, distilled_cfg_scale=3.5, width=SIZE,
                             height=SIZE, seed=SEED, sampler_name="Euler", controlnet_units=units)
        return txt2img(ProcessingContext(model=model, options={"return_grid": False}, outputs=None), req)

    result = ours([ControlNetUnitRequest(module="none", model="None", images=[UnitImage(_map())])])
    assert "ControlNet 0" in result.infotexts[0] and "Model: None" in result.infotexts[0]
    pipe = FluxControlPipeline(
        transformer=model.unet, scheduler=FlowMatchEulerDiscreteScheduler.from_config(model.scheduler_config),
        vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer,
        text_encoder_2=model.text_encoder_2, tokenizer_2=model.tokenizer_2)
    theirs = pipe("a photo of a cat", control_image=_map(), guidance_scale=3.5, num_inference_steps=4, height=SIZE,
                  width=SIZE, generator=[torch.Generator().manual_seed(SEED)],
                  max_sequence_length=model.spec.defaults["t5_max_length"]).images
    assert _diff(result.images, theirs) <= 2
    other = ours([ControlNetUnitRequest(module="invert", model="None", images=[UnitImage(_map())])])
    assert _diff(other.images, theirs) > 3  # the map decides
    with pytest.raises(RequestError, match="Flux.1 Depth/Canny model: it draws from a control image"):
        ours([])


def test_flux_depth_img2img_matches_the_control_img2img_pipeline(tmp_path):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxControlImg2ImgPipeline

    from modules.processing import img2img
    from modules.request_types import Img2ImgRequest

    model = loader.load_model(tfm.write_all_in_one(tfm.build_flux(True, seed=8, depth=True),
                                                   tmp_path / "flux1-canny-dev.safetensors"), devices.cpu())
    init = Image.fromarray(np.random.RandomState(4).randint(0, 255, (SIZE, SIZE, 3), np.uint8))
    unit = ControlNetUnitRequest(module="none", model="None", images=[UnitImage(_map())])
    # 5 steps × 0.6: A1111's and diffusers' step counts agree when steps × strength is whole
    req = Img2ImgRequest(prompt="a photo of a cat", steps=5, cfg_scale=1.0, distilled_cfg_scale=3.5, width=SIZE,
                         height=SIZE, seed=SEED, sampler_name="Euler", init_images=[init], denoising_strength=0.6,
                         controlnet_units=[unit])
    ours = img2img(ProcessingContext(model=model, options={"return_grid": False}, outputs=None), req).images
    pipe = FluxControlImg2ImgPipeline(
        transformer=model.unet, scheduler=FlowMatchEulerDiscreteScheduler.from_config(model.scheduler_config),
        vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer,
        text_encoder_2=model.text_encoder_2, tokenizer_2=model.tokenizer_2)
    theirs = pipe("a photo of a cat", image=init, control_image=_map(), strength=0.6, guidance_scale=3.5,
                  num_inference_steps=5, height=SIZE, width=SIZE, generator=[torch.Generator().manual_seed(SEED)],
                  max_sequence_length=model.spec.defaults["t5_max_length"]).images
    assert _diff(ours, theirs) <= 2


def test_a_reference_unit_on_flux_is_refused_by_name(flux):
    model, _, library = flux
    unit = ControlNetUnitRequest(module="reference_only", model="None", images=[UnitImage(_map())])
    req = Txt2ImgRequest(prompt="x", steps=1, width=SIZE, height=SIZE, controlnet_units=[unit])
    with pytest.raises(RequestError, match=r"controlnet\[0\]\.module: reference_only works with SD1.x, SD2.x and SDXL"):
        txt2img(ProcessingContext(model=model, options={}, outputs=None, controlnets=library), req)

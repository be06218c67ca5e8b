"""ControlNet in our one loop equals diffusers' StableDiffusionControlNetPipeline on the same components: a tiny
ControlNet made from the tiny SD1 UNet (`ControlNetModel.from_unet`, random conditioning weights), one and two
units, guidance windows, CFG on and off."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from modules.controlnet.units import ControlUnit
from modules.processing import ProcessingContext, txt2img
from modules.request_types import Txt2ImgRequest

SEED, SIZE = 77, 64


def _controlnet(unet, seed: int):
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32, 48, 64))
    with torch.no_grad():  # from_unet zero-initialises the residual convs: give them weights so they act
        for p in net.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.2)
    return net.eval()


def _map(seed: int) -> Image.Image:
    rs = np.random.RandomState(seed)
    edges = np.zeros((SIZE, SIZE, 3), np.uint8)
    edges[rs.randint(0, SIZE, 300), rs.randint(0, SIZE, 300)] = 255
    return Image.fromarray(edges)


def _ours(model, units, cfg, batch=1):
    ctx = ProcessingContext(model=model, options={"return_grid": False}, outputs=None, control_units=units)
    req = Txt2ImgRequest(prompt="a red ball", negative_prompt="blurry", steps=6, cfg_scale=cfg, width=SIZE,
                         height=SIZE, seed=SEED, sampler_name="Euler", batch_size=batch)
    return txt2img(ctx, req).images


def _theirs(model, nets, maps, weights, starts, ends, cfg, batch=1):
    from diffusers import StableDiffusionControlNetPipeline
    from diffusers import MultiControlNetModel

    from modules.sampling import samplers

    scheduler = samplers.build_scheduler(*samplers.resolve("Euler", None), model.scheduler_config).scheduler
    controlnet = nets[0] if len(nets) == 1 else MultiControlNetModel(nets)
    pipe = StableDiffusionControlNetPipeline(
        vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer, unet=model.unet,
        controlnet=controlnet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    one = len(nets) == 1
    return pipe("a red ball", negative_prompt="blurry", image=maps[0] if one else maps, num_inference_steps=6,
                guidance_scale=cfg, width=SIZE, height=SIZE, num_images_per_prompt=batch,
                generator=[torch.Generator().manual_seed(SEED + i) for i in range(batch)],
                controlnet_conditioning_scale=weights[0] if one else weights,
                control_guidance_start=starts[0] if one else starts,
                control_guidance_end=ends[0] if one else ends).images


def _diff(a, b) -> int:
    return max(int(np.abs(np.asarray(x, np.int16) - np.asarray(y, np.int16)).max()) for x, y in zip(a, b))


@pytest.mark.parametrize("cfg,window,batch", [(7.0, (0.0, 1.0), 1), (1.0, (0.0, 1.0), 2), (5.0, (0.2, 0.7), 1)])
def test_one_unit_matches_the_controlnet_pipeline(load_tiny, cfg, window, batch):
    model = load_tiny("sd1.safetensors")
    net = _controlnet(model.unet, 0)
    unit = ControlUnit(net, _map(0), weight=0.8, guidance_start=window[0], guidance_end=window[1])
    ours = _ours(model, [unit], cfg, batch)
    theirs = _theirs(model, [net], [_map(0)], [0.8], [window[0]], [window[1]], cfg, batch)
    assert _diff(ours, theirs) <= 1
    plain = _ours(model, [], cfg, batch)
    assert _diff(ours, plain) > 3  # the unit really guides


def test_two_units_sum_as_multicontrolnet(load_tiny):
    model = load_tiny("sd1.safetensors")
    nets = [_controlnet(model.unet, 1), _controlnet(model.unet, 2)]
    units = [ControlUnit(nets[0], _map(1), 1.0, 0.0, 0.5), ControlUnit(nets[1], _map(2), 0.6, 0.3, 1.0)]
    ours = _ours(model, units, 6.0)
    theirs = _theirs(model, nets, [_map(1), _map(2)], [1.0, 0.6], [0.0, 0.3], [0.5, 1.0], 6.0)
    assert _diff(ours, theirs) <= 1


class _Ones:
    """A stand-in ControlNet whose every residual is 1, so the loop's per-block scales show up as they are."""

    def __init__(self, blocks: int):
        self.blocks = blocks

    def __call__(self, x, t, encoder_hidden_states, controlnet_cond, **kwargs):
        assert kwargs["conditioning_scale"] == 1.0
        ones = torch.ones(x.shape[0], 1, 1, 1)
        return tuple(ones.clone() for _ in range(self.blocks - 1)), ones.clone()


def _scales(unit, blocks=13, rows=2, uncond_rows=1, hires=False, step=0, total=10):
    from modules.controlnet.units import ActiveControl, residuals

    unit.model = _Ones(blocks)
    active = ActiveControl(unit, torch.zeros(1, 3, 8, 8), hires=hires)
    out = residuals([active], torch.zeros(rows, 4, 1, 1), 1, None, None, torch.zeros(rows, dtype=torch.long),
                    uncond_rows, step, total)
    if not out:
        return None
    values = out["down_block_additional_residuals"] + [out["mid_block_additional_residual"]]
    return [[pytest.approx(float(v[r]), abs=1e-6) for v in values] for r in range(rows)]


def test_control_modes_scale_each_block_as_the_extension():
    from modules.controlnet.units import ControlUnit

    soft = [0.5 * 0.825 ** (12 - i) for i in range(13)]
    balanced = ControlUnit(None, _map(0), weight=0.5)
    assert _scales(balanced) == [[0.5] * 13, [0.5] * 13]  # negative and positive rows alike
    prompt = ControlUnit(None, _map(0), weight=0.5, control_mode="My prompt is more important")
    assert _scales(prompt) == [soft, soft]
    control = ControlUnit(None, _map(0), weight=0.5, control_mode="ControlNet is more important")
    assert _scales(control) == [[0.0] * 13, soft]  # the negative prompt's row gets no control
    assert _scales(control, rows=1, uncond_rows=0) == [soft]  # CFG 1: nothing to take it from
    assert _scales(prompt, blocks=10)[0] == soft[:10]  # SDXL: 9 + mid, the first ten scales
    weighted = ControlUnit(None, _map(0), weight=0.5, advanced_weighting=[0.1 * i for i in range(13)])
    assert _scales(weighted)[1] == [0.1 * i for i in range(13)]


def test_guidance_window_hires_rules_and_hr_option():
    from modules.controlnet.units import ControlUnit

    unit = ControlUnit(None, _map(0), weight=1.0, guidance_start=0.2, guidance_end=0.6)
    active = [s for s in range(10) if _scales(unit, step=s) is not None]
    assert active == [2, 3, 4, 5]
    canny = ControlUnit(None, _map(0), weight=1.0, soft_in_hires=True)
    assert _scales(canny)[1] == [1.0] * 13
    assert _scales(canny, hires=True)[1] == [0.825 ** (12 - i) for i in range(13)]
    low = ControlUnit(None, _map(0), hr_option="Low res only")
    high = ControlUnit(None, _map(0), hr_option="High res only")
    assert (low.used_in(False), low.used_in(True), high.used_in(False), high.used_in(True)) == (True, False, False,
                                                                                                True)


def test_and_prompts_are_guided_too(load_tiny):
    model = load_tiny("sd1.safetensors")
    net = _controlnet(model.unet, 0)
    units = [ControlUnit(net, _map(0), weight=1.0)]
    ctx = ProcessingContext(model=model, options={"return_grid": False}, outputs=None, control_units=units)
    req = Txt2ImgRequest(prompt="a red ball AND a blue sky", steps=4, cfg_scale=5, width=SIZE, height=SIZE, seed=3,
                         sampler_name="Euler")
    guided = txt2img(ctx, req).images
    plain = txt2img(ProcessingContext(model=model, options={"return_grid": False}, outputs=None), req).images
    assert _diff(guided, plain) > 3


def _sdxl_parts(model):
    return dict(vae=model.vae, text_encoder=model.text_encoder, text_encoder_2=model.text_encoder_2,
                tokenizer=model.tokenizer, tokenizer_2=model.tokenizer_2, unet=model.unet)


def test_sdxl_controlnet_matches_its_pipeline(load_tiny):
    from diffusers import StableDiffusionXLControlNetPipeline

    from modules.sampling import samplers
    from tests.tiny_controlnets import build_controlnet

    model = load_tiny("sdxl.safetensors")
    net = build_controlnet(model.unet, 6)
    ours = _ours(model, [ControlUnit(net, _map(4), weight=0.7, guidance_start=0.1, guidance_end=0.8)], 6.0)
    scheduler = samplers.build_scheduler(*samplers.resolve("Euler", None), model.scheduler_config).scheduler
    pipe = StableDiffusionXLControlNetPipeline(controlnet=net, scheduler=scheduler, **_sdxl_parts(model))
    theirs = pipe("a red ball", negative_prompt="blurry", image=_map(4), num_inference_steps=6, guidance_scale=6.0,
                  width=SIZE, height=SIZE, generator=[torch.Generator().manual_seed(SEED)],
                  controlnet_conditioning_scale=0.7, control_guidance_start=0.1, control_guidance_end=0.8).images
    assert _diff(ours, theirs) <= 1
    assert _diff(ours, _ours(model, [], 6.0)) > 3


def test_sdxl_union_matches_its_pipeline(load_tiny):
    from diffusers import StableDiffusionXLControlNetUnionPipeline

    from modules.sampling import samplers
    from tests.tiny_controlnets import build_controlnet

    model = load_tiny("sdxl.safetensors")
    net = build_controlnet(model.unet, 7, union=True)
    unit = ControlUnit(net, _map(5), weight=0.9, union_type=3)  # "Hard Edge": canny, lineart, mlsd
    ours = _ours(model, [unit], 5.0)
    scheduler = samplers.build_scheduler(*samplers.resolve("Euler", None), model.scheduler_config).scheduler
    pipe = StableDiffusionXLControlNetUnionPipeline(controlnet=net, scheduler=scheduler, **_sdxl_parts(model))
    theirs = pipe("a red ball", negative_prompt="blurry", control_image=[_map(5)], control_mode=[3],
                  num_inference_steps=6, guidance_scale=5.0, width=SIZE, height=SIZE,
                  generator=[torch.Generator().manual_seed(SEED)], controlnet_conditioning_scale=0.9).images
    assert _diff(ours, theirs) <= 1


def test_img2img_with_a_unit_matches_the_controlnet_img2img_pipeline(load_tiny):
    from diffusers import StableDiffusionControlNetImg2ImgPipeline

    from modules.processing import img2img
    from modules.request_types import Img2ImgRequest
    from modules.sampling import samplers

    model = load_tiny("sd1.safetensors")
    net = _controlnet(model.unet, 8)
    init = Image.fromarray(np.linspace(0, 255, SIZE * SIZE * 3).reshape(SIZE, SIZE, 3).astype(np.uint8))
    ctx = ProcessingContext(model=model, options={"return_grid": False}, outputs=None,
                            control_units=[ControlUnit(net, _map(6), weight=1.1)])
    req = Img2ImgRequest(prompt="a red ball", negative_prompt="", steps=8, cfg_scale=6.0, width=SIZE, height=SIZE,
                         seed=SEED, sampler_name="Euler", init_images=[init], denoising_strength=0.6)
    ours = img2img(ctx, req).images
    scheduler = samplers.build_scheduler(*samplers.resolve("Euler", None), model.scheduler_config).scheduler
    pipe = StableDiffusionControlNetImg2ImgPipeline(
        vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer, unet=model.unet,
        controlnet=net, scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    theirs = pipe("a red ball", negative_prompt="", image=init, control_image=_map(6), strength=0.6,
                  num_inference_steps=8, guidance_scale=6.0, generator=[torch.Generator().manual_seed(SEED)],
                  controlnet_conditioning_scale=1.1).images
    assert _diff(ours, theirs) <= 1


@pytest.mark.parametrize("channels", [3, 1])
def test_t2i_adapter_matches_the_adapter_pipeline(load_tiny, channels):
    from diffusers import StableDiffusionAdapterPipeline

    from modules.sampling import samplers
    from tests.tiny_controlnets import build_t2i_adapter

    model = load_tiny("sd1.safetensors")
    adapter = build_t2i_adapter(model.unet, 9, in_channels=channels)
    unit = ControlUnit(adapter, _map(7), weight=0.8, kind="t2i_adapter")
    ours = _ours(model, [unit], 6.0)
    scheduler = samplers.build_scheduler(*samplers.resolve("Euler", None), model.scheduler_config).scheduler
    pipe = StableDiffusionAdapterPipeline(
        vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer, unet=model.unet,
        adapter=adapter, scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    image = _map(7) if channels == 3 else _map(7).convert("L")
    theirs = pipe("a red ball", negative_prompt="blurry", image=image, num_inference_steps=6, guidance_scale=6.0,
                  width=SIZE, height=SIZE, generator=[torch.Generator().manual_seed(SEED)],
                  adapter_conditioning_scale=0.8).images
    assert _diff(ours, theirs) <= 1
    assert _diff(ours, _ours(model, [], 6.0)) > 3


def _assert_image_prompt_parity(model, pipe, weights, scale: float, picture, ours) -> None:
    """The pipeline with the same adapter attached and scaled draws what we drew, and the adapter really acts."""
    from modules.controlnet import ip_adapter

    with ip_adapter.attached(model.unet, [weights], average_pictures=False):  # diffusers' own projection
        ip_adapter.set_scales(model.unet, [scale])
        theirs = pipe("a red ball", negative_prompt="blurry", ip_adapter_image=picture, num_inference_steps=6,
                      guidance_scale=6.0, width=SIZE, height=SIZE,
                      generator=[torch.Generator().manual_seed(SEED)]).images
    assert _diff(ours, theirs) <= 1
    assert _diff(ours, _ours(model, [], 6.0)) > 3


def _ip_setup(load_tiny, tmp_path, plus: bool):
    """The tiny SD1 model, a library with an IP-Adapter file and two CLIP vision encoders (the right one found by
    width), and StableDiffusionPipeline over the same weights."""
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file

    from modules.controlnet import ip_adapter
    from modules.controlnet.models import ControlNetLibrary
    from modules.sampling import samplers
    from tests import tiny_controlnets as tc

    model = load_tiny("sd1.safetensors")
    (tmp_path / "cn").mkdir()
    (tmp_path / "clip").mkdir()
    adapter_sd = tc.ip_adapter_plus_state_dict(model.unet, 32, 11) if plus else tc.ip_adapter_state_dict(
        model.unet, 24, 11)  # "plus" reads the encoder's hidden width (32), the plain one its projection (24)
    save_file(adapter_sd, str(tmp_path / "cn" / "ip-adapter_sd15.safetensors"))
    encoder = tc.build_clip_vision(12)
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(tmp_path / "clip" / "clip_h.safetensors"))
    save_file({k: v.contiguous() for k, v in tc.build_clip_vision(13, projection=16).state_dict().items()},
              str(tmp_path / "clip" / "other.safetensors"))
    library = ControlNetLibrary([tmp_path / "cn"], clip_vision_dirs=[tmp_path / "clip"])
    weights, _ = ip_adapter.parse(adapter_sd)
    assert weights.plus == plus
    scheduler = samplers.build_scheduler(*samplers.resolve("Euler", None), model.scheduler_config).scheduler
    pipe = StableDiffusionPipeline(
        vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer, unet=model.unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=ip_adapter.image_processor(encoder),
        image_encoder=encoder, requires_safety_checker=False)
    return model, library, weights, pipe


def _ip_request(library, model, picture, region=None):
    from modules.controlnet.unit_request import ControlNetUnitRequest, UnitImage

    unit = ControlNetUnitRequest(module="ip-adapter_clip_sd15", model="ip-adapter_sd15", weight=0.8,
                                 images=[UnitImage(picture)], effective_region_mask=region)
    req = Txt2ImgRequest(prompt="a red ball", negative_prompt="blurry", steps=6, cfg_scale=6.0, width=SIZE,
                         height=SIZE, seed=SEED, sampler_name="Euler", controlnet_units=[unit])
    ctx = ProcessingContext(model=model, options={"return_grid": False}, outputs=None, controlnets=library)
    return txt2img(ctx, req)


@pytest.mark.parametrize("plus", [False, True])
def test_ip_adapter_unit_matches_the_pipeline_with_an_image_prompt(load_tiny, tmp_path, plus):
    """A request unit with preprocessor ip-adapter_clip_sd15 and an IP-Adapter file, its encoder found by width in
    models/clip_vision, against StableDiffusionPipeline(ip_adapter_image=...) on the same weights."""
    model, library, weights, pipe = _ip_setup(load_tiny, tmp_path, plus)
    picture = _map(9).resize((48, 40))
    result = _ip_request(library, model, picture)
    ours = result.images
    assert len(ours) == 1 and "ControlNet 0" in result.infotexts[0]  # no detected map for an image prompt
    processors = dict(model.unet.attn_processors)
    assert not any("IPAdapter" in type(p).__name__ for p in processors.values())  # detached after the request
    _assert_image_prompt_parity(model, pipe, weights, 0.8, picture, ours)


def test_ip_adapter_region_mask_matches_the_pipelines_ip_adapter_masks(load_tiny, tmp_path):
    """An IP-Adapter unit's effective region mask: the image tokens act only inside it, as diffusers' masks."""
    from diffusers.image_processor import IPAdapterMaskProcessor
    from PIL import ImageDraw

    from modules.controlnet import ip_adapter

    model, library, weights, pipe = _ip_setup(load_tiny, tmp_path, False)
    picture = _map(9).resize((48, 40))
    region = Image.new("L", (SIZE, SIZE), 0)
    ImageDraw.Draw(region).rectangle((0, 0, SIZE // 2 - 1, SIZE - 1), fill=255)  # the left half
    ours = _ip_request(library, model, picture, region).images
    masks = IPAdapterMaskProcessor().preprocess([region], height=SIZE, width=SIZE)
    with ip_adapter.attached(model.unet, [weights], average_pictures=False):
        ip_adapter.set_scales(model.unet, [0.8])
        theirs = pipe("a red ball", negative_prompt="blurry", ip_adapter_image=picture, num_inference_steps=6,
                      guidance_scale=6.0, width=SIZE, height=SIZE, generator=[torch.Generator().manual_seed(SEED)],
                      cross_attention_kwargs={"ip_adapter_masks": [masks.reshape(1, 1, SIZE, SIZE)]}).images
    assert _diff(ours, theirs) <= 1
    assert _diff(ours, _ip_request(library, model, picture).images) > 3  # the mask changes the picture


def test_hires_pass_and_inpainting_are_guided(load_tiny):
    """The unit's map is fitted to the hires pass's size and guides it ("Both"), or only the first pass ("Low res
    only"); an inpainting model's 9-channel UNet is guided through a 4-channel ControlNet, as the extension does."""
    from modules.processing import img2img
    from modules.request_types import Img2ImgRequest

    model = load_tiny("sd1.safetensors")
    net = _controlnet(model.unet, 10)

    def hires(option):
        units = [ControlUnit(net, _map(11), weight=1.0, hr_option=option)] if option else []
        ctx = ProcessingContext(model=model, options={"return_grid": False}, outputs=None, control_units=units)
        req = Txt2ImgRequest(prompt="a red ball", steps=4, cfg_scale=5, width=SIZE, height=SIZE, seed=4,
                             sampler_name="Euler", enable_hr=True, hr_scale=1.5, denoising_strength=0.6)
        return txt2img(ctx, req).images

    both, low, plain = hires("Both"), hires("Low res only"), hires(None)
    assert both[0].size == (96, 96)
    assert _diff(both, low) > 3 and _diff(low, plain) > 3

    inpaint = load_tiny("sd1-inpainting.safetensors")
    net9 = _controlnet(model.unet, 12)  # an SD1.5 ControlNet (4 input channels) on a 9-channel inpainting UNet
    assert inpaint.unet.config.in_channels == 9
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (16, 16, 48, 48))
    init = Image.new("RGB", (SIZE, SIZE), (200, 60, 60))

    def fill(units):
        ctx = ProcessingContext(model=inpaint, options={"return_grid": False}, outputs=None, control_units=units)
        req = Img2ImgRequest(prompt="a ball", steps=4, cfg_scale=5, width=SIZE, height=SIZE, seed=6,
                             sampler_name="Euler", init_images=[init], mask=mask, denoising_strength=1.0)
        return img2img(ctx, req).images

    assert _diff(fill([ControlUnit(net9, _map(12), weight=1.0)]), fill([])) > 3


def test_effective_region_mask_limits_the_unit_to_its_region(load_tiny):
    """White = the unit acts, black = as if it were not there (the extension's effective region mask)."""
    model = load_tiny("sd1.safetensors")
    net = _controlnet(model.unet, 13)

    def run(mask):
        region = None if mask is None else torch.from_numpy(np.asarray(mask, np.float32) / 255)[None, None]
        return _ours(model, [ControlUnit(net, _map(13), weight=1.0, region_mask=region)], 5.0)

    black, left = Image.new("L", (SIZE, SIZE), 0), Image.new("L", (SIZE, SIZE), 0)
    left.paste(255, (0, 0, SIZE // 2, SIZE))
    plain, full, half = _ours(model, [], 5.0), run(None), run(left)
    assert _diff(run(black), plain) <= 1
    assert _diff(half, plain) > 3 and _diff(half, full) > 3


def test_a_low_vram_unit_waits_off_the_gpu_between_steps(load_tiny, monkeypatch):
    """On a GPU, a "Low VRAM" unit's model is moved to the sampling device for each call and back to the CPU after
    (checked here with the device moves recorded, since this machine has no GPU)."""
    from modules.controlnet import units as units_mod

    net = _controlnet(load_tiny("sd1.safetensors").unet, 14)
    moves = []
    monkeypatch.setattr(net, "to", lambda *a, **k: moves.append(str(a[0])) or net)
    gpu = torch.device("cuda")
    for low_vram, expected in ((True, ["cuda", "cpu"]), (False, ["cuda"])):
        moves.clear()
        with units_mod._on(ControlUnit(net, _map(0), low_vram=low_vram), gpu):
            pass
        assert moves == expected


def test_sdxl_t2i_adapter_matches_its_pipeline(load_tiny):
    from diffusers import StableDiffusionXLAdapterPipeline

    from modules.sampling import samplers
    from tests.tiny_controlnets import build_t2i_adapter

    model = load_tiny("sdxl.safetensors")
    adapter = build_t2i_adapter(model.unet, 15, xl=True)
    ours = _ours(model, [ControlUnit(adapter, _map(15), weight=0.9, kind="t2i_adapter")], 6.0)
    scheduler = samplers.build_scheduler(*samplers.resolve("Euler", None), model.scheduler_config).scheduler
    pipe = StableDiffusionXLAdapterPipeline(adapter=adapter, scheduler=scheduler, **_sdxl_parts(model))
    theirs = pipe("a red ball", negative_prompt="blurry", image=_map(15), num_inference_steps=6, guidance_scale=6.0,
                  width=SIZE, height=SIZE, generator=[torch.Generator().manual_seed(SEED)],
                  adapter_conditioning_scale=0.9).images
    assert _diff(ours, theirs) <= 1
    assert _diff(ours, _ours(model, [], 6.0)) > 3


def test_sdxl_ip_adapter_matches_its_pipeline(load_tiny, tmp_path):
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import save_file

    from modules.controlnet import ip_adapter
    from modules.controlnet.models import ControlNetLibrary
    from modules.controlnet.unit_request import ControlNetUnitRequest, UnitImage
    from modules.sampling import samplers
    from tests import tiny_controlnets as tc

    model = load_tiny("sdxl.safetensors")
    for sub in ("cn", "clip"):
        (tmp_path / sub).mkdir()
    adapter_sd = tc.ip_adapter_state_dict(model.unet, 24, 16)
    save_file(adapter_sd, str(tmp_path / "cn" / "ip-adapter_sdxl.safetensors"))
    encoder = tc.build_clip_vision(17)
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(tmp_path / "clip" / "clip_g.safetensors"))
    library = ControlNetLibrary([tmp_path / "cn"], clip_vision_dirs=[tmp_path / "clip"])
    picture = _map(16)
    unit = ControlNetUnitRequest(module="ip-adapter_clip_sdxl", model="ip-adapter_sdxl", weight=0.7,
                                 images=[UnitImage(picture)])
    req = Txt2ImgRequest(prompt="a red ball", negative_prompt="blurry", steps=6, cfg_scale=6.0, width=SIZE,
                         height=SIZE, seed=SEED, sampler_name="Euler", controlnet_units=[unit])
    ours = txt2img(ProcessingContext(model=model, options={"return_grid": False}, outputs=None, controlnets=library),
                   req).images
    weights, _ = ip_adapter.parse(adapter_sd)
    scheduler = samplers.build_scheduler(*samplers.resolve("Euler", None), model.scheduler_config).scheduler
    pipe = StableDiffusionXLPipeline(scheduler=scheduler, image_encoder=encoder,
                                     feature_extractor=ip_adapter.image_processor(encoder), **_sdxl_parts(model))
    _assert_image_prompt_parity(model, pipe, weights, 0.7, picture, ours)


@pytest.mark.parametrize("module", ["revision_clipvision", "revision_ignore_prompt"])
def test_revision_is_the_sdxl_pipeline_with_the_pictures_embedding_as_pooled_prompt(load_tiny, tmp_path, module):
    """ReVision (the extension's SDXL picture prompt): the picture's projected CLIP embedding, times the weight,
    as the prompt's pooled embedding and zeros for the negative prompt's (ignore_prompt: no text tokens either),
    equal to StableDiffusionXLPipeline given those embeddings."""
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import save_file

    from modules.controlnet import ip_adapter
    from modules.controlnet.models import ControlNetLibrary
    from modules.controlnet.revision import noise_augmented
    from modules.controlnet.unit_request import ControlNetUnitRequest, UnitImage
    from modules.sampling import samplers
    from tests import tiny_controlnets as tc

    model = load_tiny("sdxl.safetensors")
    config = model.unet.config
    width = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
    (tmp_path / "clip").mkdir()
    encoder = tc.build_clip_vision(21, projection=width)
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(tmp_path / "clip" / "clip_g.safetensors"))
    library = ControlNetLibrary([tmp_path / "cn"], clip_vision_dirs=[tmp_path / "clip"])
    picture = _map(18)
    unit = ControlNetUnitRequest(module=module, model="None", weight=0.8, threshold_a=0.1, images=[UnitImage(picture)])
    req = Txt2ImgRequest(prompt="a red ball", negative_prompt="blurry", steps=6, cfg_scale=6.0, width=SIZE,
                         height=SIZE, seed=SEED, sampler_name="Euler", controlnet_units=[unit])
    result = txt2img(ProcessingContext(model=model, options={"return_grid": False}, outputs=None,
                                       controlnets=library), req)
    assert 'Module: ' + module in result.infotexts[0] and len(result.images) == 1  # no map to show

    embedding = ip_adapter.encode(encoder, picture, plus=False)[0].reshape(1, -1)
    pooled = 0.8 * noise_augmented(embedding, 0.1, torch.Generator().manual_seed(0))
    scheduler = samplers.build_scheduler(*samplers.resolve("Euler", None), model.scheduler_config).scheduler
    pipe = StableDiffusionXLPipeline(scheduler=scheduler, **_sdxl_parts(model))
    text, negative, _, _ = pipe.encode_prompt("a red ball", negative_prompt="blurry", device="cpu",
                                             do_classifier_free_guidance=True)
    if module == "revision_ignore_prompt":
        text, negative = torch.zeros_like(text), torch.zeros_like(negative)
    theirs = pipe(prompt_embeds=text, negative_prompt_embeds=negative, pooled_prompt_embeds=pooled,
                  negative_pooled_prompt_embeds=torch.zeros_like(pooled), num_inference_steps=6, guidance_scale=6.0,
                  width=SIZE, height=SIZE, generator=[torch.Generator().manual_seed(SEED)]).images
    assert _diff(result.images, theirs) <= 1
    assert _diff(result.images, _ours(model, [], 6.0)) > 3


def test_several_pictures_for_one_ip_adapter_unit_average_their_tokens(load_tiny, tmp_path):
    """The extension's multi-input IP-Adapter: the pictures' image tokens are averaged (a picture twice is that
    picture once; two pictures draw something of both, unlike either alone)."""
    import torch.nn as nn

    from modules.controlnet import ip_adapter
    from modules.controlnet.unit_request import UnitImage

    model, library, _, _ = _ip_setup(load_tiny, tmp_path, False)
    a, b = _map(9).resize((48, 40)), _map(10).resize((48, 40))

    def images(pictures):
        from modules.controlnet.unit_request import ControlNetUnitRequest

        unit = ControlNetUnitRequest(module="ip-adapter_clip_sd15", model="ip-adapter_sd15", weight=0.8,
                                     images=[UnitImage(p) for p in pictures])
        req = Txt2ImgRequest(prompt="a red ball", negative_prompt="blurry", steps=6, cfg_scale=6.0, width=SIZE,
                             height=SIZE, seed=SEED, sampler_name="Euler", controlnet_units=[unit])
        return txt2img(ProcessingContext(model=model, options={"return_grid": False}, outputs=None,
                                         controlnets=library), req).images

    assert _diff(images([a, a]), images([a])) <= 1  # (a batch of two rows rounds a little differently)
    both = images([a, b])
    assert _diff(both, images([a])) > 3 and _diff(both, images([b])) > 3

    layer = nn.Linear(4, 6)  # the projection averages after projecting, as the extension averages tokens
    proj = ip_adapter.AveragedImageProjection(type("Multi", (), {"image_projection_layers": [layer]})())
    embeds = torch.randn(2, 3, 4)
    torch.testing.assert_close(proj([embeds])[0], layer(embeds).mean(dim=1, keepdim=True))


def test_revision_refuses_what_it_cannot_guide(load_tiny, tmp_path):
    """Clear 4xx messages naming the unit: ReVision on SD1.x, ReVision without its CLIP-G encoder (reference on Flux:
    test_flux_controlnet.py)."""
    from modules.controlnet.models import ControlNetLibrary
    from modules.controlnet.unit_request import ControlNetUnitRequest, UnitImage
    from modules.request_types import RequestError

    library = ControlNetLibrary([tmp_path / "cn"], clip_vision_dirs=[tmp_path / "clip"])

    def run(checkpoint, module):
        unit = ControlNetUnitRequest(module=module, model="None", images=[UnitImage(_map(1))])
        req = Txt2ImgRequest(prompt="x", steps=1, width=SIZE, height=SIZE, controlnet_units=[unit])
        txt2img(ProcessingContext(model=load_tiny(checkpoint), options={}, outputs=None, controlnets=library), req)

    with pytest.raises(RequestError, match=r"controlnet\[0\]\.module: revision_clipvision works with SDXL"):
        run("sd1.safetensors", "revision_clipvision")
    with pytest.raises(RequestError, match=r"controlnet\[0\]\.module: no CLIP vision encoder with projection width"):
        run("sdxl.safetensors", "revision_ignore_prompt")


def test_t2i_style_adapter_tokens_join_the_prompt_as_the_extension_appends_them(load_tiny, tmp_path):
    """t2ia_style_clipvision with a style adapter file (sized from its shapes) and the encoder as wide as it (found
    in models/clip_vision): equal to StableDiffusionPipeline given the prompt's embeddings with weight × the style
    tokens appended and the negative prompt's with zeros appended; outside the window, the plain picture."""
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file

    from modules.controlnet import t2i_style
    from modules.controlnet.models import ControlNetLibrary
    from modules.controlnet.unit_request import ControlNetUnitRequest, UnitImage
    from modules.sampling import samplers
    from tests import tiny_controlnets as tc

    model = load_tiny("sd1.safetensors")
    width, context = 32, model.unet.config.cross_attention_dim
    torch.manual_seed(21)
    adapter = t2i_style.StyleAdapter(width=width, context_dim=context, layers=2, tokens=4)
    with torch.no_grad():
        for p in adapter.parameters():
            p.normal_(0, 0.3)
    (tmp_path / "cn").mkdir()
    (tmp_path / "clip").mkdir()
    torch.save(adapter.state_dict(), tmp_path / "cn" / "t2iadapter_style_sd14v1.pth")
    encoder = tc.build_clip_vision(12)  # hidden width 32: the one the adapter reads
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(tmp_path / "clip" / "clip_vitl.safetensors"))
    save_file({k: v.contiguous() for k, v in tc.build_clip_vision(13, width=16).state_dict().items()},
              str(tmp_path / "clip" / "other.safetensors"))
    library = ControlNetLibrary([tmp_path / "cn"], clip_vision_dirs=[tmp_path / "clip"])
    picture = _map(9).resize((48, 40))

    def ours(start=0.0, end=1.0):
        unit = ControlNetUnitRequest(module="t2ia_style_clipvision", model="t2iadapter_style_sd14v1", weight=0.7,
                                     images=[UnitImage(picture)], guidance_start=start, guidance_end=end)
        req = Txt2ImgRequest(prompt="a red ball", negative_prompt="blurry", steps=6, cfg_scale=6.0, width=SIZE,
                             height=SIZE, seed=SEED, sampler_name="Euler", controlnet_units=[unit])
        ctx = ProcessingContext(model=model, options={"return_grid": False}, outputs=None, controlnets=library)
        return txt2img(ctx, req).images

    from modules.controlnet.ip_adapter import image_processor

    with torch.no_grad():
        pixels = image_processor(encoder)(images=picture.convert("RGB"), return_tensors="pt").pixel_values
        tokens = adapter(encoder(pixels).last_hidden_state) * 0.7
    scheduler = samplers.build_scheduler(*samplers.resolve("Euler", None), model.scheduler_config).scheduler
    pipe = StableDiffusionPipeline(vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer,
                                   unet=model.unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    positive, negative = pipe.encode_prompt("a red ball", "cpu", 1, True, "blurry")
    theirs = pipe(prompt_embeds=torch.cat([positive, tokens], dim=1),
                  negative_prompt_embeds=torch.cat([negative, torch.zeros_like(tokens)], dim=1),
                  num_inference_steps=6, guidance_scale=6.0, width=SIZE, height=SIZE,
                  generator=torch.Generator().manual_seed(SEED)).images
    plain = pipe("a red ball", negative_prompt="blurry", num_inference_steps=6, guidance_scale=6.0, width=SIZE,
                 height=SIZE, generator=torch.Generator().manual_seed(SEED)).images
    guided = ours()
    assert _diff(guided, theirs) <= 1 and _diff(guided, plain) >= 3  # (measured: 0 and 4)
    assert _diff(ours(start=1.0, end=1.0), plain) <= 1  # an empty window: no tokens appended

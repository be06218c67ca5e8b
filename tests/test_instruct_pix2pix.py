"""InstructPix2Pix checkpoints (A1111's "edit" models): an SD 1.x UNet with 8 input channels, recognised from its
shapes, conditioned in img2img on the picture's VAE latents with three-way guidance (Image CFG scale), equal to
diffusers' StableDiffusionInstructPix2PixPipeline on the same components."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from modules import devices, processing
from modules.infotext import infotext_to_request_fields, parse_generation_parameters
from modules.models import detect, loader
from modules.processing import ProcessingContext, img2img, txt2img
from modules.request_types import Img2ImgRequest, Txt2ImgRequest
from modules.sampling import samplers

SEED = 4321
SIZE = 64
NAME = "instruct-pix2pix-00-22000.safetensors"


def _edit_unet(config: dict, seed: int = 3):
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**{**config, "in_channels": 8})
        # random init leaves the picture's channels as weak as the latents'; make them matter as a trained model's do
        unet.conv_in.weight.data[:, 4:] *= 3
    return unet.eval()


@pytest.fixture(scope="module")
def ip2p_file(tiny_models, tmp_path_factory):
    """A tiny SD 1.x InstructPix2Pix checkpoint in A1111's single-file layout (the sd1 tiny model's VAE and text
    encoder, an 8-channel UNet)."""
    from tests.tiny_models import write_single_file

    base = tiny_models.components["sd1"]
    comps = dict(base, unet=_edit_unet(dict(base["unet"].config)))
    path = tmp_path_factory.mktemp("ip2p") / NAME
    write_single_file(comps, "sd1", path)
    return path


@pytest.fixture(scope="module")
def ip2p(ip2p_file):
    """Loaded through the user's path (fp32, as on a CPU)."""
    return loader.load_model(ip2p_file, devices.cpu(), name=NAME, shorthash="0123456789")


@pytest.fixture(scope="module")
def ip2p64(ip2p_file):
    """The same in float64, so that a difference from diffusers is a bug, not rounding."""
    config = devices.DeviceConfig(device=torch.device("cpu"), dtype=torch.float64, vae_dtype=torch.float64)
    return loader.load_model(ip2p_file, config, name=NAME, shorthash="0123456789")


def _picture() -> Image.Image:
    rs = np.random.RandomState(5)
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    base = np.stack([x * 4, y * 4, (x + y) * 2], axis=-1).astype(np.float64)
    return Image.fromarray(np.clip(base + rs.randint(0, 40, base.shape), 0, 255).astype(np.uint8))


def _max_diff(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max())


def _ctx(model):
    return ProcessingContext(model=model, options={"return_grid": False}, outputs=None)


def _request(**kw) -> Img2ImgRequest:
    args = dict(prompt="make it snowy", negative_prompt="blurry", seed=SEED, steps=4, width=SIZE, height=SIZE,
                sampler_name="Euler", cfg_scale=7.0, denoising_strength=1.0, init_images=[_picture()])
    return Img2ImgRequest(**{**args, **kw})


def test_full_size_checkpoint_is_detected_as_instruct_pix2pix():
    """The released instruct-pix2pix-00-22000 layout (SD 1.5 sizes, `input_blocks.0.0.weight` [320, 8, 3, 3]) as
    key→shape manifest on the `meta` device: SD 1.x, InstructPix2Pix, the UNet config of timbrooks' diffusers repo."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from modules.models.ldm_export import components_to_ldm

    with torch.device("meta"):
        unet = UNet2DConditionModel(in_channels=8, cross_attention_dim=768, attention_head_dim=8)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
        te = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                          num_hidden_layers=12, hidden_act="quick_gelu"))
    manifest = components_to_ldm("sd1", unet, vae, te, None)
    assert tuple(manifest["model.diffusion_model.input_blocks.0.0.weight"].shape) == (320, 8, 3, 3)
    spec = detect.detect(manifest, NAME)
    assert spec.family == "sd1" and spec.instruct_pix2pix and not spec.inpainting
    assert spec.label == "SD 1.x InstructPix2Pix"
    for key in ("in_channels", "out_channels", "block_out_channels", "cross_attention_dim", "layers_per_block"):
        got, want = spec.unet[key], unet.config[key]
        assert (list(got) if isinstance(got, (list, tuple)) else got) == \
               (list(want) if isinstance(want, (list, tuple)) else want), key
    # a plain SD 1.5 file is not one; other widths are still refused with a reason
    plain = dict(manifest, **{"model.diffusion_model.input_blocks.0.0.weight": torch.empty(320, 4, 3, 3,
                                                                                          device="meta")})
    assert not detect.detect(plain, "v1-5.safetensors").instruct_pix2pix
    odd = dict(manifest, **{"model.diffusion_model.input_blocks.0.0.weight": torch.empty(320, 7, 3, 3,
                                                                                        device="meta")})
    with pytest.raises(detect.UnsupportedModelError, match="7 input channels"):
        detect.detect(odd, "odd.safetensors")


def test_listed_and_loaded_as_instruct_pix2pix(ip2p_file, ip2p64):
    from modules.models.registry import _header_check

    problem, family = _header_check(ip2p_file)
    assert problem is None and family == "SD 1.x InstructPix2Pix"
    assert ip2p64.spec.instruct_pix2pix and ip2p64.unet.config.in_channels == 8


def test_img2img_matches_diffusers_instruct_pix2pix_pipeline(ip2p64, monkeypatch):
    """Same components, scheduler, steps, CFG and Image CFG: our img2img equals the pipeline fed the latents our run
    starts from (denoising strength 1 starts from the picture's latents noised to the first sigma, as A1111 does;
    the pipeline starts from pure noise)."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    model = ip2p64
    started = {}
    sample = processing.sample

    def recording(job):
        started["latents"] = job.latents.clone()
        return sample(job)

    monkeypatch.setattr(processing, "sample", recording)
    ours = img2img(_ctx(model), _request(image_cfg_scale=1.5, steps=6))
    assert "Image CFG scale: 1.5" in ours.infotexts[0]

    scheduler = samplers.build_scheduler(*samplers.resolve("Euler", None), model.scheduler_config,
                                         seed=SEED).scheduler
    pipe = StableDiffusionInstructPix2PixPipeline(vae=model.vae, text_encoder=model.text_encoder,
                                                  tokenizer=model.tokenizer, unet=model.unet, scheduler=scheduler,
                                                  safety_checker=None, feature_extractor=None,
                                                  requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    probe = samplers.build_scheduler(*samplers.resolve("Euler", None), model.scheduler_config, seed=SEED).scheduler
    probe.set_timesteps(6)
    ref = pipe(prompt="make it snowy", negative_prompt="blurry", image=_picture(), num_inference_steps=6,
               guidance_scale=7.0, image_guidance_scale=1.5, latents=started["latents"] / probe.init_noise_sigma,
               generator=torch.Generator("cpu").manual_seed(SEED)).images[0]
    assert _max_diff(ours.images[0], ref) <= 2


def test_image_cfg_scale_acts_and_pastes_back(load_tiny, ip2p):
    model = ip2p
    low, high = (img2img(_ctx(model), _request(image_cfg_scale=s)) for s in (1.0, 2.5))
    assert _max_diff(low.images[0], high.images[0]) > 8
    assert "Image CFG scale: 2.5" in high.infotexts[0]
    fields = infotext_to_request_fields(parse_generation_parameters(high.infotexts[0]))
    assert fields["image_cfg_scale"] == 2.5
    # A1111's API default (None) is plain CFG with the picture in both rows, recorded nowhere
    plain = img2img(_ctx(model), _request())
    assert "Image CFG scale" not in plain.infotexts[0]
    assert _max_diff(plain.images[0], low.images[0]) <= 1
    # on any other model the field does nothing and is not recorded (A1111 sets it to None there)
    other = img2img(_ctx(load_tiny("sd1.safetensors")), _request(image_cfg_scale=2.5))
    assert "Image CFG scale" not in other.infotexts[0]


def test_picture_steers_the_edit(ip2p):
    """The model reads the picture: another picture, same seed and noise source, gives another result even at
    denoising strength 1."""
    a = img2img(_ctx(ip2p), _request(image_cfg_scale=1.5))
    flipped = _request(image_cfg_scale=1.5, init_images=[_picture().transpose(Image.Transpose.FLIP_LEFT_RIGHT)])
    b = img2img(_ctx(ip2p), flipped)
    assert _max_diff(a.images[0], b.images[0]) > 8


def test_txt2img_runs_on_a_blank_picture(ip2p):
    req = Txt2ImgRequest(prompt="a cat", seed=SEED, steps=4, width=SIZE, height=SIZE, sampler_name="Euler a",
                         batch_size=2)
    out = txt2img(_ctx(ip2p), req)
    assert len(out.images) == 2 and out.images[0].size == (SIZE, SIZE)
    assert "Image CFG scale" not in out.infotexts[0]

"""SD3 / SD3.5 ControlNets from models/ControlNet, through our loop, equal to diffusers'
StableDiffusion3ControlNetPipeline on the same tiny SD3, ControlNet, map and seed: InstantX's kind (diffusers layout,
own patch embedding and text stream, zero pooled projection) and Stability's SD3.5 Large kind (their key names, no
text stream, the transformer's patch embedding)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from modules import devices
from modules.controlnet.models import ControlNetLibrary, ControlNetLoadError
from modules.controlnet.unit_request import ControlNetUnitRequest, UnitImage
from modules.models import loader
from modules.processing import ProcessingContext, txt2img
from modules.request_types import Txt2ImgRequest
from tests import tiny_flow_models as tfm

SEED, SIZE, PROMPT, NEGATIVE = 2468, 64, "a photo of a cat", "blurry"


def _awake(net):
    """Random weights where diffusers zero-initialises (the output projections), so the ControlNet acts."""
    torch.manual_seed(4)
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.3)
    return net.eval()


def _stability_layout(sd: dict) -> dict:
    """Diffusers' names → Stability's SD3.5 ControlNet release names (the inverse of what the loader reads)."""
    out = {}
    for key, value in sd.items():
        if ".attn.to_q." in key:
            part = key.rsplit(".", 1)[1]
            stem = key.split(".attn.to_q.")[0]
            out[f"{stem}.attn.qkv.{part}"] = torch.cat([value, sd[key.replace("to_q", "to_k")],
                                                        sd[key.replace("to_q", "to_v")]])
        elif ".attn.to_k." in key or ".attn.to_v." in key:
            continue
        else:
            for new, old in (("attn.to_out.0.", "attn.proj."), ("ff.net.0.proj.", "mlp.fc1."),
                             ("ff.net.2.", "mlp.fc2."), ("norm1.linear.", "adaLN_modulation.1.")):
                key = key.replace(new, old)
            out[key] = value
    return out


@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    from diffusers import SD3ControlNetModel

    root = tmp_path_factory.mktemp("sd3-cn")
    model = loader.load_model(tfm.write_all_in_one(tfm.build_sd3(seed=6), root / "sd3.safetensors"), devices.cpu())
    with torch.no_grad():  # a VAE that encodes without sampling noise: the pipeline samples the map's latents from
        conv = model.vae.encoder.conv_out  # torch's global generator, which no seed of ours reaches
        conv.weight[16:] = 0
        conv.bias[16:] = -40
    (root / "cn").mkdir()
    instantx = _awake(SD3ControlNetModel.from_transformer(model.unet, num_layers=1,
                                                          num_extra_conditioning_channels=0))
    save_file({k: v.contiguous() for k, v in instantx.state_dict().items()},
              str(root / "cn" / "SD3-Controlnet-Canny.safetensors"))
    config = model.unet.config
    stability = _awake(SD3ControlNetModel(
        sample_size=config.sample_size, patch_size=2, in_channels=16, out_channels=16, num_layers=1,
        attention_head_dim=config.attention_head_dim, num_attention_heads=config.num_attention_heads,
        joint_attention_dim=None, caption_projection_dim=model.unet.inner_dim,
        pooled_projection_dim=config.pooled_projection_dim, pos_embed_max_size=None, pos_embed_type=None,
        use_pos_embed=False, force_zeros_for_pooled_projection=False))
    save_file({k: v.contiguous() for k, v in _stability_layout(stability.state_dict()).items()},
              str(root / "cn" / "sd3.5_large_controlnet_canny.safetensors"))
    return model, ControlNetLibrary([root / "cn"])


def _map() -> Image.Image:
    rs = np.random.RandomState(3)
    edges = np.zeros((SIZE, SIZE, 3), np.uint8)
    edges[rs.randint(0, SIZE, 300), rs.randint(0, SIZE, 300)] = 255
    return Image.fromarray(edges)


def _ours(model, library, name, weight=0.8, start=0.0, end=1.0):
    units = [] if name is None else [ControlNetUnitRequest(module="none", model=name, weight=weight,
                                                           guidance_start=start, guidance_end=end,
                                                           images=[UnitImage(_map())])]
    req = Txt2ImgRequest(prompt=PROMPT, negative_prompt=NEGATIVE, steps=4, cfg_scale=4.0, width=SIZE, height=SIZE,
                         seed=SEED, sampler_name="Euler", controlnet_units=units)
    return txt2img(ProcessingContext(model=model, options={"return_grid": False}, outputs=None, controlnets=library),
                   req).images


def _diff(a, b) -> int:
    return max(int(np.abs(np.asarray(x, np.int16) - np.asarray(y, np.int16)).max()) for x, y in zip(a, b))


@pytest.mark.parametrize("name,window", [("SD3-Controlnet-Canny", (0.0, 1.0)),
                                         ("SD3-Controlnet-Canny", (0.25, 0.75)),
                                         ("sd3.5_large_controlnet_canny", (0.0, 1.0))])
def test_sd3_controlnets_match_their_pipeline(sd3, name, window):
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3ControlNetPipeline

    model, library = sd3
    ours = _ours(model, library, name, 0.8, *window)
    net = library.load(name, model.device, model.dtype, model.unet.config, model.family, unet=model.unet).model
    assert net.config.use_pos_embed == (name == "SD3-Controlnet-Canny")
    pipe = StableDiffusion3ControlNetPipeline(
        transformer=model.unet, controlnet=net,
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(model.scheduler_config), vae=model.vae,
        text_encoder=model.text_encoder, tokenizer=model.tokenizer, text_encoder_2=model.text_encoder_2,
        tokenizer_2=model.tokenizer_2, text_encoder_3=model.text_encoder_3, tokenizer_3=model.tokenizer_3)
    theirs = pipe(PROMPT, negative_prompt=NEGATIVE, control_image=_map(), controlnet_conditioning_scale=0.8,
                  control_guidance_start=window[0], control_guidance_end=window[1], guidance_scale=4.0,
                  num_inference_steps=4, height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(SEED),
                  max_sequence_length=model.spec.defaults["t5_max_length"]).images
    assert _diff(ours, theirs) <= 2
    assert _diff(ours, _ours(model, library, None)) > 3


def test_an_sd3_controlnet_of_another_width_is_refused_with_a_reason(sd3, tmp_path):
    from diffusers import SD3ControlNetModel

    model, _ = sd3
    wide = SD3ControlNetModel(sample_size=32, patch_size=2, in_channels=16, out_channels=16, num_layers=1,
                              attention_head_dim=64, num_attention_heads=2, joint_attention_dim=None,
                              caption_projection_dim=128, pooled_projection_dim=192, pos_embed_max_size=None,
                              pos_embed_type=None, use_pos_embed=False, force_zeros_for_pooled_projection=False)
    save_file({k: v.contiguous() for k, v in _stability_layout(wide.state_dict()).items()},
              str(tmp_path / "sd3.5_large_controlnet_depth.safetensors"))
    with pytest.raises(ControlNetLoadError, match="another SD3 size"):
        ControlNetLibrary([tmp_path]).load("sd3.5_large_controlnet_depth", model.device, model.dtype,
                                           model.unet.config, model.family, unet=model.unet)

"""LoRAs for Flux.1 and SD3 in the formats people share (kohya, ComfyUI/BFL dotted, XLabs, diffusers/PEFT): patched
onto the right rows of our diffusers modules, removed bit-exactly, and a LoRA for another family is refused."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from modules import devices, infotext
from modules.models import loader
from modules.models.flux_keys import bfl_to_diffusers, diffusers_to_bfl
from modules.models.sd3_keys import diffusers_to_sai, sai_to_diffusers
from modules.networks import lora
from tests import tiny_flow_models as tfm

RANK, ALPHA = 4, 2.0
FLUX_TARGETS = ("double_blocks.0.img_attn.qkv", "double_blocks.0.txt_attn.proj", "single_blocks.0.linear1",
                "final_layer.adaLN_modulation.1", "double_blocks.0.img_mod.lin")
SD3_TARGETS = ("joint_blocks.0.x_block.attn.qkv", "joint_blocks.1.context_block.adaLN_modulation.1",
               "final_layer.adaLN_modulation.1", "joint_blocks.0.context_block.mlp.fc1")


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    path = tfm.write_all_in_one(tfm.build_flux(), tmp_path_factory.mktemp("flux") / "flux.safetensors")
    return loader.load_model(path, devices.cpu())


@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    path = tfm.write_all_in_one(tfm.build_sd3(), tmp_path_factory.mktemp("sd3") / "sd3.safetensors")
    return loader.load_model(path, devices.cpu())


def _native(model) -> dict[str, torch.Tensor]:
    sd = model.unet.state_dict()
    return diffusers_to_bfl(sd) if model.family == "flux" else diffusers_to_sai(sd)


def _to_diffusers(model, native: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return bfl_to_diffusers(native) if model.family == "flux" else sai_to_diffusers(native)


def _random_lora(model, targets, seed=0):
    """(kohya-format tensors, {release module: ΔW}) for the release-layout modules `targets`."""
    g = torch.Generator().manual_seed(seed)
    native = _native(model)
    tensors, deltas = {}, {}
    for name in targets:
        out_f, in_f = native[name + ".weight"].shape
        down, up = torch.randn(RANK, in_f, generator=g) * 0.3, torch.randn(out_f, RANK, generator=g) * 0.3
        key = "lora_unet_" + name.replace(".", "_")
        tensors.update({key + ".lora_down.weight": down, key + ".lora_up.weight": up,
                        key + ".alpha": torch.tensor(ALPHA)})
        deltas[name] = (up @ down) * (ALPHA / RANK)
    return tensors, deltas


def _entry(tmp_path, name, tensors):
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.clone().contiguous() for k, v in tensors.items()}, str(path))
    return lora.LoraFile(name=name, path=path, rel=name)


def _expected(model, deltas, mult=1.0):
    """The diffusers weights a correct patch gives: release-layout W + mult·ΔW, converted by the loader's code."""
    native = _native(model)
    for name, delta in deltas.items():
        native[name + ".weight"] = native[name + ".weight"] + mult * delta
    return _to_diffusers(model, native)


def _assert_weights(model, expected, atol=1e-6):
    ours = model.unet.state_dict()
    for key, value in expected.items():
        assert torch.allclose(ours[key], value, atol=atol, rtol=0), key


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_kohya_lora_on_fused_modules_patches_the_right_rows_and_unloads_bit_exact(request, tmp_path, family):
    model = request.getfixturevalue(family)
    before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    tensors, deltas = _random_lora(model, FLUX_TARGETS if family == "flux" else SD3_TARGETS)
    expected = _expected(model, deltas, 0.7)
    net = lora.ActiveNetwork(_entry(tmp_path, "k", tensors), unet_multiplier=0.7)
    assert lora.apply_networks(model, [net]) == [] and net.applied
    _assert_weights(model, expected)
    lora.apply_networks(model, [])
    for key, value in model.unet.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_flux_lora_formats_agree(flux, tmp_path):
    """The same LoRA as kohya, ComfyUI/BFL dotted, XLabs and diffusers/PEFT files gives the same weights."""
    tensors, deltas = _random_lora(flux, ("double_blocks.0.img_attn.qkv", "double_blocks.0.txt_attn.proj"), seed=3)
    expected = _expected(flux, deltas)
    q, p = "lora_unet_double_blocks_0_img_attn_qkv", "lora_unet_double_blocks_0_txt_attn_proj"
    scale = ALPHA / RANK
    down_q, up_q = tensors[q + ".lora_down.weight"], tensors[q + ".lora_up.weight"] * scale
    down_p, up_p = tensors[p + ".lora_down.weight"], tensors[p + ".lora_up.weight"] * scale
    comfy = {"diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight": down_q,
             "diffusion_model.double_blocks.0.img_attn.qkv.lora_B.weight": up_q,
             "diffusion_model.double_blocks.0.txt_attn.proj.lora_A.weight": down_p,
             "diffusion_model.double_blocks.0.txt_attn.proj.lora_B.weight": up_p}
    xlabs = {"double_blocks.0.processor.qkv_lora1.down.weight": down_q,
             "double_blocks.0.processor.qkv_lora1.up.weight": up_q,
             "double_blocks.0.processor.proj_lora2.down.weight": down_p,
             "double_blocks.0.processor.proj_lora2.up.weight": up_p}
    h = up_q.shape[0] // 3
    peft = {"transformer.transformer_blocks.0.attn.to_add_out.lora_A.weight": down_p,
            "transformer.transformer_blocks.0.attn.to_add_out.lora_B.weight": up_p}
    for i, name in enumerate(("to_q", "to_k", "to_v")):
        peft[f"transformer.transformer_blocks.0.attn.{name}.lora_A.weight"] = down_q
        peft[f"transformer.transformer_blocks.0.attn.{name}.lora_B.weight"] = up_q[i * h:(i + 1) * h]
    for fmt, sd in (("kohya", tensors), ("comfy", comfy), ("xlabs", xlabs), ("peft", peft)):
        net = lora.ActiveNetwork(_entry(tmp_path, fmt, sd))
        assert lora.apply_networks(flux, [net]) == [], fmt
        _assert_weights(flux, expected, atol=1e-5)
        lora.apply_networks(flux, [])


def test_a_lora_for_another_family_is_refused_by_name(flux, sd3, tmp_path):
    tensors, _ = _random_lora(flux, FLUX_TARGETS)
    net = lora.ActiveNetwork(_entry(tmp_path, "flux_style", tensors))
    warnings = lora.apply_networks(sd3, [net])
    assert not net.applied and "SD3 model" in warnings[0] and "another model family" in warnings[0]
    sd1_style = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32),
                 "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 4)}
    net = lora.ActiveNetwork(_entry(tmp_path, "sd1_style", sd1_style))
    assert "Flux.1 dev model" in lora.apply_networks(flux, [net])[0] and not net.applied
    lora.apply_networks(flux, [])


@pytest.mark.slow
def test_flux_lora_tag_changes_the_picture_and_is_in_the_infotext(engine, data_dir, tmp_path):
    """Through the engine as from the UI or API: `<lora:name:1>` on a Flux checkpoint; an SD1 checkpoint given the
    same tag makes its picture unchanged and says why."""
    comps = tfm.build_flux()
    tfm.write_all_in_one(comps, data_dir / "models" / "Stable-diffusion" / "flux.safetensors")
    engine.registry.refresh()
    model = engine.models.get("flux.safetensors")
    tensors, _ = _random_lora(model, FLUX_TARGETS)
    (data_dir / "models" / "Lora").mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(data_dir / "models" / "Lora" / "fluxy.safetensors"))
    base = {"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "cfg_scale": 1, "seed": 3,
            "do_not_save_samples": True, "do_not_save_grid": True}
    plain = engine.txt2img({**base, "override_settings": {"sd_model_checkpoint": "flux.safetensors"}})
    tagged = engine.txt2img({**base, "prompt": "a cat <lora:fluxy:1>",
                             "override_settings": {"sd_model_checkpoint": "flux.safetensors"}})
    assert not np.array_equal(np.asarray(plain.images[0]), np.asarray(tagged.images[0]))
    params = infotext.parse_generation_parameters(tagged.info)
    assert params["Lora hashes"].startswith("fluxy: ") and params["Distilled CFG Scale"] == "3.5"
    on_sd1 = engine.txt2img({**base, "prompt": "a cat <lora:fluxy:1>",
                             "override_settings": {"sd_model_checkpoint": "sd1.safetensors"}})
    assert any("fluxy" in w and "another model family" in w for w in on_sd1.warnings)
    assert os.path.exists(data_dir / "models" / "Lora" / "fluxy.safetensors")


def test_lora_on_a_gguf_flux_adds_its_low_rank_terms(tmp_path):
    """GGUF weights stay quantized: a plain LoRA adds x·downᵀ·upᵀ at the targeted layers instead, which computes
    what the dequantized model with its weights patched computes; removing it leaves the layers untouched."""
    from diffusers.quantizers.gguf.utils import GGUFParameter, dequantize_gguf_tensor

    from modules.models.flow_loader import PartSources

    comps = tfm.build_flux()
    tfm.write_parts(comps, tmp_path)
    sources = PartSources([tmp_path / "text_encoder"], [tmp_path / "VAE"])
    quantized = loader.load_model(tfm.write_gguf(comps, tmp_path / "q.gguf"), devices.cpu(), sources=sources)
    dense = loader.load_model(tfm.write_gguf(comps, tmp_path / "d.gguf"), devices.cpu(), sources=sources)
    for module in dense.unet.modules():  # the same weights, dequantized into a plain model that can be patched
        weight = getattr(module, "weight", None)
        if isinstance(weight, GGUFParameter):
            module.__class__ = torch.nn.Linear
            module.weight = torch.nn.Parameter(dequantize_gguf_tensor(weight).float(), requires_grad=False)
    dense.unet.storage_dtype = None
    dense.extra.clear()
    tensors, _ = _random_lora(dense, ("double_blocks.0.img_attn.qkv", "single_blocks.0.linear1",
                                      "final_layer.adaLN_modulation.1"))
    entry = _entry(tmp_path, "on_gguf", tensors)
    g = torch.Generator().manual_seed(0)
    inputs = dict(hidden_states=torch.randn(1, 16, 64, generator=g), encoder_hidden_states=torch.randn(1, 8, 32,
                  generator=g), pooled_projections=torch.randn(1, 64, generator=g), timestep=torch.tensor([0.5]),
                  guidance=torch.tensor([3.5]), txt_ids=torch.zeros(8, 3), img_ids=torch.zeros(16, 3),
                  return_dict=False)
    plain = quantized.unet(**inputs)[0]
    for model in (quantized, dense):
        net = lora.ActiveNetwork(entry, unet_multiplier=0.8)
        assert lora.apply_networks(model, [net]) == [] and net.applied
    assert torch.allclose(quantized.unet(**inputs)[0], dense.unet(**inputs)[0], atol=1e-4)
    assert not torch.allclose(quantized.unet(**inputs)[0], plain, atol=1e-4)
    lora.apply_networks(quantized, [])
    assert torch.equal(quantized.unet(**inputs)[0], plain)

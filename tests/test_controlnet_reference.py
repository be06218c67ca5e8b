"""Reference units (reference_only, reference_adain, reference_adain+attn): the extension's attention injection,
checked against hand-computed attention and AdaIN, its block choice on the real SD1.5/SDXL UNets, its effect on
the demo model (the reference's colours carry over), and its bookkeeping (window, weight 0, hooks removed)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from modules.controlnet import reference

SIZE = 64
CONFIGS = Path(__file__).resolve().parent.parent / "modules" / "models" / "configs"


def _attend(attn, q_in, kv_in):
    """Multi-head attention written out: softmax(QKᵀ/√d)·V through the layer's own projections."""
    heads = attn.heads
    q, k, v = attn.to_q(q_in), attn.to_k(kv_in), attn.to_v(kv_in)
    b, n, c = q.shape
    d = c // heads

    def split(x):
        return x.reshape(b, -1, heads, d).transpose(1, 2)

    weights = torch.softmax(split(q) @ split(k).transpose(-1, -2) / d ** 0.5, dim=-1)
    out = (weights @ split(v)).transpose(1, 2).reshape(b, n, c)
    return attn.to_out[1](attn.to_out[0](out))


def test_self_attention_reads_the_reference_tokens_with_the_extensions_style_fidelity():
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    torch.manual_seed(0)
    attn = Attention(query_dim=8, heads=2, dim_head=4).eval()
    hidden, ref = torch.randn(2, 5, 8), torch.randn(2, 3, 8)
    state = SimpleNamespace(mode=reference.WRITE, attention=True, weight=1.0, style=0.5, uncond_rows=1)
    proc = reference._ReferenceAttention(state, AttnProcessor2_0(), rank=0.0)
    with torch.no_grad():
        proc(attn, ref)  # the reference pass records its input
        state.mode = reference.READ
        out = proc(attn, hidden)
        with_ref = _attend(attn, hidden, torch.cat([hidden, ref], dim=1))
        plain = _attend(attn, hidden, hidden)
    # row 0 is the negative prompt's: half plain, half with the reference (style fidelity 0.5); row 1 reads it
    torch.testing.assert_close(out[0], 0.5 * plain[0] + 0.5 * with_ref[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1], with_ref[1], atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # the bank is used once: the next call is plain self-attention
        torch.testing.assert_close(proc(attn, hidden), plain, atol=1e-5, rtol=1e-5)

    state.mode, state.weight = reference.WRITE, 0.3  # a block ranked above the unit's weight records nothing
    proc_late = reference._ReferenceAttention(state, AttnProcessor2_0(), rank=0.5)
    with torch.no_grad():
        proc_late(attn, ref)
    assert proc_late.bank == []


def test_adain_gives_the_block_the_references_statistics():
    torch.manual_seed(1)
    state = SimpleNamespace(mode=reference.WRITE, adain=True, weight=1.0, style=0.0, uncond_rows=0)
    hook = reference._AdaIN(state, rank=0.0)
    ref = torch.randn(2, 4, 8, 8) * 3 + 5
    x = torch.randn(2, 4, 8, 8)
    assert hook(None, (), ref) is None
    state.mode = reference.READ
    y = hook(None, (), (x, "kept"))  # a block returning a tuple keeps its other items
    assert y[1] == "kept"
    var, mean = torch.var_mean(y[0], dim=(2, 3), correction=0)
    ref_var, ref_mean = torch.var_mean(ref, dim=(2, 3), correction=0)
    torch.testing.assert_close(mean, ref_mean, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(var, ref_var, atol=1e-3, rtol=1e-3)


def _meta_unet(family: str):
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    config = json.loads((CONFIGS / family / "unet" / "config.json").read_text())
    with init_empty_weights():
        return UNet2DConditionModel.from_config(config)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_blocks_are_chosen_as_the_extension_chooses_them_on_the_real_unets(family):
    unet = _meta_unet(family)
    blocks = reference._attention_blocks(unet)
    widths = [b.norm1.normalized_shape[0] for b, _ in blocks]
    assert widths == sorted(widths, reverse=True) and widths[0] == 1280
    assert [rank for _, rank in blocks] == [i / len(blocks) for i in range(len(blocks))]
    assert len(blocks) == (16 if family == "sd1" else 70)  # transformer blocks: SD1.5 6+1+9, SDXL 24+10+36
    names = {id(m): n for n, m in unet.named_modules()}
    chosen = [(names[id(m)], rank) for m, rank in reference._adain_blocks(unet, family == "sdxl")]
    if family == "sd1":  # LDM input blocks 4,5,7,8,10,11 and output blocks 0-7, thresholds doubled
        assert [(n, pytest.approx(r)) for n, r in chosen] == [
            ("mid_block", 0.0),
            ("down_blocks.1.attentions.0", 2.0), ("down_blocks.1.attentions.1", 2 * 5 / 6),
            ("down_blocks.2.attentions.0", 2 * 4 / 6), ("down_blocks.2.attentions.1", 2 * 3 / 6),
            ("down_blocks.3.resnets.0", 2 * 2 / 6), ("down_blocks.3.resnets.1", 2 * 1 / 6),
            ("up_blocks.0.resnets.0", 0.0), ("up_blocks.0.resnets.1", 0.25), ("up_blocks.0.upsamplers.0", 0.5),
            ("up_blocks.1.attentions.0", 0.75), ("up_blocks.1.attentions.1", 1.0),
            ("up_blocks.1.upsamplers.0", 1.25), ("up_blocks.2.attentions.0", 1.5),
            ("up_blocks.2.attentions.1", 1.75)]
    else:  # LDM input blocks 4,5,7,8 and output blocks 0-5
        assert [n for n, _ in chosen] == [
            "mid_block", "down_blocks.1.attentions.0", "down_blocks.1.attentions.1", "down_blocks.2.attentions.0",
            "down_blocks.2.attentions.1", "up_blocks.0.attentions.0", "up_blocks.0.attentions.1",
            "up_blocks.0.upsamplers.0", "up_blocks.1.attentions.0", "up_blocks.1.attentions.1",
            "up_blocks.1.upsamplers.0"]


def test_style_fidelity_follows_the_control_mode_family_and_pass():
    spec = reference.ReferenceSpec("reference_only", 0.5)
    assert spec.fidelity("Balanced", False, False) == 0.5
    assert spec.fidelity("Balanced", True, False) == 0.125  # SDXL: cubed
    assert spec.fidelity("ControlNet is more important", False, False) == 1.0
    assert spec.fidelity("My prompt is more important", False, False) == 0.0
    assert spec.fidelity("Balanced", False, True) == 0.0  # the hires pass


# --- through the engine, on tiny models of the real architectures ---

@pytest.fixture(scope="module")
def engine(tiny_models, tmp_path_factory):
    from modules import cmd_args
    from modules.engine import Engine
    from modules.paths import Paths

    data = tmp_path_factory.mktemp("reference")
    (data / "models" / "Stable-diffusion").mkdir(parents=True)
    for name in ("sd1.safetensors", "sd1-inpainting.safetensors", "sdxl.safetensors"):
        os.symlink(tiny_models.path(name), data / "models" / "Stable-diffusion" / name)
    ns = cmd_args.parse_args(["--data-dir", str(data), "--skip-install"], env={})
    return Engine.create(Paths.from_args(ns))


def _picture() -> Image.Image:
    im = Image.new("RGB", (SIZE, SIZE), (230, 200, 20))
    ImageDraw.Draw(im).rectangle((16, 16, 47, 47), fill=(20, 160, 40))
    return im


def _run(engine, unit: dict | None, model: str = "sd1", **extra):
    req = {"prompt": "a red ball", "negative_prompt": "blurry", "steps": 4, "cfg_scale": 5, "width": SIZE,
           "height": SIZE, "seed": 11, "sampler_name": "Euler", "do_not_save_samples": True,
           "override_settings": {"sd_model_checkpoint": model}, **extra}
    if unit is not None:
        req["alwayson_scripts"] = {"controlnet": {"args": [{"enabled": True, "image": _picture(), **unit}]}}
    return engine.txt2img(req)


def _px(result) -> np.ndarray:
    return np.asarray(result.images[0].convert("RGB"), dtype=np.int16)


def test_a_reference_unit_steers_the_picture_and_only_inside_its_window(engine):
    plain = _px(_run(engine, None))
    guided = _run(engine, {"module": "reference_only"})
    assert np.abs(_px(guided) - plain).max() > 0  # (random weights: a small change; the demo test shows the effect)
    assert np.array_equal(_px(_run(engine, {"module": "reference_only"})), _px(guided))  # same seed, same picture
    assert 'Module: reference_only, Model: None' in guided.infotexts[0]
    assert guided.images[-1].size == (SIZE, SIZE) and len(guided.images) == 2  # the reference shown as its map
    assert np.array_equal(_px(_run(engine, {"module": "reference_only", "weight": 0})), plain)
    assert np.array_equal(_px(_run(engine, {"module": "reference_adain+attn", "guidance_start": 1.0})), plain)
    unet = engine.models.current.unet
    processors = {type(p).__name__ for p in unet.attn_processors.values()}
    assert not any("Reference" in name for name in processors)  # the hooks are gone afterwards
    assert not any(m._forward_hooks for m in unet.modules())
    assert np.array_equal(_px(_run(engine, None)), plain)


HIRES = {"enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent", "denoising_strength": 0.5,
         "hr_second_pass_steps": 2}


@pytest.mark.parametrize("model,module,extra", [("sdxl", "reference_adain+attn", {}),
                                                ("sd1-inpainting", "reference_adain", {}),
                                                ("sd1", "reference_adain+attn", HIRES)])
@pytest.mark.slow  # a second or more of parity/size checks: out of the -m "not slow" loop
def test_each_reference_module_runs_on_each_unet_kind(engine, model, module, extra):
    plain = _px(_run(engine, None, model=model, **extra))
    guided = _px(_run(engine, {"module": module, "control_mode": "ControlNet is more important"}, model=model,
                      **extra))
    assert guided.shape == plain.shape and np.abs(guided - plain).max() > 0


@pytest.mark.slow  # 20 demo pictures
def test_demo_model_takes_the_references_colours(tmp_path):
    """On the demo model, "a red circle on a white background" with reference_adain on a green square on yellow:
    the backgrounds turn yellow (the reference's), without the unit they stay white."""
    from modules.training import shapes
    from modules.training.controlnet_recipe import DEMO_CHECKPOINT, make_engine, SAMPLING

    if not DEMO_CHECKPOINT.is_file():
        pytest.skip("demo checkpoint missing")
    demo = make_engine(tmp_path)
    picture = shapes.draw(shapes.Scene("square", "green", "yellow"), np.random.default_rng(7), SIZE)
    request = {**SAMPLING, "prompt": "a red circle on a white background", "seed": 100, "batch_size": 10}
    plain = demo.txt2img(request).images[:10]
    guided = demo.txt2img({**request, "alwayson_scripts": {"controlnet": {"args": [
        {"enabled": True, "image": picture, "module": "reference_adain"}]}}}).images[:10]
    assert sum(shapes.read_scene(im).background == "white" for im in plain) >= 9
    assert sum(shapes.read_scene(im).background == "yellow" for im in guided) >= 8

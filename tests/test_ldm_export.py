"""diffusers → A1111 export must be the exact inverse of diffusers' own LDM → diffusers converters."""
from __future__ import annotations

import json
import warnings

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
    create_diffusers_clip_model_from_ldm,
)
from safetensors.torch import load_file

from modules.models.ldm_export import (
    components_to_ldm,
    open_clip_to_ldm,
    unet_to_ldm,
    vae_to_ldm,
)

try:
    from tests.tiny_models import FAMILIES, build_tiny, write_diffusers_folder, write_single_file
except ModuleNotFoundError:  # tests/ itself on sys.path (pytest rootdir-less import)
    from tiny_models import FAMILIES, build_tiny, write_diffusers_folder, write_single_file

_CACHE: dict[str, tuple[dict, dict]] = {}


def tiny(family: str) -> tuple[dict, dict]:
    """(components, A1111 state dict), built once per family for this module."""
    if family not in _CACHE:
        c = build_tiny(family)
        _CACHE[family] = (c, components_to_ldm(family, c["unet"], c["vae"], c["text_encoder"], c["text_encoder_2"]))
    return _CACHE[family]


def assert_same(expected: dict, got: dict):
    assert set(got) == set(expected), (
        f"missing {sorted(set(expected) - set(got))[:5]}, extra {sorted(set(got) - set(expected))[:5]}"
    )
    for k, v in expected.items():
        assert got[k].shape == v.shape, k
        assert got[k].dtype == v.dtype, k
        assert torch.equal(got[k], v), k


def _te_state_dict_as_converted(te) -> dict:
    """diffusers' converters emit `text_model.*`; transformers >= 5.6 flattened CLIPTextModel's own keys."""
    sd = te.state_dict()
    return {(k if k.startswith(("text_model.", "text_projection.")) else "text_model." + k): v for k, v in sd.items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_unet_round_trip(family):
    c, sd = tiny(family)
    converted = convert_ldm_unet_checkpoint(sd, dict(c["unet"].config))
    assert_same(c["unet"].state_dict(), converted)


@pytest.mark.parametrize("family", FAMILIES)
def test_vae_round_trip(family):
    c, sd = tiny(family)
    converted = convert_ldm_vae_checkpoint(sd, dict(c["vae"].config))
    assert_same(c["vae"].state_dict(), converted)


@pytest.mark.parametrize("family", ["sd1", "sd1_inpaint", "sdxl"])
def test_clip_l_round_trip(family):
    c, sd = tiny(family)
    converted = convert_ldm_clip_checkpoint(sd)
    pos_ids = converted.pop("text_model.embeddings.position_ids")  # real files carry it; transformers doesn't persist it
    assert torch.equal(pos_ids, torch.arange(77)[None])
    assert pos_ids.dtype == torch.int64
    assert_same(_te_state_dict_as_converted(c["text_encoder"]), converted)


@pytest.mark.parametrize(
    "family,name,prefix",
    [
        ("sd2", "text_encoder", "cond_stage_model.model."),
        ("sdxl", "text_encoder_2", "conditioner.embedders.1.model."),
        ("sdxl_refiner", "text_encoder_2", "conditioner.embedders.0.model."),
    ],
)
def test_open_clip_round_trip(family, name, prefix):
    c, sd = tiny(family)
    te = c[name]
    converted = convert_open_clip_checkpoint(te, sd, prefix=prefix)
    n = te.config.num_hidden_layers
    if family == "sd2":
        # diffusers only knows to drop real SD2's resblocks.23; the tiny file's extra block is resblocks.{n}
        extra = {k for k in converted if k.startswith(f"text_model.encoder.layers.{n}.")}
        assert len(extra) == 16
        for k in extra:
            del converted[k]
        assert f"{prefix}transformer.resblocks.{n}.mlp.c_proj.bias" in sd
        assert f"{prefix}transformer.resblocks.{n + 1}.ln_1.weight" not in sd
    assert_same(_te_state_dict_as_converted(te), converted)


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl", "sdxl_refiner"])
def test_text_encoders_load_through_diffusers(family, tmp_path):
    """The whole `from_single_file` CLIP path (detection by key, conversion, loading) gives back the same weights."""
    c, sd = tiny(family)
    for name in ("text_encoder", "text_encoder_2"):
        te = c[name]
        if te is None:
            continue
        te.config.save_pretrained(tmp_path / name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = create_diffusers_clip_model_from_ldm(type(te), sd, config=str(tmp_path / name))
        assert_same(te.state_dict(), loaded.state_dict())


def test_key_layout_matches_a1111_files():
    prefixes = {
        "sd1": {"model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.text_model."},
        "sd1_inpaint": {"model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.text_model."},
        "sd2": {"model.diffusion_model.", "first_stage_model.", "cond_stage_model.model."},
        "sdxl": {"model.diffusion_model.", "first_stage_model.", "conditioner.embedders.0.transformer.text_model.",
                 "conditioner.embedders.1.model."},
        "sdxl_refiner": {"model.diffusion_model.", "first_stage_model.", "conditioner.embedders.0.model."},
    }
    for family, expected in prefixes.items():
        _, sd = tiny(family)
        for key in sd:
            assert any(key.startswith(p) for p in expected), (family, key)
        for p in expected:
            assert any(key.startswith(p) for key in sd), (family, p)

    u = "model.diffusion_model."
    _, sd1 = tiny("sd1")
    # keys exactly as in v1-5-pruned: upsampler slot 1 after a plain block, resnet renames, conv projections
    for key in [
        "time_embed.0.weight", "time_embed.2.bias", "input_blocks.0.0.weight", "input_blocks.1.0.in_layers.0.weight",
        "input_blocks.1.0.in_layers.2.weight", "input_blocks.1.0.emb_layers.1.weight",
        "input_blocks.1.0.out_layers.0.bias", "input_blocks.1.0.out_layers.3.weight",
        "input_blocks.1.1.proj_in.weight", "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
        "input_blocks.3.0.op.weight", "input_blocks.4.0.skip_connection.weight", "middle_block.1.norm.weight",
        "middle_block.2.in_layers.0.weight", "output_blocks.2.1.conv.weight", "output_blocks.0.0.skip_connection.bias",
        "output_blocks.5.1.transformer_blocks.0.ff.net.2.weight", "out.0.weight", "out.2.bias",
    ]:
        assert u + key in sd1, key
    assert sd1[u + "input_blocks.1.1.proj_in.weight"].ndim == 4  # SD1: conv projection
    assert sd1[u + "input_blocks.0.0.weight"].shape[1] == 4
    assert tiny("sd1_inpaint")[1][u + "input_blocks.0.0.weight"].shape[1] == 9
    assert sd1["cond_stage_model.transformer.text_model.embeddings.position_ids"].shape == (1, 77)
    for key in ["encoder.down.0.block.0.norm1.weight", "encoder.down.0.downsample.conv.weight",
                "encoder.down.1.block.0.nin_shortcut.weight", "encoder.mid.block_1.conv1.weight",
                "encoder.mid.attn_1.q.weight", "encoder.norm_out.weight", "decoder.up.0.block.2.conv2.weight",
                "decoder.up.1.upsample.conv.weight", "decoder.mid.attn_1.proj_out.weight", "quant_conv.weight",
                "post_quant_conv.weight"]:
        assert "first_stage_model." + key in sd1, key
    assert sd1["first_stage_model.decoder.mid.attn_1.q.weight"].shape == (64, 64, 1, 1)
    # LDM numbers decoder levels like the encoder's (up.0 = full resolution, 32 channels, no upsampler), the
    # reverse of diffusers' execution order (up_blocks.0 = lowest resolution, widest)
    assert sd1["first_stage_model.decoder.up.0.block.0.conv1.weight"].shape[0] == 32
    assert sd1["first_stage_model.decoder.up.1.block.0.conv1.weight"].shape[0] == 64
    assert "first_stage_model.decoder.up.0.upsample.conv.weight" not in sd1

    _, sd2 = tiny("sd2")
    assert sd2[u + "input_blocks.1.1.proj_in.weight"].ndim == 2  # SD2: linear projection
    oc = "cond_stage_model.model."
    assert sd2[oc + "transformer.resblocks.0.attn.in_proj_weight"].shape == (3 * 64, 64)
    assert sd2[oc + "positional_embedding"].shape == (77, 64)
    assert sd2[oc + "text_projection"].shape == (64, 64)  # real SD2 files carry an (unused) projection
    assert sd2[oc + "logit_scale"].ndim == 0

    c, sdxl = tiny("sdxl")
    assert sdxl[u + "label_emb.0.0.weight"].shape == (4 * 64, 176)
    assert u + "label_emb.0.2.weight" in sdxl
    # SDXL's first level has no attention: the upsampler of up block 1 sits in slot 1, of up block 0 in slot 2
    assert u + "output_blocks.2.2.conv.weight" in sdxl
    assert u + "input_blocks.4.1.transformer_blocks.1.attn1.to_q.weight" in sdxl  # transformer depth 2
    assert u + "middle_block.1.transformer_blocks.1.norm3.weight" in sdxl
    proj = sdxl["conditioner.embedders.1.model.text_projection"]
    assert torch.equal(proj, c["text_encoder_2"].text_projection.weight.T)
    assert tiny("sdxl_refiner")[1]["conditioner.embedders.0.model.text_projection"].shape == (128, 128)
    assert tiny("sdxl_refiner")[1][u + "label_emb.0.0.weight"].shape[1] == 168


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_written_files_load_back(family, suffix, tmp_path):
    c, sd = tiny(family)
    path = write_single_file(c, family, tmp_path / f"tiny{suffix}")
    if suffix == ".safetensors":
        loaded = load_file(str(path))
    else:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        assert set(obj) == {"state_dict"}
        loaded = obj["state_dict"]
    assert_same(sd, loaded)


def test_written_sd2_ckpt_loads_back(tmp_path):
    c, sd = tiny("sd2")
    path = write_single_file(c, "sd2", tmp_path / "tiny.ckpt")
    assert_same(sd, torch.load(path, map_location="cpu", weights_only=True)["state_dict"])


def test_write_diffusers_folder(tmp_path):
    c, _ = tiny("sdxl")
    path = write_diffusers_folder(c, tmp_path / "sdxl")
    index = json.loads((path / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["text_encoder_2"] == ["transformers", "CLIPTextModelWithProjection"]
    for sub in ("unet", "vae", "text_encoder", "text_encoder_2", "scheduler"):
        assert (path / sub).is_dir(), sub
    unet = UNet2DConditionModel.from_pretrained(path / "unet")
    assert_same(c["unet"].state_dict(), unet.state_dict())

    c1, _ = tiny("sd1_inpaint")
    index = json.loads((write_diffusers_folder(c1, tmp_path / "inp") / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionInpaintPipeline"
    c2, _ = tiny("sd2")
    path = write_diffusers_folder(c2, tmp_path / "sd2")
    sched = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
    assert sched["prediction_type"] == "v_prediction"


def test_build_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b = build_tiny("sd1", seed=0), build_tiny("sd1", seed=0)
    assert torch.equal(torch.get_rng_state(), before)
    assert_same(a["unet"].state_dict(), b["unet"].state_dict())
    assert_same(a["text_encoder"].state_dict(), b["text_encoder"].state_dict())
    other = build_tiny("sd1", seed=1)
    assert not torch.equal(a["unet"].conv_in.weight, other["unet"].conv_in.weight)
    assert not a["unet"].training and a["unet"].dtype == torch.float32
    # the SD2 file's extra (random) resblock is deterministic too
    _, sd2 = tiny("sd2")
    again = open_clip_to_ldm(tiny("sd2")[0]["text_encoder"], extra_layers=1)
    assert torch.equal(again["transformer.resblocks.2.attn.in_proj_weight"],
                       sd2["cond_stage_model.model.transformer.resblocks.2.attn.in_proj_weight"])


def test_export_is_generic_over_block_layout():
    """Not tied to the tiny (or real) block counts: 3 levels, 1 layer per block, deep transformers, 3-level VAE."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "CrossAttnUpBlock2D"),
            transformer_layers_per_block=(2, 1, 3), attention_head_dim=(1, 1, 2), use_linear_projection=True,
            cross_attention_dim=32, norm_num_groups=32,
        ).eval()
        vae = AutoencoderKL(
            block_out_channels=(32, 32, 64), down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3, layers_per_block=1, latent_channels=4, norm_num_groups=32,
        ).eval()
    u = {"model.diffusion_model." + k: v for k, v in unet_to_ldm(unet).items()}
    assert_same(unet.state_dict(), convert_ldm_unet_checkpoint(u, dict(unet.config)))
    v = {"first_stage_model." + k: t for k, t in vae_to_ldm(vae).items()}
    assert_same(vae.state_dict(), convert_ldm_vae_checkpoint(v, dict(vae.config)))


def test_unknown_family_rejected():
    c, _ = tiny("sd1")
    with pytest.raises(ValueError):
        components_to_ldm("sd3", c["unet"], c["vae"], c["text_encoder"])
    with pytest.raises(ValueError):
        components_to_ldm("sdxl", c["unet"], c["vae"], c["text_encoder"])  # no text_encoder_2

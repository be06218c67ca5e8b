"""Flux.1 and SD3/SD3.5 files load offline, in every layout users have, to exactly the weights that were written."""
from __future__ import annotations

import hashlib

import numpy as np

import pytest
import torch

from modules import devices
from modules.models import detect, loader
from modules.models.flow_loader import PartSources
from modules.models.loader import ModelLoadError
from tests import tiny_flow_models as tfm


@pytest.fixture(scope="module")
def flux():
    return tfm.build_flux(True)


@pytest.fixture(scope="module")
def sd3():
    return tfm.build_sd3()


def _assert_same(model, components):
    """Every component holds exactly the tensors it was written from."""
    pairs = [(model.unet, components["transformer"]), (model.vae, components["vae"]),
             (model.text_encoder, components["text_encoder"]), (model.text_encoder_2, components["text_encoder_2"])]
    if "text_encoder_3" in components:
        pairs.append((model.text_encoder_3, components["text_encoder_3"]))
    for ours, ref in pairs:
        mine = ours.state_dict()
        for key, value in ref.state_dict().items():
            assert torch.equal(mine[key], value), f"{type(ref).__name__}: {key}"


def _sources(root):
    return PartSources([root / "text_encoder"], [root / "VAE"])


@pytest.mark.parametrize("layout", ["bfl", "diffusers"])
def test_flux_all_in_one_loads_every_part(tmp_path, flux, layout):
    model = loader.load_model(tfm.write_all_in_one(flux, tmp_path / "flux.safetensors", layout), devices.cpu())
    assert model.spec.label == "Flux.1 dev" and model.family == "flux" and model.is_flow
    assert model.spec.defaults["t5_max_length"] == 512
    _assert_same(model, flux)


@pytest.mark.parametrize("layout", ["sai", "diffusers"])
@pytest.mark.slow  # a second or more of parity/size checks: out of the -m "not slow" loop
def test_sd3_transformer_only_takes_parts_from_the_folders(tmp_path, sd3, layout):
    tfm.write_parts(sd3, tmp_path)
    path = tfm.write_transformer_only(sd3, tmp_path / "Stable-diffusion" / "sd3.safetensors", layout)
    model = loader.load_model(path, devices.cpu(), sources=_sources(tmp_path))
    assert model.spec.label == "SD3"
    _assert_same(model, sd3)


def test_flux_schnell_in_bfl_layout_with_parts(tmp_path):
    schnell = tfm.build_flux(False)
    tfm.write_parts(schnell, tmp_path)
    path = tfm.write_transformer_only(schnell, tmp_path / "schnell.safetensors", "bfl")
    model = loader.load_model(path, devices.cpu(), sources=_sources(tmp_path))
    assert model.spec.label == "Flux.1 schnell"
    assert model.scheduler_config["use_dynamic_shifting"] is False and model.scheduler_config["shift"] == 1.0
    _assert_same(model, schnell)


def test_sd35_medium_diffusers_folder(tmp_path):
    sd35 = tfm.build_sd3(medium35=True)
    model = loader.load_model(tfm.write_diffusers_folder(sd35, tmp_path / "sd35"), devices.cpu())
    assert model.spec.label == "SD3.5 Medium"
    _assert_same(model, sd35)


def test_fp8_all_in_one_stays_fp8_and_draws_what_the_upcast_model_draws(tmp_path, flux):
    """fp8 weights are kept as fp8 (a 12B Flux in 12 GB) and computed layer by layer in the compute dtype: the
    picture equals the one from the same weights upcast on disk."""
    import numpy as np

    from modules.processing import ProcessingContext, txt2img
    from modules.request_types import Txt2ImgRequest

    fp8 = loader.load_model(tfm.write_all_in_one(flux, tmp_path / "fp8.safetensors", dtype=torch.float8_e4m3fn),
                            devices.cpu())
    upcast = {k: v.to(torch.float8_e4m3fn).float() if v.is_floating_point() else v
              for k, v in tfm.transformer_state_dict(flux, "bfl", "model.diffusion_model.").items()}
    path = tfm.write_all_in_one(flux, tmp_path / "upcast.safetensors", dtype=torch.float8_e4m3fn)
    from safetensors.torch import load_file, save_file

    sd = load_file(str(path))
    sd.update(upcast)
    save_file(sd, str(path))
    full = loader.load_model(path, devices.cpu())

    weight = fp8.unet.transformer_blocks[0].attn.to_q.weight
    assert weight.dtype == torch.float8_e4m3fn
    assert fp8.text_encoder_2.encoder.block[0].layer[0].SelfAttention.q.weight.dtype == torch.float8_e4m3fn  # T5
    assert full.unet.transformer_blocks[0].attn.to_q.weight.dtype == torch.float32
    fp8_bytes = sum(p.numel() * p.element_size() for p in fp8.unet.parameters())
    assert fp8_bytes < 0.5 * sum(p.numel() * p.element_size() for p in full.unet.parameters())

    def draw(model):
        req = Txt2ImgRequest(prompt="a photo of a cat", steps=2, cfg_scale=1, width=64, height=64, seed=5)
        ctx = ProcessingContext(model=model, options={"return_grid": False}, outputs=None)
        return np.asarray(txt2img(ctx, req).images[0], np.int16)

    assert np.abs(draw(fp8) - draw(full)).max() <= 1


def test_a_missing_t5_names_the_file_and_folder_and_changes_nothing(tmp_path, flux):
    parts = tfm.write_parts(flux, tmp_path)
    parts["t5"].unlink()
    path = tfm.write_transformer_only(flux, tmp_path / "flux.safetensors", "bfl")
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(ModelLoadError) as e:
        loader.load_model(path, devices.cpu(), sources=_sources(tmp_path))
    assert "T5-XXL" in str(e.value) and "t5xxl_fp16.safetensors" in str(e.value)
    assert "models/text_encoder" in str(e.value)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_picked_files_win_over_the_folder(tmp_path, flux):
    """Forge's "VAE / Text Encoder" choice: a picked T5 is used even when the folder has another one."""
    tfm.write_parts(flux, tmp_path)
    other = tfm.build_flux(True, seed=7)["text_encoder_2"]
    picked = tmp_path / "elsewhere" / "my_t5.safetensors"
    picked.parent.mkdir()
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in other.state_dict().items() if k != "encoder.embed_tokens.weight"},
              str(picked))
    path = tfm.write_transformer_only(flux, tmp_path / "flux.safetensors", "bfl")
    selected = [picked, tmp_path / "text_encoder" / "clip_l.safetensors", tmp_path / "VAE" / "ae.safetensors"]
    model = loader.load_model(path, devices.cpu(), sources=PartSources([], [], selected))
    assert torch.equal(model.text_encoder_2.shared.weight, other.shared.weight)


def test_header_detection_shows_the_family(tmp_path, flux, sd3):
    """What the Models tab and /sdapi/v1/sd-models show, read from the file's header only."""
    from safetensors import safe_open

    class Shape:
        def __init__(self, shape):
            self.shape = tuple(shape)

    for components, label in ((flux, "Flux.1 dev"), (sd3, "SD3")):
        path = tfm.write_all_in_one(components, tmp_path / f"{label}.safetensors")
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: Shape(f.get_slice(k).get_shape()) for k in f.keys()}
        spec = detect.detect(shapes, name=path.name)
        assert spec.label == label and spec.is_flow


@pytest.mark.parametrize("quant", ["Q8_0", "Q4_0"])
@pytest.mark.slow  # a second or more of parity/size checks: out of the -m "not slow" loop
def test_gguf_transformer_stays_quantized_with_the_files_values(tmp_path, flux, quant):
    """A GGUF Flux (city96's layout) keeps its linear weights quantized in memory; dequantized they are exactly
    what gguf's own reader makes of the file (to fp16 precision), through our BFL → diffusers conversion (fused
    q/k/v split by rows)."""
    import gguf
    from diffusers.quantizers.gguf.utils import GGUFParameter, dequantize_gguf_tensor
    from gguf import quants

    tfm.write_parts(flux, tmp_path)
    path = tfm.write_gguf(flux, tmp_path / f"flux-{quant}.gguf", quant)
    model = loader.load_model(path, devices.cpu(), sources=_sources(tmp_path))
    q = model.unet.transformer_blocks[0].attn.to_q.weight
    assert isinstance(q, GGUFParameter) and q.dtype == torch.uint8
    assert q.quant_type == gguf.GGMLQuantizationType[quant]
    reader = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    qkv = reader["double_blocks.0.img_attn.qkv.weight"]
    whole = torch.from_numpy(quants.dequantize(qkv.data, qkv.tensor_type).copy())
    mine, rows = dequantize_gguf_tensor(q).float(), whole[:whole.shape[0] // 3].float()
    assert torch.allclose(mine, rows, rtol=2e-3, atol=1e-4)  # diffusers dequantizes in fp16, gguf in fp32
    quantized = sum(p.numel() for p in model.unet.parameters() if isinstance(p, GGUFParameter))
    assert quantized > 0.8 * sum(p.numel() for p in model.unet.parameters())


def test_gguf_family_shows_in_the_checkpoint_list(tmp_path, sd3):
    from modules.models.registry import _header_check

    path = tfm.write_gguf(sd3, tmp_path / "sd3-Q8_0.gguf")
    assert _header_check(path) == (None, "SD3")


def test_per_tensor_scaled_fp8_keeps_fp8_and_applies_each_scale(tmp_path, flux):
    """ComfyUI's scaled fp8 files (W/s in fp8, `scale_weight` = s beside it, fused q/k/v sharing one s): the
    weights stay fp8 and the model draws what the same weights dequantized on disk draw."""
    import numpy as np
    from safetensors.torch import load_file, save_file

    from modules.models.lowbit import ScaledFP8Linear
    from modules.processing import ProcessingContext, txt2img
    from modules.request_types import Txt2ImgRequest

    base = tfm.write_all_in_one(flux, tmp_path / "base.safetensors")
    sd = load_file(str(base))
    scaled, dequantized = dict(sd), dict(sd)
    for key, value in sd.items():
        if key.startswith("model.diffusion_model.") and key.endswith(".weight") and value.ndim == 2:
            scale = value.abs().max() / 448.0
            q = (value / scale).to(torch.float8_e4m3fn)
            scaled[key], scaled[key[:-len("weight")] + "scale_weight"] = q, scale.reshape(())
            dequantized[key] = q.float() * scale
    scaled["model.diffusion_model.scaled_fp8"] = torch.zeros(2, dtype=torch.float8_e4m3fn)
    save_file(scaled, str(tmp_path / "scaled.safetensors"))
    save_file(dequantized, str(tmp_path / "dequantized.safetensors"))
    fp8 = loader.load_model(tmp_path / "scaled.safetensors", devices.cpu())
    full = loader.load_model(tmp_path / "dequantized.safetensors", devices.cpu())
    to_k = fp8.unet.transformer_blocks[0].attn.to_k
    assert isinstance(to_k, ScaledFP8Linear) and to_k.weight.dtype == torch.float8_e4m3fn
    assert torch.allclose(to_k.weight.float() * to_k.scale_weight, full.unet.transformer_blocks[0].attn.to_k.weight)

    def draw(model):
        req = Txt2ImgRequest(prompt="a photo of a cat", steps=2, cfg_scale=1, width=64, height=64, seed=5)
        ctx = ProcessingContext(model=model, options={"return_grid": False}, outputs=None)
        return np.asarray(txt2img(ctx, req).images[0], np.int16)

    assert np.abs(draw(fp8) - draw(full)).max() <= 1


@pytest.mark.parametrize("quant", ["Q4_K", "Q5_K", "Q6_K"])
def test_k_quant_tensors_read_as_gguf_itself_decodes_them(tmp_path, quant):
    """The K-quants Flux GGUFs are mostly shipped in (gguf-py cannot write them, so the blocks are random bytes with
    sane fp16 scales): our reader keeps them quantized and they dequantize as gguf's own reference does."""
    import gguf
    from diffusers.quantizers.gguf.utils import GGUFParameter, dequantize_gguf_tensor
    from gguf import quants

    from modules.models.lowbit import read_gguf

    qtype = gguf.GGMLQuantizationType[quant]
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rows, blocks = 4, 2
    raw = np.random.RandomState(0).randint(0, 256, (rows, blocks, size)).astype(np.uint8)
    scales = np.array([0.01, 0.005], np.float16).view(np.uint8)
    where = slice(size - 2, size) if quant == "Q6_K" else slice(0, 4)  # Q6_K keeps its one d at the block's end
    raw[:, :, where] = scales[:where.stop - where.start]
    raw = raw.reshape(rows, blocks * size)
    path = tmp_path / "k.gguf"
    writer = gguf.GGUFWriter(str(path), arch="flux")
    writer.add_tensor("double_blocks.0.img_attn.qkv.weight", raw, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tensor = read_gguf(path)["double_blocks.0.img_attn.qkv.weight"]
    assert isinstance(tensor, GGUFParameter) and tuple(tensor.quant_shape) == (rows, blocks * block)
    reference = torch.from_numpy(quants.dequantize(raw, qtype).copy()).float()
    assert torch.allclose(dequantize_gguf_tensor(tensor).float(), reference, rtol=4e-3, atol=4e-3)  # fp16 vs fp32


def test_a_large_16_bit_model_is_not_materialised_in_fp32(tmp_path, flux, monkeypatch):
    """On the CPU (fp32 compute) a big fp16/bf16 Flux keeps its 16-bit weights and upcasts layer by layer; the
    picture is the one the fully upcast model draws. (The tiny model stands in for 12B: the size limit is lowered.)"""
    from modules.models import lowbit
    from modules.processing import ProcessingContext, txt2img
    from modules.request_types import Txt2ImgRequest

    path = tfm.write_all_in_one(flux, tmp_path / "bf16.safetensors", dtype=torch.bfloat16)
    full = loader.load_model(path, devices.cpu())
    monkeypatch.setattr(lowbit, "LARGE_MODEL_PARAMS", 0)
    kept = loader.load_model(path, devices.cpu())
    assert kept.unet.transformer_blocks[0].attn.to_q.weight.dtype == torch.bfloat16
    assert kept.text_encoder_2.encoder.block[0].layer[0].SelfAttention.q.weight.dtype == torch.bfloat16
    assert full.unet.transformer_blocks[0].attn.to_q.weight.dtype == torch.float32

    def draw(model):
        req = Txt2ImgRequest(prompt="a photo of a cat", steps=2, cfg_scale=1, width=64, height=64, seed=5)
        ctx = ProcessingContext(model=model, options={"return_grid": False}, outputs=None)
        return np.asarray(txt2img(ctx, req).images[0], np.int16)

    assert np.abs(draw(kept) - draw(full)).max() <= 1


@pytest.mark.slow
def test_bad_flux_files_leave_the_model_in_use_working(engine, data_dir, flux):
    """A truncated Flux download and a Flux file whose T5 is missing: each is refused with a message that says
    why, the files are not touched, and the SD1 model in use still generates."""
    from modules.models.loader import ModelLoadError

    ckpt = data_dir / "models" / "Stable-diffusion"
    whole = tfm.write_all_in_one(flux, ckpt / "whole.safetensors")
    truncated = ckpt / "truncated.safetensors"
    truncated.write_bytes(whole.read_bytes()[:-4096])
    whole.unlink()
    tfm.write_transformer_only(flux, ckpt / "no-t5.safetensors", "bfl")
    engine.models.get("sd1.safetensors")
    engine.registry.refresh()
    before = {p.name: p.read_bytes() for p in (truncated, ckpt / "no-t5.safetensors")}
    with pytest.raises(ModelLoadError, match="truncated"):
        engine.models.get("truncated.safetensors")
    with pytest.raises(ModelLoadError, match=r"T5-XXL.*t5xxl_fp16\.safetensors.*models/text_encoder"):
        engine.models.get("no-t5.safetensors")
    assert {p.name: p.read_bytes() for p in (truncated, ckpt / "no-t5.safetensors")} == before
    result = engine.txt2img({"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 1,
                             "do_not_save_samples": True, "do_not_save_grid": True})
    assert "Model: sd1" in result.info and len(result.images) == 1


def test_flux_uses_clip_ls_unprojected_pooled_output_even_from_a_file_with_a_projection(tmp_path, flux):
    """ComfyUI's clip_l.safetensors carries `text_projection.weight` (SD3 uses it); Flux's pipeline pools CLIP-L
    without it, so the loaded Flux encoder is a plain CLIPTextModel and conditions exactly as FluxPipeline does."""
    from safetensors.torch import save_file

    from modules.models.ldm_export import _text_model_state_dict

    parts = tfm.write_parts(flux, tmp_path)
    sd = _text_model_state_dict(flux["text_encoder"])
    sd["text_projection.weight"] = torch.randn(64, 64)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(parts["clip_l"]))
    path = tfm.write_transformer_only(flux, tmp_path / "flux.safetensors", "bfl")
    model = loader.load_model(path, devices.cpu(), sources=_sources(tmp_path))
    assert type(model.text_encoder).__name__ == "CLIPTextModel"
    _assert_same(model, flux)


def test_a_bitsandbytes_nf4_file_says_what_to_use_instead(tmp_path, flux):
    from safetensors.torch import load_file, save_file

    path = tfm.write_all_in_one(flux, tmp_path / "flux1-dev-bnb-nf4.safetensors")
    sd = load_file(str(path))
    key = "model.diffusion_model.double_blocks.0.img_attn.qkv.weight"
    sd[key + ".absmax"] = torch.ones(4)
    sd[key + ".quant_state.bitsandbytes__nf4"] = torch.zeros(8, dtype=torch.uint8)
    save_file(sd, str(path))
    with pytest.raises(ModelLoadError, match="bitsandbytes NF4.*GGUF"):
        loader.load_model(path, devices.cpu())


@pytest.mark.slow
def test_text_encoder_dir_flag_is_where_parts_are_found(tmp_path, flux):
    """`--text-encoder-dir` adds a folder the engine takes a Flux file's missing text encoders from."""
    from modules import cmd_args
    from modules.engine import Engine
    from modules.paths import Paths

    elsewhere = tmp_path / "shared"
    parts = tfm.write_parts(flux, elsewhere)
    data = tmp_path / "data"
    tfm.write_transformer_only(flux, data / "models" / "Stable-diffusion" / "flux.safetensors", "bfl")
    (data / "models" / "VAE").mkdir(parents=True)
    parts["vae"].rename(data / "models" / "VAE" / "ae.safetensors")
    ns = cmd_args.parse_args(["--data-dir", str(data), "--text-encoder-dir", str(elsewhere / "text_encoder"),
                              "--skip-install"], env={})
    paths = Paths.from_args(ns)
    assert paths.text_encoder_dirs == [data / "models" / "text_encoder", elsewhere / "text_encoder"]
    model = Engine.create(paths).models.get("flux.safetensors")
    _assert_same(model, flux)


def _draw_with(model, options, prompt="a photo of a cat", cfg=1.0):
    from modules.processing import ProcessingContext, txt2img
    from modules.request_types import Txt2ImgRequest

    ctx = ProcessingContext(model=model, options={"return_grid": False, **options}, outputs=None)
    result = txt2img(ctx, Txt2ImgRequest(prompt=prompt, steps=3, cfg_scale=cfg, width=64, height=64, seed=9))
    return np.asarray(result.images[0], np.int16), result.infotexts[0]


@pytest.mark.slow  # a second or more of parity/size checks: out of the -m "not slow" loop
def test_shift_and_t5_settings_change_the_picture_and_say_so(tmp_path, flux, sd3):
    """`flow_shift` replaces the model's sampling shift (infotext "Shift"); `sd3_enable_t5` off drops T5 from SD3's
    conditioning (its part is zeros, infotext "T5: False")."""
    from modules.sampling import conditioning

    model = loader.load_model(tfm.write_all_in_one(flux, tmp_path / "flux.safetensors"), devices.cpu())
    plain, text = _draw_with(model, {})
    shifted, shifted_text = _draw_with(model, {"flow_shift": 6.0})
    assert "Shift" not in text and "Shift: 6," in shifted_text
    assert np.abs(plain - shifted).max() > 0

    model = loader.load_model(tfm.write_all_in_one(sd3, tmp_path / "sd3.safetensors"), devices.cpu())
    without = conditioning.encode(model, ["a photo of a cat"], options=conditioning.TextOptions(use_t5=False))
    assert torch.count_nonzero(without.embeds[:, -without.tail:]) == 0
    with_t5, t5_text = _draw_with(model, {}, cfg=4.0)
    no_t5, no_t5_text = _draw_with(model, {"sd3_enable_t5": False}, cfg=4.0)
    assert "T5" not in t5_text and "T5: False" in no_t5_text
    assert np.abs(with_t5 - no_t5).max() > 0


def test_distilled_cfg_scale_out_of_range_is_refused():
    from modules.request_types import RequestError, Txt2ImgRequest

    with pytest.raises(RequestError, match="distilled_cfg_scale must be between 0 and 100"):
        Txt2ImgRequest.from_dict({"prompt": "x", "distilled_cfg_scale": 150})


@pytest.mark.slow
def test_changing_the_picked_parts_rebuilds_the_loaded_model(engine, data_dir, flux):
    """'VAE / Text Encoder' (forge_additional_modules): picking another T5 for a loaded Flux model takes effect at
    the next generation, without a restart."""
    from safetensors.torch import save_file

    models = data_dir / "models"
    tfm.write_parts(flux, models)
    other = tfm.build_flux(True, seed=5)["text_encoder_2"]
    save_file({k: v.contiguous() for k, v in other.state_dict().items() if k != "encoder.embed_tokens.weight"},
              str(models / "text_encoder" / "t5xxl_z_other.safetensors"))
    tfm.write_transformer_only(flux, models / "Stable-diffusion" / "flux.safetensors", "bfl")
    engine.registry.refresh()
    first = engine.models.get("flux.safetensors")
    assert torch.equal(first.text_encoder_2.shared.weight, flux["text_encoder_2"].shared.weight)
    picked = ["clip_l.safetensors", "t5xxl_z_other.safetensors", "ae.safetensors"]
    engine.settings.set("forge_additional_modules", picked)
    again = engine.models.get("flux.safetensors")
    assert again is not first and torch.equal(again.text_encoder_2.shared.weight, other.shared.weight)

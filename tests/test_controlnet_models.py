"""ControlNet files as users have them load into the same network: the original `control_model.*` layout (.pth and
.safetensors, fp16, with or without the prefix), a diffusers single file and a diffusers folder; the config comes
from the shapes. The list shows the extension's "name [hash]" titles; a wrong family, a truncated file and a
pickle that runs code each give a message naming the file."""
from __future__ import annotations

import pickle

import pytest
import torch

from modules.controlnet.models import ControlNetLibrary, ControlNetLoadError
from tests import tiny_controlnets as tc

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def sd1(load_tiny):
    model = load_tiny("sd1.safetensors")
    return model, tc.build_controlnet(model.unet, 3)


def _residuals(net, unet):
    torch.manual_seed(0)
    x = torch.randn(1, 4, 8, 8)
    hint = torch.rand(1, 3, 64, 64)
    embeds = torch.randn(1, 77, unet.config.cross_attention_dim)
    kwargs = {}
    if unet.config.addition_embed_type == "text_time":
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(1, unet.config.projection_class_embeddings_input_dim
                                                                  - 6 * unet.config.addition_time_embed_dim),
                                       "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    with torch.no_grad():
        down, mid = net(x.to(net.dtype), 500, encoder_hidden_states=embeds.to(net.dtype), controlnet_cond=hint.to(
            net.dtype), return_dict=False, **kwargs)
    return [d.float() for d in down] + [mid.float()]


@pytest.mark.parametrize("form", ["original.pth", "original.safetensors", "unprefixed.safetensors",
                                  "diffusers.safetensors", "folder"])
def test_every_layout_loads_the_same_network(sd1, tmp_path, form):
    model, net = sd1
    folder = tmp_path / "ControlNet"
    folder.mkdir()
    if form.startswith("original"):
        tc.write_original(net, model.unet, folder / f"control_v11p_sd15_canny.{form.split('.')[1]}")
    elif form.startswith("unprefixed"):
        tc.write_original(net, model.unet, folder / "control_canny.safetensors", prefix="")
    elif form.startswith("diffusers"):
        tc.write_diffusers_file(net, folder / "canny-diffusers.safetensors")
    else:
        tc.write_diffusers_folder(net, folder / "canny-folder")
    library = ControlNetLibrary([folder])
    (title,) = library.titles()
    loaded = library.load(title, CPU, torch.float32, model.unet.config, "sd1")
    assert loaded.family == "sd1" and loaded.kind == "controlnet"
    reference = _residuals(net.half().float() if form != "folder" else net, model.unet)
    for ours, theirs in zip(_residuals(loaded.model, model.unet), reference):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_titles_carry_the_short_hash_and_any_form_of_the_name_finds_the_file(sd1, tmp_path):
    model, net = sd1
    path = tc.write_original(net, model.unet, tmp_path / "control_v11p_sd15_canny.safetensors")
    (tmp_path / "readme.txt").write_text("not a model")
    library = ControlNetLibrary([tmp_path])
    (title,) = library.titles()
    assert title.startswith("control_v11p_sd15_canny [") and len(title.split("[")[1]) == 9
    for form in (title, "control_v11p_sd15_canny", "CONTROL_V11P_SD15_CANNY", "control_v11p_sd15_canny [00000000]"):
        assert library.find(form).path == path
    assert library.find("control_v11p_sd15_depth") is None
    with pytest.raises(ControlNetLoadError, match="not found"):
        library.load("control_v11p_sd15_depth", CPU, torch.float32, model.unet.config, "sd1")


def test_a_controlnet_of_another_family_says_which(sd1, load_tiny, tmp_path):
    model, net = sd1
    xl = load_tiny("sdxl.safetensors")
    tc.write_diffusers_file(tc.build_controlnet(xl.unet, 4), tmp_path / "controlnet-canny-sdxl.safetensors")
    library = ControlNetLibrary([tmp_path])
    with pytest.raises(ControlNetLoadError, match="is a SDXL ControlNet; sd1.safetensors is SD1.x"):
        library.load("controlnet-canny-sdxl", CPU, torch.float32, model.unet.config, "sd1", "sd1.safetensors")
    loaded = library.load("controlnet-canny-sdxl", CPU, torch.float32, xl.unet.config, "sdxl")
    assert loaded.family == "sdxl"


def test_sdxl_union_model_is_recognised(load_tiny, tmp_path):
    xl = load_tiny("sdxl.safetensors")
    tc.write_diffusers_file(tc.build_controlnet(xl.unet, 5, union=True), tmp_path / "controlnet-union-sdxl.safetensors")
    loaded = ControlNetLibrary([tmp_path]).load("controlnet-union-sdxl", CPU, torch.float32, xl.unet.config, "sdxl")
    assert loaded.kind == "union" and loaded.model.config.num_control_type == 6


def test_bad_files_get_a_message_naming_them(sd1, tmp_path):
    model, net = sd1
    good = tc.write_original(net, model.unet, tmp_path / "good.safetensors")
    (tmp_path / "truncated.safetensors").write_bytes(good.read_bytes()[:5000])

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"control_model.x": Evil()}, f)
    torch.save({"first_stage_model.encoder.conv_in.weight": torch.zeros(1)}, tmp_path / "vae.pth")
    library = ControlNetLibrary([tmp_path])
    for name, message in (("truncated", "truncated.safetensors: not a readable"), ("evil", "evil.pth: refused"),
                          ("vae", "vae.pth: not a ControlNet")):
        with pytest.raises(ControlNetLoadError, match=message):
            library.load(name, CPU, torch.float32, model.unet.config, "sd1")


SD15_CANNY = {"cross_attention_dim": 768}  # lllyasviel/control_v11p_sd15_canny: the class defaults otherwise
SD21 = {"cross_attention_dim": 1024, "attention_head_dim": [5, 10, 20, 20], "use_linear_projection": True}
SDXL_CANNY = {"cross_attention_dim": 2048, "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280],
              "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
              "transformer_layers_per_block": [1, 2, 10], "use_linear_projection": True,
              "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
              "projection_class_embeddings_input_dim": 2816}


@pytest.mark.parametrize("config,family", [(SD15_CANNY, "sd1"), (SD21, "sd2"), (SDXL_CANNY, "sdxl")])
def test_full_size_configs_come_back_from_the_shapes(config, family):
    """The released models' shapes (on the meta device) give back their published configs."""
    from accelerate import init_empty_weights
    from diffusers import ControlNetModel

    from modules.controlnet import detect

    with init_empty_weights():
        net = ControlNetModel(**config)
    spec = detect.spec_from_diffusers(net.state_dict())
    assert spec.family == family
    with init_empty_weights():
        rebuilt = ControlNetModel(**spec.config)
    assert {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in net.state_dict().items()}
    for key, value in config.items():
        got = spec.config[key]
        assert (list(got) if isinstance(got, (list, tuple)) else got) == value, key


@pytest.mark.parametrize("layout", ["original", "diffusers"])
def test_t2i_adapters_load_from_both_layouts(sd1, tmp_path, layout):
    from safetensors.torch import save_file

    model, _ = sd1
    adapter = tc.build_t2i_adapter(model.unet, 10)
    sd = tc.t2i_original_state_dict(adapter) if layout == "original" else adapter.state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "t2iadapter_canny_sd15v2.safetensors"))
    library = ControlNetLibrary([tmp_path])
    loaded = library.load("t2iadapter_canny_sd15v2", CPU, torch.float32, model.unet.config, "sd1")
    assert loaded.kind == "t2i_adapter" and loaded.family == "sd1"
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for ours, theirs in zip(loaded.model(x), adapter(x)):
            torch.testing.assert_close(ours, theirs)
    with pytest.raises(ControlNetLoadError, match="SD1.x/SD2.x T2I-Adapter; the checkpoint is SDXL"):
        library.load("t2iadapter_canny_sd15v2", CPU, torch.float32, None, "sdxl")


def test_a_control_lora_becomes_the_controlnet_it_was_made_from(sd1, tmp_path):
    from safetensors.torch import save_file

    model, net = sd1
    save_file(tc.control_lora_state_dict(net, model.unet), str(tmp_path / "control-lora-canny-rank128.safetensors"))
    library = ControlNetLibrary([tmp_path])
    with pytest.raises(ControlNetLoadError, match="needs the checkpoint's UNet"):
        library.load("control-lora-canny-rank128", CPU, torch.float32, model.unet.config, "sd1")
    loaded = library.load("control-lora-canny-rank128", CPU, torch.float32, model.unet.config, "sd1",
                          "sd1.safetensors", unet=model.unet)
    assert loaded.kind == "controlnet"
    for ours, theirs in zip(_residuals(loaded.model, model.unet), _residuals(net, model.unet)):
        torch.testing.assert_close(ours, theirs, atol=2e-4, rtol=2e-4)


def test_the_cache_size_setting_bounds_loaded_models(sd1, tmp_path):
    from modules import cmd_args
    from modules.engine import Engine
    from modules.paths import Paths
    from modules.settings import Settings

    model, net = sd1
    for name in ("a", "b"):
        tc.write_diffusers_file(net, tmp_path / f"{name}.safetensors")
    library = ControlNetLibrary([tmp_path], cache_size=1)
    first = library.load("a", CPU, torch.float32, model.unet.config, "sd1")
    assert library.load("a", CPU, torch.float32, model.unet.config, "sd1") is first  # cached
    library.load("b", CPU, torch.float32, model.unet.config, "sd1")
    assert library.load("a", CPU, torch.float32, model.unet.config, "sd1") is not first  # evicted by "b"
    data = tmp_path / "data"
    data.mkdir()
    settings = Settings.load(data / "config.json")
    settings.set("control_net_model_cache_size", 4)
    ns = cmd_args.parse_args(["--data-dir", str(data), "--skip-install"], env={})
    assert Engine.create(Paths.from_args(ns), settings=settings).controlnets.cache_size == 4

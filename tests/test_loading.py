"""Loading checkpoints as users have them, through the same code their files go through.

- every family loads from an A1111 single file (`.safetensors`, `.ckpt`) and a diffusers folder with exactly the
  weights it was written from, and the right family / inpainting / prediction type;
- a bad file (truncated, garbage, malicious pickle, a LoRA or a VAE in the checkpoint folder) gives one clear error
  naming the file, runs nothing, and leaves the engine able to generate with a good model;
- loading never touches the network;
- the VAE setting (a file, "None", "Automatic") swaps the VAE the image is decoded with, and infotext says so;
- switching checkpoints with `sd_checkpoints_limit` 1 does not grow memory; with 2 both stay loaded;
- configs derived from shapes reproduce distilled architectures (BK-SDM, SSD-1B, fewer levels).
"""
from __future__ import annotations

import gc
import hashlib
import os
import pickle
import shlex
import shutil
import socket
import sys
import types
import weakref
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file

from modules import devices
from modules.infotext import parse_generation_parameters
from modules.models import detect, loader
from modules.models.detect import UnsupportedModelError
from modules.models.ldm_export import components_to_ldm, unet_to_ldm, vae_to_ldm
from modules.models.loader import ModelLoadError, UnsafeCheckpointError

COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")

# file name → (key in tiny_models.components, spec.family, inpainting, prediction type)
SINGLE_FILES = {
    "sd1.safetensors": ("sd1", "sd1", False, "epsilon"),
    "sd1-inpainting.safetensors": ("sd1_inpaint", "sd1", True, "epsilon"),
    "sd2-v.safetensors": ("sd2", "sd2", False, "v_prediction"),  # v from the .yaml beside it
    "sdxl.safetensors": ("sdxl", "sdxl", False, "epsilon"),
    "sdxl-refiner.safetensors": ("sdxl_refiner", "sdxl_refiner", False, "epsilon"),
}
GEN = {"prompt": "x", "steps": 2, "width": 64, "height": 64, "seed": 1234}


def assert_same_weights(expected: dict, model, skip: tuple[str, ...] = ()) -> None:
    """Every component of the loaded model holds exactly the tensors of the one it was written from."""
    for name in COMPONENTS:
        if name in skip:
            continue
        src, got = expected.get(name), getattr(model, name)
        if src is None:
            assert got is None, f"{name}: loaded although the source has none"
            continue
        assert got is not None, f"{name}: missing after loading"
        a, b = src.state_dict(), got.state_dict()
        assert a.keys() == b.keys(), \
            f"{name}: missing {sorted(a.keys() - b.keys())[:3]}, extra {sorted(b.keys() - a.keys())[:3]}"
        for k in a:
            assert a[k].shape == b[k].shape and torch.equal(a[k], b[k]), f"{name}.{k} differs from the source"


def same_module_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def pixels(result) -> np.ndarray:
    assert len(result.images) == 1
    return np.asarray(result.images[0].convert("RGB"), dtype=np.int16)


_REFERENCE: dict[str, np.ndarray] = {}


def reference_pixels(engine, checkpoint: str) -> np.ndarray:
    """The GEN image of `checkpoint` with its own VAE, computed once per session (generation is deterministic, so
    every engine on the same files must reproduce it)."""
    if checkpoint not in _REFERENCE:
        previous = engine.settings.get("sd_vae")
        engine.settings.set("sd_vae", "None")
        try:
            _REFERENCE[checkpoint] = pixels(gen(engine, checkpoint))
        finally:
            engine.settings.set("sd_vae", previous)
    return _REFERENCE[checkpoint]


def gen(engine, checkpoint: str | None = None, **extra):
    req = dict(GEN, **extra)
    if checkpoint:
        req["override_settings"] = dict(req.get("override_settings") or {}, sd_model_checkpoint=checkpoint)
    result = engine.txt2img(req)
    assert result.images and result.images[0].size == (64, 64)
    return result


# ---------------------------------------------------------------------------------------------------------------
# 1. Every family, every format, exact weights


@pytest.mark.parametrize("name", list(SINGLE_FILES))
def test_single_file_loads_with_exact_weights_and_right_family(name, tiny_models, load_tiny):
    key, family, inpainting, prediction = SINGLE_FILES[name]
    model = load_tiny(name)
    assert model.spec.family == family
    assert model.spec.inpainting is inpainting
    assert model.unet.config.in_channels == (9 if inpainting else 4)
    assert model.spec.prediction_type == prediction
    assert model.scheduler_config["prediction_type"] == prediction  # what the sampler actually uses
    assert_same_weights(tiny_models.components[key], model)
    # each text encoder comes with its tokenizer (built offline)
    assert (model.tokenizer is None) == (model.text_encoder is None)
    assert (model.tokenizer_2 is None) == (model.text_encoder_2 is None)


@pytest.mark.parametrize("parameterization, expected", [('"v"', "v_prediction"), ('"eps"', "epsilon")])
def test_sd2_prediction_type_comes_from_the_yaml_beside_it(parameterization, expected, tiny_models, tmp_path):
    # SD 2.x eps and v models have identical shapes: only A1111's .yaml sidecar tells them apart.
    path = tmp_path / "sd2-other.safetensors"
    shutil.copyfile(tiny_models.path("sd2-v.safetensors"), path)
    path.with_suffix(".yaml").write_text(f"model:\n  params:\n    parameterization: {parameterization}\n")
    model = loader.load_model(path, devices.cpu())
    assert model.spec.prediction_type == expected
    assert model.scheduler_config["prediction_type"] == expected


def test_ckpt_loads_identically_to_safetensors(tiny_models, load_tiny):
    ckpt, st = load_tiny("sd1-ckpt.ckpt"), load_tiny("sd1.safetensors")
    assert (ckpt.spec.family, ckpt.spec.inpainting, ckpt.spec.prediction_type) == ("sd1", False, "epsilon")
    assert ckpt.spec.unet == st.spec.unet and ckpt.spec.vae == st.spec.vae
    assert ckpt.spec.text_encoders == st.spec.text_encoders
    assert_same_weights(tiny_models.components["sd1"], ckpt)


def test_ckpt_with_training_metadata_loads(tiny_models, tmp_path, monkeypatch):
    """Old `.ckpt` files carry numpy scalars (`global_step`) and PyTorch Lightning's ModelCheckpoint next to the
    weights; A1111 loads them, so must we (without Lightning installed and without running anything)."""
    from tests.tiny_models import ldm_state_dict

    sd = {k: v.contiguous() for k, v in ldm_state_dict(tiny_models.components["sd1"], "sd1").items()}
    fake = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")

    class ModelCheckpoint:
        def __init__(self):
            self.monitor, self.best_model_score = "val/loss_simple_ema", torch.tensor(0.125)

    ModelCheckpoint.__module__, ModelCheckpoint.__qualname__ = fake.__name__, "ModelCheckpoint"
    fake.ModelCheckpoint = ModelCheckpoint
    path = tmp_path / "trained.ckpt"
    with monkeypatch.context() as m:  # the pickle references Lightning's class by name; it is gone when loading
        for mod in ("pytorch_lightning", "pytorch_lightning.callbacks"):
            m.setitem(sys.modules, mod, types.ModuleType(mod))
        m.setitem(sys.modules, fake.__name__, fake)
        torch.save({"state_dict": sd, "epoch": 6, "global_step": np.int64(470000), "lr": np.float32(1e-4),
                    "stats": np.arange(3.0), "callbacks": {"ckpt": ModelCheckpoint()}}, path)
    assert "pytorch_lightning.callbacks.model_checkpoint" not in sys.modules
    model = loader.load_model(path, devices.cpu())
    assert model.spec.family == "sd1"
    assert_same_weights(tiny_models.components["sd1"], model)


def test_diffusers_folder_loads_with_exact_weights(tiny_models, load_tiny):
    model = load_tiny("sd1-diffusers")
    assert (model.spec.family, model.spec.inpainting, model.spec.prediction_type) == ("sd1", False, "epsilon")
    assert model.scheduler_config["prediction_type"] == "epsilon"
    assert_same_weights(tiny_models.components["sd1"], model)
    assert model.tokenizer is not None


# ---------------------------------------------------------------------------------------------------------------
# 2. Bad files: one clear error naming the file; nothing runs; the engine keeps working


class _Payload:
    """Unpickling this runs `func(*args)`: what a malicious checkpoint does."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _marker(directory: Path) -> Path:
    return directory / "PWNED"


def _write_evil_torch_save(path: Path, marker: Path, tiny_models) -> None:
    # torch.save of a real-looking checkpoint with one poisoned entry (the usual malware .ckpt)
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(2),
                               "x": _Payload(os.system, f"touch {shlex.quote(str(marker))}")}}, path)


def _write_evil_zip(path: Path, marker: Path, tiny_models) -> None:
    # the zip layout torch uses, with a pickle written by pickle.dumps (default protocol: torch's unpickler stops
    # at an opcode before it reaches the payload)
    payload = {"state_dict": {"x": _Payload(exec, f"open({str(marker)!r}, 'w').write('pwned')")}}
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(payload))
        z.writestr("archive/version", "3\n")


def _write_evil_raw_pickle(path: Path, marker: Path, tiny_models) -> None:
    # a bare protocol-2 pickle (torch's legacy non-zip format starts like this)
    path.write_bytes(pickle.dumps({"state_dict": {"x": _Payload(os.system, f"touch {shlex.quote(str(marker))}")}},
                                  protocol=2))


def _write_truncated_safetensors(path: Path, marker: Path, tiny_models) -> None:
    data = tiny_models.path("sd1.safetensors").read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _write_truncated_ckpt(path: Path, marker: Path, tiny_models) -> None:
    data = tiny_models.path("sd1-ckpt.ckpt").read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _write_garbage(path: Path, marker: Path, tiny_models) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 8192, dtype=np.uint8).tobytes())


def _write_text(path: Path, marker: Path, tiny_models) -> None:
    path.write_text("this is not a checkpoint\n" * 200)


def _write_lora(path: Path, marker: Path, tiny_models) -> None:
    base = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    save_file({f"{base}.lora_down.weight": torch.zeros(4, 32), f"{base}.lora_up.weight": torch.zeros(32, 4),
               f"{base}.alpha": torch.tensor(4.0),
               "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 64)}, str(path))


def _write_standalone_vae(path: Path, marker: Path, tiny_models) -> None:
    save_file(vae_to_ldm(tiny_models.components["sd1"]["vae"]), str(path))


def _write_unet_only(path: Path, marker: Path, tiny_models) -> None:
    sd = unet_to_ldm(tiny_models.components["sd1"]["unet"])
    save_file({"model.diffusion_model." + k: v for k, v in sd.items()}, str(path))


# name → (writer, exception type, fragments the message must contain)
BAD_FILES = {
    "truncated.safetensors": (_write_truncated_safetensors, ModelLoadError, ["truncated or corrupt"]),
    "truncated.ckpt": (_write_truncated_ckpt, ModelLoadError, ["truncated or corrupt"]),
    "garbage.safetensors": (_write_garbage, ModelLoadError, ["truncated or corrupt"]),
    "garbage.ckpt": (_write_garbage, ModelLoadError, ["truncated or corrupt"]),
    "notes.ckpt": (_write_text, ModelLoadError, ["truncated or corrupt"]),
    "evil.ckpt": (_write_evil_torch_save, UnsafeCheckpointError, ["refused", "posix.system"]),
    "evil-zip.ckpt": (_write_evil_zip, UnsafeCheckpointError, ["refused", "builtins.exec"]),
    "evil-raw.ckpt": (_write_evil_raw_pickle, UnsafeCheckpointError, ["refused", "posix.system"]),
    "some-lora.safetensors": (_write_lora, UnsupportedModelError, ["unsupported model", "LoRA", "models/Lora"]),
    "some-vae.safetensors": (_write_standalone_vae, UnsupportedModelError, ["unsupported model", "VAE", "models/VAE"]),
    "unet-only.safetensors": (_write_unet_only, UnsupportedModelError, ["unsupported model", "no text encoder"]),
}
if os.name != "posix":  # os.system pickles as nt.system there
    for _k in ("evil.ckpt", "evil-raw.ckpt"):
        BAD_FILES[_k] = (BAD_FILES[_k][0], UnsafeCheckpointError, ["refused"])


def _check_error(excinfo, name: str, expected: type, fragments: list[str]) -> None:
    err = excinfo.value
    assert type(err) is expected, f"{type(err).__name__}: {err}"
    msg = str(err)
    assert name in msg, msg
    for fragment in fragments:
        assert fragment in msg, msg
    assert len(msg) < 600, "error messages are meant to be read by people"


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # evil-zip.ckpt: protocol 4 on purpose
@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_file_gives_one_clear_error(name, tiny_models, tmp_path):
    writer, expected, fragments = BAD_FILES[name]
    path, marker = tmp_path / name, _marker(tmp_path)
    writer(path, marker, tiny_models)
    with pytest.raises(expected) as excinfo:
        loader.load_model(path, devices.cpu(), name=name)
    _check_error(excinfo, name, expected, fragments)
    assert not marker.exists(), "the checkpoint's pickle ran code"


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # evil-zip.ckpt: protocol 4 on purpose
@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_file_next_to_good_ones_leaves_the_engine_working(name, tiny_models, engine, tmp_path):
    writer, expected, fragments = BAD_FILES[name]
    ckpt_dir = Path(engine.paths.ckpt_dirs[0])
    marker = _marker(tmp_path)
    expected_image = reference_pixels(engine, "sd1.safetensors")
    engine.models.get("sd1.safetensors")  # the model in use
    writer(ckpt_dir / name, marker, tiny_models)
    engine.registry.refresh()
    with pytest.raises(expected) as excinfo:
        engine.models.get(name)
    _check_error(excinfo, name, expected, fragments)
    assert not marker.exists(), "the checkpoint's pickle ran code"
    # the good checkpoints are still listed, and a plain generation still uses the model that was in use (not the
    # bad file, even when it sorts first) and gives the same image
    assert {"sd1.safetensors", "sdxl.safetensors"} <= {i.name for i in engine.registry.list()}
    after = gen(engine)
    assert np.array_equal(expected_image, pixels(after))
    assert engine.models.current.name == "sd1.safetensors"
    assert all(m.name != name for m in engine.models.loaded)


# ---------------------------------------------------------------------------------------------------------------
# 3. No network while loading


@pytest.fixture
def no_network(monkeypatch):
    """Every way out is refused and recorded, and hub libraries believe they are online (as for a user who did not
    set HF_HUB_OFFLINE), so a loader that asks a hub for anything fails here instead of quietly using a cache."""
    attempts: list = []

    def refuse(*args, **kwargs):
        attempts.append(args[1:2] or args[:1])
        raise OSError("network access during model loading")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    for mod in list(sys.modules.values()):
        namespace = getattr(mod, "__dict__", None)  # not getattr(mod, name): that would wake lazy modules
        if isinstance(namespace, dict) and namespace.get("HF_HUB_OFFLINE") is True:
            monkeypatch.setattr(mod, "HF_HUB_OFFLINE", False)
    yield attempts


@pytest.mark.slow
def test_loading_never_uses_the_network(no_network, tiny_models, engine):
    for name, (key, family, _inp, _pred) in SINGLE_FILES.items():
        model = loader.load_model(tiny_models.path(name), devices.cpu(), name=name)
        assert model.spec.family == family
    ckpt = loader.load_model(tiny_models.path("sd1-ckpt.ckpt"), devices.cpu())
    folder = loader.load_model(tiny_models.path("sd1-diffusers"), devices.cpu())
    assert ckpt.spec.family == folder.spec.family == "sd1"
    assert_same_weights(tiny_models.components["sd1"], folder)
    gen(engine, "sdxl.safetensors")  # and a whole generation, tokenizers included
    assert no_network == []


# ---------------------------------------------------------------------------------------------------------------
# 4. VAE override


def _other_vae(tiny_models) -> AutoencoderKL:
    """A VAE shaped like the tiny SD1 one, with different random weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4321)
        return AutoencoderKL.from_config(tiny_models.components["sd1"]["vae"].config).eval()


def _write_vae(engine, tiny_models, file_name: str) -> tuple[Path, AutoencoderKL]:
    vae = _other_vae(tiny_models)
    vae_dir = Path(engine.paths.vae_dirs[0])
    vae_dir.mkdir(parents=True, exist_ok=True)
    path = vae_dir / file_name
    save_file(vae_to_ldm(vae), str(path))  # standalone A1111 VAE: LDM keys, no prefix
    return path, vae


def _infotext(result) -> dict:
    return parse_generation_parameters(result.info, fill_defaults=False, backcompat=False)


@pytest.mark.slow
def test_vae_setting_swaps_the_vae_and_none_restores_it(engine, tiny_models):
    path, other = _write_vae(engine, tiny_models, "other-vae.safetensors")
    own = tiny_models.components["sd1"]["vae"]
    vae_hash = hashlib.sha256(path.read_bytes()).hexdigest()[:10]
    plain = reference_pixels(engine, "sd1.safetensors")

    engine.settings.set("sd_vae", "other-vae.safetensors")
    swapped = gen(engine, "sd1.safetensors")
    model = engine.models.get("sd1.safetensors")
    assert same_module_weights(model.vae, other) and not same_module_weights(model.vae, own)
    assert model.vae_name == "other-vae.safetensors"  # A1111: the VAE's file name
    params = _infotext(swapped)
    assert params["VAE"] == "other-vae.safetensors" and params["VAE hash"] == vae_hash
    assert swapped.sd_vae_name == "other-vae.safetensors" and swapped.sd_vae_hash == vae_hash
    assert not np.array_equal(plain, pixels(swapped)), "the selected VAE did not change the image"

    engine.settings.set("sd_vae", "None")
    restored = gen(engine, "sd1.safetensors")
    model = engine.models.get("sd1.safetensors")
    assert same_module_weights(model.vae, own) and model.vae_name is None and model.vae_hash is None
    assert np.array_equal(plain, pixels(restored))
    assert "VAE" not in _infotext(restored) and "VAE hash" not in _infotext(restored)

    # "Automatic" with no VAE named like the checkpoint keeps the checkpoint's own
    engine.settings.set("sd_vae", "Automatic")
    model = engine.models.get("sd1.safetensors")
    assert same_module_weights(model.vae, own) and model.vae_name is None


@pytest.mark.slow
def test_vae_automatic_picks_the_vae_named_like_the_checkpoint(engine, tiny_models):
    _path, other = _write_vae(engine, tiny_models, "sd1.safetensors")  # models/VAE/sd1.safetensors
    plain = reference_pixels(engine, "sd1.safetensors")

    engine.settings.set("sd_vae", "Automatic")
    auto = gen(engine, "sd1.safetensors")
    model = engine.models.get("sd1.safetensors")
    assert model.vae_name == "sd1.safetensors" and same_module_weights(model.vae, other)
    assert _infotext(auto)["VAE"] == "sd1.safetensors"
    assert not np.array_equal(plain, pixels(auto))

    # the other checkpoint has no VAE named like it: it keeps its own
    xl = engine.models.get("sdxl.safetensors")
    assert xl.vae_name is None and same_module_weights(xl.vae, tiny_models.components["sdxl"]["vae"])


def test_override_settings_vae_applies_to_one_request_only(engine, tiny_models):
    _path, other = _write_vae(engine, tiny_models, "other-vae.safetensors")
    engine.settings.set("sd_vae", "None")
    plain = reference_pixels(engine, "sd1.safetensors")
    swapped = gen(engine, "sd1.safetensors", override_settings={"sd_vae": "other-vae.safetensors"})
    assert _infotext(swapped)["VAE"] == "other-vae.safetensors"
    assert not np.array_equal(plain, pixels(swapped))
    assert engine.settings.get("sd_vae") == "None"
    again = gen(engine, "sd1.safetensors")
    assert "VAE" not in _infotext(again) and np.array_equal(plain, pixels(again))


# ---------------------------------------------------------------------------------------------------------------
# 5. Memory when switching checkpoints


def _rss() -> int:
    import psutil

    gc.collect()
    return psutil.Process().memory_info().rss



@pytest.mark.slow
def test_switching_checkpoints_with_limit_1_does_not_grow_memory(engine, frozen_gc):
    engine.settings.set("sd_checkpoints_limit", 1)
    dropped: list[weakref.ref] = []

    def round_trip():
        for name in ("sd1.safetensors", "sdxl.safetensors"):
            model = engine.models.get(name)
            assert model.name == name
            gen(engine, name, steps=1)
            assert [m.name for m in engine.models.loaded] == [name], "more than one checkpoint kept with limit 1"
            dropped.append(weakref.ref(model))
            del model

    round_trip()
    first = _rss()
    for _ in range(4):
        round_trip()
    fifth = _rss()
    assert fifth <= first * 1.10, f"RSS grew from {first >> 20} MiB to {fifth >> 20} MiB over 4 more round trips"
    # every model but the current one was really freed (nothing else holds on to it)
    alive = [r() for r in dropped[:-1] if r() is not None]
    assert alive == [], f"{len(alive)} dropped checkpoints are still referenced"


@pytest.mark.slow
def test_limit_2_keeps_both_checkpoints_loaded(engine, monkeypatch):
    engine.settings.set("sd_checkpoints_limit", 2)
    loads = []
    real = loader.load_model
    monkeypatch.setattr(loader, "load_model",
                        lambda path, *a, **k: loads.append(Path(path).name) or real(path, *a, **k))
    sd1 = engine.models.get("sd1.safetensors")
    xl = engine.models.get("sdxl.safetensors")
    for name in ("sd1.safetensors", "sdxl.safetensors"):
        gen(engine, name, steps=1)
    assert engine.models.get("sd1.safetensors") is sd1 and engine.models.get("sdxl.safetensors") is xl
    assert sorted(m.name for m in engine.models.loaded) == ["sd1.safetensors", "sdxl.safetensors"]
    assert loads == ["sd1.safetensors", "sdxl.safetensors"], "a cached checkpoint was read again"


# ---------------------------------------------------------------------------------------------------------------
# 6. Shape-derived configs for distilled architectures

_SD1_UNET = dict(sample_size=8, in_channels=4, out_channels=4, norm_num_groups=32, attention_head_dim=8,
                 cross_attention_dim=64, use_linear_projection=False)
_SDXL_UNET = dict(sample_size=8, in_channels=4, out_channels=4, norm_num_groups=32, layers_per_block=2,
                  use_linear_projection=True, cross_attention_dim=192, addition_embed_type="text_time",
                  addition_time_embed_dim=8, projection_class_embeddings_input_dim=128 + 6 * 8)
_SDXL_3 = dict(_SDXL_UNET, block_out_channels=(64, 128, 128),
               down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
               up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(1, 2, 2))

DISTILLED = {
    # BK-SDM-Small: no mid block, one resnet per down level (two per up level)
    "bk-sdm-small": ("sd1", dict(_SD1_UNET, layers_per_block=1, mid_block_type=None, block_out_channels=(32, 64),
                                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))),
    # BK-SDM-Base: one resnet per level, mid block kept
    "bk-sdm-base": ("sd1", dict(_SD1_UNET, layers_per_block=1, block_out_channels=(32, 64),
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))),
    # the brief's SSD-1B-style case: up blocks with uneven transformer depth
    "ssd-uneven-up": ("sdxl", dict(_SDXL_UNET, block_out_channels=(64, 128),
                                   down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                   up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(1, 2),
                                   transformer_layers_per_block=(1, 2),
                                   reverse_transformer_layers_per_block=[[2, 1, 1], [1, 1, 1]])),
    # SSD-1B proper (scaled down): depths 2/4 down, [[4, 4, 10], [2, 1, 1]] up, mid block without attention
    "ssd-1b": ("sdxl", dict(_SDXL_3, transformer_layers_per_block=(1, 2, 4), mid_block_type="UNetMidBlock2D",
                            reverse_transformer_layers_per_block=[[4, 4, 10], [2, 1, 1], [1, 1, 1]])),
    # transformer depth pruned unevenly inside a down level too (diffusers' tuple-of-tuples form)
    "uneven-down": ("sdxl", dict(_SDXL_3, transformer_layers_per_block=(1, (2, 1), 3),
                                 reverse_transformer_layers_per_block=[[3, 3, 3], [2, 1, 1], [1, 1, 1]])),
    # three levels instead of four (BK-SDM-Tiny-like)
    "sd1-3-levels": ("sd1", dict(_SD1_UNET, layers_per_block=2, block_out_channels=(32, 64, 64),
                                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))),
}


def _plain(value):
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _effective_depths(cfg: dict) -> tuple[list, list]:
    """(down depth per level, up depth per up block per layer) as diffusers builds them from a config."""
    n = len(cfg["block_out_channels"])
    tl = cfg.get("transformer_layers_per_block") or 1
    down = _plain(tl) if isinstance(tl, (list, tuple)) else [tl] * n
    lpb = cfg["layers_per_block"]
    per_up = (lpb if isinstance(lpb, int) else lpb[0]) + 1
    rev = cfg.get("reverse_transformer_layers_per_block")
    if rev is None:
        up = [[d] * per_up for d in reversed(down)]
    else:
        up = [_plain(r) if isinstance(r, (list, tuple)) else [r] * per_up for r in rev]
    # only blocks with attention have a depth
    down = [d for d, t in zip(down, cfg["down_block_types"]) if t.startswith("CrossAttn")]
    up = [d for d, t in zip(up, cfg["up_block_types"]) if t.startswith("CrossAttn")]
    return down, up


def _unet_output(unet: UNet2DConditionModel) -> torch.Tensor:
    cfg = unet.config
    g = torch.Generator().manual_seed(0)
    dtype = unet.dtype
    x = torch.randn(1, cfg.in_channels, 8, 8, generator=g).to(dtype)
    ctx = torch.randn(1, 7, cfg.cross_attention_dim, generator=g).to(dtype)
    kw = {}
    if cfg.addition_embed_type == "text_time":
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        kw["added_cond_kwargs"] = {"text_embeds": torch.randn(1, pooled, generator=g).to(dtype),
                                   "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]], dtype=dtype)}
    with torch.no_grad():
        return unet(x, torch.tensor([500]), encoder_hidden_states=ctx, **kw).sample


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(DISTILLED))
def test_distilled_architecture_config_from_shapes(arch, tiny_models, tmp_path):
    family, kwargs = DISTILLED[arch]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        unet = UNet2DConditionModel(**kwargs).eval()
    base = tiny_models.components[family]
    sd = components_to_ldm(family, unet, base["vae"], base["text_encoder"], base["text_encoder_2"])

    spec = detect.detect(sd, f"{arch}.safetensors")
    got, want = spec.unet, dict(unet.config)
    for key in ("in_channels", "out_channels", "block_out_channels", "down_block_types", "up_block_types",
                "layers_per_block", "mid_block_type", "cross_attention_dim", "use_linear_projection",
                "addition_embed_type"):
        assert _plain(got.get(key)) == _plain(want.get(key)), key
    assert _effective_depths(got) == _effective_depths(want)

    path = tmp_path / f"{arch}.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    model = loader.load_model(path, devices.cpu())
    assert model.spec.family == family
    assert_same_weights(dict(base, unet=unet), model)
    # same weights *and* same heads/attention layout: the loaded UNet computes the same thing (in float64, where a
    # different order of float32 arithmetic on another CPU cannot blur a real difference)
    torch.testing.assert_close(_unet_output(model.unet.double()), _unet_output(unet.double()), rtol=1e-12,
                               atol=1e-12)


def test_unloadable_layout_is_a_clear_error(tiny_models, tmp_path):
    """Per-level `layers_per_block` (a list) is a valid diffusers UNet that diffusers' LDM converter cannot read:
    the user gets a ModelLoadError naming the file, not a TypeError traceback."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        unet = UNet2DConditionModel(**dict(_SD1_UNET, layers_per_block=(1, 2), block_out_channels=(32, 64),
                                           down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                           up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")))
    base = tiny_models.components["sd1"]
    path = tmp_path / "odd-layers.safetensors"
    save_file({k: v.contiguous() for k, v in components_to_ldm("sd1", unet, base["vae"], base["text_encoder"]).items()},
              str(path))
    with pytest.raises((ModelLoadError, UnsupportedModelError)) as excinfo:
        loader.load_model(path, devices.cpu())
    assert "odd-layers.safetensors" in str(excinfo.value)

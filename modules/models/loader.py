"""Build a checkpoint's diffusers components from an A1111 single file or a diffusers folder, always offline.

Components are created empty (meta tensors) from the configs `detect` derived, then filled with the file's tensors
after diffusers' own LDM→diffusers key conversion. No code path asks a hub for anything: the configs come from the
file and the shipped templates, the tokenizer from open-clip-torch's BPE file.
"""
from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from modules.devices import DeviceConfig
from modules.models import detect as detect_mod
from modules.models.detect import ModelSpec, UnsupportedModelError
from modules.models.tokenizer import EOS, build_clip_tokenizer

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """A checkpoint or VAE could not be loaded; the message names the file and says why."""


class UnsafeCheckpointError(ModelLoadError):
    """A pickle (.ckpt/.pt) that would run code when unpickled."""


@dataclass
class LoadedModel:
    """A ready-to-sample model: diffusers components plus what infotext and the sampler need to know."""

    name: str
    title: str
    filename: Path
    spec: ModelSpec
    unet: Any
    vae: Any
    text_encoder: Any | None
    text_encoder_2: Any | None
    tokenizer: Any | None
    tokenizer_2: Any | None
    scheduler_config: dict
    device_config: DeviceConfig
    shorthash: str | None = None
    vae_name: str | None = None
    vae_hash: str | None = None
    extra: dict = field(default_factory=dict)
    text_encoder_3: Any | None = None  # SD3: T5-XXL (Flux keeps T5 in text_encoder_2, as diffusers does)
    tokenizer_3: Any | None = None

    @property
    def device(self) -> torch.device:
        return self.device_config.device

    @property
    def dtype(self) -> torch.dtype:
        return self.device_config.dtype

    @property
    def family(self) -> str:
        return self.spec.family

    @property
    def is_sdxl(self) -> bool:
        return self.spec.is_sdxl

    @property
    def is_flow(self) -> bool:
        return self.spec.is_flow

    @property
    def size_multiple(self) -> int:
        """Width/height must be multiples of this: the latent is cut into 2×2 patches by Flux and SD3."""
        return self.vae_scale_factor * (2 if self.is_flow else 1)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


# ---------------------------------------------------------------------------------------------------------------
# Reading files


def read_state_dict(path: Path, nested: bool = False) -> dict[str, torch.Tensor]:
    """Read a `.safetensors`, a `.gguf` (tensors kept quantized) or a pickle checkpoint (`.ckpt/.pt/.bin`) safely
    into CPU tensors. `nested`: a pickle's dicts of tensors (IP-Adapter's `{"image_proj": {...}}`) are kept as
    `outer.inner` keys instead of being dropped."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path.name}: file not found")
    if path.suffix.lower() == ".gguf":
        from modules.models.lowbit import read_gguf

        return read_gguf(path)
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            sd = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise ModelLoadError(f"{path.name}: not a readable .safetensors file (truncated or corrupt: {e})") from None
    else:
        try:
            with torch.serialization.safe_globals(_ckpt_safe_globals()):
                sd = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            detail = _unpickling_detail(e)
            referenced = _pickle_globals(path)
            suspicious = sorted(referenced - _HARMLESS_GLOBALS)
            if not suspicious and (referenced or "global" not in detail.lower()):  # damaged, not a call to anything
                raise ModelLoadError(
                    f"{path.name}: not a readable checkpoint (truncated or corrupt: {detail})") from None
            if suspicious:
                detail = f"it references {', '.join(suspicious[:5])}"
            raise UnsafeCheckpointError(
                f"{path.name}: refused to load: the pickle wants to run code or build objects that are not plain "
                f"tensors ({detail}). Convert it to .safetensors from a trusted source."
            ) from None
        except MemoryError:
            raise
        except Exception as e:  # torch.load raises RuntimeError/EOFError/KeyError/... on damaged or foreign files
            raise ModelLoadError(f"{path.name}: not a readable checkpoint (truncated or corrupt: "
                                 f"{type(e).__name__}: {str(e)[:300]})") from None
        if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
            sd = sd["state_dict"]
        if not isinstance(sd, Mapping):
            raise ModelLoadError(f"{path.name}: the file holds no state dict")
    out = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if nested:
        for outer, inner in sd.items():
            if isinstance(inner, Mapping):
                out.update({f"{outer}.{k}": v for k, v in inner.items() if isinstance(v, torch.Tensor)})
    return out


def read_embedded_architecture(path: Path) -> dict | None:
    """The architecture a `.safetensors` file carries in its metadata (detect.ARCHITECTURE_KEY), or None."""
    import json

    from safetensors import safe_open

    if Path(path).suffix.lower() != ".safetensors":
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            text = (f.metadata() or {}).get(detect_mod.ARCHITECTURE_KEY)
    except Exception:  # noqa: BLE001 - unreadable header: read_state_dict reports it
        return None
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        log.warning("%s: ignoring malformed %s metadata", Path(path).name, detect_mod.ARCHITECTURE_KEY)
        return None
    return data if isinstance(data, dict) else None


class _InertCallback:
    """Stands in for PyTorch Lightning's ModelCheckpoint callback pickled into old `.ckpt` files: keeps its state as
    data, runs nothing."""

    def __setstate__(self, state):
        self.__dict__["state"] = state


def _ckpt_safe_globals() -> list:
    """Non-tensor objects real `.ckpt` files carry besides the weights, as A1111's restricted unpickler accepts them:
    numpy scalars/arrays (e.g. `global_step`), sets, encoded bytes and Lightning's ModelCheckpoint (inert). None of
    them can run code; everything else is still refused by `torch.load(weights_only=True)`."""
    import codecs

    import numpy as np

    multiarray = getattr(np, "_core", None) or np.core
    multiarray = multiarray.multiarray
    allowed = [np.dtype, np.ndarray, set, (codecs.encode, "_codecs.encode"),
               (_InertCallback, "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint")]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):  # pickled by numpy 1.x / 2.x
        allowed += [(multiarray.scalar, f"{module}.scalar"), (multiarray._reconstruct, f"{module}._reconstruct")]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return allowed


# Globals that torch's own checkpoints reference (allowed by weights_only, or by _ckpt_safe_globals).
_HARMLESS_GLOBALS = {
    "collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_device_tensor_from_numpy", "torch.FloatStorage", "torch.HalfStorage",
    "torch.BFloat16Storage",
    "torch.DoubleStorage", "torch.LongStorage", "torch.IntStorage", "torch.ByteStorage", "torch.float32",
    "torch.float16", "torch.bfloat16", "numpy.dtype", "numpy.ndarray", "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar", "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
    "_codecs.encode", "builtins.set", "__builtin__.set", "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
}


def _pickle_globals(path: Path, limit: int = 64 << 20) -> set[str]:
    """Best effort: `module.name` of every global a pickle references (a torch zip's `data.pkl`, or a raw pickle),
    read without unpickling. Tells a malicious pickle that torch's unpickler stopped early (e.g. at a protocol-4
    opcode) from a merely damaged file."""
    import io
    import pickletools
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                blobs = [z.read(n) for n in z.namelist() if n.endswith(".pkl")]
        else:
            with open(path, "rb") as f:
                blobs = [f.read(limit)]
    except Exception:  # noqa: BLE001 - unreadable: nothing to report
        return set()
    found: set[str] = set()
    for blob in blobs:
        stream, strings = io.BytesIO(blob), []
        try:
            while stream.tell() < len(blob):  # legacy torch files are several pickles in a row
                for op, arg, _pos in pickletools.genops(stream):
                    if op.name in ("GLOBAL", "INST"):
                        found.add(str(arg).replace(" ", "."))
                    elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                        found.add(f"{strings[-2]}.{strings[-1]}")
                    elif isinstance(arg, str):
                        strings.append(arg)
        except Exception:  # noqa: BLE001 - the tensor bytes after a legacy pickle, or damage: stop here
            pass
    return found


def _unpickling_detail(e: Exception) -> str:
    """The informative line of torch's weights-only error (e.g. 'Unsupported global: GLOBAL posix.system ...')."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        if "GLOBAL" in ln or "Unsupported" in ln or "Can only build" in ln:
            return ln.removeprefix("WeightsUnpickler error:").strip()[:300]
    return (lines[-1] if lines else type(e).__name__)[:300]


# ---------------------------------------------------------------------------------------------------------------
# Building components


def _cast(sd: Mapping[str, torch.Tensor], dtype: torch.dtype, keep: torch.dtype | None = None) -> dict:
    """Floating tensors in `dtype` (a tensor under two names, like T5's tied embeddings, is cast once)."""
    done: dict[int, torch.Tensor] = {}
    out = {}
    for k, v in sd.items():
        if v.is_floating_point() and v.dtype != keep:
            if id(v) not in done:
                done[id(v)] = v.to(dtype)
            v = done[id(v)]
        out[k] = v
    return out


def _fill(model: torch.nn.Module, sd: Mapping[str, torch.Tensor], what: str, name: str, dtype: torch.dtype,
          keep: torch.dtype | None = None):
    """Load converted tensors into an empty model; a missing tensor is an error, spare ones are dropped. Tensors
    stored as `keep` (an fp8 dtype the model computes from layer by layer) stay as they are."""
    expected = model.state_dict().keys()
    missing = [k for k in expected if k not in sd]
    if missing:
        raise ModelLoadError(f"{name}: {what} is missing {len(missing)} tensors (e.g. {missing[0]})")
    model.load_state_dict(_cast({k: sd[k] for k in expected}, dtype, keep), strict=True, assign=True)
    return model.eval().requires_grad_(False)


def _empty(cls, config):
    from accelerate import init_empty_weights

    with init_empty_weights():
        return cls(config) if not isinstance(config, dict) else cls.from_config(config)


def build_unet(spec: ModelSpec, sd: Mapping, name: str, dtype: torch.dtype):
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    converted = convert_ldm_unet_checkpoint(sd, spec.unet)
    return _fill(_empty(UNet2DConditionModel, spec.unet), converted, "the UNet", name, dtype)


def build_vae(config: dict, sd: Mapping, name: str, dtype: torch.dtype):
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    if any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in sd):
        converted = dict(sd)  # already diffusers layout (a VAE saved by diffusers)
    else:
        converted = convert_ldm_vae_checkpoint(sd, config)
    return _fill(_empty(AutoencoderKL, config), converted, "the VAE", name, dtype)


def build_text_encoder(config: dict, sd: Mapping, prefix: str, layout: str, name: str, dtype: torch.dtype):
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if config.get("_class_name") == "CLIPTextModelWithProjection" else CLIPTextModel
    te_config = CLIPTextConfig(**{k: v for k, v in config.items() if not k.startswith("_") and k != "architectures"})
    model = _empty(cls, te_config)
    if layout == "clip_l":
        sub = {k: v for k, v in sd.items() if k.startswith(prefix + "transformer.")}
        converted = convert_ldm_clip_checkpoint(sub)
    else:
        sub = {k: v for k, v in sd.items() if k.startswith(prefix + "model.")}
        converted = convert_open_clip_checkpoint(model, sub, prefix=prefix + "model.")
    if not hasattr(model, "text_model"):  # transformers >= 5.6 flattened CLIPTextModel
        converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
    return _fill(model, converted, f"the text encoder ({prefix})", name, dtype)


def _tokenizer_for(te_config: dict) -> Any:
    # SD1.x/CLIP-L pads with the end token; OpenCLIP encoders (SD2, SDXL's bigG) pad with "!" (id 0).
    pad = EOS if te_config.get("hidden_act") == "quick_gelu" else "!"
    return build_clip_tokenizer(pad)


def _finish(model: torch.nn.Module | None, device_config: DeviceConfig, dtype: torch.dtype):
    if model is None:
        return None
    if getattr(model, "storage_dtype", None) is not None:  # fp8 weights, cast per layer while computing
        return model.to(device=device_config.device)
    if any(p.dtype != dtype for p in model.parameters() if p.is_floating_point()):
        model = model.to(dtype=dtype)
    return model.to(device=device_config.device)


def _apply_attention(unet, device_config: DeviceConfig) -> None:
    """--xformers, --opt-split-attention (attention computed in slices: A1111's low-memory fallback) and
    --opt-channelslast on the denoiser; SDPA otherwise (modules/models/attention.py; the setting "Cross attention
    optimization" may change it per generation)."""
    from modules.models import attention

    attention.apply(unet, device_config.attention)
    if device_config.channels_last:
        unet.to(memory_format=torch.channels_last)


@torch.inference_mode()
def probe_v_prediction(unet) -> str:
    """A1111's test for SD 2.x files without a .yaml: a v-model's output on a flat grey input at t=999 is far
    below the input, an epsilon model's is not."""
    if unet.config.in_channels != 4:
        return "epsilon"
    p = next(unet.parameters())
    x = torch.ones((1, 4, 8, 8), dtype=p.dtype, device=p.device) * 0.5
    context = torch.ones((1, 2, unet.config.cross_attention_dim), dtype=p.dtype, device=p.device) * 0.5
    out = unet(x, torch.tensor([999], device=p.device), encoder_hidden_states=context).sample
    return "v_prediction" if (out - x).float().mean().item() < -1 else "epsilon"


def load_single_file(path: Path, device_config: DeviceConfig, *, name: str | None = None,
                     title: str | None = None, shorthash: str | None = None,
                     vae_path: Path | None = None, sources=None) -> LoadedModel:
    """Load an A1111-layout `.safetensors`/`.ckpt` checkpoint, or a Flux/SD3 file (`sources`: where the parts it
    lacks may be found, a flow_loader.PartSources)."""
    path = Path(path)
    name = name or path.name
    sd = read_state_dict(path)
    if path.suffix.lower() == ".gguf":
        from modules.models.lowbit import logical_shapes

        spec = detect_mod.detect(logical_shapes(sd), name=name)
    else:
        spec = detect_mod.detect(sd, name=name, prediction_hint=detect_mod.prediction_hint_from_yaml(path),
                                 embedded=read_embedded_architecture(path))
    if spec.is_flow:
        from modules.models.flow_loader import load_flow_single_file

        model = load_flow_single_file(path, sd, spec, device_config, name=name, title=title, shorthash=shorthash,
                                      sources=sources)
        if vae_path is not None:
            replace_vae(model, vae_path)
        return model
    dt, vdt = device_config.dtype, device_config.vae_dtype
    unet = build_unet(spec, sd, name, dt)
    if spec.prediction_type == "probe":
        spec.prediction_type = probe_v_prediction(unet)
        spec.scheduler["prediction_type"] = spec.prediction_type
    vae = build_vae(spec.vae, sd, name, vdt)
    encoders = {
        key: build_text_encoder(cfg, sd, spec.te_prefixes[key], spec.te_layouts[key], name, dt)
        for key, cfg in spec.text_encoders.items()
    }
    del sd
    model = LoadedModel(
        name=name,
        title=title or name,
        filename=path,
        spec=spec,
        unet=_finish(unet, device_config, dt),
        vae=_finish(vae, device_config, vdt),
        text_encoder=_finish(encoders.get("text_encoder"), device_config, dt),
        text_encoder_2=_finish(encoders.get("text_encoder_2"), device_config, dt),
        tokenizer=_tokenizer_for(spec.text_encoders["text_encoder"]) if "text_encoder" in encoders else None,
        tokenizer_2=_tokenizer_for(spec.text_encoders["text_encoder_2"]) if "text_encoder_2" in encoders else None,
        scheduler_config=spec.scheduler,
        device_config=device_config,
        shorthash=shorthash,
    )
    _apply_attention(model.unet, device_config)
    if vae_path is not None:
        replace_vae(model, vae_path)
    return model


def import_model_classes() -> None:
    """Import what loading a checkpoint needs (diffusers' UNet pulls in accelerate, peft hooks and more: ~4 s on a
    small CPU). The server's start-up thread runs this before it serves requests: two threads importing diffusers
    at once can see a half-initialised module (Python accepts one to break the import cycle)."""
    import diffusers.schedulers  # noqa: F401
    from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: F401
    from diffusers.image_processor import VaeImageProcessor  # noqa: F401
    from diffusers.loaders import single_file_utils  # noqa: F401
    from transformers import CLIPTextModel, CLIPTextModelWithProjection  # noqa: F401


def load_diffusers_folder(path: Path, device_config: DeviceConfig, *, name: str | None = None,
                          title: str | None = None, shorthash: str | None = None,
                          vae_path: Path | None = None, sources=None) -> LoadedModel:
    """Load a diffusers folder (`model_index.json`, `unet/`, `vae/`, `text_encoder*/`) from disk only."""
    import json

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from modules.models import flow_loader

    path = Path(path)
    name = name or path.name
    if flow_loader.is_flow_folder(path):
        model = flow_loader.load_flow_diffusers_folder(path, device_config, name=name, title=title,
                                                       shorthash=shorthash)
        if vae_path is not None:
            replace_vae(model, vae_path)
        return model
    dt, vdt = device_config.dtype, device_config.vae_dtype
    kw = dict(local_files_only=True)
    try:
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=dt, **kw)
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=vdt, **kw)
        te = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", torch_dtype=dt, **kw) \
            if (path / "text_encoder").is_dir() else None
        te2 = CLIPTextModelWithProjection.from_pretrained(path, subfolder="text_encoder_2", torch_dtype=dt, **kw) \
            if (path / "text_encoder_2").is_dir() else None
    except (OSError, ValueError, EnvironmentError) as e:
        raise ModelLoadError(f"{name}: cannot load diffusers folder: {e}") from None
    ucfg = dict(unet.config)
    if ucfg.get("addition_embed_type") == "text_time":
        family = "sdxl" if te is not None else "sdxl_refiner"
    elif te is not None and te.config.hidden_act != "quick_gelu":
        family = "sd2"
    else:
        family = "sd1"
    sched_file = path / "scheduler" / "scheduler_config.json"
    scheduler = json.loads(sched_file.read_text()) if sched_file.is_file() else detect_mod.load_template(family, "scheduler")
    prediction = scheduler.get("prediction_type") or ("v_prediction" if family == "sd2" else "epsilon")
    scheduler["prediction_type"] = prediction
    te_cfgs = {}
    if te is not None:
        te_cfgs["text_encoder"] = te.config.to_dict()
    if te2 is not None:
        te_cfgs["text_encoder_2"] = te2.config.to_dict()
    spec = ModelSpec(family=family, inpainting=ucfg["in_channels"] == 9, prediction_type=prediction,
                     unet=ucfg, vae=dict(vae.config), text_encoders=te_cfgs, scheduler=scheduler)
    model = LoadedModel(
        name=name, title=title or name, filename=path, spec=spec,
        unet=_finish(unet.eval().requires_grad_(False), device_config, dt),
        vae=_finish(vae.eval().requires_grad_(False), device_config, vdt),
        text_encoder=_finish(te.eval().requires_grad_(False), device_config, dt) if te is not None else None,
        text_encoder_2=_finish(te2.eval().requires_grad_(False), device_config, dt) if te2 is not None else None,
        tokenizer=_tokenizer_for(te_cfgs["text_encoder"]) if te is not None else None,
        tokenizer_2=_tokenizer_for(te_cfgs["text_encoder_2"]) if te2 is not None else None,
        scheduler_config=scheduler, device_config=device_config, shorthash=shorthash,
    )
    _apply_attention(model.unet, device_config)
    if vae_path is not None:
        replace_vae(model, vae_path)
    return model


def load_vae_file(path: Path, family: str, device_config: DeviceConfig):
    """A standalone VAE (`models/VAE/*.safetensors|.pt|.ckpt`), config derived from its own shapes."""
    sd = read_state_dict(Path(path))
    if family in detect_mod.FLOW_FAMILIES:
        from modules.models import flow_loader, flow_parts

        part = flow_parts.vae_part(sd, family, Path(path).name)
        if part is None or part.config.get("latent_channels") != 16:
            raise ModelLoadError(f"{Path(path).name}: not a 16-channel VAE (Flux and SD3 need one, e.g. ae.safetensors)")
        return flow_loader.build_flow_vae(part, Path(path).name, device_config.vae_dtype).to(device_config.device)
    prefix = detect_mod.vae_prefix(sd)
    template = detect_mod.load_template(family, "vae")
    if prefix is None:
        if any(k.startswith("encoder.down_blocks.") for k in sd):
            return build_vae(template, sd, Path(path).name, device_config.vae_dtype).to(device_config.device)
        raise ModelLoadError(f"{Path(path).name}: not a VAE (no encoder.conv_in weight)")
    config = detect_mod.vae_config_from_ldm(sd, template, prefix)
    sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return build_vae(config, sd, Path(path).name, device_config.vae_dtype).to(device_config.device)


def replace_vae(model: LoadedModel, vae_path: Path | None, vae_name: str | None = None, vae_hash: str | None = None):
    """Swap in an external VAE (or None: the checkpoint's own one is kept in `extra['own_vae']`)."""
    own = model.extra.setdefault("own_vae", model.vae)
    if vae_path is None:
        model.vae, model.vae_name, model.vae_hash = own, None, None
        return
    model.vae = load_vae_file(vae_path, model.family, model.device_config)
    model.vae_name = vae_name or Path(vae_path).stem
    model.vae_hash = vae_hash


def load_model(path: Path, device_config: DeviceConfig, **kw) -> LoadedModel:
    """Entry point: a diffusers folder or a single file; errors are ModelLoadError/UnsupportedModelError."""
    path = Path(path)
    try:
        if path.is_dir():
            return load_diffusers_folder(path, device_config, **kw)
        return load_single_file(path, device_config, **kw)
    except UnsupportedModelError:
        raise
    except ModelLoadError:
        raise
    except (RuntimeError, ValueError, KeyError, IndexError, TypeError) as e:
        raise ModelLoadError(f"{path.name}: {type(e).__name__}: {e}") from None

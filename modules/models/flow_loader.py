"""Load Flux.1 and SD3/SD3.5 models, offline, from the files users have.

A checkpoint is an all-in-one file (transformer + VAE + text encoders), a transformer-only file (BFL, Stability or
diffusers layout, with or without `model.diffusion_model.`), or a diffusers folder. What the checkpoint lacks comes
from the files the user picked ("VAE / Text Encoder", Forge's `forge_additional_modules`) or else from
`models/text_encoder/` and `models/VAE/`; a part found nowhere is a ModelLoadError naming the file to add and the
folder. Components are built empty from configs read off the tensors and filled in the compute dtype.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch

from modules.devices import DeviceConfig
from modules.models import flow_parts, lowbit
from modules.models.detect import ModelSpec
from modules.models.detect_flow import FlowTransformerSpec
from modules.models.flow_spec import REQUIRED_PARTS, variant_defaults
from modules.models.key_layout import Shape

log = logging.getLogger(__name__)

PART_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin")


@dataclass
class PartSources:
    """Where a checkpoint's missing parts may come from: the files the user picked (tried first, and then the only
    ones), else every file in the text-encoder and VAE folders."""

    text_encoder_dirs: list[Path] = field(default_factory=list)
    vae_dirs: list[Path] = field(default_factory=list)
    selected: list[Path] = field(default_factory=list)

    def candidates(self, role: str) -> list[Path]:
        if self.selected:
            return [p for p in self.selected if Path(p).is_file()]
        dirs = self.vae_dirs if role == "vae" else self.text_encoder_dirs
        found: list[Path] = []
        for d in dirs:
            if Path(d).is_dir():
                found += sorted(p for p in Path(d).rglob("*") if p.suffix.lower() in PART_SUFFIXES and p.is_file())
        return found



def _header_shapes(path: Path) -> dict:
    """key → shape of a .safetensors file without reading its tensors ({} for other formats or damage)."""
    if path.suffix.lower() not in (".safetensors", ".sft"):
        return {}
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return {k: Shape(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception:  # noqa: BLE001 - unreadable: not a candidate
        return {}


_NAME_HINTS = {"t5": ("t5",), "clip_l": ("clip_l", "clip-l", "clipl"), "clip_g": ("clip_g", "clip-g", "clipg")}


def _role_of(path: Path, shapes: Mapping) -> str | None:
    if flow_parts.is_flow_vae(shapes):
        return "vae"
    kind = flow_parts.classify_text_encoder(shapes)
    if kind in ("clip_l", "clip_g"):
        name = path.name.lower()
        for role in ("clip_l", "clip_g"):
            if any(h in name for h in _NAME_HINTS[role]):
                return role
    return kind


def find_part(role: str, sources: PartSources) -> Path | None:
    """The first file among the sources that holds `role` (T5: fp16 files before fp8 ones)."""
    matches = [p for p in sources.candidates(role) if _role_of(p, _header_shapes(p)) == role]
    if role == "t5":
        matches.sort(key=lambda p: "fp8" in p.name.lower())
    return matches[0] if matches else None


def missing_parts_message(name: str, variant: str, roles: list[str], sources: PartSources) -> str:
    """One message naming every part a checkpoint lacks, the file each usually is, and the folder it goes in."""
    def hint(role: str) -> str:
        return flow_parts.ROLE_FILES[role] + (" (or t5xxl_fp8_e4m3fn.safetensors)" if role == "t5" else "")

    what = ", ".join(flow_parts.ROLE_LABELS[r] for r in roles)
    places = []
    encoders = [hint(r) for r in roles if r != "vae"]
    if encoders:
        places.append(f"{' and '.join(encoders)} in models/text_encoder")
    if "vae" in roles:
        places.append(f"{hint('vae')} in models/VAE")
    picked = " (none of the files picked under VAE / Text Encoder holds them)" if sources.selected else ""
    return (f"{name}: {variant} needs parts the file does not carry: {what}{picked}. Put "
            f"{'; '.join(places)} (or pick them under VAE / Text Encoder)")


# ---------------------------------------------------------------------------------------------------------------
# Building


def _to_diffusers(sd: Mapping, flow: FlowTransformerSpec, **kw) -> dict[str, torch.Tensor]:
    if flow.layout == "bfl":
        from modules.models.flux_keys import bfl_to_diffusers

        return bfl_to_diffusers(sd, flow.prefix, **kw)
    if flow.layout == "sai":
        from modules.models.sd3_keys import sai_to_diffusers

        return sai_to_diffusers(sd, flow.prefix, **kw)
    p = flow.prefix
    owned = ("text_encoders.", "vae.", "first_stage_model.")
    return {k[len(p):]: v for k, v in sd.items() if k.startswith(p) and not (not p and k.startswith(owned))}


def split_scales(sd: Mapping, flow: FlowTransformerSpec) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(weights in diffusers' layout, {diffusers module: per-tensor fp8 scale}). A scaled fp8 file stores W/s in
    fp8 and s beside it (`<module>.scale_weight`); fused release-layout modules share one scale, so each scale is
    carried through the same converter as a column of the weight's rows."""
    weights = {k: v for k, v in sd.items() if not k.endswith(lowbit.SCALED_FP8_KEYS)}
    scale_keys = [k for k in sd if k.startswith(flow.prefix) and k.endswith(".scale_weight")]
    if not scale_keys:
        return _to_diffusers(weights, flow), {}
    columns = {}
    for key in scale_keys:
        module = key[:-len(".scale_weight")]
        rows = weights[module + ".weight"].shape[0]
        columns[module + ".weight"] = sd[key].float().reshape(1, 1).expand(rows, 1)
    cfg = flow.config
    kw = {} if flow.layout == "diffusers" else {"hidden": int(cfg["num_attention_heads"] * cfg["attention_head_dim"])}
    if flow.layout == "sai":
        kw["last_block"] = cfg["num_layers"] - 1
    converted = _to_diffusers(columns, flow, **kw)
    scales = {k[:-len(".weight")]: v[0, 0].clone() for k, v in converted.items() if k.endswith(".weight")}
    return _to_diffusers(weights, flow), scales


def transformer_state_dict(sd: Mapping, flow: FlowTransformerSpec) -> dict[str, torch.Tensor]:
    """The transformer's tensors in diffusers' layout, whatever layout the file uses."""
    return split_scales(sd, flow)[0]


def build_transformer(flow: FlowTransformerSpec, sd: Mapping, name: str, dtype: torch.dtype):
    """The transformer in the compute dtype; an fp8 file stays fp8 in memory (diffusers' layerwise casting
    upcasts one layer at a time while it computes), so a 12B Flux takes 12 GB, not 24 or 48."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    from modules.models.loader import _empty, _fill

    cls = FluxTransformer2DModel if flow.family == "flux" else SD3Transformer2DModel
    converted, scales = split_scales(sd, flow)
    model = _empty(cls, flow.config)
    if lowbit.is_quantized(converted):  # GGUF: its linear layers become diffusers' GGUFLinear, weights stay quantized
        from diffusers.quantizers.gguf.utils import _replace_with_gguf_linear

        _replace_with_gguf_linear(model, dtype, converted)
        lowbit.assign_quantized(model, converted, name, dtype)
        model.storage_dtype = "gguf"
        return model.eval().requires_grad_(False)
    storage = lowbit.storage_dtype(converted, dtype)
    model = _fill(model, converted, "the transformer", name, dtype, keep=storage)
    if scales:
        lowbit.use_scales(model, scales, dtype)
        return model
    return lowbit.keep_storage(model, storage, dtype)


def build_flow_vae(part: flow_parts.Part, name: str, dtype: torch.dtype):
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    from modules.models.loader import _empty, _fill

    sd = part.state_dict
    if not any(k.startswith("encoder.down_blocks.") for k in sd):
        sd = convert_ldm_vae_checkpoint(sd, part.config)
    return _fill(_empty(AutoencoderKL, part.config), sd, f"the VAE ({part.source})", name, dtype)


def build_part_encoder(part: flow_parts.Part, name: str, dtype: torch.dtype, family: str):
    """A text encoder in the class the family's pipeline uses: Flux takes CLIP-L's unprojected pooled output
    (CLIPTextModel, a `text_projection` in the file is ignored); SD3 takes both CLIPs' projections."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from modules.models.loader import ModelLoadError, _empty, _fill

    cfg = {k: v for k, v in part.config.items() if not k.startswith("_") and k != "architectures"}
    what = f"the {flow_parts.ROLE_LABELS[part.role]} text encoder ({part.source})"
    if part.role == "t5":  # t5xxl_fp8_e4m3fn stays fp8 (4.9 GB, not 9.5 or 19)
        model = _empty(T5EncoderModel, T5Config(**cfg))
        storage = lowbit.storage_dtype(part.state_dict, dtype)
        return lowbit.keep_storage(_fill(model, part.state_dict, what, name, dtype, keep=storage), storage, dtype)
    projected = part.config["_class_name"] == "CLIPTextModelWithProjection"
    if family == "sd3" and not projected:
        label = flow_parts.ROLE_LABELS[part.role]
        raise ModelLoadError(f"{name}: {part.source} has no text projection, which SD3's {label} needs (use the "
                             "clip_l/clip_g files made for SD3)")
    cls = CLIPTextModelWithProjection if projected and family == "sd3" else CLIPTextModel
    model = _empty(cls, CLIPTextConfig(**cfg))
    sd = part.state_dict
    if not hasattr(model, "text_model"):  # transformers >= 5.6 flattened CLIPTextModel
        sd = {k.removeprefix("text_model."): v for k, v in sd.items()}
    return _fill(model, sd, what, name, dtype)


def _tokenizers(family: str, t5_max_length: int) -> dict:
    from modules.models.tokenizer import EOS, build_clip_tokenizer, build_t5_tokenizer

    t5 = build_t5_tokenizer(t5_max_length)
    if family == "flux":
        return {"tokenizer": build_clip_tokenizer(EOS), "tokenizer_2": t5}
    return {"tokenizer": build_clip_tokenizer(EOS), "tokenizer_2": build_clip_tokenizer("!"), "tokenizer_3": t5}


def _encoder_slots(family: str, encoders: Mapping) -> dict:
    """diffusers' pipeline names for the encoders (Flux: CLIP-L, T5; SD3: CLIP-L, CLIP-G, T5)."""
    if family == "flux":
        return {"text_encoder": encoders.get("clip_l"), "text_encoder_2": encoders.get("t5")}
    return {"text_encoder": encoders.get("clip_l"), "text_encoder_2": encoders.get("clip_g"),
            "text_encoder_3": encoders.get("t5")}


def load_flow_single_file(path: Path, sd: dict, spec: ModelSpec, device_config: DeviceConfig, *, name: str,
                          title: str | None, shorthash: str | None, sources: PartSources | None = None):
    """A Flux/SD3 checkpoint file whose state dict `sd` was read already; `sd` is emptied as parts are built."""
    from modules.models.loader import LoadedModel, ModelLoadError, _apply_attention, _finish, read_state_dict

    sources = sources or PartSources()
    flow = spec.flow
    if any(".quant_state.bitsandbytes__" in k or k.endswith(".absmax") for k in sd):
        raise ModelLoadError(f"{name}: a bitsandbytes NF4/FP4 checkpoint (Forge's -bnb-nf4 files), which this version "
                             "does not read; use the GGUF (e.g. Q4_K) or fp8 release of the same model")
    dt, vdt = device_config.dtype, device_config.vae_dtype
    parts: dict[str, flow_parts.Part] = {}
    for role, prefix in spec.te_prefixes.items():
        parts[role] = flow_parts.text_encoder_part(sd, role, prefix, path.name)
    if spec.defaults.get("has_vae"):
        parts["vae"] = flow_parts.vae_part(sd, flow.family, path.name)
    wanted = [r for r in (*REQUIRED_PARTS[flow.family], "vae") if r not in parts]
    found_files = {role: find_part(role, sources) for role in wanted}
    missing = [role for role, path in found_files.items() if path is None]
    if missing:
        raise ModelLoadError(missing_parts_message(name, spec.variant, missing, sources))
    for role, found in found_files.items():
        part_sd = read_state_dict(found)
        parts[role] = (flow_parts.vae_part(part_sd, flow.family, found.name) if role == "vae"
                       else flow_parts.text_encoder_part(part_sd, role, "", found.name))
        log.info("%s: %s from %s", name, flow_parts.ROLE_LABELS[role], found)
        if role != "vae":
            spec.text_encoders[role] = parts[role].config
    transformer = build_transformer(flow, sd, name, dt)
    sd.clear()
    vae = build_flow_vae(parts.pop("vae"), name, vdt)
    spec.vae = dict(vae.config)
    encoders = {role: build_part_encoder(part, name, dt, flow.family) for role, part in parts.items()}
    parts.clear()
    slots = {k: _finish(v, device_config, dt) for k, v in _encoder_slots(flow.family, encoders).items()}
    model = LoadedModel(
        name=name, title=title or name, filename=path, spec=spec,
        unet=_finish(transformer, device_config, dt), vae=_finish(vae, device_config, vdt),
        scheduler_config=spec.scheduler, device_config=device_config, shorthash=shorthash,
        **slots, **_tokenizers(flow.family, spec.defaults["t5_max_length"]),
    )
    _apply_attention(model.unet, device_config)
    return model


def load_flow_diffusers_folder(path: Path, device_config: DeviceConfig, *, name: str, title: str | None,
                               shorthash: str | None):
    """A diffusers FluxPipeline / StableDiffusion3Pipeline folder, from disk only."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel, SD3Transformer2DModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, T5EncoderModel

    from modules.models.loader import LoadedModel, ModelLoadError, _apply_attention, _finish

    index = json.loads((path / "model_index.json").read_text())
    family = "flux" if "Flux" in index.get("_class_name", "") else "sd3"
    dt, vdt = device_config.dtype, device_config.vae_dtype
    kw = dict(local_files_only=True, torch_dtype=dt)
    classes = ({"text_encoder": CLIPTextModel, "text_encoder_2": T5EncoderModel} if family == "flux" else
               {"text_encoder": CLIPTextModelWithProjection, "text_encoder_2": CLIPTextModelWithProjection,
                "text_encoder_3": T5EncoderModel})
    try:
        cls = FluxTransformer2DModel if family == "flux" else SD3Transformer2DModel
        transformer = cls.from_pretrained(path, subfolder="transformer", **kw)
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", **{**kw, "torch_dtype": vdt})
        encoders = {slot: c.from_pretrained(path, subfolder=slot, **kw) for slot, c in classes.items()
                    if (path / slot).is_dir()}
    except (OSError, ValueError, EnvironmentError) as e:
        raise ModelLoadError(f"{name}: cannot load diffusers folder: {e}") from None
    missing = [slot for slot in classes if slot not in encoders]
    if missing:
        raise ModelLoadError(f"{name}: the diffusers folder has no {', '.join(missing)}/ (needed by {family})")
    flow = FlowTransformerSpec(family, "", "diffusers", "", dict(transformer.config))
    from modules.models.detect_flow import _flux_variant, _sd3_variant

    flow.variant = _flux_variant(flow.config) if family == "flux" else _sd3_variant(flow.config)
    scheduler, defaults = variant_defaults(flow)
    sched_file = path / "scheduler" / "scheduler_config.json"
    if sched_file.is_file():
        scheduler = json.loads(sched_file.read_text())
    spec = ModelSpec(family=family, inpainting=flow.variant == "Flux.1 Fill", prediction_type="flow",
                     unet=dict(transformer.config), vae=dict(vae.config),
                     text_encoders={k: v.config.to_dict() for k, v in encoders.items()}, scheduler=scheduler,
                     variant=flow.variant, defaults={**defaults, "has_vae": True}, flow=flow)
    model = LoadedModel(
        name=name, title=title or name, filename=path, spec=spec,
        unet=_finish(transformer.eval().requires_grad_(False), device_config, dt),
        vae=_finish(vae.eval().requires_grad_(False), device_config, vdt),
        scheduler_config=scheduler, device_config=device_config, shorthash=shorthash,
        **{k: _finish(v.eval().requires_grad_(False), device_config, dt) for k, v in encoders.items()},
        **_tokenizers(family, defaults["t5_max_length"]),
    )
    _apply_attention(model.unet, device_config)
    return model


def is_flow_folder(path: Path) -> bool:
    index = Path(path) / "model_index.json"
    if not index.is_file():
        return False
    try:
        name = json.loads(index.read_text()).get("_class_name", "")
    except ValueError:
        return False
    return name.startswith(("Flux", "StableDiffusion3"))



__all__ = ["PartSources", "find_part", "load_flow_single_file", "load_flow_diffusers_folder", "is_flow_folder"]

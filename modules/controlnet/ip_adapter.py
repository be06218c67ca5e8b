"""IP-Adapter (Tencent AI Lab): a picture as a prompt. Files as users have them in models/ControlNet
(`ip-adapter_sd15.safetensors`, `ip-adapter-plus_sd15`, `ip-adapter-plus-face_sd15`, `ip-adapter_sdxl_vit-h`, the
`.bin` originals), the CLIP vision encoder from models/clip_vision.

The adapter adds, in every cross-attention layer, a second attention over image tokens (diffusers'
IPAdapterAttnProcessor2_0, loaded by diffusers' own converter). Its image tokens come from the CLIP vision encoder:
the projected image embedding (the plain adapters) or the penultimate hidden states (the "plus" ones, through their
resampler); the negative prompt's rows get a zero embedding (plain) or the encoding of a black picture (plus), as
diffusers' pipelines do. The encoder is chosen by shape: the one whose width the adapter reads.
"""
from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from modules.controlnet.detect import ControlNetFileError

CLIP_VISION_EXTENSIONS = (".safetensors", ".bin", ".pth", ".pt")
INSTANT_ID_FACE_WIDTH = 512  # a resampler this wide reads ArcFace's embedding, not a CLIP encoder's tokens


@dataclass
class IPAdapterWeights:
    """An IP-Adapter file split as diffusers' loader takes it."""

    state_dict: dict  # {"image_proj": {...}, "ip_adapter": {...}}
    plus: bool  # reads the encoder's penultimate hidden states (resampler) instead of its image embedding
    clip_width: int  # the encoder output it reads: projection width (plain) or hidden width (plus)
    config: Any  # cross_attention_dim, as the other control models' configs carry it
    faceid: str | None = None  # "plain" | "plus": reads a face embedding (face_embed.py), "plus" also CLIP-H tokens
    shortcut: bool = False  # FaceID Plus v2: the face tokens plus the resampler's output (set from the file name)
    instant_id: bool = False  # InstantID's adapter: its resampler reads a 512-wide face embedding (instant_id.py)

    @property
    def dtype(self):
        return next(iter(self.state_dict["ip_adapter"].values())).dtype


def is_ip_adapter(sd: Mapping) -> bool:
    return any(k.startswith("image_proj.") for k in sd) and any(k.startswith("ip_adapter.") for k in sd)


def parse(sd: Mapping) -> tuple[IPAdapterWeights, str | None]:
    """The adapter and the family it was trained for (from its key/value width)."""
    image_proj = {k.removeprefix("image_proj."): v for k, v in sd.items() if k.startswith("image_proj.")}
    layers = {k.removeprefix("ip_adapter."): v for k, v in sd.items() if k.startswith("ip_adapter.")}
    key = next((k for k in layers if k.endswith("to_k_ip.weight")), None)
    if key is None:
        raise ControlNetFileError("an IP-Adapter without to_k_ip layers")
    cross = int(layers[key].shape[1])
    faceid = None
    if "perceiver_resampler.proj_in.weight" in image_proj:  # FaceID Plus (v1/v2): face embedding + CLIP-H tokens
        plus, width, faceid = True, int(image_proj["perceiver_resampler.proj_in.weight"].shape[1]), "plus"
    elif "norm.weight" in image_proj and "proj.2.weight" in image_proj and "proj.3.weight" not in image_proj:
        plus, width, faceid = False, int(image_proj["proj.0.weight"].shape[1]), "plain"  # FaceID: an MLP on the face
    elif "proj.weight" in image_proj:
        plus, width = False, int(image_proj["proj.weight"].shape[-1])
    elif "proj_in.weight" in image_proj:
        plus, width = True, int(image_proj["proj_in.weight"].shape[1])
    elif "proj.0.weight" in image_proj:  # "full" (face) adapters: an MLP on the image embedding
        plus, width = False, int(image_proj["proj.0.weight"].shape[1])
    elif "body.0.weight" in image_proj and "mapping_0.0.weight" in image_proj:  # PuLID's IDEncoder (pulid.py)
        plus, width = False, int(image_proj["body.0.weight"].shape[1])
    else:
        raise ControlNetFileError("an IP-Adapter whose image projection this program does not know")
    weights = IPAdapterWeights({"image_proj": image_proj, "ip_adapter": layers}, plus, width,
                               SimpleNamespace(cross_attention_dim=cross), faceid=faceid,
                               instant_id="latents" in image_proj and width == INSTANT_ID_FACE_WIDTH)
    # The released adapters' text widths name their family; another width is checked against the UNet's alone.
    return weights, {768: "sd1", 1024: "sd2", 2048: "sdxl"}.get(cross)


# ---------------------------------------------------------------------------------------------------------------
# The CLIP vision encoder


def vision_config(sd: Mapping) -> dict:
    """CLIPVisionConfig from an HF-layout encoder's shapes. ViT-L/H/bigG all use 16 heads (not in any shape)."""
    patch = sd["vision_model.embeddings.patch_embedding.weight"].shape
    positions = sd["vision_model.embeddings.position_embedding.weight"].shape[0]
    hidden = int(patch[0])
    layers = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith("vision_model.encoder.layers."))
    side = int(round((positions - 1) ** 0.5))
    heads = 16 if hidden in (1024, 1280, 1664) else max(1, hidden // 64)
    return {"hidden_size": hidden, "intermediate_size": int(sd["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0]),
            "num_hidden_layers": layers, "num_attention_heads": heads, "patch_size": int(patch[2]),
            "image_size": side * int(patch[2]), "num_channels": int(patch[1]),
            "projection_dim": int(sd["visual_projection.weight"].shape[0]),
            # OpenAI's ViT-L/14 uses quick_gelu; the OpenCLIP ViT-H/bigG encoders IP-Adapters use, gelu
            "hidden_act": "quick_gelu" if hidden == 1024 else "gelu"}


def _header_widths(path: Path) -> tuple[int, int] | None:
    """(hidden, projection) widths of an encoder file without loading it (safetensors), else by loading it."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                return (f.get_slice("vision_model.embeddings.patch_embedding.weight").get_shape()[0],
                        f.get_slice("visual_projection.weight").get_shape()[0])
        from modules.models.loader import read_state_dict

        sd = read_state_dict(path)
        return (sd["vision_model.embeddings.patch_embedding.weight"].shape[0], sd["visual_projection.weight"].shape[0])
    except Exception:  # not an encoder in the HF layout: not a candidate
        return None


def find_encoder(dirs: list[Path], weights: IPAdapterWeights) -> Path:
    """The encoder whose output width the adapter reads (hidden width for "plus", projection width otherwise)."""
    seen = []
    for folder in dirs:
        if not folder.is_dir():
            continue
        for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in CLIP_VISION_EXTENSIONS):
            widths = _header_widths(path)
            if widths is None:
                continue
            seen.append(path.name)
            if widths[0 if weights.plus else 1] == weights.clip_width:
                return path
    where = " or ".join(str(d) for d in dirs)
    kind = "hidden" if weights.plus else "projection"
    found = f" (found {', '.join(seen)}, of other widths)" if seen else ""
    raise ControlNetFileError(f"no CLIP vision encoder with {kind} width {weights.clip_width} in {where}{found}: "
                              "put the encoder this IP-Adapter was trained with there (clip_h for the SD1.5 and "
                              "vit-h adapters, clip_g for SDXL's)")


def load_encoder(path: Path, device, dtype):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from modules.models.loader import _empty, _fill, read_state_dict

    sd = read_state_dict(path)
    model = _empty(CLIPVisionModelWithProjection, CLIPVisionConfig(**vision_config(sd)))
    sd = {k: v for k, v in sd.items() if not k.endswith("position_ids")}
    return _fill(model, sd, "the CLIP vision encoder", path.name, dtype).to(device)


def image_processor(encoder):
    """CLIP's own preprocessing (shortest side, centre crop, OpenAI mean/std) at the encoder's size."""
    from transformers import CLIPImageProcessor

    size = encoder.config.image_size
    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def encode_all(encoder, images: list, plus: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative) for several pictures of one unit, one per picture along dim 1 (the attached projection
    averages their tokens, as the extension's "multi-inputs" do)."""
    pairs = [encode(encoder, image, plus) for image in images]
    return torch.cat([p for p, _ in pairs], dim=1), torch.cat([n for _, n in pairs], dim=1)


@torch.no_grad()
def encode(encoder, image, plus: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative) image tokens for one picture as diffusers' pipelines make them: the projected embedding
    and zeros, each (1, 1, width), or the penultimate hidden states of the picture and of a black one, each
    (1, 1, tokens, width) (one picture per prompt row)."""
    pixels = image_processor(encoder)(images=image.convert("RGB"), return_tensors="pt").pixel_values
    pixels = pixels.to(device=encoder.device, dtype=encoder.dtype)
    if plus:
        positive = encoder(pixels, output_hidden_states=True).hidden_states[-2]
        negative = encoder(torch.zeros_like(pixels), output_hidden_states=True).hidden_states[-2]
        return positive[:, None], negative[:, None]
    embeds = encoder(pixels).image_embeds[:, None]
    return embeds, torch.zeros_like(embeds)


# ---------------------------------------------------------------------------------------------------------------
# Patching the UNet for one generation


@contextlib.contextmanager
def attached(unet, adapters: list[IPAdapterWeights], average_pictures: bool = True):
    """The adapters' attention processors and image projections on `unet` for the `with` block; the UNet's own
    processors, projection and config are put back afterwards (also after an error or an interrupt).
    `average_pictures`: a unit's several pictures give their mean tokens (False: diffusers' own projection)."""
    if not adapters:
        yield
        return
    processors = dict(unet.attn_processors)
    projection, hid_type = unet.encoder_hid_proj, unet.config.encoder_hid_dim_type
    try:
        unet._load_ip_adapter_weights([a.state_dict for a in adapters], low_cpu_mem_usage=False)
        layers = unet.encoder_hid_proj.image_projection_layers
        for i, adapter in enumerate(adapters):
            if adapter.faceid == "plus":
                layers[i] = PackedFaceIDPlusProjection(layers[i], adapter.shortcut)
        if average_pictures:
            unet.encoder_hid_proj = AveragedImageProjection(unet.encoder_hid_proj)
        yield
    finally:  # the projection first: a "plus" resampler's own attention layers count as the UNet's while attached
        unet.encoder_hid_proj = projection
        unet.register_to_config(encoder_hid_dim_type=hid_type)
        unet.set_attn_processor(processors)


class AveragedImageProjection(torch.nn.Module):
    """diffusers' MultiIPAdapterImageProjection, except that a unit's several pictures give the mean of their image
    tokens (the extension's ImageEmbed.average_of) where diffusers would line all their tokens up; one picture: the
    same tokens as diffusers'."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    @property
    def image_projection_layers(self):
        return self.inner.image_projection_layers

    def forward(self, image_embeds: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for embeds, layer in zip(image_embeds, self.inner.image_projection_layers):
            batch, pictures = embeds.shape[:2]
            tokens = layer(embeds.reshape((batch * pictures,) + embeds.shape[2:]))
            out.append(tokens.reshape((batch, pictures) + tokens.shape[1:]).mean(dim=1, keepdim=True))
        return out


class PackedFaceIDPlusProjection(torch.nn.Module):
    """diffusers' IPAdapterFaceIDPlusImageProjection reading its CLIP tokens from its input, row by row: each row is
    the face embedding (zero-padded, first) followed by the CLIP hidden states (pack_faceid_plus), so the negative
    prompt's rows get their own (zero face, empty picture) pair. Unpacked face embeddings (diffusers' own call, with
    `clip_embeds` set on the projection) pass straight through."""

    def __init__(self, inner, shortcut: bool):
        super().__init__()
        self.inner = inner
        inner.shortcut, inner.shortcut_scale = shortcut, 1.0  # the extension's v2: shortcut at scale 1

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        if embeds.ndim == 2:
            return self.inner(embeds)
        id_width = self.inner.proj.net[0].proj.in_features
        clip_width = self.inner.proj_in.in_features
        self.inner.clip_embeds = embeds[:, None, 1:, :clip_width]
        try:
            return self.inner(embeds[:, 0, :id_width])
        finally:
            self.inner.clip_embeds = None


def pack_faceid_plus(face: torch.Tensor, clip_tokens: torch.Tensor) -> torch.Tensor:
    """One FaceID Plus input: (..., id) face embedding and (..., tokens, width) CLIP hidden states as
    (..., 1 + tokens, max(id, width)), the face first (PackedFaceIDPlusProjection reads it back)."""
    width = max(face.shape[-1], clip_tokens.shape[-1])
    out = clip_tokens.new_zeros(clip_tokens.shape[:-2] + (1 + clip_tokens.shape[-2], width))
    out[..., 0, :face.shape[-1]] = face.to(out.dtype)
    out[..., 1:, :clip_tokens.shape[-1]] = clip_tokens
    return out


def set_scales(unet, scales: list[float]) -> None:
    """Each adapter's weight in every IP attention layer (0 outside its guidance window)."""
    for processor in unet.attn_processors.values():
        if hasattr(processor, "scale") and isinstance(processor.scale, list):
            processor.scale = list(scales)


def region_mask(mask, width: int, height: int):
    """A unit's effective region mask as diffusers' IP-Adapter attention reads it ((1, 1, H, W)); None: everywhere."""
    if mask is None:
        return None
    from diffusers.image_processor import IPAdapterMaskProcessor

    out = IPAdapterMaskProcessor().preprocess([mask], height=height, width=width)
    return out.reshape(1, out.shape[0], out.shape[2], out.shape[3])

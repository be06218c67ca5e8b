"""Tell a checkpoint's family and derive every component's config from its tensor shapes.

The architecture comes from the file itself (as ComfyUI's model detection does): channel widths, block counts,
attention placement, transformer depth, context width and text-encoder sizes are read off the state dict. The
shipped family templates (`configs/<family>/`) supply only what shapes cannot tell: head sizes, activation,
scheduler and prediction type. That is why distilled models (SSD-1B, small-sd, BK-SDM) and tiny test models load
through the same code as a full-size checkpoint.
"""
from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from modules.models.detect_flow import FlowTransformerSpec, detect_flow_transformer

CONFIG_ROOT = Path(__file__).parent / "configs"
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
# safetensors metadata key holding a JSON architecture (unet/vae/text_encoder configs, prediction type, UI
# defaults) for models whose sizes no template knows, e.g. the bundled demo model (`modules/training/demo_recipe`).
ARCHITECTURE_KEY = "sd_webui_architecture"

FAMILY_LABELS = {
    "sd1": "SD 1.x",
    "sd2": "SD 2.x",
    "sdxl": "SDXL",
    "sdxl_refiner": "SDXL refiner",
    "flux": "Flux.1",
    "sd3": "SD3",
}
FLOW_FAMILIES = ("flux", "sd3")


class UnsupportedModelError(ValueError):
    """The file is not a checkpoint of a family we run (or is a LoRA, a VAE, an unknown architecture...)."""


@dataclass
class ModelSpec:
    """Everything the loader needs to build a checkpoint's components."""

    family: str
    inpainting: bool
    prediction_type: str
    unet: dict
    vae: dict
    text_encoders: dict[str, dict] = field(default_factory=dict)
    scheduler: dict = field(default_factory=dict)
    te_prefixes: dict[str, str] = field(default_factory=dict)
    te_layouts: dict[str, str] = field(default_factory=dict)
    embedded: dict = field(default_factory=dict)  # the file's ARCHITECTURE_KEY metadata, when it has one
    variant: str = ""  # Flux/SD3: what users call it ("Flux.1 dev", "SD3.5 Large")
    defaults: dict = field(default_factory=dict)  # Flux/SD3: what shapes cannot tell (T5 length, CFG defaults)
    flow: "FlowTransformerSpec | None" = None  # Flux/SD3: the transformer's layout, prefix and config

    @property
    def is_demo(self) -> bool:
        return bool(self.embedded.get("demo"))

    @property
    def label(self) -> str:
        if self.variant:
            return self.variant
        label = FAMILY_LABELS[self.family]
        if self.family == "sd2":
            label += " (v-prediction)" if self.prediction_type == "v_prediction" else " (epsilon)"
        return label + (" inpainting" if self.inpainting else " InstructPix2Pix" if self.instruct_pix2pix else "")

    @property
    def instruct_pix2pix(self) -> bool:
        """An InstructPix2Pix model (A1111's "edit" models): an SD 1.x UNet reading the picture it edits as 4 more
        input channels next to the latents (8 in all)."""
        return self.family == "sd1" and self.unet.get("in_channels") == 8

    @property
    def is_sdxl(self) -> bool:
        return self.family in ("sdxl", "sdxl_refiner")

    @property
    def is_flow(self) -> bool:
        """A flow-matching transformer model (Flux.1, SD3/SD3.5)."""
        return self.family in FLOW_FAMILIES


def load_template(family: str, component: str) -> dict:
    name = "scheduler_config.json" if component == "scheduler" else "config.json"
    path = CONFIG_ROOT / family / component / name
    if component == "model_index":
        path = CONFIG_ROOT / family / "model_index.json"
    return json.loads(path.read_text())


def load_template_file(relative: str) -> dict:
    """A shipped template by its path under configs/ (e.g. "t5xxl/config.json")."""
    return json.loads((CONFIG_ROOT / relative).read_text())


def _indices(keys, prefix: str) -> list[int]:
    """Distinct integer indices N among keys that start with `prefix` + 'N.'."""
    found = set()
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    for k in keys:
        m = pat.match(k)
        if m:
            found.add(int(m.group(1)))
    return sorted(found)


def _shape(sd: Mapping, key: str) -> tuple[int, ...]:
    return tuple(sd[key].shape)


# ---------------------------------------------------------------------------------------------------------------
# Text encoders


def _clip_l_config(sd: Mapping, prefix: str) -> dict:
    """CLIP ViT-L style encoder (`transformer.text_model.*`): SD1.x and SDXL's first encoder."""
    p = prefix + "transformer.text_model."
    vocab, hidden = _shape(sd, p + "embeddings.token_embedding.weight")
    cfg = load_template("sd1", "text_encoder")
    cfg.update(
        vocab_size=vocab,
        hidden_size=hidden,
        max_position_embeddings=_shape(sd, p + "embeddings.position_embedding.weight")[0],
        num_hidden_layers=len(_indices(sd, p + "encoder.layers.")),
        intermediate_size=_shape(sd, p + "encoder.layers.0.mlp.fc1.weight")[0],
        num_attention_heads=max(1, hidden // 64),
    )
    return cfg


def _open_clip_config(sd: Mapping, prefix: str, template_family: str, template_component: str, drop_last: bool) -> dict:
    """OpenCLIP encoder (`model.transformer.resblocks.*`): SD2.x's ViT-H and SDXL's bigG.

    SD2.x conditions on the penultimate layer, so diffusers' SD2 text encoder has one layer fewer than the file.
    """
    p = prefix + "model."
    vocab, hidden = _shape(sd, p + "token_embedding.weight")
    layers = len(_indices(sd, p + "transformer.resblocks."))
    cfg = load_template(template_family, template_component)
    cfg.update(
        vocab_size=vocab,
        hidden_size=hidden,
        max_position_embeddings=_shape(sd, p + "positional_embedding")[0],
        num_hidden_layers=layers - 1 if drop_last else layers,
        intermediate_size=_shape(sd, p + "transformer.resblocks.0.mlp.c_fc.weight")[0],
        num_attention_heads=max(1, hidden // 64),
    )
    if p + "text_projection" in sd:
        cfg["projection_dim"] = _shape(sd, p + "text_projection")[1]
    return cfg


# ---------------------------------------------------------------------------------------------------------------
# UNet


def unet_config_from_ldm(sd: Mapping, template: dict, head_convention: str, num_time_ids: int = 6,
                         pooled_dim: int | None = None) -> dict:
    """Derive a diffusers UNet2DConditionModel config from an LDM (`input_blocks/...`) UNet state dict.

    head_convention: "fixed8" (SD1.x: 8 heads everywhere) or "dim64" (SD2.x/SDXL: 64 channels per head).
    """
    p = UNET_PREFIX
    cfg = copy.deepcopy(template)
    model_channels = _shape(sd, p + "input_blocks.0.0.weight")[0]
    cfg["in_channels"] = _shape(sd, p + "input_blocks.0.0.weight")[1]
    cfg["out_channels"] = _shape(sd, p + "out.2.weight")[0]

    blocks = _indices(sd, p + "input_blocks.")
    levels: list[list[int]] = [[]]
    for i in blocks[1:]:
        if p + f"input_blocks.{i}.0.op.weight" in sd:
            levels.append([])
        else:
            levels[-1].append(i)
    layers = [len(level) for level in levels]
    channels, down_types, depths = [], [], []
    for level in levels:
        first = level[0]
        channels.append(_shape(sd, p + f"input_blocks.{first}.0.out_layers.3.weight")[0])
        # Depth per layer: distilled models may prune transformer blocks unevenly within a level.
        tb = [len(_indices(sd, p + f"input_blocks.{i}.1.transformer_blocks.")) for i in level]
        down_types.append("CrossAttnDownBlock2D" if any(tb) else "DownBlock2D")
        depths.append((tb[0] if len(set(tb)) == 1 else tb) if any(tb) else 1)

    out_blocks = _indices(sd, p + "output_blocks.")
    per_up = len(out_blocks) // len(levels)
    up_depths, up_types = [], []
    for u in range(len(levels)):
        group = out_blocks[u * per_up:(u + 1) * per_up]
        block_depths = [len(_indices(sd, p + f"output_blocks.{b}.1.transformer_blocks.")) for b in group]
        up_types.append("CrossAttnUpBlock2D" if any(block_depths) else "UpBlock2D")
        up_depths.append(block_depths)

    cfg["block_out_channels"] = channels
    cfg["down_block_types"] = down_types
    cfg["up_block_types"] = up_types
    cfg["layers_per_block"] = layers[0] if len(set(layers)) == 1 else layers
    if channels[0] != model_channels:
        raise UnsupportedModelError("UNet input conv width does not match its first block")

    mid_tb = _indices(sd, p + "middle_block.1.transformer_blocks.")
    if not any(k.startswith(p + "middle_block.") for k in sd):
        cfg["mid_block_type"] = None
    elif mid_tb:
        cfg["mid_block_type"] = "UNetMidBlock2DCrossAttn"
    else:
        cfg["mid_block_type"] = "UNetMidBlock2D"

    attn_key = next((k for k in sd if k.startswith(p) and k.endswith("attn2.to_k.weight")), None)
    if attn_key is not None:
        cfg["cross_attention_dim"] = _shape(sd, attn_key)[1]
        proj_key = attn_key.split("transformer_blocks.")[0] + "proj_in.weight"
        cfg["use_linear_projection"] = len(_shape(sd, proj_key)) == 2

    if head_convention == "fixed8":
        cfg["attention_head_dim"] = 8
    else:
        cfg["attention_head_dim"] = [max(1, c // 64) for c in channels]

    if "transformer_layers_per_block" in cfg or any(d != 1 for d in depths):
        cfg["transformer_layers_per_block"] = depths
        expected = [[d] * per_up for d, t in zip(reversed(depths), reversed(down_types))]
        attn_up = [d for d, t in zip(up_depths, up_types) if t == "CrossAttnUpBlock2D"]
        attn_expected = [e for e, t in zip(expected, up_types) if t == "CrossAttnUpBlock2D"]
        if attn_up != attn_expected:
            # Distilled SDXL (SSD-1B, Vega) prune transformer layers per up block unevenly.
            cfg["reverse_transformer_layers_per_block"] = [d if t == "CrossAttnUpBlock2D" else [1] * per_up
                                                           for d, t in zip(up_depths, up_types)]
        last = depths[-1][0] if isinstance(depths[-1], list) else depths[-1]  # diffusers' mid block takes [-1]([0])
        if mid_tb and len(mid_tb) != last:
            raise UnsupportedModelError(f"mid block depth {len(mid_tb)} differs from the last level's {last}")

    label = p + "label_emb.0.0.weight"
    if label in sd:
        adm_in = _shape(sd, label)[1]
        cfg["addition_embed_type"] = "text_time"
        cfg["projection_class_embeddings_input_dim"] = adm_in
        if pooled_dim is not None:
            cfg["addition_time_embed_dim"] = (adm_in - pooled_dim) // num_time_ids
    else:
        for key in ("addition_embed_type", "addition_time_embed_dim", "projection_class_embeddings_input_dim"):
            cfg.pop(key, None)
    return cfg


# ---------------------------------------------------------------------------------------------------------------
# VAE


def vae_config_from_ldm(sd: Mapping, template: dict, prefix: str = VAE_PREFIX) -> dict:
    """Derive an AutoencoderKL config from an LDM VAE state dict (`encoder.down.N.block.M...`)."""
    p = prefix
    cfg = copy.deepcopy(template)
    levels = _indices(sd, p + "encoder.down.")
    channels = [_shape(sd, p + f"encoder.down.{i}.block.0.conv1.weight")[0] for i in levels]
    cfg["block_out_channels"] = channels
    cfg["down_block_types"] = ["DownEncoderBlock2D"] * len(levels)
    cfg["up_block_types"] = ["UpDecoderBlock2D"] * len(levels)
    cfg["layers_per_block"] = len(_indices(sd, p + "encoder.down.0.block."))
    cfg["in_channels"] = _shape(sd, p + "encoder.conv_in.weight")[1]
    cfg["out_channels"] = _shape(sd, p + "decoder.conv_out.weight")[0]
    cfg["latent_channels"] = _shape(sd, p + "decoder.conv_in.weight")[1]
    cfg["mid_block_add_attention"] = any(k.startswith(p + "encoder.mid.attn_1.") for k in sd)
    return cfg


def vae_prefix(sd: Mapping) -> str | None:
    """Where the LDM VAE lives in a state dict: inside a checkpoint, or a standalone VAE file."""
    for prefix in (VAE_PREFIX, "vae.", ""):
        if prefix + "encoder.conv_in.weight" in sd:
            return prefix
    return None


# ---------------------------------------------------------------------------------------------------------------
# Family


def _prediction_type(family: str, sd: Mapping, hint: str | None) -> str:
    """epsilon or v_prediction; "probe" for an SD 2.x file with no hint (the loader then tests the UNet)."""
    if hint:
        return hint
    if "v_pred" in sd:
        return "v_prediction"
    return "probe" if family == "sd2" else "epsilon"


def detect(sd: Mapping, name: str = "model", prediction_hint: str | None = None,
           embedded: Mapping | None = None) -> ModelSpec:
    """Return the ModelSpec of an A1111-layout state dict, or raise UnsupportedModelError naming `name`.

    `embedded`: an architecture the file carries (ARCHITECTURE_KEY); it overrides what the shapes gave."""
    flow = detect_flow_transformer(sd)  # ComfyUI's Flux/SD3 files use the UNet's prefix too
    if flow is not None:
        from modules.models.flow_spec import flow_model_spec

        return flow_model_spec(sd, flow)
    if not any(k.startswith(UNET_PREFIX) for k in sd):
        what = _guess_other(sd)
        raise UnsupportedModelError(f"unsupported model {name}: no Stable Diffusion UNet in it{what}")
    try:
        spec = _detect(sd, prediction_hint)
        if embedded:
            apply_embedded(spec, embedded)
        return spec
    except UnsupportedModelError as e:  # the reasons _detect gives do not know the file's name
        raise UnsupportedModelError(f"unsupported model {name}: {e}") from None
    except (KeyError, IndexError) as e:
        raise UnsupportedModelError(f"unsupported model {name}: unrecognised layout ({e})") from None


def apply_embedded(spec: ModelSpec, embedded: Mapping) -> None:
    """Overlay a file's own architecture on the derived configs: it knows what shapes cannot (head counts, norm
    groups, latent scale, sample size). The family and key layout still come from the shapes."""
    for part, config in (("unet", spec.unet), ("vae", spec.vae), *spec.text_encoders.items()):
        extra = embedded.get(part)
        if isinstance(extra, Mapping):
            config.update(extra)
    prediction = embedded.get("prediction_type")
    if prediction in ("epsilon", "v_prediction"):
        spec.prediction_type = spec.scheduler["prediction_type"] = prediction
    spec.embedded = dict(embedded)


def _guess_other(sd: Mapping) -> str:
    keys = list(sd)[:2000]
    if any(k.startswith(("lora_", "lora_unet")) or ".lora_down." in k or ".lora_A." in k for k in keys):
        return " (it looks like a LoRA: put it in models/Lora)"
    if vae_prefix(sd) is not None:
        return " (it looks like a VAE: put it in models/VAE)"
    if any(k.startswith(("double_blocks.", "joint_blocks.", "model.diffusion_model.joint_blocks")) for k in keys):
        return " (an SD3/Flux model with tensors missing)"
    if any(k.startswith(("encoder.block.", "text_model.", "text_encoders.")) for k in keys):
        return " (it looks like a text encoder: put it in models/text_encoder)"
    return ""


def _detect(sd: Mapping, prediction_hint: str | None) -> ModelSpec:
    if "conditioner.embedders.1.model.token_embedding.weight" in sd:
        family = "sdxl"
    elif "conditioner.embedders.0.model.token_embedding.weight" in sd:
        family = "sdxl_refiner"
    elif "cond_stage_model.model.token_embedding.weight" in sd:
        family = "sd2"
    elif "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in sd:
        family = "sd1"
    else:
        family = _family_from_context(sd)

    text_encoders, prefixes, layouts = {}, {}, {}
    pooled_dim = None
    if family == "sd1":
        text_encoders["text_encoder"] = _clip_l_config(sd, "cond_stage_model.")
        prefixes["text_encoder"], layouts["text_encoder"] = "cond_stage_model.", "clip_l"
    elif family == "sd2":
        text_encoders["text_encoder"] = _open_clip_config(sd, "cond_stage_model.", "sd2", "text_encoder", drop_last=True)
        prefixes["text_encoder"], layouts["text_encoder"] = "cond_stage_model.", "open_clip"
    elif family == "sdxl":
        text_encoders["text_encoder"] = _clip_l_config(sd, "conditioner.embedders.0.")
        text_encoders["text_encoder_2"] = _open_clip_config(sd, "conditioner.embedders.1.", "sdxl", "text_encoder_2", drop_last=False)
        prefixes.update(text_encoder="conditioner.embedders.0.", text_encoder_2="conditioner.embedders.1.")
        layouts.update(text_encoder="clip_l", text_encoder_2="open_clip")
        pooled_dim = text_encoders["text_encoder_2"]["projection_dim"]
    elif family == "sdxl_refiner":
        text_encoders["text_encoder_2"] = _open_clip_config(sd, "conditioner.embedders.0.", "sdxl_refiner", "text_encoder_2", drop_last=False)
        prefixes["text_encoder_2"], layouts["text_encoder_2"] = "conditioner.embedders.0.", "open_clip"
        pooled_dim = text_encoders["text_encoder_2"]["projection_dim"]

    convention = "fixed8" if family == "sd1" else "dim64"
    unet = unet_config_from_ldm(sd, load_template(family, "unet"), convention,
                                num_time_ids=5 if family == "sdxl_refiner" else 6, pooled_dim=pooled_dim)
    if unet["in_channels"] not in (4, 9) and not (family == "sd1" and unet["in_channels"] == 8):
        raise UnsupportedModelError(f"UNet with {unet['in_channels']} input channels (only 4, 9 for inpainting, or 8 "
                                    "for SD 1.x InstructPix2Pix)")
    vp = vae_prefix(sd)
    if vp is None:
        raise UnsupportedModelError("no VAE (first_stage_model) in the file")
    vae = vae_config_from_ldm(sd, load_template(family, "vae"), vp)
    prediction = _prediction_type(family, sd, prediction_hint)
    scheduler = load_template(family, "scheduler")
    scheduler["prediction_type"] = prediction
    return ModelSpec(
        family=family,
        inpainting=unet["in_channels"] == 9,
        prediction_type=prediction,
        unet=unet,
        vae=vae,
        text_encoders=text_encoders,
        scheduler=scheduler,
        te_prefixes=prefixes,
        te_layouts=layouts,
    )


def _family_from_context(sd: Mapping) -> str:
    attn = next((k for k in sd if k.startswith(UNET_PREFIX) and k.endswith("attn2.to_k.weight")), None)
    if attn is None:
        raise UnsupportedModelError("no text encoder and no cross-attention in the UNet")
    context = _shape(sd, attn)[1]
    raise UnsupportedModelError(f"the file has a UNet (context width {context}) but no text encoder")


def prediction_hint_from_yaml(path: Path) -> str | None:
    """A1111 reads a `.yaml` beside the checkpoint; `parameterization: "v"` marks a v-prediction model."""
    for candidate in (path.with_suffix(".yaml"), path.with_suffix(".yml")):
        if candidate.is_file():
            text = candidate.read_text(errors="replace")
            m = re.search(r"parameterization:\s*[\"']?(\w+)", text)
            if m:
                return "v_prediction" if m.group(1) == "v" else "epsilon"
            return "epsilon"
    return None

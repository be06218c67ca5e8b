"""diffusers → A1111 (LDM / "original" single-file) state-dict export.

diffusers only converts LDM → diffusers (`diffusers.loaders.single_file_utils`); this is the reverse, so the merger,
training and the test fixtures can write files in the layout users' real checkpoints have. Every function is the
exact inverse of diffusers' converter for the same component: feeding the output back through
`convert_ldm_unet_checkpoint` / `convert_ldm_vae_checkpoint` / `convert_ldm_clip_checkpoint` /
`convert_open_clip_checkpoint` gives back the original state dict.

The mappings are derived from the module structure (blocks, resnets, attentions actually present), not from the real
models' block counts, so any number of levels, layers per block or transformer depth works.

Returned tensors are detached views of the model's parameters (no copy): clone them before mutating.
"""
from __future__ import annotations

import math
import re

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."

FAMILIES = ("sd1", "sd1_inpaint", "sd2", "sd2_inpaint", "sdxl", "sdxl_inpaint", "sdxl_refiner")

# diffusers ResnetBlock2D submodule → LDM ResBlock submodule
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
# diffusers Attention (VAE mid block) → LDM AttnBlock (1x1 convs)
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",  # SDXL "text_time" (LDM num_classes="sequential")
    "add_embedding.linear_2": "label_emb.0.2",
    "class_embedding.linear_1": "label_emb.0.0",  # class_embed_type "projection"/"timestep"
    "class_embedding.linear_2": "label_emb.0.2",
    "class_embedding": "label_emb",  # num_class_embeds (nn.Embedding, upscaler)
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


_BLOCK_KEY = re.compile(r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)")


def _t(x: torch.Tensor) -> torch.Tensor:
    return x.detach().contiguous()


def _rename_sub(sub: str, table: dict[str, str]) -> str:
    """Rename the leading module path of `sub` ('norm1.weight' → 'in_layers.0.weight') using `table`."""
    for old, new in table.items():
        if sub.startswith(old + "."):
            return new + sub[len(old):]
    return sub


def _sequential_ids(blocks, first: int) -> tuple[list[list[int]], list[int | None], int]:
    """LDM numbers input/output blocks sequentially: one per resnet, plus one per down/upsampler (input side)."""
    ids, sampler_ids, i = [], [], first
    for block in blocks:
        ids.append(list(range(i, i + len(block.resnets))))
        i += len(block.resnets)
        sampler_ids.append(None)
        if getattr(block, "downsamplers", None):
            sampler_ids[-1] = i
            i += 1
    return ids, sampler_ids, i


def unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    """UNet2DConditionModel → LDM `openaimodel.UNetModel` keys (without the `model.diffusion_model.` prefix)."""
    sd = unet.state_dict()
    in_ids, down_ids, _ = _sequential_ids(unet.down_blocks, 1)
    out_ids = []
    i = 0
    for block in unet.up_blocks:
        out_ids.append(list(range(i, i + len(block.resnets))))
        i += len(block.resnets)
    mid = unet.mid_block
    mid_has_attn = mid is not None and len(getattr(mid, "attentions", ()) or ()) > 0

    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        new = None
        for old, repl in _UNET_TOP.items():
            if key.startswith(old + "."):
                new = repl + key[len(old):]
                break
        if new is None and (m := _BLOCK_KEY.match(key)):
            side, b, kind, j, sub = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
            if side == "down":
                if kind == "resnets":
                    new = f"input_blocks.{in_ids[b][j]}.0.{_rename_sub(sub, _UNET_RESNET)}"
                elif kind == "attentions":
                    new = f"input_blocks.{in_ids[b][j]}.1.{sub}"
                elif kind == "downsamplers":
                    # diffusers Downsample2D.conv ↔ LDM Downsample.op
                    new = f"input_blocks.{down_ids[b]}.0.op.{sub.removeprefix('conv.')}"
            else:
                if kind == "resnets":
                    new = f"output_blocks.{out_ids[b][j]}.0.{_rename_sub(sub, _UNET_RESNET)}"
                elif kind == "attentions":
                    new = f"output_blocks.{out_ids[b][j]}.1.{sub}"
                elif kind == "upsamplers":
                    # the upsampler sits after the last resnet (and its attention, when the block has one)
                    slot = 2 if len(getattr(unet.up_blocks[b], "attentions", ()) or ()) > 0 else 1
                    new = f"output_blocks.{out_ids[b][-1]}.{slot}.{sub}"
        elif new is None and (m := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key)):
            kind, k, sub = m.group(1), int(m.group(2)), m.group(3)
            if kind == "resnets":
                new = f"middle_block.{2 * k if mid_has_attn else k}.{_rename_sub(sub, _UNET_RESNET)}"
            else:
                new = f"middle_block.{2 * k + 1}.{sub}"
        if new is None:
            raise KeyError(f"unet_to_ldm: no LDM equivalent for UNet key {key!r}")
        out[new] = _t(value)
    return out


def vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    """AutoencoderKL → LDM `AutoencoderKL` keys (without the `first_stage_model.` prefix)."""
    sd = vae.state_dict()
    n_up = len(vae.decoder.up_blocks)
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        new = None
        if m := re.match(r"(encoder|decoder)\.conv_norm_out\.(.+)", key):
            new = f"{m.group(1)}.norm_out.{m.group(2)}"
        elif re.match(r"(encoder|decoder)\.conv_(in|out)\.|(post_)?quant_conv\.", key):
            new = key
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            new = f"encoder.down.{m.group(1)}.block.{m.group(2)}.{_rename_sub(m.group(3), _VAE_RESNET)}"
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.+)", key):
            new = f"encoder.down.{m.group(1)}.downsample.{m.group(2)}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            # LDM numbers decoder levels like the encoder (up.0 = full resolution); diffusers in execution order
            new = f"decoder.up.{n_up - 1 - int(m.group(1))}.block.{m.group(2)}.{_rename_sub(m.group(3), _VAE_RESNET)}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key):
            new = f"decoder.up.{n_up - 1 - int(m.group(1))}.upsample.{m.group(2)}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
            new = f"{m.group(1)}.mid.block_{int(m.group(2)) + 1}.{_rename_sub(m.group(3), _VAE_RESNET)}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key):
            new = f"{m.group(1)}.mid.attn_1.{_rename_sub(m.group(2), _VAE_ATTN)}"
            if value.ndim == 2:  # LDM's attention projections are 1x1 convs
                value = value[:, :, None, None]
        if new is None:
            raise KeyError(f"vae_to_ldm: no LDM equivalent for VAE key {key!r}")
        out[new] = _t(value)
    return out


def _text_model_state_dict(text_encoder) -> dict[str, torch.Tensor]:
    """State dict with the `text_model.` prefix, whatever the transformers version.

    transformers >= 5.6 flattened `CLIPTextModel` (keys start at `embeddings.`) while `CLIPTextModelWithProjection`
    still nests it under `text_model.`.
    """
    sd = text_encoder.state_dict()
    fixed = {}
    for key, value in sd.items():
        if not key.startswith(("text_model.", "text_projection.")):
            key = "text_model." + key
        fixed[key] = value
    return fixed


def clip_l_to_ldm(text_encoder) -> dict[str, torch.Tensor]:
    """CLIPTextModel → `transformer.text_model.*` (HF layout that A1111's FrozenCLIPEmbedder saves).

    Adds the `embeddings.position_ids` buffer real files carry (transformers no longer persists it).
    """
    out = {"transformer." + k: _t(v) for k, v in _text_model_state_dict(text_encoder).items()}
    n_pos = text_encoder.config.max_position_embeddings
    out.setdefault("transformer.text_model.embeddings.position_ids", torch.arange(n_pos, dtype=torch.int64)[None])
    return out


def _random_resblock(width: int, inner: int, dtype: torch.dtype, generator: torch.Generator) -> dict[str, torch.Tensor]:
    def rnd(*shape):
        return (torch.randn(*shape, generator=generator) * 0.02).to(dtype)

    return {
        "ln_1.weight": torch.ones(width, dtype=dtype),
        "ln_1.bias": torch.zeros(width, dtype=dtype),
        "attn.in_proj_weight": rnd(3 * width, width),
        "attn.in_proj_bias": rnd(3 * width),
        "attn.out_proj.weight": rnd(width, width),
        "attn.out_proj.bias": rnd(width),
        "ln_2.weight": torch.ones(width, dtype=dtype),
        "ln_2.bias": torch.zeros(width, dtype=dtype),
        "mlp.c_fc.weight": rnd(inner, width),
        "mlp.c_fc.bias": rnd(inner),
        "mlp.c_proj.weight": rnd(width, inner),
        "mlp.c_proj.bias": rnd(width),
    }


_OPEN_CLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "self_attn.out_proj": "attn.out_proj",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}


def open_clip_to_ldm(text_encoder, extra_layers: int = 0, seed: int = 0) -> dict[str, torch.Tensor]:
    """CLIPTextModel(WithProjection) → OpenCLIP text-tower keys (caller adds `...model.`).

    q/k/v are concatenated into `attn.in_proj_*`; `text_projection` is stored transposed (OpenCLIP multiplies
    `x @ proj`) and only written when the model has one. `extra_layers` appends random resblocks (seeded by
    `seed`): real SD2 files carry 24 resblocks while diffusers' SD2 encoder keeps 23 (SD2 uses the penultimate layer).
    """
    sd = _text_model_state_dict(text_encoder)
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    n_layers = 0
    for key, value in sd.items():
        if key == "text_projection.weight":
            out["text_projection"] = _t(value.T)
            continue
        sub = key.removeprefix("text_model.")
        if sub == "embeddings.token_embedding.weight":
            out["token_embedding.weight"] = _t(value)
        elif sub == "embeddings.position_embedding.weight":
            out["positional_embedding"] = _t(value)
        elif sub == "embeddings.position_ids":
            continue  # a buffer; OpenCLIP has no equivalent
        elif sub.startswith("final_layer_norm."):
            out["ln_final." + sub.removeprefix("final_layer_norm.")] = _t(value)
        elif m := re.match(r"encoder\.layers\.(\d+)\.(.+)", sub):
            n, rest = int(m.group(1)), m.group(2)
            n_layers = max(n_layers, n + 1)
            if qm := re.match(r"self_attn\.([qkv])_proj\.(weight|bias)", rest):
                qkv.setdefault((n, qm.group(2)), {})[qm.group(1)] = value
                continue
            renamed = _rename_sub(rest, _OPEN_CLIP_LAYER)
            if renamed == rest:
                raise KeyError(f"open_clip_to_ldm: no OpenCLIP equivalent for {key!r}")
            out[f"transformer.resblocks.{n}.{renamed}"] = _t(value)
        else:
            raise KeyError(f"open_clip_to_ldm: no OpenCLIP equivalent for {key!r}")
    for (n, kind), parts in qkv.items():
        name = "in_proj_weight" if kind == "weight" else "in_proj_bias"
        out[f"transformer.resblocks.{n}.attn.{name}"] = torch.cat([parts["q"], parts["k"], parts["v"]], 0).detach()
    if extra_layers:
        cfg = text_encoder.config
        dtype = out["token_embedding.weight"].dtype
        gen = torch.Generator().manual_seed(seed)
        for n in range(n_layers, n_layers + extra_layers):
            for k, v in _random_resblock(cfg.hidden_size, cfg.intermediate_size, dtype, gen).items():
                out[f"transformer.resblocks.{n}.{k}"] = v
    return out


def _open_clip_extras(out: dict[str, torch.Tensor], width: int, dtype: torch.dtype, seed: int) -> None:
    """Keys real OpenCLIP embedders carry that diffusers drops: `logit_scale`, and SD2's unused `text_projection`."""
    out.setdefault("logit_scale", torch.tensor(math.log(1 / 0.07), dtype=dtype))
    if "text_projection" not in out:
        gen = torch.Generator().manual_seed(seed + 1)
        out["text_projection"] = (torch.randn(width, width, generator=gen) * width**-0.5).to(dtype)


def _prefixed(prefix: str, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in sd.items()}


def components_to_ldm(family: str, unet, vae, text_encoder=None, text_encoder_2=None) -> dict[str, torch.Tensor]:
    """The whole A1111 single-file state dict for `family` (one of FAMILIES).

    Text encoders go where A1111's configs put them: SD1 `cond_stage_model.transformer.*` (CLIP-L), SD2
    `cond_stage_model.model.*` (OpenCLIP ViT-H, 1 extra resblock), SDXL `conditioner.embedders.0.transformer.*`
    (CLIP-L) + `conditioner.embedders.1.model.*` (OpenCLIP bigG), refiner `conditioner.embedders.0.model.*` (bigG).
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    base = family.removesuffix("_inpaint")
    out = _prefixed(UNET_PREFIX, unet_to_ldm(unet))
    out.update(_prefixed(VAE_PREFIX, vae_to_ldm(vae)))

    def need(model, name):
        if model is None:
            raise ValueError(f"family {family!r} needs {name}")
        return model

    if base == "sd1":
        out.update(_prefixed("cond_stage_model.", clip_l_to_ldm(need(text_encoder, "text_encoder"))))
    elif base == "sd2":
        te = need(text_encoder, "text_encoder")
        oc = open_clip_to_ldm(te, extra_layers=1)
        _open_clip_extras(oc, te.config.hidden_size, oc["token_embedding.weight"].dtype, 0)
        out.update(_prefixed("cond_stage_model.model.", oc))
    elif base == "sdxl":
        out.update(_prefixed("conditioner.embedders.0.", clip_l_to_ldm(need(text_encoder, "text_encoder"))))
        oc = open_clip_to_ldm(need(text_encoder_2, "text_encoder_2"))
        _open_clip_extras(oc, text_encoder_2.config.hidden_size, oc["token_embedding.weight"].dtype, 0)
        out.update(_prefixed("conditioner.embedders.1.model.", oc))
    elif base == "sdxl_refiner":
        oc = open_clip_to_ldm(need(text_encoder_2, "text_encoder_2"))
        _open_clip_extras(oc, text_encoder_2.config.hidden_size, oc["token_embedding.weight"].dtype, 0)
        out.update(_prefixed("conditioner.embedders.0.model.", oc))
    return out

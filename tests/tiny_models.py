"""Tiny random-weight models of the real Stable Diffusion architectures, written in the real on-disk formats.

Dimensions are tiny but follow each family's conventions (head size / head count, linear vs conv projections,
attention placement, SDXL's added time embedding, text-encoder activation), because the loader derives configs
from tensor shapes and fills in only what shapes can't tell from those conventions.

Text-encoder token ids follow the real diffusers repos' configs (bos 0, eos 2, pad 1): `eos_token_id == 2` makes
transformers pool at `argmax(input_ids)` (the legacy path every SD checkpoint relies on), which picks the first
`<|endoftext|>` (49407, the largest id) whatever the tokenizer pads with (SD1 pads with 49407, OpenCLIP with 0).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from modules.models.ldm_export import components_to_ldm

FAMILIES = ("sd1", "sd1_inpaint", "sd2", "sdxl", "sdxl_refiner")

# From the real repos' text_encoder*/config.json (see module docstring): ids are pooling-relevant only via eos.
_TOKEN_IDS = dict(bos_token_id=0, eos_token_id=2, pad_token_id=1)
_VOCAB = 49408

_SCALING = {"sd1": 0.18215, "sd2": 0.18215, "sdxl": 0.13025, "sdxl_refiner": 0.13025}
_PIPELINES = {
    "sd1": "StableDiffusionPipeline",
    "sd1_inpaint": "StableDiffusionInpaintPipeline",
    "sd2": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "sdxl_refiner": "StableDiffusionXLImg2ImgPipeline",
}


def _clip_l() -> CLIPTextModel:
    """CLIP ViT-L convention: quick_gelu, head dim 64 (1 head at width 64)."""
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=_VOCAB, hidden_size=64, intermediate_size=128, num_attention_heads=1, num_hidden_layers=2,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=64, **_TOKEN_IDS,
    ))


def _open_clip_h() -> CLIPTextModel:
    """SD2's OpenCLIP ViT-H text tower as diffusers holds it: CLIPTextModel with gelu, head dim 64."""
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=_VOCAB, hidden_size=64, intermediate_size=128, num_attention_heads=1, num_hidden_layers=2,
        max_position_embeddings=77, hidden_act="gelu", projection_dim=64, **_TOKEN_IDS,
    ))


def _open_clip_bigg() -> CLIPTextModelWithProjection:
    """SDXL's OpenCLIP bigG: gelu, head dim 64, square text projection."""
    return CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=_VOCAB, hidden_size=128, intermediate_size=256, num_attention_heads=2, num_hidden_layers=2,
        max_position_embeddings=77, hidden_act="gelu", projection_dim=128, **_TOKEN_IDS,
    ))


def _vae(family: str) -> AutoencoderKL:
    """Four blocks, as every real SD VAE: pictures are 8x their latents (a 64 px test image is an 8x8 latent, so the
    UNet's attention sees 64 tokens, not the 1024 a two-block VAE gave)."""
    return AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(32, 64, 64, 64),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2, latent_channels=4, norm_num_groups=32, sample_size=64,
        scaling_factor=_SCALING[family.removesuffix("_inpaint")],
    )


def _unet(family: str) -> UNet2DConditionModel:
    common = dict(sample_size=8, out_channels=4, layers_per_block=2, norm_num_groups=32)
    if family in ("sd1", "sd1_inpaint"):
        return UNet2DConditionModel(
            **common, in_channels=9 if family == "sd1_inpaint" else 4, block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=8,  # SD1: 8 heads everywhere (diffusers' misnamed "head dim")
            cross_attention_dim=64, use_linear_projection=False,
        )
    if family == "sd2":
        return UNet2DConditionModel(
            **common, in_channels=4, block_out_channels=(64, 128),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=(1, 2),  # SD2: 64 channels per head
            cross_attention_dim=64, use_linear_projection=True,
        )
    if family in ("sdxl", "sdxl_refiner"):
        ctx = 192 if family == "sdxl" else 128  # CLIP-L + bigG widths / bigG only
        n_time_ids = 6 if family == "sdxl" else 5  # refiner: aesthetic score replaces target size
        return UNet2DConditionModel(
            **common, in_channels=4, block_out_channels=(64, 128),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2), attention_head_dim=(1, 2), use_linear_projection=True,
            cross_attention_dim=ctx, addition_embed_type="text_time", addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=128 + n_time_ids * 8,
        )
    raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")


def build_tiny(family: str, seed: int = 0) -> dict:
    """Diffusers components {unet, vae, text_encoder, text_encoder_2} (None where the family has none), fp32, eval.

    Built under a forked RNG so the global torch seed is left untouched.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = _unet(family)
        vae = _vae(family)
        text_encoder = text_encoder_2 = None
        if family in ("sd1", "sd1_inpaint", "sdxl"):
            text_encoder = _clip_l()
        elif family == "sd2":
            text_encoder = _open_clip_h()
        if family in ("sdxl", "sdxl_refiner"):
            text_encoder_2 = _open_clip_bigg()
    components = {"unet": unet, "vae": vae, "text_encoder": text_encoder, "text_encoder_2": text_encoder_2}
    for model in components.values():
        if model is not None:
            model.eval()  # built fp32 (torch default dtype)
    return components


def infer_family(components: dict) -> str:
    """Family of a build_tiny() dict, from its structure."""
    unet = components["unet"]
    if components.get("text_encoder_2") is not None:
        return "sdxl" if components.get("text_encoder") is not None else "sdxl_refiner"
    if unet.config.use_linear_projection:
        return "sd2"
    return "sd1_inpaint" if unet.config.in_channels == 9 else "sd1"


def ldm_state_dict(components: dict, family: str) -> dict[str, torch.Tensor]:
    return components_to_ldm(
        family, components["unet"], components["vae"], components.get("text_encoder"), components.get("text_encoder_2")
    )


def write_single_file(components: dict, family: str, path) -> Path:
    """Write the A1111 single-file layout: `.safetensors` (safetensors) or `.ckpt` ({"state_dict": sd} pickle)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.contiguous() for k, v in ldm_state_dict(components, family).items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path))
    elif path.suffix == ".ckpt":
        torch.save({"state_dict": sd}, path)
    else:
        raise ValueError(f"unsupported extension {path.suffix!r} (want .safetensors or .ckpt)")
    return path


def _scheduler(family: str):
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="v_prediction" if family == "sd2" else "epsilon", steps_offset=1,
        timestep_spacing="leading",
    )


def _tokenizer(pad_token: str):
    """The project's offline CLIP tokenizer, or None when its vocabulary (open-clip-torch) is unavailable."""
    try:
        from modules.models.tokenizer import build_clip_tokenizer

        return build_clip_tokenizer(pad_token)
    except Exception:  # noqa: BLE001 - tokenizer folders are optional extras
        return None


def write_diffusers_folder(components: dict, path, family: str | None = None) -> Path:
    """A diffusers pipeline folder: model subfolders, scheduler/, tokenizers when buildable, model_index.json."""
    family = family or infer_family(components)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    index: dict = {"_class_name": _PIPELINES[family], "_diffusers_version": _diffusers_version()}
    for name, lib in (("unet", "diffusers"), ("vae", "diffusers"), ("text_encoder", "transformers"),
                      ("text_encoder_2", "transformers")):
        model = components.get(name)
        if model is None:
            continue
        model.save_pretrained(path / name)
        index[name] = [lib, type(model).__name__]
    sched = _scheduler(family)
    sched.save_pretrained(path / "scheduler")
    index["scheduler"] = ["diffusers", type(sched).__name__]
    pads = {"tokenizer": "<|endoftext|>" if family.startswith("sd1") or family == "sdxl" else "!",
            "tokenizer_2": "!"}
    for tok_name, te_name in (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")):
        if components.get(te_name) is None:
            continue
        tok = _tokenizer(pads[tok_name])
        if tok is not None:
            tok.save_pretrained(path / tok_name)
            index[tok_name] = ["transformers", "CLIPTokenizer"]
    if family.startswith("sdxl"):
        if components.get("text_encoder") is None:
            index.update(text_encoder=[None, None], tokenizer=[None, None])
        index["force_zeros_for_empty_prompt"] = family == "sdxl"
        if family == "sdxl_refiner":
            index["requires_aesthetics_score"] = True
    else:
        index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    (path / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return path


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__

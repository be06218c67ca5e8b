"""LoRA files the way kohya's sd-scripts write them, so our `<lora:…>`, A1111 and ComfyUI all load them.

Which modules (kohya's `networks.lora` defaults): every Linear and 1×1 conv inside the UNet's transformer blocks
(`Transformer2DModel`), and the attention and MLP projections of the CLIP text encoder(s). Key names:
`lora_unet_<module>` with diffusers module paths for SD1/SD2 and LDM/sgm paths for SDXL (as kohya's SDXL scripts
do), `lora_te_text_model_<module>` (SDXL: `lora_te1_…`/`lora_te2_…`), each with `.lora_down.weight`,
`.lora_up.weight` and `.alpha`. Training metadata goes into the header as kohya's `ss_*` strings, with the
precomputed addnet hash (`sshs_model_hash`) A1111 shows.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass

import torch

from modules import fileio
from modules.hashes import addnet_hash_safetensors

TE_TARGET_CLASSES = ("CLIPAttention", "CLIPSdpaAttention", "CLIPFlashAttention2", "CLIPMLP")
SAVE_DTYPE = torch.float16


@dataclass(frozen=True)
class LoraTarget:
    component: str  # "unet", "text_encoder", "text_encoder_2"
    module: str  # dotted path inside the component
    kohya_name: str  # e.g. lora_unet_down_blocks_0_attentions_0_proj_in


def _is_target_layer(m: torch.nn.Module) -> bool:
    if isinstance(m, torch.nn.Linear):
        return True
    return isinstance(m, torch.nn.Conv2d) and tuple(m.kernel_size) == (1, 1)


def _unet_ldm_names(unet) -> dict[str, str]:
    """diffusers module path → LDM/sgm module path, from the project's diffusers→LDM exporter (same key order)."""
    from modules.models.ldm_export import unet_to_ldm

    out = {}
    for d, l in zip(unet.state_dict().keys(), unet_to_ldm(unet).keys()):
        if d.endswith(".weight") and l.endswith(".weight"):
            out[d[: -len(".weight")]] = l[: -len(".weight")]
    return out


def unet_targets(model) -> list[LoraTarget]:
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    unet = model.unet
    ldm = _unet_ldm_names(unet) if model.is_sdxl else {}
    out = []
    for name, block in unet.named_modules():
        if not isinstance(block, Transformer2DModel):
            continue
        for sub, m in block.named_modules():
            if sub and _is_target_layer(m):
                dotted = f"{name}.{sub}"
                kohya = ldm.get(dotted, dotted) if model.is_sdxl else dotted
                out.append(LoraTarget("unet", dotted, "lora_unet_" + kohya.replace(".", "_")))
    return out


def text_encoder_targets(model) -> list[LoraTarget]:
    encoders = [("text_encoder", model.text_encoder), ("text_encoder_2", model.text_encoder_2)]
    encoders = [(k, te) for k, te in encoders if te is not None]
    out = []
    for key, te in encoders:
        if model.is_sdxl or model.family == "sdxl_refiner":
            prefix = "lora_te1_" if key == "text_encoder" else "lora_te2_"
        else:
            prefix = "lora_te_"
        for name, block in te.named_modules():
            if type(block).__name__ not in TE_TARGET_CLASSES:
                continue
            for sub, m in block.named_children():
                if isinstance(m, torch.nn.Linear):
                    dotted = f"{name}.{sub}"
                    short = dotted.removeprefix("text_model.")
                    out.append(LoraTarget(key, dotted, prefix + "text_model_" + short.replace(".", "_")))
    return out


def lora_tensors(layers: dict[LoraTarget, tuple[torch.Tensor, torch.Tensor]], alpha: float,
                 dtype: torch.dtype = SAVE_DTYPE) -> dict[str, torch.Tensor]:
    """{target: (down, up)} → kohya tensors."""
    out = {}
    for target, (down, up) in layers.items():
        out[f"{target.kohya_name}.lora_down.weight"] = down.detach().to("cpu", dtype).contiguous()
        out[f"{target.kohya_name}.lora_up.weight"] = up.detach().to("cpu", dtype).contiguous()
        out[f"{target.kohya_name}.alpha"] = torch.tensor(float(alpha), dtype=dtype)
    return out


BASE_MODEL_VERSION = {"sd1": "sd_v1", "sd1_inpaint": "sd_v1", "sd2": "sd_v2", "sd2_inpaint": "sd_v2",
                      "sdxl": "sdxl_base_v1-0", "sdxl_inpaint": "sdxl_base_v1-0", "sdxl_refiner": "sdxl_refiner_v1-0"}


def training_metadata(config, model, *, dataset_dir_name: str, tag_frequency: dict[str, int], num_images: int,
                      bucket_info: dict, steps_done: int, started_at: float, finished_at: float | None = None,
                      modules: str = "unet+text_encoder") -> dict[str, str]:
    """kohya's `ss_*` header fields (all strings, JSON where kohya writes JSON)."""
    te_lr = config.text_encoder_lr if config.text_encoder_lr is not None else config.learning_rate
    meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(config.rank),
        "ss_network_alpha": str(float(config.alpha)),
        "ss_network_args": json.dumps({"targets": modules}),
        "ss_learning_rate": str(config.learning_rate),
        "ss_unet_lr": str(config.learning_rate) if config.train_unet else "0",
        "ss_text_encoder_lr": str(te_lr) if config.train_text_encoder else "0",
        "ss_network_train_unet_only": str(not config.train_text_encoder),
        "ss_network_train_text_encoder_only": str(not config.train_unet),
        "ss_max_train_steps": str(config.steps),
        "ss_steps": str(steps_done),
        "ss_batch_size_per_device": str(config.batch_size),
        "ss_total_batch_size": str(config.batch_size),
        "ss_resolution": f"({config.resolution}, {config.resolution})",
        "ss_enable_bucket": str(config.enable_buckets),
        "ss_bucket_no_upscale": "False",
        "ss_bucket_info": json.dumps(bucket_info),
        "ss_num_train_images": str(num_images),
        "ss_num_reg_images": "0",
        "ss_caption_extension": config.caption_extension,
        "ss_tag_frequency": json.dumps({dataset_dir_name: tag_frequency}, ensure_ascii=False),
        "ss_dataset_dirs": json.dumps({dataset_dir_name: {"n_repeats": 1, "img_count": num_images}}),
        "ss_sd_model_name": model.name,
        "ss_sd_model_hash": model.shorthash or "",
        "ss_new_sd_model_hash": model.shorthash or "",
        "ss_base_model_version": BASE_MODEL_VERSION.get(model.family, model.family),
        "ss_v2": str(model.family.startswith("sd2")),
        "ss_v_parameterization": str(model.spec.prediction_type == "v_prediction"),
        "ss_output_name": config.output_name,
        "ss_training_comment": f"trigger: {config.trigger_word}" if config.trigger_word else "",
        "ss_seed": str(config.seed),
        "ss_clip_skip": str(config.clip_skip),
        "ss_mixed_precision": config.mixed_precision if model.device.type == "cuda" else "no",
        "ss_gradient_checkpointing": str(config.gradient_checkpointing),
        "ss_optimizer": "torch.optim.AdamW",
        "ss_lr_scheduler": "constant",
        "ss_lr_warmup_steps": "0",
        "ss_max_grad_norm": "1.0",
        "ss_noise_offset": "None",
        "ss_training_started_at": str(started_at),
        "modelspec.architecture": _modelspec_architecture(model.family),
        "modelspec.implementation": "https://github.com/kohya-ss/sd-scripts",
        "modelspec.title": config.output_name,
        "modelspec.sai_model_spec": "1.0.0",
    }
    if finished_at is not None:
        meta["ss_training_finished_at"] = str(finished_at)
    return meta


def _modelspec_architecture(family: str) -> str:
    base = {"sd1": "stable-diffusion-v1", "sd2": "stable-diffusion-v2-768-v", "sdxl": "stable-diffusion-xl-v1-base",
            "sdxl_refiner": "stable-diffusion-xl-v1-refiner"}.get(family.removesuffix("_inpaint"), family)
    return base + "/lora"


def save_lora(path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]):
    """Write atomically, with the addnet hash of the tensor data in the header (it does not depend on the header)."""
    from safetensors.torch import save

    data_hash = addnet_hash_safetensors(io.BytesIO(save(tensors)))
    meta = {**metadata, "sshs_model_hash": data_hash}
    return fileio.atomic_write_bytes(path, save(tensors, metadata=meta))


__all__ = ["LoraTarget", "unet_targets", "text_encoder_targets", "lora_tensors", "training_metadata", "save_lora"]

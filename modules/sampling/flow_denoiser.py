"""A Flux/SD3 transformer behind the UNet's call, so the one sampling loop (CFG, AND prompts, hooks, inpainting)
runs these families unchanged.

The loop keeps latents as (B, 16, h, w) images. Flux's transformer reads them as a sequence of 2×2 patches with
rotary positions (`img_ids`) and zero text positions (`txt_ids`), the timestep divided by 1000 and, for the
guidance-distilled dev model, the distilled guidance; SD3's transformer patches them itself and takes the timestep
as is. Packing and unpacking only reorder numbers, so each step equals the diffusers pipelines' arithmetic.
"""
from __future__ import annotations

import torch


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) → (B, h/2·w/2, 4C): FluxPipeline._pack_latents."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(packed: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, h/2·w/2, 4C) → (B, C, h, w): FluxPipeline._unpack_latents."""
    b, _, channels = packed.shape
    x = packed.view(b, h // 2, w // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, channels // 4, h, w)


def image_ids(h: int, w: int, device, dtype) -> torch.Tensor:
    """Rotary positions of the packed patches (row, column), FluxPipeline._prepare_latent_image_ids."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = ids[..., 1] + torch.arange(h // 2)[:, None]
    ids[..., 2] = ids[..., 2] + torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


class FluxDenoiser:
    """Flux.1's transformer with the UNet's signature; `guidance` is the distilled CFG scale (dev models)."""

    def __init__(self, transformer, guidance: float | None):
        self.transformer = transformer
        self.guidance_scale = guidance
        self.guidance = guidance if transformer.config.guidance_embeds else None
        self.config = transformer.config

    def __call__(self, x, t, encoder_hidden_states, added_cond_kwargs=None, return_dict=False, flux_controls=None):
        """`flux_controls`: (FluxControlNetModel, control map per row, scale, Union mode) of the units guiding this
        step; their block outputs are summed (diffusers' FluxMultiControlNetModel) and given to the transformer."""
        b, _, h, w = x.shape
        pooled = (added_cond_kwargs or {}).get("text_embeds")
        guidance = None
        if self.guidance is not None:
            guidance = torch.full([1], self.guidance, device=x.device, dtype=torch.float32).expand(b)
        timestep = t.expand(b).to(x.dtype) if torch.is_tensor(t) else torch.full([b], float(t), dtype=x.dtype)
        inputs = dict(hidden_states=pack(x), timestep=timestep.to(x.device) / 1000, pooled_projections=pooled,
                      encoder_hidden_states=encoder_hidden_states,
                      txt_ids=torch.zeros(encoder_hidden_states.shape[1], 3, device=x.device,
                                          dtype=encoder_hidden_states.dtype),
                      img_ids=image_ids(h, w, x.device, x.dtype))
        control = self._controls(flux_controls or [], inputs, b, x.device, self.guidance_scale)
        out = self.transformer(guidance=guidance, return_dict=False, **inputs, **control)[0]
        return (unpack(out, h, w),)

    @staticmethod
    def _controls(units, inputs: dict, b: int, device, guidance_scale) -> dict:
        blocks = single = None
        repeat = False  # XLabs' few blocks guide every transformer block in turn
        for net, image, scale, mode in units:
            repeat = repeat or net.input_hint_block is not None
            if mode is not None:  # a Union's control mode, one per row
                mode = torch.full((image.shape[0], 1), mode, dtype=torch.long, device=device)
            guidance = None
            if net.config.guidance_embeds and guidance_scale is not None:  # the distilled scale, as the transformer
                guidance = torch.full([1], guidance_scale, device=device, dtype=torch.float32).expand(b)
            d, s = net(controlnet_cond=image, controlnet_mode=mode, conditioning_scale=scale, guidance=guidance,
                       return_dict=False, **inputs)
            blocks = d if blocks is None else [a + c for a, c in zip(blocks, d)]
            single = s if single is None else [a + c for a, c in zip(single, s)] if s is not None else single
        if blocks is None:
            return {}
        return {"controlnet_block_samples": blocks, "controlnet_single_block_samples": single,
                "controlnet_blocks_repeat": repeat}


class SD3Denoiser:
    """SD3/SD3.5's MMDiT with the UNet's signature."""

    def __init__(self, transformer):
        self.transformer = transformer
        self.config = transformer.config

    def __call__(self, x, t, encoder_hidden_states, added_cond_kwargs=None, return_dict=False, sd3_controls=None):
        """`sd3_controls`: (SD3ControlNetModel, its map's latents per row, scale) of the units guiding this step;
        their block outputs are summed (diffusers' SD3MultiControlNetModel) and given to the transformer."""
        pooled = (added_cond_kwargs or {}).get("text_embeds")
        timestep = t.expand(x.shape[0]) if torch.is_tensor(t) else torch.full([x.shape[0]], float(t))
        timestep = timestep.to(x.device)
        blocks = None
        for net, image, scale in sd3_controls or []:
            samples = net(hidden_states=x, timestep=timestep, controlnet_cond=image, conditioning_scale=scale,
                          encoder_hidden_states=encoder_hidden_states if net.config.joint_attention_dim else None,
                          pooled_projections=torch.zeros_like(pooled) if net.config.force_zeros_for_pooled_projection
                          else pooled, return_dict=False)[0]
            blocks = list(samples) if blocks is None else [a + b for a, b in zip(blocks, samples)]
        out = self.transformer(hidden_states=x, timestep=timestep, encoder_hidden_states=encoder_hidden_states,
                               pooled_projections=pooled, block_controlnet_hidden_states=blocks, return_dict=False)[0]
        return (out,)


def denoiser_for(model, distilled_cfg_scale: float | None):
    return FluxDenoiser(model.unet, distilled_cfg_scale) if model.family == "flux" else SD3Denoiser(model.unet)

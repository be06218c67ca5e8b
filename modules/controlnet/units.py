"""A ControlNet unit as the sampling loop applies it: model, control map, weight, guidance window, control mode.

Per step, as the sd-webui-controlnet extension (and, for "Balanced", diffusers' ControlNet pipelines): the
ControlNet sees the same (CFG-batched) latents and prompt embeddings as the UNet; inside the unit's guidance window
its residuals are scaled per block and summed over units, then added to the UNet's skip connections.

Control modes, with the extension's numbers:
- Balanced: every block × weight, on the prompt and the negative-prompt rows alike.
- My prompt is more important: "soft injection", block i of 13 × weight · 0.825^(12 − i) (SDXL: the first 10 of
  those 13 scales), so the shallow blocks, which carry layout detail, guide less.
- ControlNet is more important: the same soft scales, and the negative-prompt rows get no control at all, so CFG
  pushes towards the control.
In the hires pass, canny and mlsd maps are always applied softly (the extension's rule against edge artifacts).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from PIL import Image

BALANCED, PROMPT, CONTROL = "Balanced", "My prompt is more important", "ControlNet is more important"
SOFT_BASE = 0.825
ADAPTER_SOFT = (0.25, 0.62, 0.825, 1.0)  # a T2I-Adapter's soft scales per level (the extension's)
# ControlNet Union (xinsir): the control type each index stands for (the extension's ControlNetUnionControlType).
UNION_TYPES = ("OpenPose", "Depth", "Soft Edge", "Hard Edge", "Normal Map", "Segmentation", "Tile", "Inpaint")


@dataclass
class ControlUnit:
    """One control model for one generation. `image` is the detected map at any size; `resize_mode` says how it is
    fitted to each pass's size."""

    model: object  # a diffusers ControlNetModel / ControlNetUnionModel
    image: Image.Image
    weight: float = 1.0
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    control_mode: str = BALANCED
    resize_mode: str = "Crop and Resize"
    hr_option: str = "Both"
    soft_in_hires: bool = False  # canny / mlsd maps
    advanced_weighting: list[float] | None = None
    union_type: int | None = None  # index into UNION_TYPES for a Union model
    kind: str = "controlnet"  # controlnet|union|t2i_adapter|ip_adapter|flux|sd3|reference|structure|revision
    ip_embeds: tuple | None = None  # an IP-Adapter's (positive, negative) image tokens (ip_adapter.encode)
    region_mask: torch.Tensor | None = None  # (1, 1, H, W) in [0, 1]: where the unit acts (effective region mask)
    low_vram: bool = False  # the model waits on the CPU between steps (GPU only)
    context: tuple | None = None  # (positive, negative) tokens a ControlNet reads instead of the prompt (InstantID)

    def in_region(self, residual: torch.Tensor) -> torch.Tensor:
        """The residual kept only inside the unit's region (the mask scaled bilinearly to the residual's size, as
        the extension's apply_effective_region_mask)."""
        if self.region_mask is None:
            return residual
        mask = torch.nn.functional.interpolate(self.region_mask.to(residual.device, torch.float32),
                                               size=residual.shape[-2:], mode="bilinear")
        return residual * mask.to(residual.dtype)

    def active_at(self, step: int, total: int) -> bool:
        """Inside the guidance window at 0-based step `step` of `total` (diffusers' controlnet_keep)."""
        return not (step / total < self.guidance_start or (step + 1) / total > self.guidance_end)

    def scale_at(self, step: int, total: int) -> float:
        return float(self.weight) if self.active_at(step, total) else 0.0

    def used_in(self, hires: bool) -> bool:
        """The unit's "hires fix" option: both passes, the first only, or the hires pass only."""
        return {"Low res only": not hires, "High res only": hires}.get(self.hr_option, True)

    def block_scales(self, blocks: int, hires: bool = False) -> list[float]:
        """The per-block multipliers for a ControlNet with `blocks` outputs (12 + mid on SD1/2, 9 + mid on SDXL)."""
        if self.advanced_weighting is not None:
            return [float(w) for w in self.advanced_weighting][:blocks]
        if self.control_mode != BALANCED or (hires and self.soft_in_hires):
            if self.kind == "t2i_adapter":
                return [self.weight * x for x in ADAPTER_SOFT][:blocks]
            return [self.weight * SOFT_BASE ** float(12 - i) for i in range(13)][:blocks]
        return [float(self.weight)] * blocks

    def cond_only(self) -> bool:
        return self.control_mode == CONTROL

    def tensor(self, width: int, height: int, batch: int, device, dtype) -> torch.Tensor | None:
        """The map as the ControlNet reads it: (batch, 3, H, W) in [0, 1], fitted to the pass's size (an
        IP-Adapter reads no map: None)."""
        if self.kind in ("ip_adapter", "revision", "t2i_style", "pulid"):
            return None
        from modules.controlnet.control_map import fit, to_tensor

        fitted = fit(self.image, width, height, self.resize_mode)
        if self.kind in ("flux", "sd3", "reference", "structure"):  # the VAE's input, [-1, 1]: the pass encodes it
            return (to_tensor(fitted) * 2 - 1).repeat_interleave(batch, dim=0).to(device=device, dtype=dtype)
        if self.kind == "t2i_adapter" and self.model.config.in_channels == 1:  # sketch/canny adapters: grey
            fitted = fitted.convert("L").convert("RGB")
        hint = to_tensor(fitted)
        if self.kind == "t2i_adapter" and self.model.config.in_channels == 1:
            hint = hint[:, :1]
        if self.image.mode == "RGBA":  # the extension's inpaint protocol: masked pixels are -1
            mask = to_tensor(fit(self.image.getchannel("A").convert("RGB"), width, height, self.resize_mode))
            masked = (mask[:, :1] > 0.5).float()
            hint = hint * (1 - masked) - masked
        return hint.repeat_interleave(batch, dim=0).to(device=device, dtype=dtype)


@dataclass
class ActiveControl:
    """A unit ready for one pass: its model and its map as a tensor."""

    unit: ControlUnit
    image: torch.Tensor
    hires: bool = False
    features: list | None = None  # a T2I-Adapter's features of `image` (the same at every step)
    enabled: bool = True  # False: an IP-Adapter kept attached but silent in this pass (its hires-fix option)
    injection: object | None = None  # a reference unit's hooks on the UNet (reference.ReferenceInjection)
    generator: torch.Generator | None = None  # a reference unit's noise


def residuals(controls: list[ActiveControl], x: torch.Tensor, t, embeds: torch.Tensor, added: dict | None,
              rows: torch.Tensor, uncond_rows: int, step: int, total: int) -> dict:
    """The UNet's extra inputs for this step: the units' residuals, scaled and summed ({} when none guide).

    `rows[r]`: the picture of the batch that UNet row r belongs to; the first `uncond_rows` rows are the negative
    prompt's (CFG)."""
    down, mid, intra = None, None, None
    ip_embeds, ip_scales, ip_masks, flux, sd3, references = [], [], [], [], [], []
    for control in controls:
        unit = control.unit
        if unit.kind == "reference":
            if control.enabled and unit.active_at(step, total) and unit.weight > 0:
                references.append(control)
            continue
        if unit.kind in ("revision", "t2i_style"):  # applied to the prompt's embeddings before this (revision.py,
            continue                                # t2i_style.py)
        if unit.kind == "pulid":  # its processors read this step's id tokens and weight (pulid.py)
            from modules.controlnet import pulid

            pulid.step_rows(unit, rows, uncond_rows, x.dtype, control.enabled and unit.active_at(step, total))
            continue
        if unit.kind == "ip_adapter":  # every attached adapter needs its tokens; its scale says if it acts
            ip_embeds.append(_ip_rows(unit, rows, uncond_rows, x.dtype))
            on = control.enabled and unit.active_at(step, total)
            ip_scales.append(float(unit.weight) if on else 0.0)
            ip_masks.append(None if unit.region_mask is None else unit.region_mask.to(x.device, x.dtype))
            continue
        if not unit.active_at(step, total) or unit.weight == 0 and unit.advanced_weighting is None:
            continue
        if unit.kind == "flux":  # run by the FluxDenoiser, which has the transformer's packed inputs
            flux.append((unit.model, control.image[rows], float(unit.weight), unit.union_type))
            continue
        if unit.kind == "sd3":  # run by the SD3Denoiser, which has the transformer's pooled projection
            sd3.append((unit.model, control.image[rows], float(unit.weight)))
            continue
        if unit.kind == "t2i_adapter":
            features = _adapter_features(control, rows, uncond_rows, x.dtype)
            intra = features if intra is None else [a + b for a, b in zip(intra, features)]
            continue
        context = embeds if unit.context is None else _token_rows(unit.context, len(rows), uncond_rows, x.dtype)
        d, m = _forward(control, control.image[rows], x, t, context, added)
        scales = unit.block_scales(len(d) + 1, control.hires)
        outputs = [unit.in_region(r * s) for r, s in zip([*d, m], scales)]
        if uncond_rows and unit.cond_only():  # only the prompt's rows are guided
            keep = torch.ones(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device)
            keep[:uncond_rows] = 0
            outputs = [r * keep for r in outputs]
        d, m = outputs[:-1], outputs[-1]
        down = list(d) if down is None else [a + b for a, b in zip(down, d)]
        mid = m if mid is None else mid + m
    if references:
        _reference_pass(references, x, t, embeds, added, ip_embeds, ip_scales, uncond_rows)
    out = {}
    if down is not None:
        out.update(down_block_additional_residuals=down, mid_block_additional_residual=mid)
    if intra is not None:
        out["down_intrablock_additional_residuals"] = intra
    if ip_embeds:
        out["ip_adapter"] = (ip_embeds, ip_scales)
        if any(m is not None for m in ip_masks):  # where each adapter's image tokens act (diffusers' masks)
            out["cross_attention_kwargs"] = {"ip_adapter_masks": ip_masks}
    if flux:
        out["flux_controls"] = flux
    if sd3:
        out["sd3_controls"] = sd3
    return out


def _reference_pass(references: list[ActiveControl], x, t, embeds, added, ip_embeds, ip_scales,
                    uncond_rows: int) -> None:
    """The reference units' UNet passes for this step (reference.py): what the next UNet call reads. IP-Adapters
    take part in them as in the real call."""
    injection = references[0].injection
    injection.clear()
    if ip_embeds:
        from modules.controlnet.ip_adapter import set_scales

        set_scales(injection.unet, ip_scales)
        added = {**(added or {}), "image_embeds": ip_embeds}
    for control in references:
        unit = control.unit
        style = unit.model.fidelity(unit.control_mode, injection.is_sdxl, control.hires)
        injection.write(unit.model, control.image, control.generator, x, t, embeds, added, uncond_rows,
                        unit.weight, style)


def _ip_rows(unit: ControlUnit, rows: torch.Tensor, uncond_rows: int, dtype) -> torch.Tensor:
    """The image tokens per UNet row: the negative ones for the negative prompt's rows."""
    positive, negative = unit.ip_embeds
    parts = [negative.expand(uncond_rows, *negative.shape[1:])] if uncond_rows else []
    parts.append(positive.expand(len(rows) - uncond_rows, *positive.shape[1:]))
    return torch.cat(parts).to(dtype)


def _token_rows(pair: tuple, count: int, uncond_rows: int, dtype) -> torch.Tensor:
    """(positive, negative) tokens laid out per UNet row: the negative ones for the negative prompt's rows."""
    positive, negative = pair
    parts = [negative.expand(uncond_rows, *negative.shape[1:])] if uncond_rows else []
    parts.append(positive.expand(count - uncond_rows, *positive.shape[1:]))
    return torch.cat(parts).to(dtype)


def _adapter_features(control: ActiveControl, rows: torch.Tensor, uncond_rows: int, dtype) -> list:
    """A T2I-Adapter's features for these UNet rows, scaled per level; computed once per pass (the adapter reads
    only the map)."""
    unit = control.unit
    if control.features is None:
        with _on(unit, control.image.device):
            control.features = list(unit.model(control.image))
    scales = unit.block_scales(len(control.features), control.hires)
    out = [unit.in_region(f[rows].to(dtype) * s) for f, s in zip(control.features, scales)]
    if uncond_rows and unit.cond_only():
        keep = torch.ones(len(rows), 1, 1, 1, dtype=dtype, device=rows.device)
        keep[:uncond_rows] = 0
        out = [f * keep for f in out]
    return out


def _forward(control: ActiveControl, image: torch.Tensor, x, t, embeds, added):
    """The model's raw residuals (scale 1: the per-block scales are applied by the caller)."""
    with _on(control.unit, x.device):
        return _call(control.unit, image, x, t, embeds, added)


@contextlib.contextmanager
def _on(unit: ControlUnit, device):
    """The unit's model on the sampling device for the call; a "Low VRAM" unit's goes back to the CPU after it (the
    extension's low_vram: slower, but the ControlNet holds no GPU memory between steps)."""
    parameters = getattr(unit.model, "parameters", None)
    first = next(parameters(), None) if parameters is not None else None
    if first is not None and first.device != device:
        unit.model.to(device)
    try:
        yield
    finally:
        if first is not None and unit.low_vram and device.type != "cpu":
            unit.model.to("cpu")


def _call(unit: ControlUnit, image, x, t, embeds, added):
    kwargs = {"added_cond_kwargs": added} if added is not None else {}
    if unit.union_type is not None:
        types = unit.model.config.num_control_type
        if unit.union_type >= types:
            raise ValueError(f"this ControlNet Union model knows {types} control types, not "
                             f"{UNION_TYPES[unit.union_type]!r}")
        control_type = torch.zeros(x.shape[0], types, dtype=x.dtype, device=x.device)
        control_type[:, unit.union_type] = 1
        return unit.model(x, t, encoder_hidden_states=embeds, controlnet_cond=[image], control_type=control_type,
                          control_type_idx=[unit.union_type], conditioning_scale=1.0, return_dict=False, **kwargs)
    return unit.model(x, t, encoder_hidden_states=embeds, controlnet_cond=image, conditioning_scale=1.0,
                      guess_mode=False, return_dict=False, **kwargs)

"""Reference units (reference_only, reference_adain, reference_adain+attn): the sd-webui-controlnet extension's
"attention injection", which needs no control model.

At each step inside the unit's guidance window, before the real UNet call, the UNet runs once on the reference
picture's latents noised to the step's timestep (the same prompt rows). That pass only records:

- reference_only (and +attn): each transformer block's self-attention input; in the real call every row's
  self-attention then also attends to those tokens;
- reference_adain (and +attn): the per-channel mean and variance of some blocks' outputs; in the real call those
  outputs are renormalised to them (AdaIN).

With the extension's numbers: blocks are used by width, widest first, while `weight` exceeds the block's rank
(weight 1: all of them; 0.5: the wider half); the "style fidelity" slider (Balanced mode; 1 for "ControlNet is more
important", 0 for "My prompt is more important" and in the hires pass; cubed on SDXL) keeps the negative prompt's
rows on plain self-attention, so that CFG pushes towards the reference.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

MODULES = ("reference_only", "reference_adain", "reference_adain+attn")
WRITE, READ = "write", "read"


@dataclass
class ReferenceSpec:
    """What a reference unit does (the `model` of its ControlUnit)."""

    module: str
    style_fidelity: float  # the slider's value, before the control mode and family adjust it

    @property
    def attention(self) -> bool:
        return self.module in ("reference_only", "reference_adain+attn")

    @property
    def adain(self) -> bool:
        return self.module in ("reference_adain", "reference_adain+attn")

    def fidelity(self, control_mode: str, is_sdxl: bool, hires: bool) -> float:
        """The extension's current_style_fidelity for this pass."""
        value = max(0.0, min(1.0, float(self.style_fidelity)))
        if is_sdxl:  # "sdxl's attention hacking is highly unstable": 0.5 → 0.125
            value = value ** 3.0
        if control_mode == "ControlNet is more important":
            return 1.0
        if control_mode == "My prompt is more important" or hires:
            return 0.0
        return value


class ReferenceInjection:
    """The UNet's hooks for reference units while one generation runs (`with injection:`), and the reference pass
    (`write`) that fills them before each real UNet call."""

    def __init__(self, unet, scheduler_config: dict, is_sdxl: bool):
        from diffusers import DDPMScheduler

        self.unet = unet
        self.is_sdxl = is_sdxl
        self.alphas_cumprod = DDPMScheduler.from_config(scheduler_config).alphas_cumprod.to(torch.float32)
        self.mode: str | None = None
        self.weight = 0.0
        self.style = 0.0
        self.attention = self.adain = False
        self.uncond_rows = 0
        self._attn = _attention_blocks(unet)
        self._norm = _adain_blocks(unet, is_sdxl)
        self._undo: list = []

    # -- hooks on / off ----------------------------------------------------------------------------------------

    def __enter__(self):
        for block, rank in self._attn:
            attn = block.attn1
            original = attn.processor
            attn.set_processor(_ReferenceAttention(self, original, rank))
            self._undo.append(lambda a=attn, p=original: a.set_processor(p))
        for module, rank in self._norm:
            handle = module.register_forward_hook(_AdaIN(self, rank))
            self._undo.append(handle.remove)
        return self

    def __exit__(self, *exc):
        while self._undo:
            self._undo.pop()()
        self.mode = None
        return False

    # -- the reference pass ------------------------------------------------------------------------------------

    def clear(self) -> None:
        for block, _ in self._attn:
            block.attn1.processor.clear()
        for module, _ in self._norm:
            for hook in module._forward_hooks.values():
                if isinstance(hook, _AdaIN):
                    hook.clear()

    def noised(self, latent: torch.Tensor, t, rows: int, generator: torch.Generator) -> torch.Tensor:
        """The reference latent at timestep `t` (DDPM's q_sample at the rounded timestep), one noise per row: the
        UNet's input scale, as the real rows get it."""
        index = int(torch.as_tensor(t).float().round().clamp(0, len(self.alphas_cumprod) - 1).item())
        a = self.alphas_cumprod[index]
        noise = torch.randn((rows, *latent.shape[1:]), generator=generator, dtype=torch.float32)
        x0 = latent.float().expand(rows, *latent.shape[1:]).cpu()
        return (a.sqrt() * x0 + (1 - a).sqrt() * noise).to(device=latent.device, dtype=latent.dtype)

    def write(self, spec: ReferenceSpec, latent: torch.Tensor, generator: torch.Generator, x: torch.Tensor, t,
              embeds, added: dict | None, uncond_rows: int, weight: float, style: float) -> None:
        """One reference pass for one unit: the UNet on the noised reference, recording what the real call reads."""
        ref = self.noised(latent, t, x.shape[0], generator)
        if self.unet.config.in_channels == 9:  # an inpainting UNet: an empty mask and the reference as the picture
            ref = torch.cat([ref, torch.zeros_like(ref[:, :1]), latent.expand_as(ref)], dim=1)
        self.mode, self.weight, self.style = WRITE, float(weight), float(style)
        self.attention, self.adain, self.uncond_rows = spec.attention, spec.adain, uncond_rows
        try:
            self.unet(ref, t, encoder_hidden_states=embeds, added_cond_kwargs=added, return_dict=False)
        finally:
            self.mode = READ


def _attention_blocks(unet) -> list[tuple[torch.nn.Module, float]]:
    """The UNet's transformer blocks with their rank (i / n after a stable sort by width, widest first), in the
    LDM UNet's order (input blocks, middle, output blocks) that the extension sorts."""
    from diffusers.models.attention import BasicTransformerBlock

    parts = [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
    blocks = [m for part in parts for m in part.modules() if isinstance(m, BasicTransformerBlock)]
    ordered = sorted(blocks, key=lambda b: -b.norm1.normalized_shape[0])
    return [(b, i / len(ordered)) for i, b in enumerate(ordered)]


def _layer_output(block, layer: int, last: bool) -> torch.nn.Module:
    """The module whose output is the LDM block's output for one layer of a diffusers down/up block: the upsampler
    after an up block's last layer, else the layer's attention, else its resnet."""
    if last and getattr(block, "upsamplers", None):
        return block.upsamplers[0]
    attentions = getattr(block, "attentions", None)
    return attentions[layer] if attentions else block.resnets[layer]


def _adain_blocks(unet, is_sdxl: bool) -> list[tuple[torch.nn.Module, float]]:
    """The extension's AdaIN blocks with their thresholds: the middle block (0), LDM input blocks 4,5,7,8(,10,11)
    (1 → 1/6) and output blocks 0..7 (SDXL 0..5) (0 → 7/8), all doubled."""
    inputs = [4, 5, 7, 8] if is_sdxl else [4, 5, 7, 8, 10, 11]
    outputs = list(range(6)) if is_sdxl else list(range(8))
    per_down = len(unet.down_blocks[0].resnets) + 1  # LDM input blocks per level: the layers and a downsampler
    per_up = len(unet.up_blocks[0].resnets)
    out = [(unet.mid_block, 0.0)]
    for w, i in enumerate(inputs):
        level, layer = divmod(i - 1, per_down)
        if level < len(unet.down_blocks) and layer < per_down - 1:  # smaller UNets than SD's have fewer blocks
            out.append((_layer_output(unet.down_blocks[level], layer, False), 2.0 * (1.0 - w / len(inputs))))
    for w, i in enumerate(outputs):
        level, layer = divmod(i, per_up)
        if level < len(unet.up_blocks):
            out.append((_layer_output(unet.up_blocks[level], layer, layer == per_up - 1), 2.0 * w / len(outputs)))
    return out


class _ReferenceAttention:
    """A self-attention processor that records its input in the reference pass and attends to it in the real one."""

    def __init__(self, injection: ReferenceInjection, original, rank: float):
        self.injection, self.original, self.rank = injection, original, rank
        self.bank: list[torch.Tensor] = []
        self.styles: list[float] = []

    def clear(self) -> None:
        self.bank, self.styles = [], []

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        inj = self.injection
        if inj.mode == WRITE:
            if inj.attention and inj.weight > self.rank:
                self.bank.append(hidden_states.detach().clone())
                self.styles.append(inj.style)
        elif inj.mode == READ and self.bank:
            style = sum(self.styles) / len(self.styles)
            context = torch.cat([hidden_states, *self.bank], dim=1)
            self.clear()
            with_reference = self.original(attn, hidden_states, context, attention_mask, temb, *args, **kwargs)
            out = with_reference.clone()
            if inj.uncond_rows and style > 1e-5:
                rows = slice(0, inj.uncond_rows)
                out[rows] = self.original(attn, hidden_states[rows], None, attention_mask, temb, *args, **kwargs)
            return style * out + (1.0 - style) * with_reference
        return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)


class _AdaIN:
    """A forward hook that records a block's per-channel statistics in the reference pass and renormalises the
    block's output to them in the real one."""

    def __init__(self, injection: ReferenceInjection, rank: float):
        self.injection, self.rank = injection, rank
        self.means: list[torch.Tensor] = []
        self.variances: list[torch.Tensor] = []
        self.styles: list[float] = []

    def clear(self) -> None:
        self.means, self.variances, self.styles = [], [], []

    def __call__(self, module, args, output):
        inj = self.injection
        x = output[0] if isinstance(output, tuple) else output
        if inj.mode == WRITE:
            if inj.adain and inj.weight > self.rank:
                var, mean = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=0)
                self.means.append(mean)
                self.variances.append(var)
                self.styles.append(inj.style)
            return None
        if inj.mode != READ or not self.means:
            return None
        eps = 1e-6
        style = sum(self.styles) / len(self.styles)
        var, mean = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=0)
        std = torch.clamp(var, min=eps) ** 0.5
        mean_ref = sum(self.means) / len(self.means)
        std_ref = torch.clamp(sum(self.variances) / len(self.variances), min=eps) ** 0.5
        self.clear()
        with_reference = (x - mean) / std * std_ref + mean_ref
        out = with_reference.clone()
        if inj.uncond_rows and style > 1e-5:
            out[:inj.uncond_rows] = x[:inj.uncond_rows].to(out.dtype)
        y = (style * out + (1.0 - style) * with_reference).to(x.dtype)
        return (y, *output[1:]) if isinstance(output, tuple) else y


@contextlib.contextmanager
def attached(model, units: list):
    """The reference hooks on the model's UNet while a generation with reference units runs (yields the
    injection, or None when there are none)."""
    if not any(getattr(u, "kind", None) == "reference" for u in units):
        yield None
        return
    with ReferenceInjection(model.unet, model.scheduler_config, model.family.startswith("sdxl")) as injection:
        yield injection

"""T2I-Adapter style (`t2iadapter_style_sd14v1.pth`, preprocessor t2ia_style_clipvision): a picture's CLIP ViT-L
hidden states become a few extra prompt tokens.

TencentARC's StyleAdapter (written here from its description: learned style tokens appended to the CLIP vision
tokens, a few CLIP-style residual attention blocks, the style tokens' outputs projected to the text width) runs once
per generation; as the sd-webui-controlnet extension does it, inside the unit's guidance window each UNet call's
context gets the tokens × the unit's weight appended on the prompt's rows and zeros of the same length on the
negative prompt's rows. The architecture comes from the file's shapes (width, tokens, layers, text width); the head
count, which no shape tells, is the released model's (8).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

HEADS = 8  # the released style adapter's; not in its shapes


class _Block(nn.Module):
    """CLIP's residual attention block (pre-norm attention and a QuickGELU MLP), sequence-first."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, width * 4))
        self.mlp.add_module("gelu", _QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(width * 4, width))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class StyleAdapter(nn.Module):
    def __init__(self, width: int = 1024, context_dim: int = 768, heads: int = HEADS, layers: int = 3,
                 tokens: int = 8):
        super().__init__()
        self.transformer_layes = nn.Sequential(*[_Block(width, heads) for _ in range(layers)])  # the file's name
        self.style_embedding = nn.Parameter(torch.zeros(1, tokens, width))
        self.ln_pre = nn.LayerNorm(width)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, context_dim))

    @property
    def tokens(self) -> int:
        return self.style_embedding.shape[1]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """CLIP vision hidden states (batch, 1 + patches, width) → style tokens (batch, tokens, context_dim)."""
        style = self.style_embedding.expand(hidden.shape[0], -1, -1)
        x = self.ln_pre(torch.cat([hidden, style.to(hidden.dtype)], dim=1))
        x = self.transformer_layes(x.permute(1, 0, 2)).permute(1, 0, 2)
        return self.ln_post(x[:, -self.tokens:, :]) @ self.proj


def is_style_adapter(sd) -> bool:
    return "style_embedding" in sd and any(k.startswith("transformer_layes.") for k in sd)


def build(sd, dtype: torch.dtype) -> StyleAdapter:
    """The adapter a file holds, sized from its shapes."""
    width = sd["style_embedding"].shape[-1]
    layers = len({k.split(".")[1] for k in sd if k.startswith("transformer_layes.")})
    model = StyleAdapter(width=width, context_dim=sd["proj"].shape[1], layers=layers,
                         tokens=sd["style_embedding"].shape[1])
    model.load_state_dict({k: v for k, v in sd.items()}, strict=True)
    return model.to(dtype).eval()


@dataclass
class StyleTokens:
    """A style unit's tokens for this generation (1, tokens, context_dim)."""

    tokens: torch.Tensor


def encode(encoder, adapter: StyleAdapter, image) -> StyleTokens:
    """The picture through the CLIP vision encoder (its last hidden states, as the extension's clip_vision
    preprocessor gives them) and the adapter."""
    from modules.controlnet.ip_adapter import image_processor

    pixels = image_processor(encoder)(images=image.convert("RGB"), return_tensors="pt").pixel_values
    pixels = pixels.to(device=encoder.device, dtype=encoder.dtype)
    with torch.no_grad():
        hidden = encoder(pixels).last_hidden_state
        param = next(adapter.parameters())
        return StyleTokens(adapter(hidden.to(param.device, param.dtype)))


def apply(units: list, step: int, total: int, embeds: torch.Tensor, uncond_rows: int) -> torch.Tensor:
    """The context for this UNet call with the style units active at `step` appended: weight × tokens on the
    prompt's rows, zeros on the negative prompt's (the extension's cond mark)."""
    for unit in units:
        if unit.kind != "t2i_style" or not unit.active_at(step, total):
            continue
        tokens = unit.model.tokens.to(embeds.device, embeds.dtype) * float(unit.weight)
        block = tokens.expand(embeds.shape[0], -1, -1).clone()
        block[:uncond_rows] = 0
        embeds = torch.cat([embeds, block], dim=1)
    return embeds

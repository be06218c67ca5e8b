"""Live previews: a cheap latent → RGB approximation (a fixed linear map per family, as A1111's "Approx cheap")."""
from __future__ import annotations

import torch
from PIL import Image

_SD_COEFFS = [[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]]
_SDXL_COEFFS = [[0.3448, 0.4168, 0.4395], [-0.1953, -0.0290, 0.0250], [0.1074, 0.0886, -0.0163],
                [-0.3730, -0.2499, -0.2088]]


def cheap_approximation(latent: torch.Tensor, sdxl: bool = False) -> Image.Image:
    """One latent (C,h,w) → a small RGB picture; costs a 4×3 matrix product, so it can run every few steps."""
    coeffs = torch.tensor(_SDXL_COEFFS if sdxl else _SD_COEFFS, dtype=torch.float32)
    x = torch.einsum("lxy,lr->rxy", latent[:4].float().cpu(), coeffs)
    x = ((x + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8)
    return Image.fromarray(x.permute(1, 2, 0).numpy(), "RGB")

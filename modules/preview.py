"""Live previews: a cheap latent → RGB approximation (a fixed linear map per family, as A1111's "Approx cheap").

The 16-channel maps (SD3, Flux.1) are the published least-squares fits ComfyUI ships in `latent_formats.py`; they
map the sampler's (scaled, shifted) latents to RGB in [-1, 1] like the 4-channel ones."""
from __future__ import annotations

import torch
from PIL import Image

_SD_COEFFS = [[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]]
_SDXL_COEFFS = [[0.3448, 0.4168, 0.4395], [-0.1953, -0.0290, 0.0250], [0.1074, 0.0886, -0.0163],
                [-0.3730, -0.2499, -0.2088]]

_SD3_COEFFS = [[-0.0922, -0.0175, 0.0749], [0.0311, 0.0633, 0.0954], [0.1994, 0.0927, 0.0458],
               [0.0856, 0.0339, 0.0902], [0.0587, 0.0272, -0.0496], [-0.0006, 0.1104, 0.0309],
               [0.0978, 0.0306, 0.0427], [-0.0042, 0.1038, 0.1358], [-0.0194, 0.0020, 0.0669],
               [-0.0488, 0.0130, -0.0268], [0.0922, 0.0988, 0.0951], [-0.0278, 0.0524, -0.0542],
               [0.0332, 0.0456, 0.0895], [-0.0069, -0.0030, -0.0810], [-0.0596, -0.0465, -0.0293],
               [-0.1448, -0.1463, -0.1189]]
_SD3_BIAS = [0.2394, 0.2135, 0.1925]
_FLUX_COEFFS = [[-0.0346, 0.0244, 0.0681], [0.0034, 0.0210, 0.0687], [0.0275, -0.0668, -0.0433],
                [-0.0174, 0.0160, 0.0617], [0.0859, 0.0721, 0.0329], [0.0004, 0.0383, 0.0115],
                [0.0405, 0.0861, 0.0915], [-0.0236, -0.0185, -0.0259], [-0.0245, 0.0250, 0.1180],
                [0.1008, 0.0755, -0.0421], [-0.0515, 0.0201, 0.0011], [0.0428, -0.0012, -0.0036],
                [0.0817, 0.0765, 0.0749], [-0.1264, -0.0522, -0.1103], [-0.0280, -0.0881, -0.0499],
                [-0.1262, -0.0982, -0.0778]]
_FLUX_BIAS = [-0.0329, -0.0718, -0.0851]
_MAPS = {"flux": (_FLUX_COEFFS, _FLUX_BIAS), "sd3": (_SD3_COEFFS, _SD3_BIAS), "sdxl": (_SDXL_COEFFS, None),
         "sd": (_SD_COEFFS, None)}


def cheap_approximation(latent: torch.Tensor, sdxl: bool = False, family: str | None = None) -> Image.Image:
    """One latent (C,h,w) → a small RGB picture; costs a C×3 matrix product, so it can run every few steps.
    `family` ("flux", "sd3", "sdxl", else SD) wins over the older `sdxl` flag."""
    key = family if family in _MAPS else ("sdxl" if sdxl or family in ("sdxl_refiner",) else "sd")
    coeffs, bias = _MAPS[key]
    coeffs = torch.tensor(coeffs, dtype=torch.float32)
    x = torch.einsum("lxy,lr->rxy", latent[:len(coeffs)].float().cpu(), coeffs)
    if bias is not None:
        x = x + torch.tensor(bias)[:, None, None]
    x = ((x + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8)
    return Image.fromarray(x.permute(1, 2, 0).numpy(), "RGB")

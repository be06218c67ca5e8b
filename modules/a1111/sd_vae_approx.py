"""A1111's `modules.sd_vae_approx`: cheap latent → image previews (ours, modules/preview.py)."""
from __future__ import annotations

from modules.a1111.unsupported import unsupported


def cheap_approximation(sample):
    """(3, H, W) RGB in [-1, 1] from one latent, as A1111's cheap approximation."""
    import numpy as np
    import torch

    from modules import shared
    from modules.preview import cheap_approximation as preview

    model = shared.sd_model
    image = preview(sample, bool(model is not None and model.is_sdxl))
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)


model = unsupported("sd_vae_approx.model", "the Approx NN preview model is not included")

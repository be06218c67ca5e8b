"""img2img's colour correction (setting `img2img_color_correction`), as A1111 does it: the result's colour
histograms are matched to the init picture's in LAB space, then the result's own luminosity is put back, so a colour
cast the sampling drifted into goes while the new detail stays (most useful over loopback runs)."""
from __future__ import annotations

import cv2
import numpy as np
from PIL import Image


def target(init: Image.Image) -> np.ndarray:
    """What a result is corrected towards: the init picture (at the generation's size) in LAB."""
    return cv2.cvtColor(np.asarray(init.convert("RGB")), cv2.COLOR_RGB2LAB)


def apply(correction: np.ndarray, image: Image.Image) -> Image.Image:
    from blendmodes.blend import BlendType, blendLayers
    from skimage import exposure

    lab = cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2LAB)
    matched = exposure.match_histograms(lab, correction, channel_axis=2)
    matched = np.clip(np.rint(matched), 0, 255).astype(np.uint8)  # scikit-image < 0.22 answers in float
    coloured = Image.fromarray(cv2.cvtColor(matched, cv2.COLOR_LAB2RGB))
    return blendLayers(coloured, image.convert("RGB"), BlendType.LUMINOSITY).convert("RGB")

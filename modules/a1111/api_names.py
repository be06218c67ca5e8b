"""A1111's `modules.api.api` helpers extensions call from their own routes."""
from __future__ import annotations

import base64
import io

__all__ = ["encode_pil_to_base64", "decode_base64_to_image", "verify_url", "script_name_to_index",
           "validate_sampler_name", "setUpscalers"]


def encode_pil_to_base64(image):
    """The image as base64 **bytes** in the `samples_format` option's format, infotext kept (A1111's contract)."""
    from modules import images
    from modules.a1111._engine import engine_or_none

    e = engine_or_none()
    fmt = str(e.settings.get("samples_format", "png") if e is not None else "png").lower()
    infotext = images.read_infotext(image) if hasattr(image, "info") else None
    return base64.b64encode(images.encode_image(image, fmt, infotext))


def decode_base64_to_image(encoding):
    """A PIL image from base64 (optionally a data: URL). Bad data → HTTP 400 with the reason."""
    from fastapi import HTTPException
    from PIL import Image

    from modules.request_types import RequestError, decode_image

    if isinstance(encoding, str) and encoding.lower().startswith(("http://", "https://")):
        from modules.a1111._engine import engine
        from modules.api.api import ApiError, fetch_url_image

        try:
            encoding = fetch_url_image(encoding, engine().settings, "image")
        except ApiError as err:
            raise HTTPException(status_code=400, detail=str(err)) from None
    try:
        return decode_image(encoding, "image")
    except RequestError as err:
        raise HTTPException(status_code=400, detail=f"Invalid encoded image: {err}") from None


def verify_url(url: str) -> bool:
    from modules.api.api import _blocked_address
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname or ""
    return bool(host) and _blocked_address(host) is None


def script_name_to_index(name, scripts):
    try:
        return [s.title().lower() for s in scripts].index(name.lower())
    except ValueError:
        from fastapi import HTTPException

        raise HTTPException(status_code=422, detail=f"Script '{name}' not found") from None


def validate_sampler_name(name):
    from fastapi import HTTPException

    from modules.a1111.sd_samplers import find_sampler_config

    config = find_sampler_config(name)
    if config is None:
        raise HTTPException(status_code=400, detail="Sampler not found")
    return config.name


def setUpscalers(req: dict):  # noqa: N802 - A1111's name
    reqDict = dict(req)  # noqa: N806
    reqDict["extras_upscaler_1"] = reqDict.pop("upscaler_1", None)
    reqDict["extras_upscaler_2"] = reqDict.pop("upscaler_2", None)
    return reqDict

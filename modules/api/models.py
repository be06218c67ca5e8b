"""Pydantic models for ``/sdapi/v1`` request bodies: generated from the request dataclasses, so the fields, types
and defaults live in one place (modules/request_types.py). They exist for the OpenAPI schema (``/docs``) and for
type checks (a wrong type is a 422 before any work); the dataclasses' ``from_dict`` still does the real checking.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Annotated, Any, Optional

from PIL import Image
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model

from modules.request_types import Img2ImgRequest, Txt2ImgRequest

# Every request model: unknown fields ignored (as A1111), NaN/Infinity refused (they cannot be echoed as JSON), and
# types as the OpenAPI document states them (strict: no 0/1 or "true" for a boolean, no "20" for a number).
_CONFIG = ConfigDict(extra="ignore", allow_inf_nan=False, strict=True)


def _integral(value: Any) -> Any:
    """JSON Schema counts 512.0 as an integer, so the API takes it as one."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Int = Annotated[int, BeforeValidator(_integral)]


def _api_type(hint: Any) -> Any:
    """The JSON type of a dataclass field: images are base64 strings (or data: URIs, or http(s) URLs)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Image.Image:
        return str
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return Optional[_api_type(inner[0])]
    if origin is list:
        return list[_api_type(args[0])] if args else list
    if origin is dict:
        return dict[str, Any]
    if hint is int:
        return Int
    return hint


def model_from_dataclass(name: str, cls: type) -> type[BaseModel]:
    hints = typing.get_type_hints(cls)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name.startswith("_"):
            continue
        t = Optional[_api_type(hints[f.name])]
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            fields[f.name] = (t, Field(default_factory=f.default_factory))
        else:
            fields[f.name] = (t, f.default)
    return create_model(name, __config__=_CONFIG, **fields)


StableDiffusionTxt2ImgProcessingAPI = model_from_dataclass("StableDiffusionTxt2ImgProcessingAPI", Txt2ImgRequest)
StableDiffusionImg2ImgProcessingAPI = model_from_dataclass("StableDiffusionImg2ImgProcessingAPI", Img2ImgRequest)


class TextToImageResponse(BaseModel):
    images: Optional[list[str]] = Field(default=None, title="Image", description="The generated images in base64")
    parameters: dict[str, Any]
    info: str


ImageToImageResponse = TextToImageResponse


class ExtrasBaseRequest(BaseModel):
    model_config = _CONFIG
    resize_mode: Int = Field(default=0, ge=0, le=1, description="0: scale by upscaling_resize, 1: to w×h")
    show_extras_results: bool = True
    gfpgan_visibility: float = Field(default=0, ge=0, le=1)
    codeformer_visibility: float = Field(default=0, ge=0, le=1)
    codeformer_weight: float = Field(default=0, ge=0, le=1)
    upscaling_resize: float = Field(default=2, gt=0, le=8)
    upscaling_resize_w: Int = Field(default=512, ge=1, le=8192)
    upscaling_resize_h: Int = Field(default=512, ge=1, le=8192)
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = Field(default=0, ge=0, le=1)
    upscale_first: bool = False


class ExtrasSingleImageRequest(ExtrasBaseRequest):
    image: str = Field(default="", description="Image to work on, base64 or data: URI")


class FileData(BaseModel):
    model_config = _CONFIG
    data: str = Field(description="Base64 representation of the file")
    name: str = Field(default="", description="File name")


class ExtrasBatchImagesRequest(ExtrasBaseRequest):
    imageList: list[FileData] = Field(max_length=100, description="List of images to work on")


class ExtrasSingleImageResponse(BaseModel):
    html_info: str
    image: str


class ExtrasBatchImagesResponse(BaseModel):
    html_info: str
    images: list[str]


class PNGInfoRequest(BaseModel):
    model_config = _CONFIG
    image: str


class PNGInfoResponse(BaseModel):
    info: str
    items: dict[str, Any]
    parameters: dict[str, Any]


class ValidationErrorItem(BaseModel):
    """One problem pydantic found in the request: where (``["body", "steps"]``), what, and its kind."""
    loc: list[str | int]
    msg: str
    type: str


class ErrorResponse(BaseModel):
    """Every 4xx answer of ``/sdapi/v1`` (A1111's shape): ``detail`` is the reason as one line of text, ``errors``
    lists the fields at fault for a 422 from request validation and is ``""`` otherwise."""
    error: str = Field(description="The kind of error: BadRequest, NotFound, RequestValidationError, ...")
    detail: str = Field(description="Why the request was refused")
    body: str = ""
    errors: str | list[ValidationErrorItem] = ""


class ProgressResponse(BaseModel):
    progress: float
    eta_relative: float
    state: dict[str, Any]
    current_image: Optional[str] = None
    textinfo: Optional[str] = None

"""A1111's HTTP API, ``/sdapi/v1/*``, on the FastAPI app (``--api``, or alone with ``--nowebui``).

Every generation goes through ``engine.generate`` (one job at a time, first come first served, shared with the UI)
from a worker thread (sync endpoints run in FastAPI's thread pool), so progress / interrupt / skip answer while a job
runs. Bad input is a 4xx JSON error ``{"error", "detail", "body", "errors"}``; nothing here reads local files.
"""
from __future__ import annotations

import base64
import dataclasses
import ipaddress
import json
import logging
import os
import secrets
import signal
import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Body, Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match, Mount, Route

from modules import auth as auth_mod
from modules import images as images_mod
from modules import infotext as infotext_mod
from modules.api import models
from modules.models.manager import ModelNotFoundError
from modules.models.registry import list_vaes
from modules import face_restoration, postprocessing
from modules.processing import LATENT_UPSCALE_MODES, PIXEL_UPSCALERS
from modules.request_types import Img2ImgRequest, RequestError, Txt2ImgRequest, decode_image
from modules.settings import DIRECTORY_OPTIONS
from modules.upscaling import UpscalerDownloadError
from modules.sampling import samplers
from modules.diagnostics import SECRET_FLAGS  # the flags whose values are logins

log = logging.getLogger(__name__)

PREFIX = "/sdapi/v1"
MAX_URL_IMAGE_BYTES = 50 * 1024 * 1024
MAX_DIM = 8192  # the largest width/height anything here will produce
SEED_LIMIT = 2 ** 62


class ApiError(Exception):
    """A bad request: ``status`` and a reason for the client."""

    def __init__(self, status: int, detail: str, error: str | None = None):
        super().__init__(detail)
        self.status, self.detail = status, detail
        self.error = error or {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
                               422: "UnprocessableEntity"}.get(status, "HTTPException")


def error_response(status: int, error: str, detail: Any, errors: Any = "", headers: dict | None = None):
    return JSONResponse(status_code=status, headers=headers,
                        content={"error": error, "detail": detail, "body": "", "errors": errors})


# ---------------------------------------------------------------------------------------------------------------
# Images in and out


def encode_png(image: Image.Image, infotext: str | None = None) -> str:
    return base64.b64encode(images_mod.image_to_png_bytes(image, infotext)).decode("ascii")


def encode_preview(image: Image.Image, fmt: str) -> str:
    """A live preview in the "Live preview file format" setting's format (jpeg, png, webp)."""
    fmt = str(fmt or "png").lower()
    if fmt == "png":
        return encode_png(image)
    return base64.b64encode(images_mod.encode_image(image.convert("RGB"), "jpg" if fmt == "jpeg" else fmt,
                                                    None)).decode("ascii")


_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the last 32 bits are an IPv4 address
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215: local-use translation, never public
URL_TIMEOUT = 30


def _embedded_v4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form carries (mapped, 6to4, NAT64, IPv4-compatible), which is what it reaches."""
    if addr.ipv4_mapped:
        return addr.ipv4_mapped
    if addr.sixtofour:
        return addr.sixtofour
    if addr in _NAT64 or int(addr) >> 32 == 0:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def _local_reason(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why `addr` is not a public unicast address (loopback, private, shared 100.64.0.0/10, link-local, reserved,
    multicast, or an IPv6 form embedding one of those), or None."""
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.scope_id:
            addr = ipaddress.IPv6Address(str(addr).split("%", 1)[0])
        if addr in _NAT64_LOCAL:
            return "a local NAT64 address"
        inner = _embedded_v4(addr)
        if inner is not None and _local_reason(inner):
            return f"an address embedding {inner}"
    if not addr.is_global or addr.is_multicast or addr.is_unspecified:
        return "a local address"
    return None


def _checked_address(host: str, port: int | None = None) -> tuple[str | None, str | None]:
    """(address to connect to, None) when every address `host` resolves to is public, else (None, why).
    The caller connects to that very address, so a second lookup (DNS rebinding) cannot lead elsewhere."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        return None, f"cannot resolve {host!r}: {e}"
    addresses = []
    for info in infos:
        try:
            addr = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        except ValueError:
            return None, f"{host!r} resolves to an unusable address ({info[4][0]!r})"
        why = _local_reason(addr)
        if why:
            return None, f"{host!r} resolves to {why} ({addr})"
        addresses.append(addr)
    if not addresses:
        return None, f"cannot resolve {host!r}"
    return str(addresses[0]), None


def _blocked_address(host: str) -> str | None:
    """Why `host` may not be fetched (it resolves to a loopback/private/shared/link-local/... address), or None."""
    return _checked_address(host)[1]


def fetch_url_image(url: str, settings, field: str) -> str:
    """The base64 of an http(s) image, if the option `api_enable_requests` allows it and the host is public.

    The host is resolved once; the connection goes to the address that was checked, with the URL's host name kept
    in the Host header and as the TLS server name (so certificates are still verified against it)."""
    if not settings.get("api_enable_requests", True):
        raise ApiError(422, f"{field}: image URLs are disabled (option api_enable_requests)")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ApiError(422, f"{field}: not an http(s) URL")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ApiError(422, f"{field}: not an http(s) URL (bad port)") from None
    address, why = _checked_address(parts.hostname, port)  # never to local addresses, whatever the options say
    if why:
        raise ApiError(422, f"{field}: URL refused: {why}")
    import httpx

    literal = f"[{address}]" if ":" in address else address
    target = parts._replace(netloc=f"{literal}:{port}").geturl()
    host_header = parts.netloc.rpartition("@")[2]
    headers = {"user-agent": settings.get("api_useragent", "") or "sd-webui", "host": host_header}
    extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
    auth = (parts.username or "", parts.password or "") if parts.username else None
    try:
        with httpx.Client(timeout=URL_TIMEOUT, follow_redirects=False, trust_env=False) as client, \
                client.stream("GET", target, headers=headers, extensions=extensions, auth=auth) as r:
            if r.status_code != 200:
                raise ApiError(422, f"{field}: fetching the URL gave HTTP {r.status_code}")
            data = bytearray()
            for chunk in r.iter_bytes():
                data += chunk
                if len(data) > MAX_URL_IMAGE_BYTES:
                    raise ApiError(422, f"{field}: the image at the URL is larger than {MAX_URL_IMAGE_BYTES} bytes")
    except httpx.HTTPError as e:
        raise ApiError(422, f"{field}: cannot fetch the URL: {e}") from None
    return base64.b64encode(bytes(data)).decode("ascii")


def _image_value(value: Any, settings, field: str) -> Any:
    if isinstance(value, str) and value.lower().startswith(("http://", "https://")):
        return fetch_url_image(value, settings, field)
    return value


def decode_b64_image(value: Any, field: str = "image") -> Image.Image:
    if isinstance(value, str) and value.lower().startswith(("http://", "https://")):
        raise ApiError(422, f"{field}: URL images are accepted only by txt2img/img2img")
    try:
        return decode_image(value, field)
    except RequestError as e:
        raise ApiError(422, str(e)) from None


# ---------------------------------------------------------------------------------------------------------------
# Request checks not in the dataclasses (things that would otherwise fail deep inside a job)


_INT_LIMITS = {
    "seed": (-SEED_LIMIT, SEED_LIMIT), "subseed": (-SEED_LIMIT, SEED_LIMIT),
    "seed_resize_from_h": (-1, MAX_DIM), "seed_resize_from_w": (-1, MAX_DIM),
    "firstphase_width": (0, MAX_DIM), "firstphase_height": (0, MAX_DIM),
    "hr_resize_x": (0, MAX_DIM), "hr_resize_y": (0, MAX_DIM), "hr_second_pass_steps": (0, 1000),
    "mask_blur": (0, 512), "mask_blur_x": (0, 512), "mask_blur_y": (0, 512),
    "inpaint_full_res_padding": (0, MAX_DIM), "inpainting_mask_invert": (0, 1),
}
_FLOAT_LIMITS = {
    "eta": (0.0, 10.0), "s_min_uncond": (0.0, 100.0), "s_churn": (0.0, 100.0), "s_tmax": (0.0, 1e4),
    "s_tmin": (0.0, 1e4), "s_noise": (0.0, 10.0), "hr_scale": (0.0, 16.0), "refiner_switch_at": (0.0, 1.0),
    "image_cfg_scale": (0.0, 100.0), "initial_noise_multiplier": (0.0, 10.0),
}


def check_request(req, settings=None, upscaler_names=None, runners=None) -> None:
    """Range checks the dataclasses leave to processing, the configurable caps (api_max_steps, api_max_batch_size,
    api_max_n_iter), and the sampler / upscaler / script names (`upscaler_names`: the engine's pixel upscalers)."""
    if settings is not None:
        for name, option in (("steps", "api_max_steps"), ("batch_size", "api_max_batch_size"),
                             ("n_iter", "api_max_n_iter")):
            cap = int(settings.get(option, 0) or 0)
            v = getattr(req, name, None)
            if cap and v is not None and v > cap:
                raise ApiError(422, f"{name} {v} is more than this server allows ({option} = {cap})")
    for name, (lo, hi) in _INT_LIMITS.items():
        v = getattr(req, name, None)
        if v is not None and not lo <= v <= hi:
            raise ApiError(422, f"{name} must be between {lo} and {hi}, got {v}")
    for name, (lo, hi) in _FLOAT_LIMITS.items():
        v = getattr(req, name, None)
        if v is not None and not lo <= v <= hi:
            raise ApiError(422, f"{name} must be between {lo} and {hi}, got {v}")
    try:
        samplers.resolve(req.effective_sampler, req.scheduler)
        if getattr(req, "hr_sampler_name", None):
            samplers.resolve(req.hr_sampler_name, req.hr_scheduler or req.scheduler, strict=False)
    except ValueError as e:
        raise ApiError(400, str(e), "SamplerNotFound") from None
    if isinstance(req, Txt2ImgRequest) and req.enable_hr:
        up = req.hr_upscaler or "Latent"
        pixel = list(upscaler_names) if upscaler_names is not None else list(PIXEL_UPSCALERS)
        if up not in LATENT_UPSCALE_MODES and up not in pixel:
            valid = ", ".join([*LATENT_UPSCALE_MODES, *pixel])
            raise ApiError(400, f"hr_upscaler {up!r} not found; available: {valid}")
        w = req.hr_resize_x or req.width * req.hr_scale
        h = req.hr_resize_y or req.height * req.hr_scale
        if w > MAX_DIM or h > MAX_DIM:
            raise ApiError(422, f"hires fix target {int(w)}x{int(h)} is larger than {MAX_DIM}")
    runner = runners.for_mode(req.mode) if runners is not None else None
    if req.script_name and (runner is None or not runner.selectable_index(req.script_name)):
        valid = ", ".join(runner.titles) if runner is not None and runner.titles else "none installed"
        raise ApiError(422, f"script {req.script_name!r} not found; available: {valid}", "ScriptNotFound")
    for title in req.external_alwayson_scripts():
        script = runner.script(title) if runner is not None else None
        if script is None or not script.alwayson:
            raise ApiError(422, f"always-on script {title!r} not found", "ScriptNotFound")


def _arg_info(component) -> dict:
    """A1111's ScriptArg: what a UI component tells about the argument it stands for."""
    def plain(value):
        return value if isinstance(value, (str, int, float, bool, type(None), list, dict)) else str(value)

    choices = getattr(component, "choices", None)
    if choices:
        choices = [c[0] if isinstance(c, (list, tuple)) else c for c in choices]
    return {"label": getattr(component, "label", None), "value": plain(getattr(component, "value", None)),
            "minimum": getattr(component, "minimum", None), "maximum": getattr(component, "maximum", None),
            "step": getattr(component, "step", None), "choices": choices}


# ---------------------------------------------------------------------------------------------------------------
# What the OpenAPI document says a route answers besides 200

_ERROR_TEXT = {
    400: "A body that cannot be read as text, an unknown sampler, scheduler, upscaler, checkpoint or option, or "
         "an option value it refuses",
    401: "No login, or a wrong one (--api-auth, --auth)",
    403: "A state-changing request from another origin's page, or an output folder change under "
         "--hide-ui-dir-config",
    404: "No image to work on, or no such history picture or queued job",
    409: "A queued job that has already started or finished",
    422: "A malformed or out-of-range request, or a model file that cannot be used (`errors` lists the fields "
         "request validation found at fault)",
    429: "The queue is full (Settings: queue limits)",
}


def _errors(*codes: int) -> dict:
    return {code: {"model": models.ErrorResponse, "description": _ERROR_TEXT[code]} for code in codes}


def _flat_routes(routes):
    """Routes as matched, with FastAPI's included routers opened up (their routes carry the full path)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _flat_routes(inner.routes)
        else:
            yield route


class _WrongMethod(BaseRoute):
    """405 with an ``Allow`` listing every method of a ``/sdapi/v1`` path called with another (Starlette's router
    names only the first route's: ``Allow: GET`` for /options, which takes POST too), and a JSON 404 for a path
    under it that nothing serves (with the UI, its catch-all mount at "/" would answer in its own format). Routes
    added later (extensions') are seen: a request one of them serves is left to it."""

    def __init__(self, app: FastAPI, router: APIRouter):
        self.app, self.router = app, router

    def _allowed(self, scope) -> set[str] | None:
        """None when another route serves the request; else the methods the path takes (empty: unknown path)."""
        others = [r for r in _flat_routes(self.app.router.routes)
                  if not isinstance(r, _WrongMethod) and not (isinstance(r, Mount) and r.path in ("", "/"))]
        if any(r.matches(scope)[0] is Match.FULL for r in others):
            return None
        methods: set[str] = set()
        for other in [*_flat_routes(self.router.routes), *others]:
            if isinstance(other, Route) and other.methods and other.matches(scope)[0] is Match.PARTIAL:
                methods |= other.methods
        return methods

    def matches(self, scope):
        if scope["type"] == "http" and scope["path"].startswith(self.router.prefix + "/") and \
                self._allowed(scope) is not None:
            return Match.FULL, {}
        return Match.NONE, {}

    async def handle(self, scope, receive, send):
        allowed = self._allowed(scope) or set()
        if allowed:
            response = error_response(405, "HTTPException", "Method Not Allowed",
                                      headers={"Allow": ", ".join(sorted(allowed))})
        else:
            response = error_response(404, "HTTPException", "Not Found")
        await response(scope, receive, send)


# ---------------------------------------------------------------------------------------------------------------
# The routes


class Api:
    def __init__(self, app: FastAPI, ctx):
        self.app, self.ctx = app, ctx
        self.engine = ctx.engine
        self.args = ctx.args
        self.credentials: dict[str, str] = auth_mod.api_logins(self.args)  # --api-auth[-path], --auth[-path]
        deps = [Depends(self.auth)] if self.credentials else []
        responses = _errors(401) if self.credentials else {}
        self.router = APIRouter(prefix=PREFIX, dependencies=deps, tags=["sdapi"], responses=responses)

        def route(path: str, endpoint, method: str, *codes: int, **kw) -> None:
            """One route, with the 4xx answers it can give in the OpenAPI document (every POST may meet the
            cross-origin guard's 403)."""
            codes = tuple(sorted({*codes, 403} if method == "POST" else set(codes)))
            self.router.add_api_route(path, endpoint, methods=[method], responses=_errors(*codes), **kw)

        route("/txt2img", self.txt2img, "POST", 400, 403, 422, response_model=models.TextToImageResponse)
        route("/img2img", self.img2img, "POST", 400, 403, 404, 422, response_model=models.ImageToImageResponse)
        route("/extra-single-image", self.extras_single, "POST", 400, 404, 422,
              response_model=models.ExtrasSingleImageResponse)
        route("/extra-batch-images", self.extras_batch, "POST", 400, 422,
              response_model=models.ExtrasBatchImagesResponse)
        route("/png-info", self.pnginfo, "POST", 400, 422, response_model=models.PNGInfoResponse)
        route("/progress", self.progress, "GET", 422, response_model=models.ProgressResponse)
        route("/interrupt", self.interrupt, "POST")
        route("/skip", self.skip, "POST")
        route("/options", self.get_options, "GET")
        route("/options", self.set_options, "POST", 400, 403, 422)
        route("/cmd-flags", self.cmd_flags, "GET")
        route("/system-info", self.system_info, "GET")
        route("/samplers", self.samplers, "GET")
        route("/schedulers", self.schedulers, "GET")
        route("/upscalers", self.upscalers, "GET")
        route("/latent-upscale-modes", self.latent_upscale_modes, "GET")
        route("/sd-models", self.sd_models, "GET")
        route("/sd-vae", self.sd_vae, "GET")
        route("/hypernetworks", self.hypernetworks, "GET")
        route("/face-restorers", self.face_restorers, "GET")
        route("/realesrgan-models", self.realesrgan_models, "GET")
        route("/prompt-styles", self.prompt_styles, "GET")
        route("/loras", self.loras, "GET")
        route("/embeddings", self.embeddings, "GET")
        route("/scripts", self.scripts, "GET")
        route("/script-info", self.script_info, "GET")
        route("/extensions", self.extensions, "GET")
        route("/memory", self.memory, "GET")
        route("/refresh-checkpoints", self.refresh_checkpoints, "POST")
        route("/refresh-vae", self.nothing, "POST")
        route("/refresh-loras", self.refresh_loras, "POST")
        route("/refresh-embeddings", self.refresh_embeddings, "POST")
        route("/unload-checkpoint", self.unload_checkpoint, "POST")
        route("/reload-checkpoint", self.reload_checkpoint, "POST", 400, 422)
        if getattr(self.args, "api_server_stop", False):
            route("/server-stop", self.server_stop, "POST")
            route("/server-kill", self.server_stop, "POST")
        app.include_router(self.router)
        app.router.routes.append(_WrongMethod(app, self.router))

    # -- auth --------------------------------------------------------------------------------------------------

    def auth(self, credentials: HTTPBasicCredentials | None = Depends(HTTPBasic(auto_error=False))) -> bool:
        if credentials is not None and credentials.username in self.credentials:
            expected = self.credentials[credentials.username].encode("utf-8")
            if secrets.compare_digest(credentials.password.encode("utf-8"), expected):
                return True
        raise ApiError(401, "Incorrect username or password", "Unauthorized")

    # -- generation ----------------------------------------------------------------------------------------------

    def _build(self, cls, body, image_fields: tuple[str, ...]):
        data = body.model_dump(exclude_unset=True)
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        # null means "the default" for fields whose default is not null
        data = {k: v for k, v in data.items() if v is not None or defaults.get(k, None) is None}
        raw_images = {k: data.get(k) for k in image_fields}
        self._check_locked_options(data.get("override_settings"))
        settings = self.engine.settings
        for name in image_fields:
            value = data.get(name)
            if isinstance(value, list):
                data[name] = [_image_value(v, settings, name) for v in value]
            elif value is not None:
                data[name] = _image_value(value, settings, name)
        if data.get("infotext"):
            self._apply_infotext(data)
        save = bool(data.get("save_images", False))
        data["do_not_save_samples"] = data["do_not_save_grid"] = not save
        try:
            req = cls.from_dict(data)
        except RequestError as e:
            raise ApiError(422, str(e), "RequestError") from None
        check_request(req, self.engine.settings, self.engine.upscalers.names(), self.engine.scripts)
        self._check_checkpoints(req)
        if getattr(self.args, "hide_ui_dir_config", False) and any(
                u.enabled and getattr(u.input_mode, "value", "") == "batch" and (isinstance(u.batch_images, str)
                                                                                  or u.output_dir)
                for u in req.controlnet_units):  # a folder of the server: as the output folders (403)
            raise ApiError(403, "controlnet batch_images/output_dir: folders of the server cannot be read or "
                                "written (--hide-ui-dir-config)", "Forbidden")
        return req, raw_images

    def _check_checkpoints(self, req) -> None:
        """Checkpoint titles a request names besides the model (the refiner; the hires checkpoint when hires fix
        is on, as A1111 checks it), found now: a queued job with a typo fails at once with a 422, not later as a
        failed job."""
        from modules.models.manager import ModelNotFoundError

        if self.engine.models is None:
            return
        named = [("refiner_checkpoint", getattr(req, "refiner_checkpoint", None))]
        if getattr(req, "enable_hr", False):
            named.append(("hr_checkpoint_name", getattr(req, "hr_checkpoint_name", None)))
        for field_name, title in named:
            if title in (None, "", "None", "none", "Use same checkpoint"):
                continue
            try:
                self.engine.models.resolve(str(title))
            except ModelNotFoundError as e:
                raise ApiError(422, f"{field_name}: {e}", "RequestError") from None

    def _check_locked_options(self, values) -> None:
        """With --hide-ui-dir-config (the default with --listen), output folders and file-name patterns may not be
        changed from outside, neither saved (options) nor for one request (override_settings): 403."""
        if not isinstance(values, dict) or not getattr(self.args, "hide_ui_dir_config", False):
            return
        hidden = sorted(n for n in values if n in DIRECTORY_OPTIONS)
        if hidden:
            raise ApiError(403, f"{', '.join(hidden)}: output folders cannot be changed (--hide-ui-dir-config)",
                           "Forbidden")

    def _apply_infotext(self, data: dict) -> None:
        """A1111: fields the request did not set come from the infotext, and so do settings it implies."""
        try:
            params = infotext_mod.parse_generation_parameters(data["infotext"])
        except Exception as e:  # a malformed infotext is the client's problem
            raise ApiError(422, f"infotext: cannot parse it: {e}") from None
        for name, value in infotext_mod.infotext_to_request_fields(params).items():
            data.setdefault(name, value)
        if "Prompt" in params and "prompt" not in data:
            data["prompt"] = params["Prompt"]
        if "Negative prompt" in params and "negative_prompt" not in data:
            data["negative_prompt"] = params["Negative prompt"]
        overrides = dict(data.get("override_settings") or {})
        settings = self.engine.settings
        for option, value in infotext_mod.infotext_to_override_settings(params).items():
            if option in overrides or settings.get(option, None) == value:
                continue
            if option == "sd_model_checkpoint":
                if settings.get("disable_weights_auto_swap", True):
                    continue
                info = self.engine.registry.get(str(value))
                if info is None:
                    continue
                value = info.title
            overrides[option] = value
        if overrides:
            data["override_settings"] = overrides

    def _run(self, req, request: Request | None = None):
        """The generation, as a job of the visible queue (listed while it waits and runs), answered when done."""
        from modules.job_queue import QueueError, request_summary

        queue = self.engine.visible_queue
        client = request.client.host if request is not None and request.client else ""
        try:
            if queue is None:
                return self.engine.generate(req)
            return queue.call(req.mode, request_summary(req), lambda: self.engine.generate(req), "api", client,
                              request=req, task_id=req.force_task_id or "")
        except ModelNotFoundError as e:
            raise ApiError(400, str(e), "ModelNotFound") from None
        except RequestError as e:
            raise ApiError(422, str(e), "RequestError") from None
        except QueueError as e:
            raise ApiError(e.status, str(e)) from None
        except UpscalerDownloadError as e:  # the hires upscaler's first use, offline
            raise ApiError(503, str(e), "DownloadFailed") from None

    def _response(self, req, result, echo_images: dict | None = None) -> dict:
        params = req.to_dict()
        if echo_images is not None:
            params.update(echo_images)
        images = []
        if req.send_images:
            texts = result.infotexts
            for i, image in enumerate(result.images):
                if len(texts) == len(result.images):
                    text = texts[i]
                else:  # the grid (first) carries the first image's infotext
                    j = i - result.index_of_first_image
                    text = texts[j] if 0 <= j < len(texts) else (texts[0] if texts else None)
                images.append(encode_png(image, text))
        return {"images": images, "parameters": jsonable_encoder(params),
                "info": json.dumps(jsonable_encoder(result.js()))}

    def txt2img(self, body: models.StableDiffusionTxt2ImgProcessingAPI, request: Request = None):
        req, _ = self._build(Txt2ImgRequest, body, ())
        return self._response(req, self._run(req, request))

    def img2img(self, body: models.StableDiffusionImg2ImgProcessingAPI, request: Request = None):
        if not body.init_images:
            raise ApiError(404, "Init image not found", "NotFound")
        req, raw = self._build(Img2ImgRequest, body, ("init_images", "mask"))
        echo = raw if req.include_init_images else {"init_images": None, "mask": None}
        return self._response(req, self._run(req, request), echo)

    # -- progress and control ------------------------------------------------------------------------------------

    async def progress(self, skip_current_image: bool = False):
        st = self.engine.state
        if not st.active:
            return {"progress": 0, "eta_relative": 0,
                    "state": self._state_dict(st), "current_image": None, "textinfo": st.textinfo}
        progress = st.progress()
        current = None
        image = st.current_image
        if not skip_current_image and isinstance(image, Image.Image):
            try:  # A1111's "Live preview file format"
                current = encode_preview(image, self.engine.settings.get("live_previews_image_format", "png"))
            except Exception:  # a preview being replaced under us: skip it this time
                current = None
        return {"progress": progress, "eta_relative": st.eta(), "state": self._state_dict(st),
                "current_image": current, "textinfo": st.textinfo}

    @staticmethod
    def _state_dict(st) -> dict:
        return {"skipped": st.skipped, "interrupted": st.interrupted, "stopping_generation": False,
                "job": st.job, "job_count": st.job_count, "job_timestamp": st.job_timestamp, "job_no": st.job_no,
                "sampling_step": st.sampling_step, "sampling_steps": st.sampling_steps}

    async def interrupt(self):
        self.engine.interrupt()
        return {}

    async def skip(self):
        self.engine.skip()

    # -- options -------------------------------------------------------------------------------------------------

    def get_options(self):
        return jsonable_encoder(self.engine.settings.as_dict())

    def set_options(self, req: dict[str, Any] = Body(...)):
        settings = self.engine.settings
        values = dict(req)
        checkpoint = values.pop("sd_model_checkpoint", None)
        checked = {}
        self._check_locked_options(values)
        for name, value in values.items():
            if name in settings and name not in _registered():
                checked[name] = value  # an option some extension stored: kept as given
                continue
            try:
                checked[name] = settings.validate(name, value)
            except ValueError as e:
                raise ApiError(400, str(e), "InvalidOption") from None
        if checkpoint is not None:
            if not isinstance(checkpoint, str) or not checkpoint:
                raise ApiError(400, f"sd_model_checkpoint must be a checkpoint title, got {checkpoint!r}")
            try:
                info = self.engine.models.resolve(checkpoint)
            except ModelNotFoundError as e:
                raise ApiError(400, str(e), "ModelNotFound") from None
            with self.engine.queue.turn():  # never swap the model under a running job
                try:
                    self.engine.models.select(info.title)
                except ModelNotFoundError as e:
                    raise ApiError(400, str(e), "ModelNotFound") from None
        if checked:
            settings.update(checked, allow_unknown=True)
            settings.save()
        return None

    def system_info(self):
        """Versions, device and memory, flags (logins hidden), loaded model, extensions: what a bug report needs."""
        from modules import diagnostics

        return diagnostics.collect(self.args, self.engine)

    def cmd_flags(self):
        out = {}
        for k, v in vars(self.args).items():
            if k in SECRET_FLAGS and v:
                v = "<hidden>"
            try:
                out[k] = jsonable_encoder(v)
            except Exception:
                out[k] = str(v)
        return out

    # -- lists ---------------------------------------------------------------------------------------------------

    def samplers(self):
        return samplers.list_samplers_api()

    def schedulers(self):
        return samplers.list_schedulers_api()

    def upscalers(self):
        return [u.to_api() for u in self.engine.upscalers.list()]

    def face_restorers(self):
        return face_restoration.for_engine(self.engine).list()

    def latent_upscale_modes(self):
        return [{"name": name} for name in LATENT_UPSCALE_MODES]

    def sd_models(self):
        return [{"title": i.title, "model_name": i.model_name, "hash": i.shorthash, "sha256": i.sha256,
                 "filename": str(i.filename), "config": str(i.config) if i.config else None, "family": i.family}
                for i in self.engine.registry.list()]

    def sd_vae(self):
        return [{"model_name": v.model_name, "filename": str(v.filename)} for v in list_vaes(self.engine.paths)]

    def realesrgan_models(self):
        """A1111's `[{"name", "path", "scale"}]`: every Real-ESRGAN model it knows, `path` the release URL."""
        from modules.upscaling import realesrgan

        return [{"name": m.name, "path": m.url, "scale": m.scale} for m in realesrgan.MODELS]

    def hypernetworks(self):
        """A1111's `[{"name", "path"}]` of `models/hypernetworks/**/*.pt` (the folder is read again each time)."""
        registry = getattr(self.engine, "hypernetworks", None)
        if registry is None:
            return []
        return [{"name": e.name, "path": str(e.path)} for e in registry.refresh()]

    def extensions(self):
        """Installed extensions (built-in first), A1111's shape; ``enabled`` follows the options and the flags."""
        from modules import extensions

        return extensions.api_items(extensions.discover_configured(self.engine.paths, self.engine.settings,
                                                                   self.args))

    def embeddings(self):
        db = self.engine.embeddings
        if db is None:
            return {"loaded": {}, "skipped": {}}
        db.load(self.engine.models.current)

        def describe(e):
            return {"step": e.step, "sd_checkpoint": e.sd_checkpoint, "sd_checkpoint_name": e.sd_checkpoint_name,
                    "shape": e.shape, "vectors": e.vectors}

        return {"loaded": {n: describe(e) for n, e in db.word_embeddings.items()},
                "skipped": {n: describe(e) for n, e in db.skipped_embeddings.items()}}

    def refresh_embeddings(self):
        if self.engine.embeddings is not None:
            self.engine.embeddings.refresh(self.engine.models.current)

    def loras(self):
        registry = self.engine.loras
        if registry is None:
            return []
        return [{"name": f.name, "alias": f.alias, "path": str(f.path), "metadata": {}} for f in registry.list()]

    def refresh_loras(self):
        if self.engine.loras is not None:
            self.engine.loras.refresh()

    def prompt_styles(self):
        db = self.engine.styles
        if db is None:
            return []
        db.reload()  # styles.csv may have been edited by hand, as in A1111
        return [{"name": st.name, "prompt": st.prompt, "negative_prompt": st.negative_prompt}
                for st in db.styles.values()]

    def scripts(self):
        """Selectable scripts per tab (A1111: lower-case titles)."""
        runners = self.engine.scripts
        if runners is None:
            return {"txt2img": [], "img2img": []}
        return {"txt2img": [t.lower() for t in runners.txt2img.titles],
                "img2img": [t.lower() for t in runners.img2img.titles]}

    def script_info(self):
        """Every script with its arguments as its UI shows them (label, default, range, choices)."""
        runners = self.engine.scripts
        if runners is None:
            return []
        out = []
        for runner in (runners.txt2img, runners.img2img):
            for script in runner.scripts:
                try:
                    name = str(script.title()).lower()
                except Exception:  # noqa: BLE001 - a broken title() is skipped, not a 500
                    continue
                out.append({"name": name, "is_alwayson": bool(script.alwayson), "is_img2img": runner.is_img2img,
                            "args": [_arg_info(c) for c in (script.controls or [])]})
        return out

    def nothing(self):
        return None

    def memory(self):
        try:
            import psutil

            vm = psutil.virtual_memory()
            proc = psutil.Process(os.getpid()).memory_info()
            ram = {"free": vm.available, "used": proc.rss, "total": vm.total}
        except Exception as e:
            ram = {"error": str(e)}
        try:
            import torch

            if torch.cuda.is_available():
                free, total = torch.cuda.mem_get_info()
                cuda = {"system": {"free": free, "used": total - free, "total": total},
                        "active": {"current": torch.cuda.memory_allocated(),
                                   "peak": torch.cuda.max_memory_allocated()}}
            else:
                cuda = {"error": "unavailable"}
        except Exception as e:
            cuda = {"error": str(e)}
        return {"ram": ram, "cuda": cuda}

    # -- models --------------------------------------------------------------------------------------------------

    def refresh_checkpoints(self):
        self.engine.registry.refresh()
        self.engine.registry.hash_all_in_background()

    def unload_checkpoint(self):
        with self.engine.queue.turn():
            self.engine.models.unload()
        return {}

    def reload_checkpoint(self):
        with self.engine.queue.turn():
            try:
                self.engine.models.reload()
            except ModelNotFoundError as e:
                raise ApiError(400, str(e), "ModelNotFound") from None
        return {}

    # -- extras and PNG info -------------------------------------------------------------------------------------

    def _upscale(self, image: Image.Image, req: models.ExtrasBaseRequest) -> tuple[Image.Image, str | None, str]:
        to_size = req.resize_mode == 1
        restorers = face_restoration.for_engine(self.engine)
        try:
            with self.engine.queue.turn():  # one GPU job at a time, as A1111's queue_lock
                done = postprocessing.upscale(
                    image, req.upscaler_1, req.upscaling_resize, req.upscaling_resize_w if to_size else 0,
                    req.upscaling_resize_h if to_size else 0, upscaler_2=req.upscaler_2,
                    upscaler_2_visibility=req.extras_upscaler_2_visibility, crop=req.upscaling_crop,
                    registry=self.engine.upscalers, gfpgan_visibility=req.gfpgan_visibility,
                    codeformer_visibility=req.codeformer_visibility, codeformer_weight=req.codeformer_weight,
                    face_restorers=restorers)
        except (postprocessing.UnknownUpscalerError, face_restoration.MissingFaceModelError) as e:
            raise ApiError(400, str(e)) from None
        except UpscalerDownloadError as e:
            raise ApiError(503, str(e), "DownloadFailed") from None
        except ValueError as e:  # bad sizes, and UpscalerLoadError: a model file that is not an upscaler
            raise ApiError(422, str(e)) from None
        text = done.params_text
        return done.image, done.original_infotext, f"<p>{text}</p>" if text else ""

    def extras_single(self, req: models.ExtrasSingleImageRequest):
        if not req.image:
            raise ApiError(404, "Image not found", "NotFound")
        image = decode_b64_image(req.image, "image")
        out, info, html = self._upscale(image, req)
        return {"html_info": html, "image": encode_png(out, info)}

    def extras_batch(self, req: models.ExtrasBatchImagesRequest):
        results, html = [], ""
        opts = postprocessing.UpscaleOptions(gfpgan_visibility=req.gfpgan_visibility,
                                             codeformer_visibility=req.codeformer_visibility)
        try:  # a missing face-restoration file fails the batch before any work
            postprocessing.check_face_files(opts, face_restoration.for_engine(self.engine))
        except face_restoration.MissingFaceModelError as e:
            raise ApiError(400, str(e)) from None
        for i, item in enumerate(req.imageList):
            image = decode_b64_image(item.data, f"imageList[{i}]")
            out, info, html = self._upscale(image, req)
            results.append(encode_png(out, info))
        return {"html_info": html, "images": results}

    def pnginfo(self, req: models.PNGInfoRequest):
        if not req.image.strip():
            return {"info": "", "items": {}, "parameters": {}}
        image = decode_b64_image(req.image, "image")
        info = images_mod.read_infotext(image) or ""
        items = {k: v for k, v in (image.info or {}).items() if isinstance(k, str) and isinstance(v, (str, int, float))
                 and k != "parameters"}
        if info:
            items["parameters"] = info
        params = infotext_mod.parse_generation_parameters(info) if info else {}
        return {"info": info, "items": jsonable_encoder(items), "parameters": jsonable_encoder(params)}

    # -- server --------------------------------------------------------------------------------------------------

    def server_stop(self):
        def stop():
            time.sleep(0.3)
            self.engine.interrupt()
            os.kill(os.getpid(), signal.SIGINT)

        threading.Thread(target=stop, daemon=True).start()
        return JSONResponse("Stopping.")


def _registered() -> set[str]:
    from modules.settings import OPTIONS

    return set(OPTIONS)


# ---------------------------------------------------------------------------------------------------------------
# Errors


# Route prefixes answered with A1111's JSON errors: /sdapi/v1 and the built-in ControlNet extension's routes.
API_PREFIXES = (PREFIX, "/controlnet/")


def _is_api(request: Request) -> bool:
    return request.url.path.startswith(API_PREFIXES)


def _install_error_handlers(app: FastAPI) -> None:
    from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        headers = {"WWW-Authenticate": "Basic"} if e.status == 401 else None
        return error_response(e.status, e.error, e.detail, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError):
        if not _is_api(request):
            return await request_validation_exception_handler(request, e)
        errs = e.errors()
        detail = "; ".join(f"{'.'.join(str(p) for p in err.get('loc', ()) if p != 'body') or 'body'}: "
                           f"{err.get('msg', '')}" for err in errs)
        try:
            safe = jsonable_encoder([{k: v for k, v in err.items() if k in ("loc", "msg", "type")} for err in errs])
        except Exception:
            safe = ""
        return error_response(422, "RequestValidationError", detail, safe)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        if not _is_api(request):
            return await http_exception_handler(request, e)
        return error_response(e.status_code, "HTTPException", e.detail, headers=getattr(e, "headers", None))

    async def users_file_error(request: Request, e: Exception):
        """A checkpoint, VAE or upscaler file of the user's that cannot load: their file, not our bug (the message
        names it); the model in use stays loaded."""
        return error_response(422, type(e).__name__, str(e))

    for cls in _users_file_errors():
        app.add_exception_handler(cls, users_file_error)

    async def missing_face_file(request: Request, e: Exception):
        """restore_faces without GFPGANv1.4.pth / codeformer-v0.1.0.pth / the face detector: 400 naming the file and
        its folders (before any sampling)."""
        return error_response(400, "FaceModelNotFound", str(e))

    app.add_exception_handler(face_restoration.MissingFaceModelError, missing_face_file)

    async def out_of_memory(request: Request, e: Exception):
        """The GPU ran out of memory: 507 with the stage and the mode to try (not 503, which clients retry as is;
        the model stays loaded and the next request runs)."""
        return error_response(507, "OutOfMemory", str(e))

    from modules.memory.manager import OutOfMemory

    app.add_exception_handler(OutOfMemory, out_of_memory)
    # Anything else (a bug, not bad input) becomes a JSON 500 in server.py's X-Process-Time middleware.


def _users_file_errors() -> tuple[type[Exception], ...]:
    from modules.models.detect import UnsupportedModelError
    from modules.models.loader import ModelLoadError
    from modules.upscaling.model import UpscalerLoadError

    return ModelLoadError, UnsupportedModelError, UpscalerLoadError, face_restoration.FaceRestorationError


def mount(app: FastAPI, ctx) -> Api:
    """Add ``/sdapi/v1`` to `app` (and the JSON error handlers for it)."""
    _install_error_handlers(app)
    api = Api(app, ctx)
    app.state.api = api
    return api


def __getattr__(name: str):
    """A1111's helpers (`encode_pil_to_base64`, `decode_base64_to_image`, …) for extensions' own routes."""
    from modules import a1111

    return a1111.names_from(__name__)(name)

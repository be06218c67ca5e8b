"""The sd-webui-controlnet extension's HTTP routes (`/controlnet/*`), unchanged, so clients, bots and plugins written
for it work here. Units themselves arrive in txt2img/img2img as `alwayson_scripts.controlnet` (request_types)."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, FastAPI
from starlette.concurrency import run_in_threadpool

from modules.api.api import ApiError, _errors, _WrongMethod, encode_png
from modules.request_types import RequestError, decode_image

API_VERSION = 3  # the extension's external_code.get_api_version()
# Words that mark a model file as made for a control type besides the type's own name (the extension's
# tag_to_filters); types a ControlNet Union model covers also match "union".
_FILTER_ALIASES = {"instructp2p": ["ip2p"], "segmentation": ["seg"], "normalmap": ["normal"],
                   "t2i-adapter": ["t2i_adapter", "t2iadapter", "t2ia"], "ip-adapter": ["ip_adapter", "ipadapter"],
                   "openpose": ["openpose", "densepose"], "instant-id": ["instant_id", "instantid"],
                   "scribble": ["sketch"], "tile": ["blur"]}
_UNION_TAGS = {"openpose", "depth", "softedge", "canny", "lineart", "mlsd", "normalmap", "segmentation", "tile",
               "inpaint", "scribble"}


def model_filters(tag: str) -> list[str]:
    tag = tag.lower()
    return [tag, *_FILTER_ALIASES.get(tag, []), *(["union"] if tag in _UNION_TAGS else [])]


class ControlNetApi:
    def __init__(self, app: FastAPI, engine, auth=None, unit_count: int = 3):
        self.engine = engine
        deps = [Depends(auth)] if auth is not None else []
        responses = _errors(401) if auth is not None else {}
        router = APIRouter(prefix="/controlnet", dependencies=deps, tags=["controlnet"], responses=responses)
        router.add_api_route("/version", self.version, methods=["GET"])
        router.add_api_route("/model_list", self.model_list, methods=["GET"], responses=_errors(422))
        router.add_api_route("/module_list", self.module_list, methods=["GET"], responses=_errors(422))
        router.add_api_route("/control_types", self.control_types, methods=["GET"])
        router.add_api_route("/settings", self.settings, methods=["GET"])
        router.add_api_route("/detect", self.detect, methods=["POST"], responses=_errors(400, 403, 422))
        app.include_router(router)
        app.router.routes.append(_WrongMethod(app, router))  # 405 with Allow, as /sdapi/v1

    async def version(self):
        return {"version": API_VERSION}

    async def model_list(self, update: bool = True):
        titles = await run_in_threadpool(self.engine.controlnets.titles, update)
        return {"model_list": titles}

    async def module_list(self, alias_names: bool = False):
        from modules.controlnet import preprocessors

        items = preprocessors.all_sorted()
        names = [p.label if alias_names else p.name for p in items]
        detail = {(p.label if alias_names else p.name): {
            "model_free": p.model_free,
            "sliders": [s.api_json() for s in (p.resolution, p.slider_1, p.slider_2) if s is not None],
        } for p in items}
        return {"module_list": names, "module_detail": detail}

    async def control_types(self):
        """Per control type: its preprocessors, the installed models whose names fit it, and the defaults (the
        extension's select_control_type: a model matches by the type's name or its filters, "11" preferred)."""
        from modules.controlnet import preprocessors

        titles = await run_in_threadpool(self.engine.controlnets.titles)
        out = {}
        for tag, info in preprocessors.control_types().items():
            if tag == "All":
                models = ["None", *titles]
            else:
                keys = model_filters(tag)
                models = ["None", *[t for t in titles if any(k in t.lower() for k in keys)]]
            default = models[1] if len(models) > 1 else "None"
            default = next((m for m in models[1:] if "11" in m.split("[")[0]), default)
            out[tag] = {"module_list": info["module_list"], "model_list": models,
                        "default_option": info["default_option"], "default_model": default if tag != "All" else
                        "None"}
        return {"control_types": out}

    async def settings(self):
        return {"control_net_unit_count": int(self.engine.settings.get("control_net_unit_count", 3) or 3)}

    async def detect(self, controlnet_module: str = Body("none"), controlnet_input_images: list[str] = Body([]),
                     controlnet_processor_res: int = Body(-1), controlnet_threshold_a: float = Body(-1),
                     controlnet_threshold_b: float = Body(-1), controlnet_masks: list[str] = Body([]),
                     low_vram: bool = Body(False)):
        from modules.controlnet import preprocessors

        pre = preprocessors.get(controlnet_module)
        if pre is None:
            raise ApiError(422, "Module not available")
        if pre.name in ("clip_vision", "revision_clipvision", "revision_ignore_prompt", "ip-adapter-auto") or \
                pre.name.startswith("ip-adapter"):
            raise ApiError(422, "Module not supported")
        if not controlnet_input_images:
            raise ApiError(422, "No image selected")
        if pre.requires_mask and len(controlnet_masks) != len(controlnet_input_images):
            raise ApiError(422, f"Preprocessor {controlnet_module} requires `controlnet_masks` param.")
        try:
            pictures = [decode_image(v, f"controlnet_input_images[{i}]") for i, v in
                        enumerate(controlnet_input_images)]
            masks = [decode_image(v, f"controlnet_masks[{i}]") for i, v in enumerate(controlnet_masks)]
        except RequestError as e:
            raise ApiError(422, str(e)) from None
        poses: list[dict] = []
        maps = await run_in_threadpool(self._detect, pre, pictures, masks, controlnet_processor_res,
                                       controlnet_threshold_a, controlnet_threshold_b, poses.append)
        answer = {"images": [encode_png(m) for m in maps], "info": "Success"}
        if poses:  # the pose preprocessors' keypoints (OpenPose JSON), for pose editors
            answer["poses"] = poses
        return answer

    def _detect(self, pre, pictures, masks, resolution, a, b, pose_sink=None) -> list[Any]:
        import numpy as np
        from PIL import Image

        from modules.controlnet import preprocessors

        out = []
        for i, picture in enumerate(pictures):
            array = np.asarray(picture.convert("RGB"))
            if i < len(masks) and pre.accepts_mask:
                alpha = np.asarray(masks[i].convert("L").resize(picture.size))
                array = np.concatenate([array, alpha[:, :, None]], axis=2)
            try:
                detected = pre.run(array, resolution, a, b, annotator_dir=self.engine.paths.annotator_dir,
                                   pose_sink=pose_sink)
            except (preprocessors.MissingAnnotatorError, preprocessors.AnnotatorUnavailableError) as e:
                raise ApiError(422, str(e)) from None
            out.append(Image.fromarray(np.ascontiguousarray(detected)))
        return out


def mount(app: FastAPI, engine, auth=None) -> ControlNetApi:
    return ControlNetApi(app, engine, auth)

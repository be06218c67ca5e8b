"""Face restoration as A1111 does it: GFPGAN (`GFPGANv1.4.pth` in `models/GFPGAN`) and CodeFormer
(`codeformer-v0.1.0.pth` in `models/Codeformer`), with the user's own files (nothing is downloaded).

Each face goes through the steps of A1111's `face_restoration_utils` with facexlib's FaceRestoreHelper, written here
without facexlib:

1. RetinaFace (facexlib's `detection_Resnet50_Final.pth`, read by `modules.controlnet.face_parsing`) looks at the
   picture scaled up to 640 on its short side (never down), keeps scores above 0.8 and drops faces whose "eye
   distance" is under 5 pixels (facexlib's formula, kept as it is).
2. Every face's five landmarks map it onto facexlib's FFHQ 512×512 template (LMEDS similarity); the crop, RGB in
   [-1, 1], goes through the network (GFPGAN: `net(x, return_rgb=False)[0]`; CodeFormer:
   `net(x, weight=w, adain=True)[0]`, w = the CodeFormer weight, 0 = maximum effect).
3. The restored face is warped back and pasted with A1111's face-parsing mask when facexlib's ParseNet file
   (`parsing_parsenet.pth`) is there (`modules/face_parse_mask.py`: only the face's own parts are blended in), else
   with facexlib's soft square mask (eroded by 1/10 of the face's side and blurred). Pixels away from the faces are
   left exactly as they were either way.

The detection and parsing files are looked for in the face-restoration folders (where A1111 has facexlib download
them), then in the ControlNet annotator folder's `facexlib/` (where PuLID reads the detector). GFPGAN's architecture
is spandrel's (its widths read from the file); CodeFormer's is in `spandrel_extra_arches`, imported only when a
CodeFormer file is used. Licences: GFPGAN's code is Apache-2.0; CodeFormer's code and weights are under the S-Lab
License 1.0 (non-commercial use) — the user brings the weights and decides.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

GFPGAN, CODEFORMER = "GFPGAN", "CodeFormer"
NAMES = (CODEFORMER, GFPGAN)  # A1111's shared.face_restorers order (CodeFormer is set up first)
GFPGAN_FILE, CODEFORMER_FILE = "GFPGANv1.4.pth", "codeformer-v0.1.0.pth"
DETECTOR_FILE = "detection_Resnet50_Final.pth"
MODEL_EXTENSIONS = (".pth", ".safetensors")
FACE_SIZE = 512
DETECT_SHORT_SIDE = 640  # facexlib get_face_landmarks_5(resize=640): scaled up to this, never down
DETECT_THRESHOLD = 0.8  # facexlib RetinaFace.detect_faces' default
EYE_DIST_THRESHOLD = 5.0
BORDER_BGR = (135, 133, 132)


class FaceRestorationError(ValueError):
    """A face-restoration file that is not the network it should be, or a model name we do not know (the message
    names the file or the name)."""


class MissingFaceModelError(FaceRestorationError):
    """A file the user must bring is not there; the message names it and the folders it may go in."""

    def __init__(self, what: str, file: str, folders: list[Path]):
        self.file, self.folders = file, folders
        where = " or ".join(str(f) for f in folders)
        super().__init__(f"{what} needs {file}: put it in {where} (it is not downloaded)")


# --- the picture pipeline ---

def _eye_distance(landmarks: np.ndarray) -> float:
    """facexlib's `norm([bbox[6] - bbox[8], bbox[7] - bbox[9]])` on its flat (box, score, landmarks) row: left eye y
    minus right eye y, and right eye x minus nose x."""
    flat = landmarks.reshape(-1)
    return float(np.linalg.norm([flat[1] - flat[3], flat[2] - flat[4]]))


def find_faces(detector, bgr: np.ndarray) -> list[np.ndarray]:
    """Every face's five landmarks (5×2, in the picture's pixels), as facexlib's FaceRestoreHelper finds them."""
    import cv2

    from modules.controlnet import face_parsing

    h, w = bgr.shape[:2]
    scale = max(1.0, DETECT_SHORT_SIDE / min(h, w))
    seen = bgr
    if scale != 1.0:
        seen = cv2.resize(bgr, (int(w * scale), int(h * scale)), interpolation=cv2.INTER_LINEAR)
    _, marks = face_parsing.detect(detector, np.ascontiguousarray(seen), threshold=DETECT_THRESHOLD)
    faces = [m / scale for m in marks]
    return [m for m in faces if _eye_distance(m) >= EYE_DIST_THRESHOLD]


def paste_face(bgr: np.ndarray, face_bgr: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """facexlib's paste_faces_to_input_image without a parsing mask (upscale factor 1): the face warped back and
    blended in with a square mask eroded and blurred by a twentieth of the face's side. float32 BGR in and out."""
    import cv2

    h, w = bgr.shape[:2]
    restored = cv2.warpAffine(face_bgr, inverse, (w, h)).astype(np.float32)
    mask = cv2.warpAffine(np.ones((FACE_SIZE, FACE_SIZE), np.float32), inverse, (w, h))
    mask = cv2.erode(mask, np.ones((2, 2), np.uint8))
    edge = int(float(mask.sum()) ** 0.5) // 20
    if edge > 0:
        mask_centre = cv2.erode(mask, np.ones((edge * 2, edge * 2), np.uint8))
        soft = cv2.GaussianBlur(mask_centre, (edge * 2 + 1, edge * 2 + 1), 0)
    else:
        soft = mask
    soft = soft[:, :, None]
    return soft * (mask[:, :, None] * restored) + (1 - soft) * bgr


def restore_rgb(rgb: np.ndarray, detector, restore_face: Callable[[torch.Tensor], torch.Tensor],
                device: torch.device | None = None,
                face_mask: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[np.ndarray, int]:
    """(restored RGB uint8 picture, number of faces) — every face found restored by `restore_face` (1×3×512×512 RGB in
    [-1, 1] in and out) and pasted back: by `face_mask(restored BGR face)` (the parse mask) where given, else by the
    soft square."""
    import cv2

    from modules.controlnet.face_parsing import FFHQ_TEMPLATE
    from modules.face_parse_mask import paste_with_mask

    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    faces = find_faces(detector, bgr)
    if not faces:
        return rgb, 0
    out = bgr.astype(np.float32)
    for landmarks in faces:
        matrix = cv2.estimateAffinePartial2D(np.asarray(landmarks, np.float64), FFHQ_TEMPLATE, method=cv2.LMEDS)[0]
        if matrix is None:
            continue
        crop = cv2.warpAffine(bgr, matrix, (FACE_SIZE, FACE_SIZE), borderMode=cv2.BORDER_CONSTANT,
                              borderValue=BORDER_BGR)
        x = torch.from_numpy(np.ascontiguousarray(crop[:, :, ::-1].transpose(2, 0, 1))).float()[None]
        x = (x / 255.0 - 0.5) / 0.5
        with torch.no_grad():
            y = restore_face(x.to(device or "cpu"))
        y = (y[0].detach().float().cpu().clamp(-1, 1) + 1) / 2
        face = (y.numpy().transpose(1, 2, 0)[:, :, ::-1] * 255.0).astype(np.uint8)
        face, inverse = np.ascontiguousarray(face), cv2.invertAffineTransform(matrix)
        if face_mask is not None:
            out = paste_with_mask(out, face, inverse, face_mask(face))
        else:
            out = paste_face(out, face, inverse)
    return np.ascontiguousarray(out.astype(np.uint8)[:, :, ::-1]), len(faces)


# --- the networks ---

def _unwrap(sd: dict) -> dict:
    for key in ("params_ema", "params", "state_dict"):
        inner = {k[len(key) + 1:]: v for k, v in sd.items() if k.startswith(key + ".")}
        if inner:
            sd = inner
            break
    return {k.removeprefix("module."): v for k, v in sd.items()}


def read_weights(path: Path) -> dict:
    """The tensors of a released GFPGAN / CodeFormer file (their `params_ema` dict), read without running code."""
    from modules.models.loader import ModelLoadError, read_state_dict

    try:
        return _unwrap(read_state_dict(path, nested=True))
    except ModelLoadError as e:
        raise FaceRestorationError(str(e)) from None


def _count(sd: dict, prefix: str, suffix: str = "") -> int:
    return len({k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix) and k.endswith(suffix)})


def build_gfpgan(sd: dict, name: str = GFPGAN_FILE) -> torch.nn.Module:
    """spandrel's GFPGANv1Clean with its sizes read from the weights (a released v1.3/v1.4 file gives spandrel's
    own: 512 px, 512 style features, channel multiplier 2)."""
    from spandrel.architectures.GFPGAN import GFPGAN as GFPGANNet, GFPGANArch

    if not GFPGANArch().detect(sd):
        raise FaceRestorationError(f"{name}: not a GFPGAN model (no toRGB / stylegan_decoder.style_mlp weights)")
    try:
        narrow = int(sd["final_conv.weight"].shape[0]) / 256
        multiplier = int(sd["conv_body_first.weight"].shape[0]) / (16 * narrow)
        features = int(sd["stylegan_decoder.style_mlp.1.weight"].shape[0])
        levels = _count(sd, "toRGB.")
        out_size = 2 ** (levels + 2)
        log_size = levels + 2
        net = GFPGANNet(out_size=out_size, num_style_feat=features, channel_multiplier=int(round(multiplier)),
                        num_mlp=_count(sd, "stylegan_decoder.style_mlp.", ".weight"),
                        different_w=int(sd["final_linear.weight"].shape[0]) == (log_size * 2 - 2) * features,
                        narrow=narrow, sft_half=int(sd["condition_scale.0.2.weight"].shape[0])
                        == int(sd["condition_scale.0.0.weight"].shape[0]))
        net.load_state_dict(sd, strict=True)
    except (KeyError, RuntimeError, ValueError, ZeroDivisionError) as e:
        raise FaceRestorationError(f"{name}: not GFPGAN's v1 clean weights ({type(e).__name__}: "
                                   f"{str(e).splitlines()[0][:160]})") from None
    return net


def build_codeformer(sd: dict, name: str = CODEFORMER_FILE) -> torch.nn.Module:
    """spandrel_extra_arches' CodeFormer (installed with this program's requirements; imported only here)."""
    try:
        from spandrel_extra_arches.architectures.CodeFormer import CodeFormerArch
    except ImportError:
        raise FaceRestorationError(f"{name}: CodeFormer needs the spandrel_extra_arches package "
                                   "(pip install spandrel_extra_arches)") from None
    arch = CodeFormerArch()
    if not arch.detect(sd):
        raise FaceRestorationError(f"{name}: not a CodeFormer model (no position_emb / quantize / ft_layers "
                                   "weights)")
    try:
        return arch.load(sd).model
    except (KeyError, RuntimeError, ValueError) as e:
        raise FaceRestorationError(f"{name}: not CodeFormer's weights ({type(e).__name__}: "
                                   f"{str(e).splitlines()[0][:160]})") from None


# --- the user's files ---

@dataclass
class FaceRestorers:
    """GFPGAN and CodeFormer from the user's folders, loaded on first use and kept (one network each)."""

    gfpgan_dirs: list[Path]
    codeformer_dirs: list[Path]
    annotator_dir: Path | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    settings: Any = None
    cpu_modules: tuple[str, ...] = ()  # --use-cpu gfpgan / codeformer / all
    _nets: dict = field(default_factory=dict)
    _lock: threading.RLock = field(default_factory=threading.RLock)

    @classmethod
    def from_paths(cls, paths, device_config=None, settings=None) -> "FaceRestorers":
        device = device_config.device if device_config is not None else torch.device("cpu")
        return cls([paths.gfpgan_dir], [paths.codeformer_dir], paths.annotator_dir, device, settings,
                   cpu_modules=getattr(device_config, "cpu_modules", ()))

    def device_for(self, name: str) -> torch.device:
        """The engine's device, or the CPU where --use-cpu names this network (gfpgan, codeformer) or all."""
        if name.lower() in self.cpu_modules or "all" in self.cpu_modules:
            return torch.device("cpu")
        return self.device

    def names(self) -> list[str]:
        return list(NAMES)

    def list(self) -> list[dict]:
        """/sdapi/v1/face-restorers: A1111's {name, cmd_dir}."""
        return [{"name": n, "cmd_dir": str(self._dirs(n)[0])} for n in NAMES]

    def _dirs(self, name: str) -> list[Path]:
        return self.gfpgan_dirs if name == GFPGAN else self.codeformer_dirs

    def canonical(self, name: str | None) -> str:
        for known in NAMES:
            if name and name.strip().lower() == known.lower():
                return known
        raise FaceRestorationError(f"face restoration model {name!r} not found; available: {', '.join(NAMES)}")

    def model_file(self, name: str) -> Path:
        """The released name first (GFPGANv1.4.pth, codeformer-v0.1.0.pth), else A1111's rule: GFPGAN any file
        whose name holds "GFPGAN", CodeFormer any model file in its folder."""
        name = self.canonical(name)
        wanted = GFPGAN_FILE if name == GFPGAN else CODEFORMER_FILE
        for folder in self._dirs(name):
            if (folder / wanted).is_file():
                return folder / wanted
        for folder in self._dirs(name):
            found = sorted(p for p in folder.glob("*") if p.is_file() and p.suffix.lower() in MODEL_EXTENSIONS
                           and (name != GFPGAN or "gfpgan" in p.name.lower()))
            if found:
                return found[-1]
        raise MissingFaceModelError(name, wanted, self._dirs(name))

    def facexlib_folders(self) -> list[Path]:
        """Where facexlib's detection and parsing files are looked for, in order."""
        folders = [*self.gfpgan_dirs, *self.codeformer_dirs]
        if self.annotator_dir is not None:
            folders.append(Path(self.annotator_dir) / "facexlib")
        return folders

    def detector_file(self) -> Path:
        folders = self.facexlib_folders()
        for folder in folders:
            if (folder / DETECTOR_FILE).is_file():
                return folder / DETECTOR_FILE
        raise MissingFaceModelError("Face restoration (face detection)", DETECTOR_FILE, folders)

    def net(self, name: str) -> torch.nn.Module:
        name = self.canonical(name)
        path = self.model_file(name)
        key = (name, str(path), path.stat().st_mtime_ns)
        with self._lock:
            cached = self._nets.get(name)
            if cached is not None and cached[0] == key:
                cached[1].to(self.device_for(name))
                return cached[1]
            sd = read_weights(path)
            net = (build_gfpgan if name == GFPGAN else build_codeformer)(sd, path.name)
            net = net.float().eval().to(self.device_for(name))
            self._nets[name] = (key, net)
            return net

    def parser_file(self) -> Path | None:
        """facexlib's ParseNet file, looked for where the detector is; None: the soft square is used."""
        from modules.face_parse_mask import PARSER_FILE

        for folder in self.facexlib_folders():
            if (folder / PARSER_FILE).is_file():
                return folder / PARSER_FILE
        return None

    def parser(self, device: torch.device):
        """The ParseNet (loaded once, kept with the networks), or None without its file."""
        from modules import face_parse_mask

        path = self.parser_file()
        if path is None:
            return None
        key = ("parser", str(path), path.stat().st_mtime_ns)
        with self._lock:
            cached = self._nets.get("parser")
            if cached is None or cached[0] != key:
                try:
                    net = face_parse_mask.build(read_weights(path)).float()
                except face_parse_mask.ParseNetError as e:
                    raise FaceRestorationError(f"{path.name}: {e}") from None
                cached = self._nets["parser"] = (key, net)
            return cached[1].to(device)

    def detector(self):
        from modules.controlnet import face_parsing

        path = self.detector_file()
        try:
            return face_parsing.load_file(path)
        except face_parsing.FaceParsingError as e:
            raise FaceRestorationError(str(e)) from None

    def _setting(self, key: str, default):
        if self.settings is None:
            return default
        value = self.settings.get(key, default)
        return default if value is None else value

    def restore(self, image: Image.Image, name: str, *, codeformer_weight: float | None = None) -> Image.Image:
        """`image` with every face restored by `name` (GFPGAN or CodeFormer); without faces it comes back as is."""
        name = self.canonical(name)
        net = self.net(name)  # the model file first, then the detector: the first missing one is named
        detector = self.detector()
        if name == CODEFORMER:
            weight = float(self._setting("code_former_weight", 0.5) if codeformer_weight is None
                           else codeformer_weight)

            def restore_face(x):
                return net(x, weight=weight, adain=True)[0]
        else:
            def restore_face(x):
                return net(x, return_rgb=False)[0]
        device = self.device_for(name)
        parser = self.parser(device)
        face_mask = None
        if parser is not None:
            from modules.face_parse_mask import face_mask as parse

            def face_mask(face):
                return parse(parser, face, device)
        alpha = image.getchannel("A") if image.mode == "RGBA" else None
        rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
        try:
            with self._lock:
                out, count = restore_rgb(rgb, detector, restore_face, device, face_mask)
        except RuntimeError as e:
            raise FaceRestorationError(f"{self.model_file(name).name}: the network failed on a face "
                                       f"({str(e).splitlines()[0][:160]})") from None
        finally:
            if self._setting("face_restoration_unload", False):
                self.unload()
        log.info("Face restoration (%s): %d face(s)", name, count)
        result = Image.fromarray(out)
        if alpha is not None:
            result.putalpha(alpha)
        result.info = dict(image.info or {})
        return result

    def unload(self) -> None:
        """face_restoration_unload: the networks back to the CPU."""
        with self._lock:
            for _, net in self._nets.values():
                net.to("cpu")


def blend(original: Image.Image, restored: Image.Image, visibility: float) -> Image.Image:
    """The Extras' visibility: A1111's Image.blend(original, restored, visibility) below 1."""
    if visibility >= 1.0:
        return restored
    mode = "RGBA" if "A" in original.mode else "RGB"
    return Image.blend(original.convert(mode), restored.convert(mode), visibility)


def for_engine(engine) -> FaceRestorers:
    """The engine's face restorers (made on first use from its paths, device and settings, then kept)."""
    found = getattr(engine, "face_restorers", None)
    if found is None:
        found = FaceRestorers.from_paths(engine.paths, engine.device_config, engine.settings)
        engine.face_restorers = found
    return found


@dataclass
class GenerationStep:
    """txt2img/img2img's `restore_faces`: every decoded picture through the `face_restoration_model` setting's
    network (CodeFormer with `code_former_weight`), before scripts' postprocess_image and saving."""

    restorers: FaceRestorers
    model: str
    weight: float

    @property
    def infotext(self) -> dict:
        return {"Face restoration": self.model}

    def __call__(self, image: Image.Image) -> Image.Image:
        return self.restorers.restore(image, self.model, codeformer_weight=self.weight)


def for_request(ctx, req) -> GenerationStep | None:
    """The request's face restoration (A1111 1.6+: the `restore_faces` field, else the `face_restoration` setting),
    its files checked before any sampling (a MissingFaceModelError names the missing one); None when off."""
    on = req.restore_faces if getattr(req, "restore_faces", None) is not None else ctx.opt("face_restoration", False)
    if not on:
        return None
    restorers = getattr(ctx, "face_restorers", None)
    if restorers is None:
        raise FaceRestorationError("restore_faces: face restoration is not available here")
    model = restorers.canonical(ctx.opt("face_restoration_model") or CODEFORMER)
    restorers.model_file(model)
    restorers.detector_file()
    weight = ctx.opt("code_former_weight", 0.5)
    return GenerationStep(restorers, model, 0.5 if weight is None else float(weight))

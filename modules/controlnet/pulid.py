"""PuLID (ByteDance, SDXL) as the sd-webui-controlnet extension runs it: preprocessor `ip-adapter_pulid` with
`ip-adapter_pulid_sdxl_fp16.safetensors` in models/ControlNet.

The preprocessor reads one face three ways (all files from the user's folders, never downloaded):
- id embedding: the largest face's raw ArcFace embedding from InsightFace's antelopev2 files, exactly as
  `instant_id_face_embedding` reads it (instant_id.py: picture at 512, SCRFD + glintr100);
- the face features picture: facexlib's RetinaFace + FFHQ alignment + BiSeNet parsing (face_parsing.py) on the
  picture at 512 (padded to 64, the extension's resize_image_with_pad): a grey face on white;
- EVA02-CLIP-L-14-336 (eva_clip.py) on that picture: the unit-length embedding and five hidden states.

The PuLID encoder (the file's `image_proj.*`, the extension's PuLIDEncoder) maps [id embedding, EVA embedding]
through an MLP to 5 tokens and each hidden state's class token and mean patch token through its two MLPs to one more
token each: 10 tokens of the UNet's text width. The negative prompt's rows get the tokens of all-zero inputs.

In every cross-attention layer (attn2, keys `ip_adapter.{2n+1}.to_k_ip/to_v_ip` in diffusers' processor order, as
IP-Adapter's), the extension adds, before the output projection, weight × a second attention of the layer's query
over the id tokens followed by `num_zero` zero tokens (keys and values through to_k_ip/to_v_ip). "Fidelity"
(default): 8 zero tokens, then `ortho_v2`: id + (a − 1) · proj, "Extremely style": 16 zero tokens and `ortho`:
id − proj, where proj is the projection of the id attention onto the layer's *input* (summed over the tokens; the
extension passes the attention input where PuLID's own pipeline uses the text attention's output) and a the mean over
heads of the softmax(q·kᵀ) mass (unscaled) on the first five id tokens.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from modules.request_types import RequestError

MODULE = "ip-adapter_pulid"
FACEXLIB = "facexlib"
MODES = {"fidelity": (8, "ortho_v2"), "extremely style": (16, "ortho")}  # the extension's two PuLIDAttnSettings
DEFAULT_MODE = "Fidelity"
ANTELOPE_RESOLUTION = 512  # the extension calls both face preprocessors at their default resolution
ADAPTER_HINT = "ip-adapter_pulid_sdxl_fp16.safetensors"


def is_pulid(image_proj: dict) -> bool:
    return "body.0.weight" in image_proj and "mapping_0.0.weight" in image_proj


# --- the encoder ---

def _mlp(sizes: list[tuple[int, int]]) -> nn.Sequential:
    layers = []
    for i, (inp, out) in enumerate(sizes):
        layers.append(nn.Linear(inp, out))
        if i < len(sizes) - 1:
            layers += [nn.LayerNorm(out), nn.LeakyReLU()]
    return nn.Sequential(*layers)


def _sizes(sd: dict, prefix: str) -> list[tuple[int, int]]:
    return [(int(sd[f"{prefix}.{i}.weight"].shape[1]), int(sd[f"{prefix}.{i}.weight"].shape[0])) for i in (0, 3, 6)]


class IDEncoder(nn.Module):
    """PuLID's IDEncoder (the extension's PuLIDEncoder), sized from the file."""

    def __init__(self, sd: dict):
        super().__init__()
        self.context_dim = int(sd["mapping_0.6.weight"].shape[0])
        self.num_token = int(sd["body.6.weight"].shape[0]) // self.context_dim
        self.levels = len({k.split(".")[0] for k in sd if k.startswith("mapping_") and not k.startswith("mapping_p")})
        self.body = _mlp(_sizes(sd, "body"))
        for i in range(self.levels):
            setattr(self, f"mapping_{i}", _mlp(_sizes(sd, f"mapping_{i}")))
            setattr(self, f"mapping_patch_{i}", _mlp(_sizes(sd, f"mapping_patch_{i}")))

    def forward(self, x: torch.Tensor, hidden: list[torch.Tensor]) -> torch.Tensor:
        tokens = self.body(x).reshape(-1, self.num_token, self.context_dim)
        more = [getattr(self, f"mapping_{i}")(h[:, :1]) + getattr(self, f"mapping_patch_{i}")(h[:, 1:]).mean(
            dim=1, keepdim=True) for i, h in enumerate(hidden)]
        return torch.cat([tokens, *more], dim=1)


@dataclass
class FaceInputs:
    """What the preprocessor hands the encoder (the extension's PuLIDProjInput) and its preview."""

    id_embedding: torch.Tensor  # (1, 512)
    eva_embedding: torch.Tensor  # (1, 768), unit length
    hidden: list[torch.Tensor]  # five (1, 577, 1024)
    features: torch.Tensor  # the face features picture (1, 3, 512, 512) in [0, 1]


@torch.no_grad()
def id_tokens(encoder: IDEncoder, faces: list[FaceInputs]) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative) id tokens, each (1, tokens, width): several pictures' tokens averaged (the extension's
    ImageEmbed.average_of), the negative those of zero inputs."""
    param = next(encoder.parameters())
    pos, neg = [], []
    for f in faces:
        cond = torch.cat([f.id_embedding.reshape(1, -1), f.eva_embedding.reshape(1, -1)], dim=-1)
        cond = cond.to(param.device, torch.float32)
        hidden = [h.to(param.device, torch.float32) for h in f.hidden]
        enc = encoder.float()
        pos.append(enc(cond, hidden))
        neg.append(enc(torch.zeros_like(cond), [torch.zeros_like(h) for h in hidden]))
    return torch.stack(pos).mean(dim=0), torch.stack(neg).mean(dim=0)


# --- reading the face ---

def read_face(rgb: np.ndarray, annotator_dir: Path | None, label: str) -> FaceInputs:
    """All three readings of an RGB uint8 picture (missing files: MissingAnnotatorError; no face: NoFaceError)."""
    import cv2

    from modules.controlnet import eva_clip, face_embed, face_parsing, instant_id
    from modules.controlnet.preprocessors import resize_with_pad

    rgb = np.ascontiguousarray(rgb[:, :, :3])
    # every file first, so a missing one is named before any network runs
    instant_id._network(annotator_dir, label, instant_id.DETECTOR)
    instant_id._network(annotator_dir, label, instant_id.RECOGNISER)
    detector = face_parsing.load(annotator_dir, label, face_parsing.DETECTOR)
    parser = face_parsing.load(annotator_dir, label, face_parsing.PARSER)
    eva = eva_clip.load(annotator_dir, label)
    try:
        ante = instant_id.embedding(rgb, ANTELOPE_RESOLUTION, annotator_dir, label)
    except face_embed.FaceNetworkError:
        raise
    bgr = cv2.cvtColor(resize_with_pad(rgb, ANTELOPE_RESOLUTION).image, cv2.COLOR_RGB2BGR)
    boxes, landmarks = face_parsing.detect(detector, bgr)
    if not len(boxes):
        raise face_embed.NoFaceError("facexlib's RetinaFace found no face (facexlib align face fail)")
    face = face_parsing.align(bgr, landmarks[face_parsing.centre_face(boxes, *bgr.shape[:2])])
    features = face_parsing.face_features(parser, face)
    embedding, hidden = eva_clip.features(eva, features)
    return FaceInputs(torch.from_numpy(np.asarray(ante, np.float32)).reshape(1, -1), embedding.float(),
                      [h.float() for h in hidden], features.float())


def _preprocessor_error(label: str, error: Exception):
    from modules.controlnet import face_embed
    from modules.controlnet.preprocessors import AnnotatorUnavailableError

    if isinstance(error, face_embed.NoFaceError):
        return AnnotatorUnavailableError(f"ControlNet preprocessor '{label}': no face found in the picture "
                                         f"(PuLID needs a picture with a visible face: {error})")
    return AnnotatorUnavailableError(f"ControlNet preprocessor '{label}': {error}")


def run(img: np.ndarray, res: int, a, b, ctx) -> np.ndarray:
    """/controlnet/detect and the preview: the face features picture PuLID's EVA-CLIP reads (512×512)
    (`facexlib` alone gives the same picture)."""
    from modules.controlnet import face_embed, face_parsing
    from modules.models.loader import ModelLoadError

    label = ctx.label or ctx.name
    try:
        if ctx.name == FACEXLIB:
            import cv2

            from modules.controlnet.preprocessors import resize_with_pad

            detector = face_parsing.load(ctx.annotator_dir, label, face_parsing.DETECTOR)
            parser = face_parsing.load(ctx.annotator_dir, label, face_parsing.PARSER)
            bgr = cv2.cvtColor(resize_with_pad(np.ascontiguousarray(img[:, :, :3]), res if res > 0 else 512).image,
                               cv2.COLOR_RGB2BGR)
            boxes, marks = face_parsing.detect(detector, bgr)
            if not len(boxes):
                raise face_embed.NoFaceError("facexlib's RetinaFace found no face")
            features = face_parsing.face_features(
                parser, face_parsing.align(bgr, marks[face_parsing.centre_face(boxes, *bgr.shape[:2])]))
        else:
            features = read_face(img, ctx.annotator_dir, label).features
    except (face_embed.NoFaceError, face_embed.FaceNetworkError, face_parsing.FaceParsingError, ModelLoadError) as e:
        raise _preprocessor_error(label, e) from None
    return (features[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


# --- the attention ---

@dataclass
class PuLIDRun:
    """One unit's PuLID for one request: its layers, tokens and attention setting; `rows`/`scale` are set every
    step (units.residuals) before the UNet runs."""

    layers: dict  # attn2 processor name -> (to_k, to_v) Linear
    tokens: tuple  # (positive, negative), each (1, tokens, width)
    num_zero: int
    ortho: str  # "ortho_v2" | "ortho"
    region: torch.Tensor | None = None  # (1, 1, H, W) in [0, 1] at the picture's size
    size: tuple = (0, 0)  # (latent height, latent width) of the first pass
    rows: torch.Tensor | None = field(default=None, repr=False)
    scale: float = 0.0

    def set_step(self, rows: torch.Tensor, scale: float) -> None:
        self.rows, self.scale = rows, scale

    def term(self, name: str, x: torch.Tensor, query: torch.Tensor, heads: int) -> torch.Tensor | None:
        """weight × the id attention of this layer (B, N, C), or None when it does not act."""
        if self.scale == 0 or self.rows is None or name not in self.layers:
            return None
        to_k, to_v = self.layers[name]
        tokens = self.rows.to(device=x.device, dtype=to_k.weight.dtype)
        if self.num_zero:
            tokens = torch.cat([tokens, tokens.new_zeros(tokens.shape[0], self.num_zero, tokens.shape[2])], dim=1)
        b = x.shape[0]
        key = to_k(tokens).to(query.dtype).reshape(b, -1, heads, query.shape[-1]).transpose(1, 2)
        value = to_v(tokens).to(query.dtype).reshape(b, -1, heads, query.shape[-1]).transpose(1, 2)
        out = F.scaled_dot_product_attention(query, key, value).transpose(1, 2).reshape(b, -1, heads * query.shape[-1])
        base, idh = x.float(), out.float()
        projection = (base * idh).sum(dim=-2, keepdim=True) / (base * base).sum(dim=-2, keepdim=True) * base
        if self.ortho == "ortho_v2":
            mass = (query @ key.transpose(-2, -1)).float().softmax(dim=-1).mean(dim=1)[:, :, :5].sum(-1, keepdim=True)
            term = idh + (mass - 1) * projection
        else:
            term = idh - projection
        term = term.to(x.dtype) * self.scale
        if self.region is not None:
            term = term * self._mask(term.shape[1], term)
        return term

    def _mask(self, length: int, like: torch.Tensor) -> torch.Tensor:
        h, w = self.size
        factor = (length / (h * w)) ** 0.5
        mask = F.interpolate(self.region.to(like.device, like.dtype), size=(int(h * factor), int(w * factor)),
                             mode="bilinear")
        return mask.reshape(1, -1, 1)


class PuLIDAttnProcessor:
    """A cross-attention layer's own attention plus every PuLID unit's term, before the output projection (the
    extension's attn_forward_hacked)."""

    def __init__(self, name: str, runs: list[PuLIDRun]):
        self.name, self.runs = name, runs

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        x = hidden_states
        if attn.norm_cross and encoder_hidden_states is not None:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        context = x if encoder_hidden_states is None else encoder_hidden_states
        b = x.shape[0]
        query = attn.to_q(x)
        key, value = attn.to_k(context), attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (t.reshape(b, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
        out = F.scaled_dot_product_attention(query, key, value).transpose(1, 2).reshape(b, -1, attn.heads * head_dim)
        out = out.to(query.dtype)
        for run in self.runs:
            term = run.term(self.name, x, query, attn.heads)
            if term is not None:
                out = out + term
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + x
        return out / attn.rescale_output_factor


def layer_names(unet) -> dict[str, int]:
    """attn2 processor name → its key number in the file (2n+1, diffusers' processor order)."""
    out, number = {}, 1
    for name in unet.attn_processors:
        if name.endswith("attn2.processor"):
            out[name] = number
            number += 2
    return out


def build_layers(unet, weights, device, dtype) -> dict:
    layers = weights.state_dict["ip_adapter"]
    out = {}
    for name, number in layer_names(unet).items():
        k, v = layers.get(f"{number}.to_k_ip.weight"), layers.get(f"{number}.to_v_ip.weight")
        if k is None or v is None:
            raise RequestError(f"the PuLID model has no layer {number} (to_k_ip/to_v_ip) for {name}: not this "
                               "UNet's adapter")
        to_k, to_v = (nn.Linear(t.shape[1], t.shape[0], bias=False) for t in (k, v))
        to_k.weight.data, to_v.weight.data = k.to(device, dtype), v.to(device, dtype)
        out[name] = (to_k, to_v)
    return out


@contextlib.contextmanager
def attached(unet, runs: list[PuLIDRun]):
    """PuLID's processors on the UNet's cross-attention layers for the `with` block; put back afterwards."""
    if not runs:
        yield
        return
    processors = dict(unet.attn_processors)
    others = sorted({type(p).__name__ for n, p in processors.items() if n.endswith("attn2.processor")
                     and type(p).__name__.startswith("IPAdapter")})
    if others:
        raise RequestError("PuLID units cannot run together with other IP-Adapter units in one request yet "
                           f"({', '.join(others)} already on the UNet's cross-attention)")
    try:
        unet.set_attn_processor({name: PuLIDAttnProcessor(name, runs) if name.endswith("attn2.processor") else p
                                 for name, p in processors.items()})
        yield
    finally:
        unet.set_attn_processor(processors)


# --- the unit ---

def mode_setting(mode) -> tuple[int, str]:
    text = str(getattr(mode, "value", mode) or DEFAULT_MODE).strip().lower()
    if text not in MODES:
        raise RequestError(f"pulid_mode {mode!r}: one of 'Fidelity', 'Extremely style'")
    return MODES[text]


def unit(where: str, req, pre, library, model, picture, width: int, height: int, annotator_dir: Path | None):
    """The ControlUnit of an ip-adapter_pulid unit (kind "pulid", its PuLIDRun as the model)."""
    from modules.controlnet import face_embed, face_parsing
    from modules.controlnet import units as units_mod
    from modules.controlnet.models import ControlNetLoadError
    from modules.controlnet.preprocessors import MissingAnnotatorError
    from modules.memory.offload import weights_in_host_memory
    from modules.models.loader import ModelLoadError

    family = getattr(model, "family", "") or ""
    if not family.startswith("sdxl") or getattr(model, "is_flow", False):
        name = getattr(getattr(model, "spec", None), "label", None) or family or "this checkpoint"
        raise RequestError(f"{where}.module: {pre.name} is PuLID, which works with SDXL checkpoints (its model is "
                           f"SDXL's), not {name}")
    if library is None:
        raise RequestError(f"{where}.model: no ControlNet models folder")
    if req.model in ("", "None"):
        raise RequestError(f"{where}.model: preprocessor {pre.name} needs the PuLID model, {ADAPTER_HINT}, in "
                           "models/ControlNet")
    try:
        loaded = library.load(req.model, model.device, model.dtype, model.unet.config, model.family, model.title,
                              unet=model.unet, unet_weights=lambda: weights_in_host_memory(model))
    except ControlNetLoadError as e:
        raise RequestError(f"{where}.model: {e}") from None
    if loaded.kind != "ip_adapter" or not is_pulid(loaded.model.state_dict["image_proj"]):
        raise RequestError(f"{where}.model: {loaded.title} is not a PuLID model (preprocessor {pre.name} needs "
                           f"{ADAPTER_HINT})")
    num_zero, ortho = mode_setting(getattr(req, "pulid_mode", DEFAULT_MODE))
    pictures = [im.image for im in req.images] if len(req.images) > 1 else [picture]
    faces = []
    for n, p in enumerate(pictures):
        try:
            faces.append(read_face(np.asarray(p.convert("RGB")), annotator_dir, pre.label))
        except MissingAnnotatorError as e:
            raise RequestError(f"{where}.module: {e}") from None
        except (face_embed.FaceNetworkError, face_parsing.FaceParsingError, ModelLoadError) as e:
            raise RequestError(f"{where}.module: {pre.label}: {e}") from None
        except face_embed.NoFaceError as e:
            which = f" (picture {n + 1} of {len(pictures)})" if len(pictures) > 1 else ""
            raise RequestError(f"{where}.image: {pre.label} found no face in the unit's picture{which} ({e}); "
                               "PuLID needs a picture with a visible face") from None
    weights = loaded.model
    encoder = IDEncoder(weights.state_dict["image_proj"])
    encoder.load_state_dict({k: v.float() for k, v in weights.state_dict["image_proj"].items()})
    _check_faces(where, pre.label, loaded.title, encoder, faces)
    tokens = id_tokens(encoder, faces)
    region = None
    if req.effective_region_mask is not None:
        mask = np.asarray(req.effective_region_mask.convert("L"), np.float32) / 255.0
        region = torch.from_numpy(mask)[None, None]
    run_ = PuLIDRun(build_layers(model.unet, weights, model.device, model.dtype),
                    (tokens[0].to(model.device), tokens[1].to(model.device)), num_zero, ortho, region=region,
                    size=(height // 8, width // 8))
    preview = faces[0].features[0].permute(1, 2, 0).clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()
    from PIL import Image

    return units_mod.ControlUnit(model=run_, image=picture, weight=req.weight, guidance_start=req.guidance_start,
                                 guidance_end=req.guidance_end, hr_option=req.hr_option.value, kind="pulid",
                                 ip_embeds=tokens), Image.fromarray(preview)


def _check_faces(where: str, label: str, title: str, encoder: IDEncoder, faces: list[FaceInputs]) -> None:
    """The face readings fit the file's encoder: an EVA-CLIP file of another size (or a smaller EVA-CLIP) loads and
    runs, but gives other widths or fewer hidden states than the PuLID model reads."""
    cond = int(encoder.body[0].in_features)
    hidden = int(getattr(encoder, "mapping_0")[0].in_features)
    for f in faces:
        got_cond = int(f.id_embedding.shape[-1]) + int(f.eva_embedding.shape[-1])
        widths = {int(h.shape[-1]) for h in f.hidden}
        if got_cond != cond or len(f.hidden) != encoder.levels or widths != {hidden}:
            from modules.controlnet import eva_clip

            raise RequestError(
                f"{where}.module: {label}: {title} reads a {cond}-number face embedding (antelopev2's 512 + "
                f"EVA-CLIP's {cond - 512}) and {encoder.levels} EVA-CLIP hidden states {hidden} wide; the face files "
                f"give {got_cond} and {len(f.hidden)} × {sorted(widths)} (is {eva_clip.FILE} EVA02-CLIP-L-14-336?)")


def step_rows(unit_, rows: torch.Tensor, uncond_rows: int, dtype, on: bool) -> None:
    """Every step: the id tokens per UNet row (the negative prompt's rows get the negative tokens) and the weight
    (0 outside the unit's guidance window)."""
    positive, negative = unit_.ip_embeds
    parts = [negative.expand(uncond_rows, -1, -1)] if uncond_rows else []
    parts.append(positive.expand(len(rows) - uncond_rows, -1, -1))
    unit_.model.set_step(torch.cat(parts).to(dtype), float(unit_.weight) if on else 0.0)

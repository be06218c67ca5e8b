"""EVA02-CLIP-L-14-336's vision tower (BAAI's EVA-CLIP) as PuLID reads it: the sd-webui-controlnet-evaclip
extension's `EVA02-CLIP-L-14-336` preprocessor, here from the released checkpoint `EVA02_CLIP_L_336_psz14_s6B.pt`
(the whole CLIP; only its `visual.*` tensors are read) in `models/ControlNetPreprocessor/EVA-CLIP/`.

The network: 14×14 patches + a class token + learned positions; 24 pre-norm blocks (LayerNorm eps 1e-6) whose
attention has separate q/k/v projections (q and v with biases), 2-D rotary embeddings on the patch tokens (not the
class token; frequencies for a 16×16 grid interpolated to the 24×24 one), a LayerNorm on the attention output
before its projection, and a SwiGLU MLP (SiLU(w1 x) · w2 x, LayerNorm, w3). The class token after the final norm
through the head is the image embedding (768), divided by its length for PuLID; the inputs of blocks 4, 8, 12, 16
and 20 (1024 wide, class token first) are the hidden states PuLID's encoder maps. Widths, depth and grid are read
from the tensors (heads: width / 64).

The picture (PuLID's face features, 1×3×H×W in [0, 1]) is resized to the tower's size (bicubic, antialiased, as
torchvision's tensor resize) and normalised with OpenAI's CLIP mean and std.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

SUBFOLDER = Path("EVA-CLIP")
FILE = "EVA02_CLIP_L_336_psz14_s6B.pt"
ALSO = ("EVA02_CLIP_L_336_psz14_s6B.safetensors",)
HEAD_WIDTH = 64
PRETRAIN_GRID = 16  # the rotary frequencies' grid (pt_hw_seq_len)
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
EPS = 1e-6


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x = x.reshape(*x.shape[:-1], -1, 2)
    return torch.stack((-x[..., 1], x[..., 0]), dim=-1).flatten(-2)


def rotary(head_dim: int, grid: int, pretrain: int = PRETRAIN_GRID) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (grid², head_dim): half the channels turn with the row, half with the column."""
    dim = head_dim // 2
    freqs = 1.0 / (10000 ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
    t = torch.arange(grid) / grid * pretrain
    f = torch.einsum("i,f->if", t, freqs).repeat_interleave(2, dim=-1)  # (grid, dim)
    both = torch.cat([f[:, None, :].expand(grid, grid, dim), f[None, :, :].expand(grid, grid, dim)], dim=-1)
    both = both.reshape(-1, head_dim)
    return both.cos(), both.sin()


class _Block(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width, eps=EPS), nn.LayerNorm(width, eps=EPS)
        self.attn = nn.Module()
        a = self.attn
        a.q_proj, a.k_proj, a.v_proj = (nn.Linear(width, width, bias=False) for _ in range(3))
        a.q_bias, a.v_bias = nn.Parameter(torch.zeros(width)), nn.Parameter(torch.zeros(width))
        a.inner_attn_ln = nn.LayerNorm(width, eps=EPS)
        a.proj = nn.Linear(width, width)
        self.mlp = nn.Module()
        m = self.mlp
        m.w1, m.w2 = nn.Linear(width, hidden), nn.Linear(width, hidden)
        m.ffn_ln = nn.LayerNorm(hidden, eps=EPS)
        m.w3 = nn.Linear(hidden, width)

    def forward(self, x, cos, sin):
        b, n, c = x.shape
        heads = c // HEAD_WIDTH
        a = self.attn
        y = self.norm1(x)

        def split(t):
            return t.reshape(b, n, heads, -1).transpose(1, 2)

        q = split(F.linear(y, a.q_proj.weight, a.q_bias))
        k = split(F.linear(y, a.k_proj.weight))
        v = split(F.linear(y, a.v_proj.weight, a.v_bias))
        q = torch.cat([q[:, :, :1], q[:, :, 1:] * cos + _rotate_half(q[:, :, 1:]) * sin], dim=2)
        k = torch.cat([k[:, :, :1], k[:, :, 1:] * cos + _rotate_half(k[:, :, 1:]) * sin], dim=2)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
        x = x + a.proj(a.inner_attn_ln(out))
        m = self.mlp
        y = self.norm2(x)
        return x + m.w3(m.ffn_ln(F.silu(m.w1(y)) * m.w2(y)))


class EVAVision(nn.Module):
    def __init__(self, sd: dict):
        super().__init__()
        patch = sd["patch_embed.proj.weight"]
        width, patch_size = int(patch.shape[0]), int(patch.shape[2])
        depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
        hidden = int(sd["blocks.0.mlp.w1.weight"].shape[0])
        tokens = int(sd["pos_embed"].shape[1])
        self.grid = int(round((tokens - 1) ** 0.5))
        # what would otherwise fail (or quietly give PuLID too few hidden states) only when a picture runs
        if int(patch.shape[1]) != 3 or width % HEAD_WIDTH or self.grid ** 2 + 1 != tokens:
            raise ValueError(f"a {int(patch.shape[1])}-channel patch embedding {width} wide with {tokens} positions "
                             f"is not an RGB tower of {HEAD_WIDTH}-wide heads on a square grid")
        if depth <= 20:
            raise ValueError(f"its {depth} blocks give {(depth - 1) // 4} of the five hidden states "
                             "PuLID reads (the inputs of blocks 4, 8, 12, 16 and 20)")
        self.image_size = self.grid * patch_size
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(int(patch.shape[1]), width, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, width))
        self.blocks = nn.ModuleList(_Block(width, hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=EPS)
        head = sd["head.weight"]
        self.head = nn.Linear(int(head.shape[1]), int(head.shape[0]))
        cos, sin = rotary(HEAD_WIDTH, self.grid)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(head output (B, 768), the inputs of blocks 4, 8, …, 20)."""
        x = self.patch_embed.proj(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1) + self.pos_embed
        hidden = []
        cos, sin = self.rope_cos.to(x.dtype), self.rope_sin.to(x.dtype)
        for i, block in enumerate(self.blocks):
            if 0 < i <= 20 and i % 4 == 0:
                hidden.append(x)
            x = block(x, cos, sin)
        return self.head(self.norm(x)[:, 0]), hidden


def preprocess(image: torch.Tensor, size: int) -> torch.Tensor:
    x = F.interpolate(image, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    mean = torch.tensor(MEAN, dtype=x.dtype, device=x.device).reshape(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=x.dtype, device=x.device).reshape(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def features(model: EVAVision, image: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(id_cond_vit: the unit-length embedding (1, 768), id_vit_hidden: five (1, 577, 1024) hidden states)."""
    param = next(model.parameters())
    x = preprocess(image.to(param.device, torch.float32), model.image_size).to(param.dtype)
    embedding, hidden = model(x)
    embedding = embedding / torch.norm(embedding, 2, 1, True)
    return embedding, hidden


def folder(annotator_dir: Path | None) -> Path:
    from modules.controlnet.preprocessors import ANNOTATOR_FOLDER

    return Path(annotator_dir if annotator_dir is not None else ANNOTATOR_FOLDER) / SUBFOLDER


_CACHE: dict = {}


def load(annotator_dir: Path | None, label: str) -> EVAVision:
    from modules.controlnet.preprocessors import MissingAnnotatorError
    from modules.models.loader import read_state_dict

    where = folder(annotator_dir)
    path = next((where / n for n in (FILE, *ALSO) if annotator_dir is not None and (where / n).is_file()), None)
    if path is None:
        raise MissingAnnotatorError(label, FILE, where)
    key = (str(path), path.stat().st_mtime_ns, path.stat().st_size)
    if key in _CACHE:
        return _CACHE[key]
    sd = read_state_dict(path)
    for wrapper in ("module", "state_dict", "model"):  # EVA-CLIP's own loader unwraps these
        if isinstance(sd, dict) and not any(k.startswith("visual.") for k in sd):
            sd = {k.removeprefix(wrapper + "."): v for k, v in sd.items()}
    visual = {k.removeprefix("visual."): v for k, v in sd.items() if k.startswith("visual.")}
    from modules.controlnet.face_parsing import FaceParsingError

    try:
        model = EVAVision(visual)
        missing, _ = model.load_state_dict(visual, strict=False)
    except (KeyError, RuntimeError, ValueError) as e:
        raise FaceParsingError(f"{path.name}: not EVA02-CLIP's vision tower ({type(e).__name__}: "
                               f"{str(e)[:200]})") from None
    if missing:
        raise FaceParsingError(f"{path.name}: not EVA02-CLIP's vision tower ({len(missing)} tensors missing, e.g. "
                               f"visual.{missing[0]})")
    from modules.controlnet.face_parsing import annotator_device

    model = model.float().eval().to(annotator_device())
    _CACHE.clear()
    _CACHE[key] = model
    return model

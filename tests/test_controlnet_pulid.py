"""PuLID (ip-adapter_pulid + ip-adapter_pulid_sdxl_fp16): a tiny PuLID file in the released layout
(`image_proj.body/mapping_i/mapping_patch_i` IDEncoder, `ip_adapter.{2n+1}.to_k_ip/to_v_ip`) against the tiny SDXL
UNet. Our txt2img with the unit equals StableDiffusionXLPipeline whose cross-attention layers carry a processor
written here from PuLID's IDAttnProcessor2_0 formulas (with the extension's choices: the id term × weight before the
output projection, projected onto the attention's input), given the same face inputs. The face readers are
checked in their own modules' terms (missing files, no face)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from modules.controlnet import pulid
from modules.processing import ProcessingContext, txt2img
from modules.request_types import RequestError, Txt2ImgRequest

SEED, SIZE = 77, 64
EVA_WIDTH, EVA_TOKENS, ID_WIDTH, EVA_EMBED = 16, 5, 512, 12


def _mlp(prefix, sizes, gen):
    out = {}
    for i, (inp, o) in zip((0, 3, 6), sizes):
        out[f"{prefix}.{i}.weight"] = torch.randn(o, inp, generator=gen) * (1.0 / inp ** 0.5)
        out[f"{prefix}.{i}.bias"] = torch.randn(o, generator=gen) * 0.1
        if i < 6:
            out[f"{prefix}.{i + 1}.weight"] = 1 + torch.randn(o, generator=gen) * 0.1
            out[f"{prefix}.{i + 1}.bias"] = torch.randn(o, generator=gen) * 0.1
    return out


def pulid_state_dict(unet, seed=5, levels=5, tokens=5) -> dict:
    gen = torch.Generator().manual_seed(seed)
    cross = unet.config.cross_attention_dim
    out = {}
    for k, v in _mlp("body", [(ID_WIDTH + EVA_EMBED, 32), (32, 32), (32, cross * tokens)], gen).items():
        out["image_proj." + k] = v
    for i in range(levels):
        for name in (f"mapping_{i}", f"mapping_patch_{i}"):
            for k, v in _mlp(name, [(EVA_WIDTH, 24), (24, 24), (24, cross)], gen).items():
                out["image_proj." + k] = v
    key = 1
    for name, module in unet.named_modules():
        if name.endswith("attn2"):
            hidden = module.to_k.out_features
            out[f"ip_adapter.{key}.to_k_ip.weight"] = torch.randn(hidden, cross, generator=gen) * 0.3
            out[f"ip_adapter.{key}.to_v_ip.weight"] = torch.randn(hidden, cross, generator=gen) * 0.3
            key += 2
    return out


def _face_inputs(seed=1) -> pulid.FaceInputs:
    gen = torch.Generator().manual_seed(seed)
    eva = torch.randn(1, EVA_EMBED, generator=gen)
    return pulid.FaceInputs(torch.randn(1, ID_WIDTH, generator=gen) * 3, eva / eva.norm(),
                            [torch.randn(1, EVA_TOKENS, EVA_WIDTH, generator=gen) for _ in range(5)],
                            torch.rand(1, 3, 512, 512, generator=gen))


@pytest.fixture
def setup(load_tiny, tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from modules.controlnet.models import ControlNetLibrary

    model = load_tiny("sdxl.safetensors")
    folder = tmp_path / "cn"
    folder.mkdir()
    sd = pulid_state_dict(model.unet)
    save_file({k: v.half().contiguous() for k, v in sd.items()}, str(folder / "ip-adapter_pulid_sdxl_fp16.safetensors"))
    face = _face_inputs()
    monkeypatch.setattr(pulid, "read_face", lambda rgb, annotator_dir, label: face)
    return model, ControlNetLibrary([folder]), {k: v.half().float() for k, v in sd.items()}, face


def _unit(**kw):
    from modules.controlnet.unit_request import ControlNetUnitRequest, UnitImage

    picture = Image.fromarray(np.full((96, 96, 3), 200, np.uint8))
    return ControlNetUnitRequest(**{"module": "ip-adapter_pulid", "model": "ip-adapter_pulid_sdxl_fp16",
                                    "weight": 0.8, "images": [UnitImage(picture)], **kw})


def _run(model, library, units, annotators=None):
    req = Txt2ImgRequest(prompt="a red ball", negative_prompt="blurry", steps=4, cfg_scale=6.0, width=SIZE,
                         height=SIZE, seed=SEED, sampler_name="Euler", controlnet_units=units)
    ctx = ProcessingContext(model=model, options={"return_grid": False}, outputs=None, controlnets=library,
                            annotator_dir=annotators)
    return txt2img(ctx, req).images


def _diff(a, b) -> int:
    return max(int(np.abs(np.asarray(x, np.int16) - np.asarray(y, np.int16)).max()) for x, y in zip(a, b))


# --- the reference, from PuLID's formulas ---

def _encoder(sd, x, hidden):
    """PuLID's IDEncoder by hand on the file's tensors."""
    def mlp(prefix, t):
        for i in (0, 3, 6):
            t = F.linear(t, sd[f"image_proj.{prefix}.{i}.weight"], sd[f"image_proj.{prefix}.{i}.bias"])
            if i < 6:
                t = F.leaky_relu(F.layer_norm(t, t.shape[-1:], sd[f"image_proj.{prefix}.{i + 1}.weight"],
                                              sd[f"image_proj.{prefix}.{i + 1}.bias"]), 0.01)
        return t
    cross = sd["image_proj.mapping_0.6.weight"].shape[0]
    tokens = mlp("body", x).reshape(1, -1, cross)
    more = [mlp(f"mapping_{i}", h[:, :1]) + mlp(f"mapping_patch_{i}", h[:, 1:]).mean(1, keepdim=True)
            for i, h in enumerate(hidden)]
    return torch.cat([tokens, *more], dim=1)


class _RefProcessor:
    """PuLID's IDAttnProcessor2_0 (NUM_ZERO / ORTHO / ORTHO_v2 as its app sets them per mode) with the extension's
    choices: the projection base is the attention's input, the term × id_scale added before to_out."""

    def __init__(self, k, v, id_embedding, scale, num_zero, mode):
        self.k, self.v, self.id_embedding, self.scale, self.num_zero, self.mode = k, v, id_embedding, scale, \
            num_zero, mode

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        b = hidden_states.shape[0]
        query = attn.to_q(hidden_states)
        key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        hd = key.shape[-1] // attn.heads
        q, k, v = (t.view(b, -1, attn.heads, hd).transpose(1, 2) for t in (query, key, value))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, attn.heads * hd)
        emb = self.id_embedding
        zero = torch.zeros(emb.shape[0], self.num_zero, emb.shape[-1])
        ik = F.linear(torch.cat([emb, zero], 1), self.k).view(b, -1, attn.heads, hd).transpose(1, 2)
        iv = F.linear(torch.cat([emb, zero], 1), self.v).view(b, -1, attn.heads, hd).transpose(1, 2)
        ih = F.scaled_dot_product_attention(q, ik, iv).transpose(1, 2).reshape(b, -1, attn.heads * hd)
        base = hidden_states
        proj = torch.sum(base * ih, dim=-2, keepdim=True) / torch.sum(base * base, dim=-2, keepdim=True) * base
        if self.mode == "ortho_v2":
            mean = (q @ ik.transpose(-2, -1)).softmax(dim=-1).mean(dim=1)[:, :, :5].sum(dim=-1, keepdim=True)
            orth = ih + (mean - 1) * proj
        else:
            orth = ih - proj
        out = out + self.scale * orth
        return attn.to_out[1](attn.to_out[0](out))


def _reference(model, sd, face, scale, num_zero, mode):
    from diffusers import StableDiffusionXLPipeline

    from modules.sampling import samplers

    cond = torch.cat([face.id_embedding, face.eva_embedding], dim=-1)
    with torch.no_grad():
        pos = _encoder(sd, cond, face.hidden)
        neg = _encoder(sd, torch.zeros_like(cond), [torch.zeros_like(h) for h in face.hidden])
    emb = torch.cat([neg, pos])  # the pipeline's rows: negative prompt first
    saved = dict(model.unet.attn_processors)
    procs, key = {}, 1
    for name, p in saved.items():
        if name.endswith("attn2.processor"):
            procs[name] = _RefProcessor(sd[f"ip_adapter.{key}.to_k_ip.weight"], sd[f"ip_adapter.{key}.to_v_ip.weight"],
                                        emb, scale, num_zero, mode)
            key += 2
        else:
            procs[name] = p
    scheduler = samplers.build_scheduler(*samplers.resolve("Euler", None), model.scheduler_config).scheduler
    pipe = StableDiffusionXLPipeline(vae=model.vae, text_encoder=model.text_encoder,
                                     text_encoder_2=model.text_encoder_2, tokenizer=model.tokenizer,
                                     tokenizer_2=model.tokenizer_2, unet=model.unet, scheduler=scheduler)
    model.unet.set_attn_processor(procs)
    try:
        with torch.no_grad():
            return pipe("a red ball", negative_prompt="blurry", num_inference_steps=4, guidance_scale=6.0,
                        width=SIZE, height=SIZE, generator=[torch.Generator().manual_seed(SEED)]).images
    finally:
        model.unet.set_attn_processor(saved)


@pytest.mark.parametrize("mode", ["Fidelity", "Extremely style"])
def test_pulid_unit_matches_pulids_attention_by_hand(setup, mode):
    model, library, sd, face = setup
    ours = _run(model, library, [_unit(pulid_mode=mode)])
    assert not any("PuLID" in type(p).__name__ for p in model.unet.attn_processors.values())  # detached
    num_zero, ortho = {"Fidelity": (8, "ortho_v2"), "Extremely style": (16, "ortho")}[mode]
    theirs = _reference(model, sd, face, 0.8, num_zero, ortho)
    assert _diff(ours[:1], theirs) <= 2
    if mode == "Fidelity":
        plain = _run(model, library, [])
        assert _diff(ours[:1], plain) > 3  # the unit changes the picture


def test_pulid_requests_say_what_is_wrong(setup, load_tiny, tmp_path):
    model, library, sd, face = setup
    with pytest.raises(RequestError, match=r"controlnet\[0\]\.model: ControlNet unit 0 is enabled but has no model"):
        _run(model, library, [_unit(model="None")])
    with pytest.raises(RequestError, match=r"works with SDXL checkpoints"):
        _run(load_tiny("sd1.safetensors"), library, [_unit()])
    with pytest.raises(RequestError, match=r"controlnet\[0\]\.model: ip-adapter_pulid_sdxl_fp16.* is a PuLID model"):
        _run(model, library, [_unit(module="ip-adapter_clip_sdxl")])
    with pytest.raises(RequestError, match=r"pulid_mode"):
        _run(model, library, [_unit(pulid_mode="Sharp")])


def test_missing_face_files_are_named_with_their_folder(tmp_path):
    from modules.controlnet.preprocessors import MissingAnnotatorError
    from tests.test_controlnet_instantid import _det_onnx, _rec_onnx

    root = tmp_path / "ControlNetPreprocessor"
    rgb = np.full((64, 64, 3), 200, np.uint8)
    with pytest.raises(MissingAnnotatorError, match=r"scrfd_10g_bnkps\.onnx.*antelopev2"):
        pulid.read_face(rgb, root, "ip-adapter_pulid")
    ante = root / "insightface" / "models" / "antelopev2"
    ante.mkdir(parents=True)
    _det_onnx(ante / "scrfd_10g_bnkps.onnx")
    _rec_onnx(ante / "glintr100.onnx")
    with pytest.raises(MissingAnnotatorError, match=r"detection_Resnet50_Final\.pth.*facexlib"):
        pulid.read_face(rgb, root, "ip-adapter_pulid")


def test_no_face_is_a_message(tmp_path, monkeypatch):
    from modules.controlnet import eva_clip, face_embed, face_parsing
    from tests.test_controlnet_instantid import _det_onnx, _face_picture, _rec_onnx

    root = tmp_path / "ControlNetPreprocessor"
    ante = root / "insightface" / "models" / "antelopev2"
    ante.mkdir(parents=True)
    _det_onnx(ante / "scrfd_10g_bnkps.onnx")
    _rec_onnx(ante / "glintr100.onnx")
    monkeypatch.setattr(face_parsing, "load", lambda *a: object())
    monkeypatch.setattr(eva_clip, "load", lambda *a: object())
    with pytest.raises(face_embed.NoFaceError):
        pulid.read_face(_face_picture(dark=True), root, "ip-adapter_pulid")
    err = pulid._preprocessor_error("ip-adapter_pulid", face_embed.NoFaceError("no face found in the picture"))
    assert "no face found" in str(err) and "PuLID" in str(err)

"""IP-Adapter FaceID (ip-adapter_face_id / ip-adapter_face_id_plus): tiny ONNX networks with the signatures of
InsightFace's buffalo_l det_10g (SCRFD: scores, boxes and 5 landmarks for strides 8/16/32) and w600k_r50
(1×3×112×112 → 1×512) built here in the extension's folder layout; tiny FaceID adapters in the released key layout
for the tiny SD1 UNet. Our txt2img with a FaceID unit equals StableDiffusionPipeline given the same face embedding
through `ip_adapter_image_embeds` (and, for Plus, the CLIP tokens on the projection, as diffusers' docs do)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from modules.controlnet import face_embed
from modules.processing import ProcessingContext, txt2img
from modules.request_types import RequestError, Txt2ImgRequest
from tests import tiny_faces

SEED, SIZE, PICTURE = 77, 64, 320
GAIN = 20.0  # score logit = table + GAIN × the input's mean: bright pictures have faces, dark ones none
BIG_FACE = (16, 20, 20, 1)  # stride, grid x, grid y, anchor
SMALL_FACE = (8, 5, 5, 0)
SHIFT = np.array([48.0, 40.0])  # the big face's landmarks: ArcFace's template × 2 + SHIFT (picture pixels)
BIG_BOX = np.array([50.0, 30.0, 270.0, 290.0])


_anchor = tiny_faces.anchor


def _det_tables():
    """The detector's outputs: the big face at stride 16 (landmarks exactly template × 2 + SHIFT in a 320 px
    picture, i.e. × 2 more in the 640 px canvas), a small better-scoring face at stride 8, nothing else."""
    tables = tiny_faces.empty_tables()
    stride, gx, gy, a = BIG_FACE
    i, centre = _anchor(*BIG_FACE), np.array([gx, gy]) * stride
    box = BIG_BOX * 2
    tables[1][stride][i] = 10.0
    tables[4][stride][i] = np.concatenate([centre - box[:2], box[2:] - centre]) / stride
    tables[10][stride][i] = (((face_embed.ARCFACE_TEMPLATE * 2 + SHIFT) * 2 - centre) / stride).reshape(-1)
    stride, gx, gy, a = SMALL_FACE
    j, centre = _anchor(*SMALL_FACE), np.array([gx, gy]) * stride
    tables[1][stride][j] = 15.0
    tables[4][stride][j] = [2, 2, 2, 2]
    tables[10][stride][j] = np.tile([0.5, 0.5], 5)
    return tables


def _det_onnx(path, tables):
    tiny_faces.scrfd_onnx(path, tables, GAIN)


def _rec_weight():
    return np.random.RandomState(5).randn(3 * 14 * 14, 512).astype(np.float32)


def _rec_onnx(path):
    tiny_faces.arcface_onnx(path, _rec_weight(), "683")


@pytest.fixture
def annotators(tmp_path):
    root = tmp_path / "ControlNetPreprocessor"
    folder = root / "insightface" / "models" / "buffalo_l"
    folder.mkdir(parents=True)
    _det_onnx(folder / "det_10g.onnx", _det_tables())
    _rec_onnx(folder / "w600k_r50.onnx")
    return root


def _face_picture(seed=3, dark=False) -> np.ndarray:
    rs = np.random.RandomState(seed)
    return rs.randint(0, 60, (PICTURE, PICTURE, 3)).astype(np.uint8) if dark else \
        rs.randint(150, 256, (PICTURE, PICTURE, 3)).astype(np.uint8)


def _expected_embedding(picture: np.ndarray) -> np.ndarray:
    """The tiny recogniser by hand on the crop the landmarks imply: template × 2 + SHIFT means ArcFace's crop is
    every other pixel from SHIFT on."""
    x, y = SHIFT.astype(int)
    crop = picture[y:y + 224:2, x:x + 224:2].astype(np.float64)
    pooled = ((crop - 127.5) / 127.5).reshape(14, 8, 14, 8, 3).mean(axis=(1, 3)).transpose(2, 0, 1).reshape(-1)
    out = pooled @ _rec_weight().astype(np.float64)
    return out / np.linalg.norm(out)


def test_the_detector_decodes_scrfd_outputs_and_the_largest_face_is_embedded(annotators):
    detector, recogniser = face_embed.networks(annotators, "ip-adapter_face_id")
    picture = _face_picture()
    faces = face_embed.detect(detector, picture)
    assert len(faces) == 2 and faces[0].area < faces[1].area  # the small one scores higher
    big = face_embed.largest(faces)
    np.testing.assert_allclose(big.box, BIG_BOX, atol=1e-3)
    np.testing.assert_allclose(big.landmarks, face_embed.ARCFACE_TEMPLATE * 2 + SHIFT, atol=1e-3)
    np.testing.assert_allclose(faces[0].box, [12, 12, 28, 28], atol=1e-3)  # (40 ∓ 16) / 2
    embedding, face = face_embed.face_embedding(picture, annotators, "ip-adapter_face_id")
    assert face.area == big.area and embedding.shape == (512,)
    np.testing.assert_allclose(embedding, _expected_embedding(picture), atol=2e-3)
    assert face_embed.detect(detector, _face_picture(dark=True)) == []
    # a wide picture fills the canvas's width (here at scale 1): the box in its pixels is the canvas's
    wide = np.asarray(Image.fromarray(picture).resize((640, 320)))
    np.testing.assert_allclose(face_embed.largest(face_embed.detect(detector, wide)).box, BIG_BOX * 2, atol=1e-3)


def test_similarity_recovers_rotation_scale_and_shift():
    angle, scale, shift = 0.3, 1.7, np.array([5.0, -2.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = face_embed.ARCFACE_TEMPLATE
    m = face_embed.similarity(src, src @ (scale * rot).T + shift)
    np.testing.assert_allclose(m, np.hstack([scale * rot, shift[:, None]]), atol=1e-9)


def test_missing_files_name_the_file_and_folder(tmp_path, annotators):
    from modules.controlnet import preprocessors as pp

    with pytest.raises(pp.MissingAnnotatorError) as err:
        face_embed.networks(tmp_path / "empty", "ip-adapter_face_id")
    assert err.value.file == "det_10g.onnx"
    assert err.value.folder == tmp_path / "empty" / "insightface" / "models" / "buffalo_l"
    (annotators / "insightface" / "models" / "buffalo_l" / "w600k_r50.onnx").unlink()
    with pytest.raises(pp.MissingAnnotatorError, match="w600k_r50.onnx"):
        pp.get("ip-adapter_face_id_plus").run(_face_picture(), annotator_dir=annotators)


def test_preprocessors_are_listed_and_detect_draws_the_face(annotators):
    from modules.controlnet import preprocessors as pp

    for name in ("ip-adapter_face_id", "ip-adapter_face_id_plus"):
        assert pp.get(name).label == name and pp.get(name).tags == ("IP-Adapter",)
        assert name in pp.control_types()["IP-Adapter"]["module_list"]
    drawn = pp.get("ip-adapter_face_id").run(_face_picture(), annotator_dir=annotators)
    assert drawn.shape == (PICTURE, PICTURE, 3) and (drawn[30, 50:270] == [0, 255, 0]).all()  # the box's top
    with pytest.raises(pp.AnnotatorUnavailableError, match="no face found"):
        pp.get("ip-adapter_face_id").run(_face_picture(dark=True), annotator_dir=annotators)


def test_a_file_of_another_kind_is_named(annotators):
    from modules.controlnet import preprocessors as pp

    folder = annotators / "insightface" / "models" / "buffalo_l"
    (folder / "det_10g.onnx").write_bytes(b"half a download")
    with pytest.raises(pp.AnnotatorUnavailableError, match="det_10g.onnx"):
        pp.get("ip-adapter_face_id").run(_face_picture(), annotator_dir=annotators)
    _rec_onnx(folder / "det_10g.onnx")  # a readable network, but not a detector
    with pytest.raises(pp.AnnotatorUnavailableError, match="det_10g.onnx: not the network"):
        pp.get("ip-adapter_face_id").run(_face_picture(), annotator_dir=annotators)
    _det_onnx(folder / "det_10g.onnx", {k: {s: t[:10] for s, t in v.items()} for k, v in _det_tables().items()})
    with pytest.raises(pp.AnnotatorUnavailableError, match="det_10g.onnx: not an SCRFD"):  # outputs of other sizes
        pp.get("ip-adapter_face_id").run(_face_picture(), annotator_dir=annotators)


# --- the adapters ---

def _faceid_state_dict(unet, seed: int, plus: bool, clip_hidden: int = 32) -> dict[str, torch.Tensor]:
    """A FaceID adapter in the released layout: `image_proj.proj.{0,2}` + `norm` (the face MLP, 512 → 1024 →
    4 tokens) and, for Plus, `image_proj.perceiver_resampler.*` (one 64-wide head per layer, four layers)."""
    from tests import tiny_controlnets as tc

    torch.manual_seed(seed)
    cross = unet.config.cross_attention_dim
    proj = {"proj.0.weight": torch.randn(1024, 512) * 0.05, "proj.0.bias": torch.randn(1024) * 0.05,
            "proj.2.weight": torch.randn(cross * 4, 1024) * 0.05, "proj.2.bias": torch.randn(cross * 4) * 0.05,
            "norm.weight": 1 + torch.randn(cross) * 0.1, "norm.bias": torch.randn(cross) * 0.1}
    if plus:
        r = {"proj_in.weight": torch.randn(cross, clip_hidden) * 0.2, "proj_in.bias": torch.zeros(cross),
             "proj_out.weight": torch.randn(cross, cross) * 0.2, "proj_out.bias": torch.zeros(cross),
             "norm_out.weight": torch.ones(cross), "norm_out.bias": torch.zeros(cross)}
        for i in range(4):
            p = f"layers.{i}."
            r.update({p + "0.norm1.weight": torch.ones(cross), p + "0.norm1.bias": torch.zeros(cross),
                      p + "0.norm2.weight": torch.ones(cross), p + "0.norm2.bias": torch.zeros(cross),
                      p + "0.to_q.weight": torch.randn(64, cross) * 0.1,
                      p + "0.to_kv.weight": torch.randn(128, cross) * 0.1,
                      p + "0.to_out.weight": torch.randn(cross, 64) * 0.1, p + "1.0.weight": torch.ones(cross),
                      p + "1.0.bias": torch.zeros(cross), p + "1.1.weight": torch.randn(4 * cross, cross) * 0.1,
                      p + "1.3.weight": torch.randn(cross, 4 * cross) * 0.1})
        proj.update({"perceiver_resampler." + k: v for k, v in r.items()})
    layers = {k: v for k, v in tc.ip_adapter_state_dict(unet, 8, seed + 1).items() if k.startswith("ip_adapter.")}
    return {**{"image_proj." + k: v for k, v in proj.items()}, **layers}


def _setup(load_tiny, tmp_path, plus: bool):
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file

    from modules.controlnet import ip_adapter
    from modules.controlnet.models import ControlNetLibrary
    from modules.sampling import samplers
    from tests import tiny_controlnets as tc

    model = load_tiny("sd1.safetensors")
    (tmp_path / "cn").mkdir()
    (tmp_path / "clip").mkdir()
    sd = _faceid_state_dict(model.unet, 21, plus)
    name = "ip-adapter-faceid-plusv2_sd15" if plus else "ip-adapter-faceid_sd15"
    save_file(sd, str(tmp_path / "cn" / f"{name}.safetensors"))
    encoder = tc.build_clip_vision(12)
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(tmp_path / "clip" / "clip_h.safetensors"))
    library = ControlNetLibrary([tmp_path / "cn"], clip_vision_dirs=[tmp_path / "clip"])
    weights, family = ip_adapter.parse(sd)
    assert weights.faceid == ("plus" if plus else "plain") and family is None  # the tiny UNet's width
    scheduler = samplers.build_scheduler(*samplers.resolve("Euler", None), model.scheduler_config).scheduler
    pipe = StableDiffusionPipeline(
        vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer, unet=model.unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=ip_adapter.image_processor(encoder),
        image_encoder=encoder, requires_safety_checker=False)
    return model, library, weights, pipe, name


def _ours(model, library, annotators, module, name, picture, weight=0.8):
    from modules.controlnet.unit_request import ControlNetUnitRequest, UnitImage

    unit = ControlNetUnitRequest(module=module, model=name, weight=weight, images=[UnitImage(picture)])
    req = Txt2ImgRequest(prompt="a red ball", negative_prompt="blurry", steps=6, cfg_scale=6.0, width=SIZE,
                         height=SIZE, seed=SEED, sampler_name="Euler", controlnet_units=[unit])
    ctx = ProcessingContext(model=model, options={"return_grid": False}, outputs=None, controlnets=library,
                            annotator_dir=annotators)
    return txt2img(ctx, req).images


def _diff(a, b) -> int:
    return max(int(np.abs(np.asarray(x, np.int16) - np.asarray(y, np.int16)).max()) for x, y in zip(a, b))


def _plain(model) -> list:
    ctx = ProcessingContext(model=model, options={"return_grid": False}, outputs=None)
    req = Txt2ImgRequest(prompt="a red ball", negative_prompt="blurry", steps=6, cfg_scale=6.0, width=SIZE,
                         height=SIZE, seed=SEED, sampler_name="Euler")
    return txt2img(ctx, req).images


@pytest.mark.parametrize("plus", [False, True])
def test_faceid_unit_matches_the_pipeline_given_the_face_embedding(load_tiny, tmp_path, annotators, plus):
    from modules.controlnet import ip_adapter

    model, library, weights, pipe, name = _setup(load_tiny, tmp_path, plus)
    picture = Image.fromarray(_face_picture())
    module = "ip-adapter_face_id_plus" if plus else "ip-adapter_face_id"
    ours = _ours(model, library, annotators, module, name, picture)
    assert not any("IPAdapter" in type(p).__name__ for p in model.unet.attn_processors.values())  # detached
    face = torch.from_numpy(_expected_embedding(_face_picture())).float().reshape(1, 1, 512)
    with ip_adapter.attached(model.unet, [weights], average_pictures=False):  # diffusers' own projection
        ip_adapter.set_scales(model.unet, [0.8])
        if plus:  # diffusers' FaceID Plus recipe: the CLIP tokens on the projection, v2's shortcut switched on
            clip = pipe.prepare_ip_adapter_image_embeds([picture], None, "cpu", 1, True)[0]
            projection = model.unet.encoder_hid_proj.image_projection_layers[0].inner
            projection.clip_embeds, projection.shortcut, projection.shortcut_scale = clip, True, 1.0
        theirs = pipe("a red ball", negative_prompt="blurry", num_inference_steps=6, guidance_scale=6.0,
                      width=SIZE, height=SIZE, generator=[torch.Generator().manual_seed(SEED)],
                      ip_adapter_image_embeds=[torch.cat([torch.zeros_like(face), face])]).images
    assert _diff(ours, theirs) <= 2
    assert _diff(ours, _plain(model)) > 3


def test_faceid_requests_say_what_is_wrong(load_tiny, tmp_path, annotators):
    model, library, _, _, name = _setup(load_tiny, tmp_path, plus=False)
    face = Image.fromarray(_face_picture())
    with pytest.raises(RequestError, match=r"controlnet\[0\]\.image: ip-adapter_face_id found no face"):
        _ours(model, library, annotators, "ip-adapter_face_id", name, Image.fromarray(_face_picture(dark=True)))
    with pytest.raises(RequestError, match="pair it with preprocessor ip-adapter_face_id, not ip-adapter_face_id_plus"):
        _ours(model, library, annotators, "ip-adapter_face_id_plus", name, face)
    with pytest.raises(RequestError, match=r"controlnet\[0\]\.module: .*det_10g.onnx.*buffalo_l"):
        _ours(model, library, tmp_path / "nothing", "ip-adapter_face_id", name, face)

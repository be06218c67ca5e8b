"""InstantID (instant_id_face_embedding + instant_id_face_keypoints): tiny ONNX networks with the signatures of
InsightFace's antelopev2 scrfd_10g_bnkps (SCRFD: scores, boxes and 5 landmarks for strides 8/16/32) and glintr100
(1×3×112×112 → 1×512) built here in the extension's folder layout; a tiny InstantID adapter in the released
`ip-adapter.bin` layout (nested image_proj / ip_adapter dicts, a 16-token Resampler reading 512 numbers) and a tiny
SDXL ControlNet from the tiny SDXL UNet. Our txt2img with both units equals StableDiffusionXLControlNetPipeline
given the raw face embedding through `ip_adapter_image_embeds` and, as InstantX's pipeline does, the face tokens as
the ControlNet's encoder_hidden_states."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from modules.controlnet import face_embed, instant_id
from modules.processing import ProcessingContext, txt2img
from modules.request_types import RequestError, Txt2ImgRequest
from tests import tiny_faces

SEED, SIZE, PICTURE = 77, 64, 512
GAIN = 20.0  # score logit = table + GAIN × the input's mean: bright pictures have faces, dark ones none
CANVAS = 640 / PICTURE  # the detector's canvas scale for a 512 px picture (the unit's default resolution)
BIG_FACE = (16, 20, 20, 1)  # stride, grid x, grid y, anchor
SMALL_FACE = (8, 5, 5, 0)
SHIFT = np.array([140.0, 120.0])
LANDMARKS = face_embed.ARCFACE_TEMPLATE * 2 + SHIFT  # in the 512 px picture: ArcFace's crop = every other pixel
BIG_BOX = np.array([120.0, 100.0, 400.0, 420.0])
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255)]


_anchor = tiny_faces.anchor


def _det_tables():
    """The detector's outputs (canvas pixels): the big face at stride 16, a smaller better-scoring one at stride 8."""
    tables = tiny_faces.empty_tables()
    stride, gx, gy, _ = BIG_FACE
    i, centre = _anchor(*BIG_FACE), np.array([gx, gy]) * stride
    box = BIG_BOX * CANVAS
    tables[1][stride][i] = 10.0
    tables[4][stride][i] = np.concatenate([centre - box[:2], box[2:] - centre]) / stride
    tables[10][stride][i] = ((LANDMARKS * CANVAS - centre) / stride).reshape(-1)
    stride, gx, gy, _ = SMALL_FACE
    j = _anchor(*SMALL_FACE)
    tables[1][stride][j] = 15.0
    tables[4][stride][j] = [2, 2, 2, 2]
    tables[10][stride][j] = np.tile([0.5, 0.5], 5)
    return tables


def _det_onnx(path):
    tiny_faces.scrfd_onnx(path, _det_tables(), GAIN)


def _rec_weight():
    return (np.random.RandomState(9).randn(3 * 14 * 14, 512) * 0.2).astype(np.float32)


def _rec_onnx(path):
    tiny_faces.arcface_onnx(path, _rec_weight(), "1333")


@pytest.fixture(scope="module")
def annotators(tmp_path_factory):
    root = tmp_path_factory.mktemp("instantid") / "ControlNetPreprocessor"
    folder = root / "insightface" / "models" / "antelopev2"
    folder.mkdir(parents=True)
    _det_onnx(folder / "scrfd_10g_bnkps.onnx")
    _rec_onnx(folder / "glintr100.onnx")
    return root


def _face_picture(seed=3, dark=False) -> np.ndarray:
    rs = np.random.RandomState(seed)
    return rs.randint(0, 60, (PICTURE, PICTURE, 3)).astype(np.uint8) if dark else \
        rs.randint(150, 256, (PICTURE, PICTURE, 3)).astype(np.uint8)


def _expected_embedding(picture: np.ndarray) -> np.ndarray:
    """The tiny recogniser by hand on ArcFace's crop (every other pixel from SHIFT on), *not* normalised."""
    x, y = SHIFT.astype(int)
    crop = picture[y:y + 224:2, x:x + 224:2].astype(np.float64)
    pooled = ((crop - 127.5) / 127.5).reshape(14, 8, 14, 8, 3).mean(axis=(1, 3)).transpose(2, 0, 1).reshape(-1)
    return pooled @ _rec_weight().astype(np.float64)


def _reference_kps(height, width, kps) -> np.ndarray:
    """InstantX's draw_kps, step by step: float canvas, limbs at full colour, × 0.6, then the landmark discs."""
    out = np.zeros([height, width, 3])
    for a, b in [[0, 2], [1, 2], [3, 2], [4, 2]]:
        x, y = kps[[a, b], 0], kps[[a, b], 1]
        length = ((x[0] - x[1]) ** 2 + (y[0] - y[1]) ** 2) ** 0.5
        angle = math.degrees(math.atan2(y[0] - y[1], x[0] - x[1]))
        polygon = cv2.ellipse2Poly((int(np.mean(x)), int(np.mean(y))), (int(length / 2), 4), int(angle), 0, 360, 1)
        out = cv2.fillConvexPoly(out.copy(), polygon, COLOURS[a])
    out = (out * 0.6).astype(np.uint8)
    for (x, y), colour in zip(kps, COLOURS):
        out = cv2.circle(out.copy(), (int(x), int(y)), 10, colour, -1)
    return out.astype(np.uint8)


# --- the face ---

def test_the_face_is_read_at_the_units_resolution_and_its_raw_embedding_kept(annotators):
    picture = _face_picture()
    padded, face = instant_id.find_face(picture, 512, annotators, instant_id.EMBEDDING)
    np.testing.assert_allclose(face.landmarks, LANDMARKS, atol=1e-3)
    np.testing.assert_allclose(face.box, BIG_BOX, atol=1e-3)
    embedding = instant_id.embedding(picture, 512, annotators, instant_id.EMBEDDING)
    expected = _expected_embedding(picture)
    assert abs(np.linalg.norm(expected) - 1) > 0.5  # a raw embedding: its length is not 1
    np.testing.assert_allclose(embedding, expected, atol=2e-3 * np.abs(expected).max())
    # at resolution 256 the picture is halved first: the face (and its landmarks) in the halved picture's pixels
    _, half = instant_id.find_face(picture, 256, annotators, instant_id.EMBEDDING)
    np.testing.assert_allclose(half.landmarks, LANDMARKS / 2, atol=1e-3)
    with pytest.raises(face_embed.NoFaceError):
        instant_id.find_face(_face_picture(dark=True), 512, annotators, instant_id.EMBEDDING)


def test_keypoint_map_has_the_extensions_colours_and_limbs(annotators):
    from modules.controlnet import preprocessors as pp

    drawn = pp.get(instant_id.KEYPOINTS).run(_face_picture(), 512, annotator_dir=annotators)
    assert drawn.shape == (PICTURE, PICTURE, 3)
    np.testing.assert_array_equal(drawn, _reference_kps(PICTURE, PICTURE, LANDMARKS))
    for (x, y), colour in zip(LANDMARKS, COLOURS):
        assert tuple(drawn[int(y), int(x)]) == colour
    # the limb from the left eye to the nose, half way and outside both discs: red at 0.6
    x, y = (LANDMARKS[0] + LANDMARKS[2]) / 2
    assert tuple(drawn[int(y), int(x)]) == (153, 0, 0)
    assert tuple(drawn[5, 5]) == (0, 0, 0)
    # a wide picture: the map at the resolution's size (short side 256), the padding cut off again
    wide = np.asarray(Image.fromarray(_face_picture()).resize((700, 512)))
    assert pp.get(instant_id.KEYPOINTS).run(wide, 256, annotator_dir=annotators).shape == (256, 350, 3)


def test_preprocessors_are_listed_and_the_embedding_preview_draws_the_face(annotators):
    from modules.controlnet import preprocessors as pp

    listed = pp.control_types()["Instant-ID"]["module_list"]
    assert instant_id.EMBEDDING in listed and instant_id.KEYPOINTS in listed
    drawn = pp.get(instant_id.EMBEDDING).run(_face_picture(), annotator_dir=annotators)
    assert drawn.shape == (PICTURE, PICTURE, 3) and (drawn[100, 130:390] == [0, 255, 0]).all()  # the box's top
    with pytest.raises(pp.AnnotatorUnavailableError, match="no face found"):
        pp.get(instant_id.KEYPOINTS).run(_face_picture(dark=True), annotator_dir=annotators)


def test_missing_and_wrong_files_are_named(tmp_path, annotators):
    from modules.controlnet import preprocessors as pp

    with pytest.raises(pp.MissingAnnotatorError) as err:
        instant_id.embedding(_face_picture(), 512, tmp_path / "empty", instant_id.EMBEDDING)
    assert err.value.file == "scrfd_10g_bnkps.onnx"
    assert err.value.folder == tmp_path / "empty" / "insightface" / "models" / "antelopev2"
    folder = tmp_path / "a" / "insightface" / "models" / "antelopev2"
    folder.mkdir(parents=True)
    _rec_onnx(folder / "scrfd_10g_bnkps.onnx")  # a readable network, but not a detector
    with pytest.raises(pp.MissingAnnotatorError, match="glintr100.onnx"):
        instant_id.embedding(_face_picture(), 512, tmp_path / "a", instant_id.EMBEDDING)
    with pytest.raises(pp.AnnotatorUnavailableError, match="scrfd_10g_bnkps.onnx: not the network"):
        pp.get(instant_id.KEYPOINTS).run(_face_picture(), annotator_dir=tmp_path / "a")


# --- the two units ---

def _adapter_state_dict(unet, seed: int) -> dict:
    """InstantID's ip-adapter.bin layout: {"image_proj": Resampler (latents (1, 16, dim), proj_in reading 512),
    "ip_adapter": {"1.to_k_ip.weight", ...}}."""
    from tests import tiny_controlnets as tc

    flat = tc.ip_adapter_plus_state_dict(unet, 512, seed, dim=64, tokens=16)
    return {part: {k.removeprefix(part + "."): v for k, v in flat.items() if k.startswith(part + ".")}
            for part in ("image_proj", "ip_adapter")}


@pytest.fixture
def instantid(load_tiny, tmp_path):
    from modules.controlnet.models import ControlNetLibrary
    from tests import tiny_controlnets as tc

    model = load_tiny("sdxl.safetensors")
    folder = tmp_path / "cn"
    folder.mkdir()
    adapter = _adapter_state_dict(model.unet, 31)
    torch.save(adapter, str(folder / "ip-adapter_instant_id_sdxl.bin"))
    net = tc.build_controlnet(model.unet, 8)
    tc.write_diffusers_file(net, folder / "control_instant_id_sdxl.safetensors", dtype=torch.float32)
    torch.save(tc.ip_adapter_state_dict(model.unet, 24, 5), str(folder / "ip-adapter_sdxl.bin"))
    return model, ControlNetLibrary([folder]), adapter, net


def _units(picture, first=True, second=True, embed_model="ip-adapter_instant_id_sdxl", **second_kw):
    from modules.controlnet.unit_request import ControlNetUnitRequest, UnitImage

    out = []
    if first:
        out.append(ControlNetUnitRequest(module=instant_id.EMBEDDING, model=embed_model, weight=0.8,
                                         images=[UnitImage(picture)]))
    if second:
        out.append(ControlNetUnitRequest(**{"module": instant_id.KEYPOINTS, "model": "control_instant_id_sdxl",
                                            "weight": 0.7, "processor_res": 64, "images": [UnitImage(picture)],
                                            **second_kw}))
    return out


def _run(model, library, annotators, units):
    req = Txt2ImgRequest(prompt="a red ball", negative_prompt="blurry", steps=6, cfg_scale=6.0, width=SIZE,
                         height=SIZE, seed=SEED, sampler_name="Euler", controlnet_units=units)
    ctx = ProcessingContext(model=model, options={"return_grid": False}, outputs=None, controlnets=library,
                            annotator_dir=annotators)
    return txt2img(ctx, req).images


def _diff(a, b) -> int:
    return max(int(np.abs(np.asarray(x, np.int16) - np.asarray(y, np.int16)).max()) for x, y in zip(a, b))


def test_instantid_units_match_the_sdxl_controlnet_pipeline_given_the_face(instantid, annotators):
    from diffusers import StableDiffusionXLControlNetPipeline

    from modules.controlnet import ip_adapter
    from modules.sampling import samplers

    model, library, adapter, net = instantid
    picture = Image.fromarray(_face_picture())
    ours = _run(model, library, annotators, _units(picture))
    assert not any("IPAdapter" in type(p).__name__ for p in model.unet.attn_processors.values())  # detached

    # the reference: the raw embedding by hand, its tokens through diffusers' projection of the file, the
    # keypoint map drawn by InstantX's recipe at the keypoint unit's resolution (64: landmarks / 8 here)
    face = torch.from_numpy(_expected_embedding(_face_picture())).float().reshape(1, 1, 1, 512)
    weights, _ = ip_adapter.parse({f"{p}.{k}": v for p, d in adapter.items() for k, v in d.items()})
    assert weights.instant_id and weights.plus
    layer = model.unet._convert_ip_adapter_image_proj_to_diffusers(adapter["image_proj"], low_cpu_mem_usage=False)
    with torch.no_grad():
        tokens = torch.cat([layer(torch.zeros(1, 1, 512)), layer(face.reshape(1, 1, 512))])  # [uncond, cond]
    kps = Image.fromarray(_reference_kps(SIZE, SIZE, LANDMARKS * CANVAS / 10))  # a 64 px picture: canvas × 10
    original = net.forward

    def face_context(sample, timestep, encoder_hidden_states=None, **kwargs):  # InstantX: prompt_image_emb
        return original(sample, timestep, encoder_hidden_states=tokens.to(encoder_hidden_states.dtype), **kwargs)

    scheduler = samplers.build_scheduler(*samplers.resolve("Euler", None), model.scheduler_config).scheduler
    pipe = StableDiffusionXLControlNetPipeline(
        vae=model.vae, text_encoder=model.text_encoder, text_encoder_2=model.text_encoder_2,
        tokenizer=model.tokenizer, tokenizer_2=model.tokenizer_2, unet=model.unet, controlnet=net,
        scheduler=scheduler)
    net.forward = face_context
    try:
        with ip_adapter.attached(model.unet, [weights], average_pictures=False):
            pipe.set_ip_adapter_scale(0.8)
            theirs = pipe("a red ball", negative_prompt="blurry", image=kps, num_inference_steps=6,
                          guidance_scale=6.0, width=SIZE, height=SIZE,
                          generator=[torch.Generator().manual_seed(SEED)], controlnet_conditioning_scale=0.7,
                          ip_adapter_image_embeds=[torch.cat([torch.zeros_like(face), face])]).images
        net.forward = original
        prompt_context = pipe("a red ball", negative_prompt="blurry", image=kps, num_inference_steps=6,
                              guidance_scale=6.0, width=SIZE, height=SIZE,
                              generator=[torch.Generator().manual_seed(SEED)],
                              controlnet_conditioning_scale=0.7).images
    finally:
        net.forward = original
    assert len(ours) == 2  # the picture and the keypoint unit's map (the embedding unit draws none)
    np.testing.assert_array_equal(np.asarray(ours[1]), np.asarray(kps))
    assert _diff(ours[:1], theirs) <= 2
    assert _diff(ours[:1], prompt_context) > 3  # the face tokens, not the prompt, guide the ControlNet


def test_instantid_requests_say_what_is_wrong(instantid, annotators, tmp_path, load_tiny):
    model, library, _, _ = instantid
    face, dark = Image.fromarray(_face_picture()), Image.fromarray(_face_picture(dark=True))
    with pytest.raises(RequestError, match=r"controlnet\[0\]\.module: .*scrfd_10g_bnkps.onnx.*antelopev2"):
        _run(model, library, tmp_path / "nothing", _units(face))
    with pytest.raises(RequestError, match=r"controlnet\[0\]\.image: instant_id_face_embedding found no face"):
        _run(model, library, annotators, _units(dark))
    with pytest.raises(RequestError, match=r"controlnet\[0\]\.module: control_instant_id_sdxl.* reads the face "
                                           r"tokens .*instant_id_face_embedding .*right before"):
        _run(model, library, annotators, _units(face, first=False))
    with pytest.raises(RequestError, match=r"controlnet\[0\]\.model: ip-adapter_sdxl.* is not the InstantID"):
        _run(model, library, annotators, _units(face, second=False, embed_model="ip-adapter_sdxl"))
    from modules.controlnet.unit_request import ControlNetUnitRequest, UnitImage

    clip_unit = ControlNetUnitRequest(module="ip-adapter_clip_sdxl", model="ip-adapter_instant_id_sdxl",
                                      images=[UnitImage(face)])
    with pytest.raises(RequestError, match=r"controlnet\[0\]\.model: .*InstantID's adapter.*instant_id_face_embedding"):
        _run(model, library, annotators, [clip_unit])
    with pytest.raises(RequestError, match="works with SDXL checkpoints"):
        _run(load_tiny("sd1.safetensors"), library, annotators, _units(face))

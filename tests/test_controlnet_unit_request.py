"""ControlNet unit payloads of the sd-webui-controlnet extension's API: what a client sends parses into the unit it
meant (its examples, legacy aliases, every image form, enum spellings), the infotext reads back as written, and each
bad field is answered with a RequestError naming `controlnet[i].field` (the API's 422)."""
from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from modules.controlnet.unit_request import (
    ControlMode,
    ControlNetUnitRequest,
    HiResFixOption,
    ResizeMode,
    UnitImage,
    infotext_fields,
    parse_units,
    units_from_infotext,
)
from modules.infotext import create_infotext, parse_generation_parameters
from modules.request_types import RequestError

W, H = 24, 16


def b64(im: Image.Image) -> str:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def rgb(color=(200, 30, 40), size=(W, H)) -> Image.Image:
    return Image.new("RGB", size, color)


def mask_real(size=(W, H)) -> Image.Image:
    """A mask that marks something: left half white."""
    m = Image.new("L", size, 0)
    m.paste(255, (0, 0, size[0] // 2, size[1]))
    return m


IMG = b64(rgb())
IMG2 = b64(rgb((10, 220, 90)))
BLANK_MASK = b64(Image.new("L", (W, H), 0))
REAL_MASK = b64(mask_real())


def unit(**fields) -> ControlNetUnitRequest:
    """A unit naming a model unless the test says otherwise (one naming none is off unless "enabled" is sent)."""
    return ControlNetUnitRequest.from_dict({"model": "m", **fields})


def error(payload: dict, index: int = 0) -> str:
    with pytest.raises(RequestError) as e:
        parse_units({"args": [{}] * index + [{"model": "m", **payload}]})
    return str(e.value)


# --------------------------------------------------------------------------------------------------------------------
# The extension's own example payloads


def test_the_extensions_txt2img_example_parses():
    """example/txt2img_example/api_txt2img.py, field for field (note its legacy `lowvram`)."""
    args = {"args": [{
        "enabled": True, "module": "none", "model": "canny", "weight": 1.0, "image": IMG,
        "resize_mode": "Crop and Resize", "lowvram": False, "processor_res": 64, "threshold_a": 64,
        "threshold_b": 64, "guidance_start": 0.0, "guidance_end": 1.0, "control_mode": "Balanced",
        "pixel_perfect": False,
    }]}
    [u] = parse_units(args)
    assert u.active and u.enabled
    assert (u.module, u.model, u.weight) == ("none", "canny", 1.0)
    assert u.resize_mode is ResizeMode.INNER_FIT and u.control_mode is ControlMode.BALANCED
    assert (u.processor_res, u.threshold_a, u.threshold_b) == (64, 64.0, 64.0)
    assert isinstance(u.processor_res, int) and isinstance(u.threshold_a, float)
    assert (u.guidance_start, u.guidance_end, u.low_vram, u.pixel_perfect) == (0.0, 1.0, False, False)
    assert len(u.images) == 1 and u.images[0].image.mode == "RGB" and u.images[0].image.size == (W, H)
    assert u.images[0].image.getpixel((0, 0)) == (200, 30, 40) and u.images[0].mask is None


def test_the_extensions_inpaint_examples_parse():
    """example/inpaint_example/api_inpaint.py: an img2img unit without image (uses the img2img input) and a txt2img
    unit with {"image", "mask"}, plus the UI-only `batch_images` field the example sends (ignored)."""
    common = {"control_mode": "Balanced", "enabled": True, "guidance_end": 1, "guidance_start": 0, "low_vram": False,
              "model": "control_v11p_sd15_inpaint [ebff9138]", "module": "inpaint_only", "pixel_perfect": True,
              "processor_res": 512, "resize_mode": "Crop and Resize", "threshold_a": 64, "threshold_b": 64,
              "weight": 1}
    [i2i] = parse_units({"args": [common]})
    assert i2i.images == [] and i2i.active and i2i.pixel_perfect
    [t2i] = parse_units({"args": [dict(common, batch_images="", save_detected_map=True,
                                       image={"image": IMG, "mask": REAL_MASK})]})
    [im] = t2i.images
    assert im.image.getpixel((0, 0)) == (200, 30, 40)
    assert im.mask.mode == "L" and im.mask.getpixel((0, 0)) == 255 and im.mask.getpixel((W - 1, 0)) == 0


def test_advanced_weighting_and_api_only_fields():
    u = unit(model="m", advanced_weighting=[0.3 + i * 0.05 for i in range(13)], save_detected_map=False,
             hr_option="Low res only", union_control_type="Hard Edge", inpaint_crop_input_image=False,
             effective_region_mask=b64(Image.new("RGB", (W, H), (255, 0, 0))))
    assert len(u.advanced_weighting) == 13 and u.advanced_weighting[1] == pytest.approx(0.35)
    assert (u.save_detected_map, u.hr_option, u.union_control_type, u.inpaint_crop_input_image) == (
        False, HiResFixOption.LOW_RES_ONLY, "Hard Edge", False)
    assert u.effective_region_mask.mode == "L" and u.effective_region_mask.getpixel((0, 0)) == 255


def test_unknown_fields_are_ignored_and_names_are_stripped_not_checked():
    u = unit(module="  canny ", model=" control_v11p_sd15_canny [d14c016b]\n", is_ui=False, input_mode="simple",
             batch_images="", pulid_mode="Fidelity", guessmode=False, something_new={"x": 1})
    assert (u.module, u.model) == ("canny", "control_v11p_sd15_canny [d14c016b]")
    assert unit(module="no_such_preprocessor", model="no such model").model == "no such model"


# --------------------------------------------------------------------------------------------------------------------
# enabled / active


def test_enabled_missing_means_enabled_and_false_disables():
    assert unit(model="m").enabled and unit(model="m").active
    bare = ControlNetUnitRequest.from_dict
    assert not bare({}).enabled and not bare({"module": "canny"}).enabled  # a placeholder naming no model stays off
    assert bare({"module": "reference_only"}).enabled  # needs no model
    off = unit(model="m", enabled=False)
    assert not off.enabled and not off.active
    assert not unit(model="m", enabled="false").enabled
    assert not unit(model="m", enabled=None).enabled  # pre-pydantic: None was falsy


def test_a_disabled_units_images_are_not_read():
    """The extension decodes images only for units it runs: a disabled unit with a stale image still parses."""
    off = unit(enabled=False, model="m", image="not an image", mask=7)
    assert off.images == [] and not off.active
    assert "controlnet[0].weight" in error({"enabled": False, "weight": 5})  # its other fields are still checked


def test_active_needs_a_model_unless_the_module_is_model_free():
    assert not unit(model="None").active  # module none, model None
    assert not unit(module="canny", model="None").active
    assert unit(module="reference_only").active and unit(module="revision_clipvision").active


# --------------------------------------------------------------------------------------------------------------------
# Legacy aliases


def test_legacy_aliases():
    u = unit(input_image=IMG, guidance=0.6, lowvram=True, model="m")
    assert len(u.images) == 1 and u.guidance_end == 0.6 and u.low_vram is True
    forge = unit(module="inpaint_only", image=IMG, mask_image=REAL_MASK)
    assert forge.images[0].mask.getpixel((0, 0)) == 255
    assert unit(image=IMG, mask=None, mask_image=None).images[0].mask is None


@pytest.mark.parametrize("payload, field", [
    ({"input_image": IMG, "image": IMG}, "controlnet[0].input_image"),
    ({"guidance": 0.5, "guidance_end": 0.5}, "controlnet[0].guidance"),
    ({"lowvram": True, "low_vram": True}, "controlnet[0].lowvram"),
    ({"image": IMG, "mask": BLANK_MASK, "mask_image": BLANK_MASK}, "controlnet[0].mask_image"),
])
def test_alias_and_field_together_is_an_error(payload, field):
    assert field in error(payload)


def test_errors_name_the_alias_the_client_sent():
    assert "controlnet[0].guidance:" in error({"guidance": 3})
    assert "controlnet[0].input_image:" in error({"input_image": "not an image"})


# --------------------------------------------------------------------------------------------------------------------
# Image forms


def test_image_as_base64_data_uri_and_pil():
    for value in (IMG, "data:image/png;base64," + IMG, rgb()):
        [im] = unit(image=value).images
        assert im.image.mode == "RGB" and im.image.getpixel((3, 3)) == (200, 30, 40)


@pytest.mark.parametrize("form", ["dict", "pair", "top-level", "list"])
def test_image_with_mask_in_each_form(form):
    payload = {
        "dict": {"image": {"image": IMG, "mask": REAL_MASK}},
        "pair": {"image": [IMG, REAL_MASK]},
        "top-level": {"image": IMG, "mask": REAL_MASK},
        "list": {"image": [{"image": IMG, "mask": REAL_MASK}]},
    }[form]
    [im] = unit(module="inpaint_only+lama", **payload).images
    assert im.image.getpixel((0, 0)) == (200, 30, 40)
    assert im.mask.mode == "L" and im.mask.size == (W, H)
    assert (im.mask.getpixel((0, 0)), im.mask.getpixel((W - 1, H - 1))) == (255, 0)


def test_several_images_for_multi_input_units():
    u = unit(module="ip-adapter_clip_sd15", model="ip-adapter_sd15",
             image=[{"image": IMG}, {"image": IMG2, "mask": BLANK_MASK}, {"image": IMG, "mask": None}])
    assert [im.image.getpixel((0, 0)) for im in u.images] == [(200, 30, 40), (10, 220, 90), (200, 30, 40)]
    assert [im.mask is None for im in u.images] == [True, False, True]


def test_pair_with_null_mask():
    [im] = unit(image=[IMG, None]).images
    assert im.mask is None


@pytest.mark.parametrize("value", ["", [], None])
def test_no_image_means_the_img2img_input(value):
    assert unit(model="m", image=value).images == []


def test_rgba_image_is_composited_onto_white():
    """The extension's HWC3: colour * alpha + 255 * (1 - alpha) (truncated)."""
    im = Image.new("RGBA", (W, H), (0, 0, 0, 0))
    im.paste((100, 0, 0, 255), (0, 0, 4, 4))
    im.paste((100, 0, 0, 128), (4, 0, 8, 4))
    [out] = unit(module="canny", model="m", image=b64(im)).images
    assert out.image.mode == "RGB"
    assert out.image.getpixel((0, 0)) == (100, 0, 0)
    assert out.image.getpixel((5, 0)) == (177, 126, 126)  # 100*128/255 + 255*127/255, truncated
    assert out.image.getpixel((W - 1, H - 1)) == (255, 255, 255)


def test_a_real_mask_on_a_non_inpaint_unit_is_the_scribble_input():
    """choose_input_image/from_rgba_to_input: the mask, when it marks something, replaces the image as RGB."""
    [im] = unit(module="canny", model="m", image=IMG, mask=REAL_MASK).images
    assert im.mask is None and im.image.mode == "RGB"
    assert im.image.getpixel((0, 0)) == (255, 255, 255) and im.image.getpixel((W - 1, 0)) == (0, 0, 0)
    # an RGBA mask counts through its composited first channel (transparent = white)
    rgba = Image.new("RGBA", (W, H), (0, 0, 0, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, W // 2, H))
    [im] = unit(module="canny", model="m", image=IMG, mask=b64(rgba)).images
    assert im.image.getpixel((0, 0)) == (255, 255, 255) and im.image.getpixel((W - 1, 0)) == (0, 0, 0)


@pytest.mark.parametrize("level", [0, 5, 250, 255])
def test_a_blank_mask_is_ignored(level):
    m = b64(Image.new("L", (W, H), level))
    [im] = unit(module="canny", model="m", image=IMG, mask=m).images
    assert im.image.getpixel((0, 0)) == (200, 30, 40) and im.mask is None


def test_inpaint_and_clip_units_keep_image_and_mask():
    for module in ("inpaint_only", "inpaint_global_harmonious", "ip-adapter-auto", "clip_vision"):
        [im] = unit(module=module, model="m", image=IMG, mask=REAL_MASK).images
        assert im.image.getpixel((0, 0)) == (200, 30, 40) and im.mask.getpixel((0, 0)) == 255, module
    [im] = unit(module="ip-adapter_face_id", model="m", image=IMG, mask=REAL_MASK).images  # not a CLIP module
    assert im.mask is None and im.image.getpixel((0, 0)) == (255, 255, 255)


def test_an_rgb_mask_is_read_from_its_first_channel():
    m = Image.new("RGB", (W, H), (255, 0, 0))
    m.paste((0, 255, 255), (0, 0, 4, H))
    [im] = unit(module="inpaint_only", image=IMG, mask=b64(m)).images
    assert (im.mask.getpixel((0, 0)), im.mask.getpixel((W - 1, 0))) == (0, 255)


def test_file_paths_only_with_an_image_base(tmp_path):
    rgb().save(tmp_path / "control.png")
    [im] = ControlNetUnitRequest.from_dict({"image": "control.png", "model": "m"}, image_base=tmp_path).images
    assert im.image.size == (W, H)
    with pytest.raises(RequestError, match=r"controlnet\[0\]\.image"):
        ControlNetUnitRequest.from_dict({"image": str(tmp_path / "control.png"), "model": "m"})


# --------------------------------------------------------------------------------------------------------------------
# Enums


@pytest.mark.parametrize("value, expected", [
    ("Just Resize", ResizeMode.RESIZE), ("Crop and Resize", ResizeMode.INNER_FIT),
    ("Resize and Fill", ResizeMode.OUTER_FIT), ("crop and resize", ResizeMode.INNER_FIT),
    ("Inner Fit (Scale to Fit)", ResizeMode.INNER_FIT), ("Scale to Fit (Inner Fit)", ResizeMode.INNER_FIT),
    ("Outer Fit (Shrink to Fit)", ResizeMode.OUTER_FIT), ("Envelope (Outer Fit)", ResizeMode.OUTER_FIT),
    (0, ResizeMode.RESIZE), (1, ResizeMode.INNER_FIT), (2, ResizeMode.OUTER_FIT), (3, ResizeMode.RESIZE),
    (ResizeMode.OUTER_FIT, ResizeMode.OUTER_FIT), ("INNER_FIT", ResizeMode.INNER_FIT),
])
def test_resize_mode_spellings(value, expected):
    assert unit(resize_mode=value).resize_mode is expected


@pytest.mark.parametrize("value, expected", [
    ("Balanced", ControlMode.BALANCED), ("My prompt is more important", ControlMode.PROMPT),
    ("ControlNet is more important", ControlMode.CONTROL), (0, ControlMode.BALANCED), (1, ControlMode.PROMPT),
    (2, ControlMode.CONTROL), (2.0, ControlMode.CONTROL), ("BALANCED", ControlMode.BALANCED),  # name: ours only
    ("ControlMode.PROMPT", ControlMode.PROMPT), ("2", ControlMode.CONTROL),  # an index as a string (infotext)
])
def test_control_mode_spellings(value, expected):
    assert unit(control_mode=value).control_mode is expected


@pytest.mark.parametrize("value, expected", [
    ("Both", HiResFixOption.BOTH), ("High res only", HiResFixOption.HIGH_RES_ONLY), (1, HiResFixOption.LOW_RES_ONLY),
    ("HiResFixOption.LOW_RES_ONLY", HiResFixOption.LOW_RES_ONLY),  # str() of the enum: pre-pydantic from_value
])
def test_hr_option_spellings(value, expected):
    assert unit(hr_option=value).hr_option is expected


def test_enums_are_strings_with_the_extensions_values():
    assert ResizeMode.INNER_FIT == "Crop and Resize" and ControlMode.PROMPT.value == "My prompt is more important"
    assert [m.int_value() for m in ResizeMode] == [0, 1, 2]


# --------------------------------------------------------------------------------------------------------------------
# Infotext


KNOWN = {"module": "canny", "model": "control_v11p_sd15_canny [d14c016b]", "weight": 1, "image": IMG,
         "resize_mode": "Crop and Resize", "processor_res": 512, "threshold_a": 100, "threshold_b": 200,
         "pixel_perfect": False, "control_mode": "Balanced"}
KNOWN_TEXT = ("Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 1.0, Resize Mode: Crop and Resize, "
              "Processor Res: 512, Threshold A: 100.0, Threshold B: 200.0, Guidance Start: 0.0, Guidance End: 1.0, "
              "Pixel Perfect: False, Control Mode: Balanced")


def test_infotext_is_the_extensions_serialize():
    assert unit(**KNOWN).infotext() == KNOWN_TEXT
    other = unit(module="depth_midas", model="m", weight=0.45, resize_mode=2, guidance_start=0.1, guidance_end=0.9,
                 pixel_perfect=True, control_mode=1).infotext()
    assert other == ("Module: depth_midas, Model: m, Weight: 0.45, Resize Mode: Resize and Fill, Processor Res: -1, "
                     "Threshold A: -1.0, Threshold B: -1.0, Guidance Start: 0.1, Guidance End: 0.9, "
                     "Pixel Perfect: True, Control Mode: My prompt is more important")
    assert unit(model="a, b").infotext() == ""  # the extension refuses ',' and ':' in values


@pytest.mark.parametrize("fields", [
    KNOWN,
    {"module": "inpaint_only+lama", "model": "control_v11p_sd15_inpaint [ebff9138]", "weight": 0.3,
     "resize_mode": "Just Resize", "guidance_start": 0.25, "guidance_end": 0.75, "pixel_perfect": True,
     "control_mode": "ControlNet is more important"},
    {"module": "reference_only", "threshold_a": 0.5, "control_mode": 1},
])
def test_infotext_round_trip(fields):
    u = unit(**fields)
    back = ControlNetUnitRequest.from_infotext(u.infotext())
    expected = {k: v for k, v in u.to_dict().items() if k in (
        "module", "model", "weight", "resize_mode", "processor_res", "threshold_a", "threshold_b", "guidance_start",
        "guidance_end", "pixel_perfect", "control_mode")}
    assert {k: v for k, v in back.to_dict().items() if k in expected} == expected
    assert back.enabled and back.images == []
    assert back.infotext() == u.infotext()


def test_infotext_of_the_extensions_parse_test():
    """unit_tests/args_test.py test_infotext_parsing: ints, an extra `Low Vram` field, no thresholds."""
    u = ControlNetUnitRequest.from_infotext(
        "Module: inpaint_only+lama, Model: control_v11p_sd15_inpaint [ebff9138], Weight: 1, "
        "Resize Mode: Resize and Fill, Low Vram: False, Guidance Start: 0, Guidance End: 1, "
        "Pixel Perfect: True, Control Mode: Balanced")
    assert (u.module, u.model, u.weight, u.resize_mode, u.low_vram, u.pixel_perfect) == (
        "inpaint_only+lama", "control_v11p_sd15_inpaint [ebff9138]", 1.0, ResizeMode.OUTER_FIT, False, True)
    assert u.enabled and u.active and u.threshold_a == -1


def test_infotext_fields_quote_and_read_back_through_a1111_infotext():
    units = [unit(**KNOWN), unit(model="m", enabled=False), unit(module="reference_only", weight=0.5)]
    fields = infotext_fields(units)
    assert fields == {"ControlNet 0": KNOWN_TEXT, "ControlNet 1": units[2].infotext()}  # raw; enabled ones, renumbered
    text = create_infotext("a cat", "", {"Steps": 20, "Seed": 1, **fields})
    assert f'ControlNet 0: "{KNOWN_TEXT}"' in text  # quoted by create_infotext, as A1111 writes it
    back = units_from_infotext(parse_generation_parameters(text))
    assert [u.infotext() for u in back] == [KNOWN_TEXT, units[2].infotext()]
    assert all(u.enabled for u in back)


def test_units_from_infotext_orders_skips_and_is_strict_on_request():
    params = {"ControlNet 1": "Module: none, Model: b", "Steps": "20", "ControlNet 0": '"Module: none, Model: a"',
              "ControlNet 2": 'preprocessor: canny, starting/ending: (0, 1)'}  # an old format the extension skips
    assert [u.model for u in units_from_infotext(params)] == ["a", "b"]
    with pytest.raises(RequestError, match="ControlNet 2"):
        units_from_infotext(params, strict=True)
    with pytest.raises(RequestError, match=r"ControlNet 0\.weight"):
        units_from_infotext({"ControlNet 0": "Module: none, Weight: 7"}, strict=True)


# --------------------------------------------------------------------------------------------------------------------
# Bad input: RequestError naming controlnet[i].field


@pytest.mark.parametrize("payload, field", [
    ({"weight": 2.5}, "weight"), ({"weight": -0.1}, "weight"), ({"weight": "heavy"}, "weight"),
    ({"weight": True}, "weight"), ({"weight": "nan"}, "weight"),
    ({"guidance_start": 1.5}, "guidance_start"), ({"guidance_end": -0.5}, "guidance_end"),
    ({"guidance_start": "x"}, "guidance_start"),
    ({"processor_res": "big"}, "processor_res"), ({"threshold_a": [1]}, "threshold_a"),
    ({"threshold_b": {}}, "threshold_b"),
    ({"enabled": "maybe"}, "enabled"), ({"pixel_perfect": 3}, "pixel_perfect"), ({"low_vram": "x"}, "low_vram"),
    ({"save_detected_map": []}, "save_detected_map"), ({"inpaint_crop_input_image": "?"}, "inpaint_crop_input_image"),
    ({"module": ["canny"]}, "module"), ({"model": {"name": "x"}}, "model"),
    ({"resize_mode": "Stretch"}, "resize_mode"), ({"resize_mode": 4}, "resize_mode"),
    ({"resize_mode": -1}, "resize_mode"), ({"resize_mode": True}, "resize_mode"),
    ({"resize_mode": "7"}, "resize_mode"),
    ({"control_mode": 3}, "control_mode"), ({"control_mode": "Balance"}, "control_mode"),
    ({"control_mode": ["Balanced"]}, "control_mode"), ({"hr_option": "Sometimes"}, "hr_option"),
    ({"union_control_type": "Pose"}, "union_control_type"),
    ({"advanced_weighting": "1,2"}, "advanced_weighting"), ({"advanced_weighting": [1, "a"]}, "advanced_weighting[1]"),
    ({"effective_region_mask": 124}, "effective_region_mask"),
    ({"effective_region_mask": "bm90IGFuIGltYWdl"}, "effective_region_mask"),
    ({"image": 123}, "image"), ({"image": "bm90IGFuIGltYWdl"}, "image"), ({"image": {"mask": IMG}}, "image.image"),
    ({"image": {"image": 5}}, "image.image"), ({"image": [IMG]}, "image"), ({"image": [IMG, IMG, IMG]}, "image"),
    ({"image": [None, IMG]}, "image[0]"), ({"image": [IMG, "garbage"]}, "image[1]"),
    ({"image": [{"image": IMG}, {"mask": IMG}]}, "image[1].image"),
    ({"image": [{"image": IMG}, IMG]}, "image[1]"), ({"image": [{"image": IMG, "mask": 7}]}, "image[0].mask"),
    ({"image": IMG, "mask": "garbage"}, "mask"), ({"mask": IMG}, "mask"), ({"image": None, "mask": IMG}, "mask"),
    ({"image": IMG, "mask": b64(Image.new("L", (W + 1, H)))}, "mask"),
    ({"image": {"image": IMG, "mask": b64(Image.new("L", (8, 8)))}}, "image.mask"),
    ({"image": IMG, "mask_image": b64(Image.new("L", (8, 8)))}, "mask_image"),
    ({"ipadapter_input": "AAAA"}, "ipadapter_input"),
])
def test_bad_field_names_the_field(payload, field):
    message = error(payload)
    assert f"controlnet[0].{field}:" in message, message


def test_bad_field_in_a_later_unit_names_its_index():
    assert "controlnet[2].weight:" in error({"weight": 9}, index=2)


def test_guidance_start_after_end():
    assert error({"guidance_start": 0.8, "guidance_end": 0.5}) == (
        "controlnet[0].guidance_start: must be <= guidance_end (0.8 > 0.5)")
    u = unit(guidance_start=0.5, guidance_end=0.5)
    assert (u.guidance_start, u.guidance_end) == (0.5, 0.5)


def test_numbers_from_strings_and_bounds_are_inclusive():
    u = unit(weight="2", guidance_start="0", guidance_end=1, processor_res="512", threshold_a="0.5",
             pixel_perfect="true", low_vram=1)
    assert (u.weight, u.guidance_start, u.processor_res, u.threshold_a, u.pixel_perfect, u.low_vram) == (
        2.0, 0.0, 512, 0.5, True, True)
    assert unit(weight=0).weight == 0.0
    assert unit(processor_res=512.0).processor_res == 512


def test_null_fields_take_their_defaults():
    u = unit(weight=None, resize_mode=None, control_mode=None, guidance_end=None, advanced_weighting=None)
    assert (u.weight, u.resize_mode, u.control_mode, u.guidance_end, u.advanced_weighting) == (
        1.0, ResizeMode.INNER_FIT, ControlMode.BALANCED, 1.0, None)


# --------------------------------------------------------------------------------------------------------------------
# parse_units


def test_parse_units_on_args_and_on_a_list():
    units = [{"model": "a", "weight": 0.5}, {"model": "b", "enabled": False}]
    for payload in ({"args": units}, units, {"args": tuple(units)}):
        parsed = parse_units(payload)
        assert [(u.model, u.weight, u.enabled) for u in parsed] == [("a", 0.5, True), ("b", 1.0, False)]
        assert isinstance(parsed[0].images, list)
    assert parse_units({"args": []}) == [] and parse_units({}) == [] and parse_units({"args": None}) == []
    assert [u.model for u in parse_units({"args": [None, {"model": "a"}]})] == ["a"]  # null slots are skipped


@pytest.mark.parametrize("payload, field", [
    ("canny", "controlnet:"), (5, "controlnet:"), (None, "controlnet:"),
    ({"args": "canny"}, "controlnet.args:"), ({"args": {"model": "a"}}, "controlnet.args:"),
    ({"model": "a", "image": IMG}, "controlnet:"),  # a unit without its "args" wrapper
    ({"args": [{"model": "a"}, True, "canny", 0.5]}, "controlnet[1]:"),  # positional script args
    ([["canny", "model"]], "controlnet[0]:"),
])
def test_parse_units_rejects_what_is_not_units(payload, field):
    with pytest.raises(RequestError) as e:
        parse_units(payload)
    assert field in str(e.value)


def test_units_are_plain_dataclasses():
    u = ControlNetUnitRequest(model="m", images=[UnitImage(rgb())])
    assert u.active and u.images[0].mask is None and u.to_dict()["resize_mode"] == "Crop and Resize"
    assert ControlNetUnitRequest.from_dict(u.to_dict()).to_dict() == u.to_dict()

"""A1111 infotext: the exact text written into images, and reading it back."""

from modules import infotext
from modules.infotext import (
    create_infotext,
    infotext_to_override_settings,
    infotext_to_request_fields,
    parse_generation_parameters,
    quote,
    split_sampler_scheduler,
)

BASIC_PARAMS = {
    "Steps": 20,
    "Sampler": "Euler a",
    "Schedule type": "Karras",
    "CFG scale": 7,
    "Seed": 1234,
    "Size": "512x512",
    "Model hash": "6ce0161689",
    "Model": "v1-5-pruned-emaonly",
    "Version": "v1.10.1",
}
BASIC_TEXT = (
    "a cat\n"
    "Negative prompt: ugly\n"
    "Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 512x512, "
    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: v1.10.1"
)


def test_exact_text_for_known_params():
    assert create_infotext("a cat", "ugly", BASIC_PARAMS) == BASIC_TEXT


def test_key_order_is_a1111s_whatever_the_dict_order():
    shuffled = dict(reversed(list(BASIC_PARAMS.items())))
    assert create_infotext("a cat", "ugly", shuffled) == BASIC_TEXT


def test_extra_params_follow_fixed_keys_in_given_order_and_version_is_last():
    params = {
        "Version": "v1.10.1",
        "Hires upscale": 2,
        "Hires upscaler": "Latent",
        "Steps": 20,
        "Denoising strength": 0.7,
        "Clip skip": 2,
        "Seed": 5,
        "Size": "512x512",
        "Sampler": "DPM++ 2M",
    }
    text = create_infotext("p", "", params)
    assert text == ("p\nSteps: 20, Sampler: DPM++ 2M, Seed: 5, Size: 512x512, Denoising strength: 0.7, Clip skip: 2, "
                    "Hires upscale: 2, Hires upscaler: Latent, Version: v1.10.1")


def test_no_negative_prompt_line_when_empty_and_none_values_skipped():
    text = create_infotext("a dog", "", {"Steps": 20, "Sampler": "Euler", "Seed": 1, "Model hash": None, "VAE": None})
    assert text == "a dog\nSteps: 20, Sampler: Euler, Seed: 1"
    assert "Negative prompt" not in text


def test_whole_floats_written_as_ints_others_as_python_str():
    text = create_infotext("x", "", {"Steps": 20, "CFG scale": 7.0, "Seed": 3, "Denoising strength": 0.75,
                                     "Variation seed strength": 1.0, "Hires upscale": 1.5})
    assert "CFG scale: 7," in text
    assert "Denoising strength: 0.75" in text
    assert "Variation seed strength: 1," in text
    assert "Hires upscale: 1.5" in text
    assert "CFG scale: 7.5," in create_infotext("x", "", {"Steps": 20, "CFG scale": 7.5, "Seed": 3})


def test_values_with_commas_colons_or_newlines_are_json_quoted():
    assert quote("Euler a") == "Euler a"
    assert quote("a, b") == '"a, b"'
    assert quote("x: 1") == '"x: 1"'
    assert quote("line1\nline2") == '"line1\\nline2"'
    assert quote('say "hi", ok') == '"say \\"hi\\", ok"'
    assert quote("ünï, cödé") == '"ünï, cödé"'  # ensure_ascii=False, as A1111
    text = create_infotext("p", "", {"Steps": 20, "Seed": 1, "Size": "64x64",
                                     "Lora hashes": "style: 0123456789ab, detail: ba9876543210"})
    assert text.endswith('Lora hashes: "style: 0123456789ab, detail: ba9876543210"')


def test_key_equal_to_value_written_bare_like_a1111():
    text = create_infotext("p", "", {"Steps": 20, "Seed": 1, "Size": "64x64", "Hires": "Hires"})
    assert text.endswith("Size: 64x64, Hires")


def test_parse_known_text():
    res = parse_generation_parameters(BASIC_TEXT)
    assert res["Prompt"] == "a cat"
    assert res["Negative prompt"] == "ugly"
    assert res["Steps"] == "20"
    assert res["Sampler"] == "Euler a"
    assert res["Schedule type"] == "Karras"
    assert res["CFG scale"] == "7"
    assert res["Seed"] == "1234"
    assert (res["Size-1"], res["Size-2"]) == ("512", "512")
    assert "Size" not in res
    assert res["Model hash"] == "6ce0161689"
    assert res["Version"] == "v1.10.1"


def test_parse_fills_a1111_defaults():
    res = parse_generation_parameters(BASIC_TEXT)
    assert res["Clip skip"] == "1"
    assert res["RNG"] == "GPU"
    assert res["Hires resize-1"] == 0 and res["Hires resize-2"] == 0
    assert res["Hires sampler"] == "Use same sampler"
    assert res["Masked area padding"] == 32
    assert res["Inpaint area"] == "Whole picture"
    without_schedule = parse_generation_parameters("a\nSteps: 20, Sampler: Euler a, Seed: 1")
    assert without_schedule["Schedule type"] == "Automatic"


def test_parse_size_split_non_square():
    res = parse_generation_parameters("p\nSteps: 20, Seed: 1, Size: 512x768, Seed resize from: 256x384")
    assert (res["Size-1"], res["Size-2"]) == ("512", "768")
    assert (res["Seed resize from-1"], res["Seed resize from-2"]) == ("256", "384")


def test_round_trip_with_quoted_values_and_multiline_prompts():
    prompt = "a cat,\n(masterpiece:1.2)\nthird line"
    negative = "ugly\nblurry, lowres"
    params = {"Steps": 30, "Sampler": "DPM++ 2M", "Schedule type": "Karras", "CFG scale": 6.5, "Seed": 42,
              "Size": "640x448", "Denoising strength": 0.55, "Hires upscale": 2, "Hires upscaler": "R-ESRGAN 4x+",
              "Lora hashes": "a: 111, b: 222", "Hires prompt": 'say "x",\nnow', "Version": "v1.10.1"}
    text = create_infotext(prompt, negative, params)
    res = parse_generation_parameters(text)
    assert res["Prompt"] == prompt
    assert res["Negative prompt"] == negative
    assert res["Lora hashes"] == "a: 111, b: 222"
    assert res["Hires prompt"] == 'say "x",\nnow'
    assert res["CFG scale"] == "6.5"
    assert (res["Size-1"], res["Size-2"]) == ("640", "448")
    assert res["Hires upscaler"] == "R-ESRGAN 4x+"


def test_last_line_with_fewer_than_three_pairs_is_prompt():
    res = parse_generation_parameters("a portrait\nstyle: oil, mood: calm")
    assert res["Prompt"] == "a portrait\nstyle: oil, mood: calm"
    assert "style" not in res


def test_prompt_only_text():
    res = parse_generation_parameters("just a prompt")
    assert res["Prompt"] == "just a prompt"
    assert res["Negative prompt"] == ""


def test_legacy_sampler_name_is_split():
    res = parse_generation_parameters("p\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1")
    assert res["Sampler"] == "DPM++ 2M"
    assert res["Schedule type"] == "Karras"
    assert split_sampler_scheduler("DPM++ 2M SDE Exponential") == ("DPM++ 2M SDE", "Exponential")
    assert split_sampler_scheduler("Euler SGM Uniform") == ("Euler", "SGM Uniform")
    assert split_sampler_scheduler("Euler a") == ("Euler a", None)
    assert split_sampler_scheduler("DDIM") == ("DDIM", None)
    kept = parse_generation_parameters("p\nSteps: 20, Sampler: DPM++ 2M Karras, Seed: 1", split_legacy_sampler=False)
    assert kept["Sampler"] == "DPM++ 2M Karras" and kept["Schedule type"] == "Automatic"


def test_backcompat_flags_from_old_version():
    res = parse_generation_parameters("p\nSteps: 20, Sampler: DDIM, Seed: 1, Version: v1.5.1")
    assert res["Pad conds v0"] is True
    assert res["Downcast alphas_cumprod"] is True
    new = parse_generation_parameters(BASIC_TEXT)
    assert "Downcast alphas_cumprod" not in new


def test_old_first_pass_size_hires_infotext_converted():
    res = parse_generation_parameters("p\nSteps: 20, Seed: 1, Size: 1024x1024, First pass size: 0x0, "
                                      "Denoising strength: 0.7")
    assert (res["Size-1"], res["Size-2"]) == (512, 512)
    assert (res["Hires resize-1"], res["Hires resize-2"]) == (1024, 1024)


def test_request_fields_from_infotext():
    text = create_infotext("a cat", "ugly", {
        "Steps": 25, "Sampler": "DPM++ 2M Karras", "CFG scale": 7.5, "Seed": 99, "Size": "512x768",
        "Variation seed": 7, "Variation seed strength": 0.3, "Seed resize from": "256x256",
        "Denoising strength": 0.45, "Clip skip": 2, "Hires upscale": 1.5, "Hires steps": 10,
        "Hires upscaler": "Latent", "Mask blur": 4, "Version": "v1.10.1"})
    fields = infotext_to_request_fields(parse_generation_parameters(text))
    assert fields["prompt"] == "a cat" and fields["negative_prompt"] == "ugly"
    assert fields["steps"] == 25 and isinstance(fields["steps"], int)
    assert fields["sampler_name"] == "DPM++ 2M" and fields["scheduler"] == "Karras"
    assert fields["cfg_scale"] == 7.5
    assert fields["seed"] == 99
    assert (fields["width"], fields["height"]) == (512, 768)
    assert fields["subseed"] == 7 and fields["subseed_strength"] == 0.3
    assert (fields["seed_resize_from_w"], fields["seed_resize_from_h"]) == (256, 256)
    assert fields["denoising_strength"] == 0.45
    assert fields["enable_hr"] is True
    assert fields["hr_scale"] == 1.5 and fields["hr_second_pass_steps"] == 10 and fields["hr_upscaler"] == "Latent"
    assert (fields["hr_resize_x"], fields["hr_resize_y"]) == (0, 0)
    assert "hr_sampler_name" not in fields and "hr_checkpoint_name" not in fields
    assert fields["mask_blur"] == 4
    assert infotext_to_override_settings(parse_generation_parameters(text))["CLIP_stop_at_last_layers"] == 2


def test_request_fields_without_hires_and_inpaint_keys():
    res = parse_generation_parameters("p\nSteps: 20, Sampler: Euler, Seed: 1, Size: 512x512, Denoising strength: 0.75, "
                                      "Mask blur: 8, Inpaint area: Only masked, Masked area padding: 48, "
                                      "Masked content: latent noise")
    fields = infotext_to_request_fields(res)
    assert fields["enable_hr"] is False
    assert fields["inpaint_full_res"] is True
    assert fields["inpaint_full_res_padding"] == 48
    assert fields["inpainting_fill"] == 2
    assert fields["inpainting_mask_invert"] == 0
    assert fields["scheduler"] == "Automatic"


def test_bad_numbers_are_left_out_not_raised():
    fields = infotext_to_request_fields({"Steps": "many", "Seed": "12", "CFG scale": "7"})
    assert "steps" not in fields
    assert fields["seed"] == 12 and fields["cfg_scale"] == 7.0


def test_key_order_constant_starts_like_a1111():
    assert infotext.INFOTEXT_KEY_ORDER[:8] == ("Steps", "Sampler", "Schedule type", "CFG scale", "Image CFG scale",
                                                "Seed", "Face restoration", "Size")


def test_flux_fields_round_trip():
    """Forge's Flux infotext: pasting it restores Distilled CFG Scale, the sampling shift and SD3's T5 switch."""
    text = ("a cube\nSteps: 20, Sampler: Euler, Schedule type: Simple, CFG scale: 1, Seed: 7, Size: 1024x1024, "
            "Distilled CFG Scale: 2.5, Model: flux1-dev, Shift: 1.5, T5: False, Version: v0.1.0")
    params = infotext.parse_generation_parameters(text)
    fields = infotext.infotext_to_request_fields(params)
    assert fields["distilled_cfg_scale"] == 2.5 and fields["cfg_scale"] == 1.0
    overrides = infotext.infotext_to_override_settings(params)
    assert (overrides["flow_shift"], overrides["sd3_enable_t5"]) == (1.5, False)

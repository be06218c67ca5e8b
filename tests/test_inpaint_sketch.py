"""img2img's "Inpaint sketch" (A1111's mode 3): what the user paints over the picture becomes the inpaint mask, and its
colours go into the init image, so the model redraws that area starting from them."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from modules import masking

BASE = {"prompt": "a red ball", "negative_prompt": "", "steps": 3, "width": 64, "height": 64, "cfg_scale": 7,
        "sampler_name": "Euler a", "do_not_save_grid": True, "do_not_save_samples": True, "seed": 5}
RED = (255, 0, 0)


def _picture() -> Image.Image:
    x = np.linspace(0, 255, 64 * 64 * 3).reshape(64, 64, 3).astype(np.uint8)
    return Image.fromarray(x)


def _sketch(picture: Image.Image) -> tuple[Image.Image, np.ndarray]:
    """The picture with a red blob painted on it, and where the blob is."""
    sketch = picture.copy()
    ImageDraw.Draw(sketch).ellipse((24, 24, 40, 40), fill=RED)
    blob = np.all(np.asarray(sketch) == RED, axis=-1) & np.any(np.asarray(picture) != RED, axis=-1)
    return sketch, blob


def test_mask_is_exactly_the_painted_blob_and_init_has_its_colour():
    picture = _picture()
    sketch, blob = _sketch(picture)
    assert 150 < blob.sum() < 300
    init, mask = masking.sketch_to_inpaint(picture, sketch, mask_blur=0, mask_alpha=0)
    m = np.asarray(mask)
    assert mask.mode == "L" and mask.size == picture.size
    assert np.array_equal(m > 0, blob) and set(np.unique(m)) == {0, 255}
    got = np.asarray(init)
    assert np.all(got[blob] == RED)  # the painted colour is what sampling starts from
    assert np.array_equal(got[~blob], np.asarray(picture)[~blob])

    # With a blur the mask stays unblurred (the inpaint step blurs it) and the colour is laid in softly.
    init, mask = masking.sketch_to_inpaint(picture, sketch, mask_blur=4, mask_alpha=0)
    assert np.array_equal(np.asarray(mask) > 0, blob)
    got = np.asarray(init).astype(int)
    assert got[32, 32, 0] > 200 and got[32, 32, 1] < 60 and got[32, 32, 2] < 60
    far = np.ones(blob.shape, bool)
    far[10:55, 10:55] = False
    assert np.array_equal(got[far], np.asarray(picture).astype(int)[far])
    assert not np.array_equal(got[22, 32], np.asarray(picture).astype(int)[22, 32])  # the soft edge


def test_mask_transparency_dims_the_mask_as_a1111():
    picture = _picture()
    sketch, blob = _sketch(picture)
    for alpha, level in ((0, 255), (25, 191), (50, 127), (100, 0)):
        init, mask = masking.sketch_to_inpaint(picture, sketch, mask_blur=0, mask_alpha=alpha)
        m = np.asarray(mask)
        assert set(np.unique(m[blob])) == {level}, alpha
        assert not m[~blob].any()
        # The colour goes in as far as the mask reaches: half-way at 50, not at all at 100.
        expect = (np.asarray(picture)[blob].astype(int) * (255 - level) + np.array(RED) * level) / 255
        assert np.abs(np.asarray(init)[blob].astype(int) - expect).max() <= 1, alpha


def test_unpainted_sketch_gives_an_empty_mask():
    picture = _picture()
    init, mask = masking.sketch_to_inpaint(picture, picture.copy(), mask_blur=4)
    assert mask.getbbox() is None and np.array_equal(np.asarray(init), np.asarray(picture))


def test_generation_repaints_the_blob_and_keeps_the_rest(engine):
    picture = _picture()
    sketch, blob = _sketch(picture)
    init, mask = masking.sketch_to_inpaint(picture, sketch, mask_blur=4)
    r = engine.img2img({**BASE, "init_images": [init], "mask": mask, "mask_blur": 4, "inpainting_fill": 1,
                        "inpaint_full_res": False, "denoising_strength": 0.75})
    out = np.asarray(r.images[0].convert("RGB"), np.int16)
    assert out.shape == (64, 64, 3)
    # The blob and its blurred edge (the init's PIL blur, then the inpaint step's kernel of radius 10) may change;
    # everything farther away is the original picture, pixel for pixel.
    yy, xx = np.mgrid[:64, :64]
    outside = (yy - 32) ** 2 + (xx - 32) ** 2 > (8 + 16) ** 2
    assert outside.sum() > 500
    assert np.array_equal(out[outside], np.asarray(picture, np.int16)[outside])
    assert np.abs(out[blob] - np.asarray(init, np.int16)[blob]).max() > 0  # the model redrew the blob
    text = r.infotexts[0]
    assert "Mask blur: 4" in text and "Masked content: original" in text


def test_the_tab_turns_its_editor_into_the_request_and_copies_pictures():
    """The Inpaint sketch sub-tab's editor value (background + a stroke layer) → the same (init, mask) as above; the
    "Copy image to" buttons carry the painted picture (the unmasked one from Inpaint)."""
    from webui import generation_tabs as gt

    picture = _picture()
    sketch, blob = _sketch(picture)
    layer = Image.new("RGBA", picture.size, (0, 0, 0, 0))
    ImageDraw.Draw(layer).ellipse((24, 24, 40, 40), fill=RED + (255,))
    value = {"background": picture.convert("RGBA"), "layers": [layer], "composite": None}
    init, mask = gt._mode_inputs("inpaint_sketch", None, None, None, None, None, value, 0, mask_blur=0)
    assert np.array_equal(np.asarray(mask) > 0, blob) and np.all(np.asarray(init)[blob] == RED)
    assert gt._mode_inputs("inpaint_sketch", None, None, None, None, None, None, 0) == (None, None)
    for alpha, message in ((0, "Paint over"), (100, "Mask transparency 100")):
        unpainted = {"background": picture.convert("RGBA"), "layers": [], "composite": None}
        try:
            gt._mode_inputs("inpaint_sketch", None, None, None, None, None, unpainted, alpha)
        except gt.RequestError as e:
            assert message in str(e)
        else:
            raise AssertionError("an unpainted sketch was accepted")

    copied = gt.copy_image(value, "inpaint_sketch", "img2img")
    assert np.array_equal(np.asarray(copied), np.asarray(sketch))
    to_editor = gt.copy_image(picture, "img2img", "inpaint_sketch")
    assert to_editor["layers"] == [] and np.array_equal(np.asarray(to_editor["background"]), np.asarray(picture))
    from_inpaint = gt.copy_image({"background": picture, "layers": [layer], "composite": None}, "inpaint", "sketch")
    assert np.array_equal(np.asarray(from_inpaint["background"]), np.asarray(picture))
    assert gt.INPAINT_MODES[:2] == ("inpaint", "inpaint_sketch")

"""Saving images: A1111 file names, infotext inside PNG/JPEG/WebP, grids, atomic writes."""

import io
import json
import os
import struct
import threading

import pytest
from PIL import Image

from modules import fileio, images
from modules.images import (
    image_grid,
    image_to_png_bytes,
    read_infotext,
    save_grid,
    save_sample,
)

INFOTEXT = ("a cat, (masterpiece:1.2), 日本語 ünïcode\n"
            "Negative prompt: ugly\n"
            "Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 64x64, "
            "Version: v1.10.1")


def _img(color="red", size=(64, 64), mode="RGB"):
    return Image.new(mode, size, color)


def _files(directory):
    return sorted(os.listdir(directory))


def test_first_image_is_00000_and_directory_is_created(tmp_path):
    out = tmp_path / "txt2img-images" / "2024-07-27"
    path = save_sample(_img(), out, 1234567890, INFOTEXT)
    assert path == out / "00000-1234567890.png"
    assert path.is_file()


def test_counter_continues_from_existing_files(tmp_path):
    (tmp_path / "00007-1.png").write_bytes(b"x")
    (tmp_path / "00003-55-before-highres-fix.png").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("not numbered")
    (tmp_path / "grid-0042.png").write_bytes(b"x")  # a grid's number does not count for samples
    path = save_sample(_img(), tmp_path, 999, INFOTEXT)
    assert path.name == "00008-999.png"
    assert save_sample(_img(), tmp_path, 1000, INFOTEXT).name == "00009-1000.png"


def test_suffix_and_format(tmp_path):
    path = save_sample(_img(), tmp_path, 5, INFOTEXT, fmt="jpg", basename_suffix="before-highres-fix")
    assert path.name == "00000-5-before-highres-fix.jpg"


def test_png_infotext_round_trip(tmp_path):
    path = save_sample(_img(), tmp_path, 1234, INFOTEXT)
    with Image.open(path) as im:
        assert im.info["parameters"] == INFOTEXT
        assert read_infotext(im) == INFOTEXT


@pytest.mark.parametrize("fmt", ["jpg", "jpeg", "webp"])
def test_jpeg_and_webp_infotext_round_trip_via_exif(tmp_path, fmt):
    path = save_sample(_img(mode="RGBA", color=(10, 20, 30, 128)), tmp_path, 1234, INFOTEXT, fmt=fmt)
    with Image.open(path) as im:
        assert im.format == ("WEBP" if fmt == "webp" else "JPEG")
        assert read_infotext(im) == INFOTEXT
        # Stored as piexif writes it: "UNICODE\0" + UTF-16-BE, EXIF type UNDEFINED (7), which A1111 reads back.
        raw = im.getexif().get_ifd(0x8769)[0x9286]
        assert raw == b"UNICODE\x00" + INFOTEXT.encode("utf-16-be")


def test_exif_block_uses_type_undefined():
    block = images.exif_user_comment("hi")
    tiff = block[6:]
    assert block.startswith(b"Exif\x00\x00") and tiff[:2] == b"MM"
    exif_ifd = struct.unpack(">I", tiff[18:22])[0]
    tag, typ, count = struct.unpack(">HHI", tiff[exif_ifd + 2:exif_ifd + 10])
    assert (tag, typ, count) == (0x9286, 7, 8 + 4)


def test_decode_user_comment_variants():
    assert images.decode_user_comment(b"UNICODE\x00" + "héllo".encode("utf-16-be")) == "héllo"
    assert images.decode_user_comment(b"UNICODE\x00" + "hello".encode("utf-16-le")) == "hello"
    assert images.decode_user_comment(b"ASCII\x00\x00\x00Steps: 20") == "Steps: 20"
    assert images.decode_user_comment(b"\x00" * 8 + b"plain") == "plain"
    assert images.decode_user_comment(b"") is None


def test_gif_comment_read(tmp_path):
    path = save_sample(_img(), tmp_path, 1, INFOTEXT, fmt="gif")
    with Image.open(path) as im:
        assert read_infotext(im) == INFOTEXT


def test_image_without_infotext_reads_none(tmp_path):
    path = save_sample(_img(), tmp_path, 1, None)
    with Image.open(path) as im:
        assert read_infotext(im) is None


def test_png_bytes_for_api_carry_parameters():
    data = image_to_png_bytes(_img(), INFOTEXT)
    assert data.startswith(b"\x89PNG")
    with Image.open(io.BytesIO(data)) as im:
        assert im.info["parameters"] == INFOTEXT
        assert im.size == (64, 64)


def test_grid_names_continue(tmp_path):
    (tmp_path / "grid-0004.png").write_bytes(b"x")
    (tmp_path / "00099-1.png").write_bytes(b"x")  # samples in the same folder do not count for grids
    path = save_grid(_img(), tmp_path, INFOTEXT)
    assert path.name == "grid-0005.png"
    with Image.open(path) as im:
        assert im.info["parameters"] == INFOTEXT
    assert save_grid(_img(), tmp_path / "new", None).name == "grid-0000.png"


@pytest.mark.parametrize("n, size, rows_cols", [
    (1, (64, 64), (1, 1)),
    (2, (128, 64), (1, 2)),   # round(sqrt(2)) = 1 row
    (3, (128, 128), (2, 2)),  # round(sqrt(3)) = 2 rows, 2 cols, one empty cell
    (4, (128, 128), (2, 2)),
    (5, (192, 128), (2, 3)),
    (9, (192, 192), (3, 3)),
])
def test_grid_layout(n, size, rows_cols):
    grid = image_grid([_img() for _ in range(n)])
    assert grid.size == size
    assert images.grid_rows(n) == rows_cols


def test_grid_fills_left_to_right_top_to_bottom_with_white_empty_cells():
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    grid = image_grid([_img(c, (8, 8)) for c in colors])
    assert grid.getpixel((4, 4)) == colors[0]
    assert grid.getpixel((12, 4)) == colors[1]
    assert grid.getpixel((4, 12)) == colors[2]
    assert grid.getpixel((12, 12)) == (255, 255, 255)


def test_grid_explicit_rows_and_batch_size_option():
    assert image_grid([_img() for _ in range(4)], rows=1).size == (256, 64)
    assert image_grid([_img() for _ in range(6)], batch_size=3, n_rows=0).size == (128, 192)


def test_racing_saves_get_distinct_numbers(tmp_path):
    paths = []
    errors = []

    def worker(seed):
        try:
            paths.append(save_sample(_img(size=(16, 16)), tmp_path, seed, INFOTEXT))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    numbers = sorted(int(p.name[:5]) for p in paths)
    assert numbers == list(range(8))


class _FailingImage:
    """An 'image' whose encoder writes some bytes and then fails, like a crash mid-encode."""
    mode = "RGB"
    info = {}

    def save(self, fp, format=None, **kwargs):
        fp.write(b"\x89PNG\r\n\x1a\npartial")
        raise OSError("disk on fire")


def test_failed_encode_leaves_no_file(tmp_path):
    with pytest.raises(OSError):
        save_sample(_FailingImage(), tmp_path, 1, INFOTEXT)
    assert _files(tmp_path) == []


def test_failure_during_write_leaves_no_partial_and_no_temp_file(tmp_path, monkeypatch):
    def broken_fsync(fd):
        raise OSError("I/O error")

    monkeypatch.setattr(fileio.os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        save_sample(_img(), tmp_path, 1, INFOTEXT)
    assert _files(tmp_path) == []


def test_atomic_write_keeps_old_file_on_error(tmp_path, monkeypatch):
    target = tmp_path / "config.json"
    fileio.atomic_write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}

    with pytest.raises(TypeError):
        fileio.atomic_write_json(target, {"a": object()})
    with pytest.raises(RuntimeError):
        with fileio.atomic_open(target, "w") as f:
            f.write('{"a": ')
            raise RuntimeError("interrupted")
    monkeypatch.setattr(fileio.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("rename failed")))
    with pytest.raises(OSError):
        fileio.atomic_write_text(target, "{}")
    assert json.loads(target.read_text()) == {"a": 1}
    assert _files(tmp_path) == ["config.json"]


def test_atomic_write_no_overwrite_and_path_writer(tmp_path):
    target = tmp_path / "a.bin"
    fileio.atomic_write_bytes(target, b"one")
    with pytest.raises(FileExistsError):
        fileio.atomic_write_bytes(target, b"two", overwrite=False)
    assert target.read_bytes() == b"one"
    with fileio.atomic_path(tmp_path / "model.safetensors") as tmp:
        tmp.write_bytes(b"weights")
    assert (tmp_path / "model.safetensors").read_bytes() == b"weights"
    assert _files(tmp_path) == ["a.bin", "model.safetensors"]


def test_filename_patterns_expand_every_a1111_tag_a_user_writes():
    import datetime as dt

    from modules.filename_pattern import NameFields, expand

    f = NameFields(seed=42, prompt="A cat: on a mat, with a hat!", negative_prompt="ugly", steps=20, cfg_scale=7.0,
                   width=512, height=768, sampler="DPM++ 2M", scheduler="Karras", model_name="dream shaper",
                   model_hash="abc123", all_seeds=[42, 43], batch_size=2, batch_index=1, styles=["Ink"])
    assert expand("[seed]-[prompt_spaces]", f) == "42-A cat_ on a mat, with a hat!"
    assert expand("[prompt]", f) == "A_cat__on_a_mat,_with_a_hat!"
    assert expand("[prompt_words]", f, max_prompt_words=3) == "A cat on"
    assert expand("[model_name]-[model_hash]-[steps]-[cfg]-[width]x[height]", f) == "dream shaper-abc123-20-7.0-512x768"
    assert expand("[sampler_scheduler]/[styles]", f) == "DPM++ 2M Karras/Ink"
    assert expand("[seed_first]-[seed_last]-[batch_number]", f) == "42-43-2"
    assert expand("[prompt_hash<4>]", f) == __import__("hashlib").sha256(f.prompt.encode()).hexdigest()[:4]
    assert expand("[hasprompt<cat><dog|nodog>]", f) == "catnodog"
    assert expand("[datetime<%Y>]", f) == str(dt.datetime.now().year)
    assert expand("[date]", f) == dt.date.today().isoformat()
    assert expand("[no_such_tag]-[seed]", f) == "[no_such_tag]-42"
    one = NameFields(seed=7, prompt="", batch_size=1)
    assert expand("[seed]-[batch_number]-[denoising]", one) == "7"  # nothing to say: the dash before goes too
    assert expand("[prompt_words]", one) == "empty"


def test_a_name_pattern_too_long_for_the_file_system_is_cut_and_the_picture_kept(tmp_path):
    """A prompt of 500 characters in the file name pattern: the name is cut to the file system's limit (as A1111),
    the picture saved."""
    from modules.filename_pattern import NameFields
    from modules.images import SaveOptions

    long = "a very long prompt about a castle " * 15
    options = SaveOptions(file_pattern="[seed]-[prompt_spaces]-[prompt_spaces]", folder_pattern=None)
    path = save_sample(_img(), tmp_path, 7, INFOTEXT, options=options, fields=NameFields(seed=7, prompt=long))
    assert path.is_file() and len(path.name.encode()) <= 255 and path.name.startswith("00000-7-a very long")

import json
import logging

import pytest

from modules import fileio, settings as settings_mod
from modules.settings import OPTIONS, OptionInfo, Settings, infotext_to_option, register_option


EXPECTED_DEFAULTS = {
    "sd_model_checkpoint": None, "sd_vae": "Automatic", "CLIP_stop_at_last_layers": 1, "samples_format": "png",
    "grid_format": "png", "randn_source": "GPU", "sd_checkpoints_limit": 1, "eta_noise_seed_delta": 0,
    "img2img_fix_steps": False, "return_grid": True, "samples_save": True, "grid_save": True, "n_rows": -1,
    "enable_pnginfo": True, "save_to_dirs": True, "directories_filename_pattern": "[date]",
    "samples_filename_pattern": "", "live_previews_enable": True, "show_progress_every_n_steps": 10,
    "eta_ancestral": 1.0, "eta_ddim": 0.0, "s_noise": 1.0, "initial_noise_multiplier": 1.0,
    "img2img_background_color": "#ffffff", "upscaler_for_img2img": None, "inpainting_mask_weight": 1.0,
    "sd_vae_overrides_per_model_preferences": True, "emphasis": "Original", "comma_padding_backtrack": 20,
    "use_old_scheduling": False, "sdxl_crop_top": 0, "sdxl_crop_left": 0, "disabled_extensions": [],
    "outdir_txt2img_samples": "outputs/txt2img-images", "jpeg_quality": 80, "save_txt": False,
}


def test_defaults():
    s = Settings()
    for name, value in EXPECTED_DEFAULTS.items():
        assert s.get(name) == value, name
        assert type(s.get(name)) is type(value), name
    assert s.samples_format == "png"  # attribute access
    d = s.as_dict()
    assert set(EXPECTED_DEFAULTS) <= set(d)
    assert Settings.defaults()["CLIP_stop_at_last_layers"] == 1


def test_default_lists_are_copies():
    s = Settings()
    s.get("disabled_extensions").append("x")
    assert s.get("disabled_extensions") == []
    assert OPTIONS["disabled_extensions"].default == []


@pytest.mark.parametrize("name, value, fragment", [
    ("CLIP_stop_at_last_layers", 0, "at least 1"),
    ("CLIP_stop_at_last_layers", 13, "at most 12"),
    ("CLIP_stop_at_last_layers", "abc", "integer"),
    ("CLIP_stop_at_last_layers", 1.5, "integer"),
    ("samples_format", "bmp", "choose from"),
    ("randn_source", "TPU", "choose from"),
    ("sd_checkpoints_limit", 0, "at least 1"),
    ("samples_save", "maybe", "true or false"),
    ("eta_ancestral", "x", "number"),
    ("disabled_extensions", "abc", "list"),
    ("samples_format", None, "None"),
])
def test_validation_errors_name_the_option(name, value, fragment):
    s = Settings()
    with pytest.raises(ValueError) as e:
        s.set(name, value)
    msg = str(e.value)
    assert repr(name) in msg and fragment in msg
    assert s.get(name) == OPTIONS[name].default


def test_unknown_option_rejected():
    with pytest.raises(ValueError, match="unknown option 'no_such_option'"):
        Settings().set("no_such_option", 1)


def test_coercion():
    s = Settings()
    assert s.set("CLIP_stop_at_last_layers", "2") and s.get("CLIP_stop_at_last_layers") == 2
    s.set("CLIP_stop_at_last_layers", 3.0)
    assert s.get("CLIP_stop_at_last_layers") == 3 and type(s.get("CLIP_stop_at_last_layers")) is int
    s.set("samples_save", "false")
    assert s.get("samples_save") is False
    s.set("eta_ddim", 1)
    assert s.get("eta_ddim") == 1.0 and type(s.get("eta_ddim")) is float
    s.set("samples_format", "JPG")
    assert s.get("samples_format") == "jpg"
    s.set("sd_model_checkpoint", None)
    s.set("sd_model_checkpoint", "model.safetensors [0123456789]")
    assert s.sd_model_checkpoint == "model.safetensors [0123456789]"
    assert s.set("sd_model_checkpoint", "model.safetensors [0123456789]") is False  # unchanged


def test_update_is_all_or_nothing():
    s = Settings()
    with pytest.raises(ValueError, match="randn_source"):
        s.update({"samples_format": "webp", "randn_source": "bogus"})
    assert s.samples_format == "png"
    changed = s.update({"samples_format": "webp", "randn_source": "CPU", "n_rows": -1})
    assert changed == ["samples_format", "randn_source"]


def test_attribute_set_validates():
    s = Settings()
    s.n_rows = 3
    assert s.n_rows == 3
    with pytest.raises(ValueError):
        s.n_rows = 100
    with pytest.raises(AttributeError):
        s.not_an_option  # noqa: B018


def test_missing_file_gives_defaults(tmp_path):
    s = Settings.load(tmp_path / "config.json")
    assert s.samples_format == "png"
    assert not (tmp_path / "config.json").exists()


def test_save_load_roundtrip_and_unknown_keys_preserved(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"samples_format": "jpg", "some_extension_option": {"a": [1, 2]},
                                "CLIP_stop_at_last_layers": 2}))
    s = Settings.load(path)
    assert s.samples_format == "jpg" and s.CLIP_stop_at_last_layers == 2
    assert s.get("some_extension_option") == {"a": [1, 2]}
    assert s.as_dict()["some_extension_option"] == {"a": [1, 2]}
    s.set("eta_ddim", 0.5)
    s.save()
    data = json.loads(path.read_text())
    assert data == {"samples_format": "jpg", "some_extension_option": {"a": [1, 2]},
                    "CLIP_stop_at_last_layers": 2, "eta_ddim": 0.5}
    s2 = Settings.load(path)
    assert s2.eta_ddim == 0.5 and s2.get("some_extension_option") == {"a": [1, 2]}


def test_register_option_later_validates_stored_value(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"test_ext_strength": "0.25"}))
    s = Settings.load(path)
    assert s.get("test_ext_strength") == "0.25"  # unknown: stored as is
    try:
        register_option("test_ext_strength", OptionInfo(1.0, "Strength", "test-ext", minimum=0, maximum=1))
        assert s.get("test_ext_strength") == 0.25
        assert s.test_ext_strength == 0.25
        with pytest.raises(ValueError, match="test_ext_strength"):
            s.set("test_ext_strength", 2)
    finally:
        OPTIONS.pop("test_ext_strength", None)


def test_register_option_rejects_bad_default():
    with pytest.raises(ValueError):
        register_option("test_bad_default", OptionInfo(5, "x", minimum=0, maximum=1))
    assert "test_bad_default" not in OPTIONS


def test_invalid_stored_value_uses_default_but_is_kept(tmp_path, caplog):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"CLIP_stop_at_last_layers": "lots", "samples_format": "png"}))
    with caplog.at_level(logging.WARNING):
        s = Settings.load(path)
    assert s.CLIP_stop_at_last_layers == 1
    assert "CLIP_stop_at_last_layers" in caplog.text
    s.set("samples_format", "webp")
    s.save()
    assert json.loads(path.read_text())["CLIP_stop_at_last_layers"] == "lots"
    s.set("CLIP_stop_at_last_layers", 2)
    s.save()
    assert json.loads(path.read_text())["CLIP_stop_at_last_layers"] == 2


@pytest.mark.parametrize("content", ['{"samples_format": "png",', "[1, 2, 3]", "\xff\xfe garbage"])
def test_corrupt_file_backed_up_and_defaults_used(tmp_path, caplog, content):
    path = tmp_path / "config.json"
    raw = content.encode("latin-1")
    path.write_bytes(raw)
    with caplog.at_level(logging.WARNING):
        s = Settings.load(path)
    assert s.samples_format == "png"
    assert (tmp_path / "config.json.bad").read_bytes() == raw
    assert "config.json.bad" in caplog.text
    s.set("samples_format", "jpg")
    s.save()
    assert json.loads(path.read_text()) == {"samples_format": "jpg"}
    # a second corrupt file does not overwrite the first backup
    path.write_bytes(b"{{{")
    Settings.load(path)
    assert (tmp_path / "config.json.bad").read_bytes() == raw
    assert (tmp_path / "config.json.bad.1").read_bytes() == b"{{{"


def test_failed_write_leaves_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    s = Settings.load(path)
    s.set("samples_format", "jpg")
    s.save()
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    s.set("samples_format", "webp")
    monkeypatch.setattr(fileio.os, "fsync", boom)  # the write dies after part of the data is out
    with pytest.raises(OSError):
        s.save()
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]  # no temp files left behind

    monkeypatch.setattr(fileio.os, "replace", boom)  # the final rename fails
    with pytest.raises(OSError):
        s.save()
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert Settings.load(path).samples_format == "jpg"


def test_unserialisable_value_does_not_truncate(tmp_path):
    path = tmp_path / "config.json"
    s = Settings.load(path)
    s.save()
    before = path.read_bytes()
    s.set("some_ext_thing", object(), allow_unknown=True)
    with pytest.raises(TypeError):
        s.save()
    assert path.read_bytes() == before


def test_on_change_listener():
    s = Settings()
    seen = []
    s.on_change("sd_model_checkpoint", lambda name, value: seen.append((name, value)))
    s.set("sd_model_checkpoint", "a.safetensors")
    s.set("sd_model_checkpoint", "a.safetensors")
    s.update({"sd_model_checkpoint": "b.safetensors", "samples_format": "jpg"})
    assert seen == [("sd_model_checkpoint", "a.safetensors"), ("sd_model_checkpoint", "b.safetensors")]


def test_infotext_mapping():
    assert infotext_to_option("Clip skip") == "CLIP_stop_at_last_layers"
    assert infotext_to_option("RNG") == "randn_source"
    assert infotext_to_option("ENSD") == "eta_noise_seed_delta"
    assert infotext_to_option("Nope") is None


def test_every_default_validates():
    for name, info in OPTIONS.items():
        assert settings_mod._coerce(name, info, info.default) == info.default, name

"""A1111's 💾 Save and 🗃️ Zip under the gallery (modules/save_button.py): into log/images, named by the pattern from
each picture's own parameters, a log.csv row per click, an archive for Zip."""
from __future__ import annotations

import csv
import zipfile

import pytest
from PIL import Image

from modules import save_button
from modules.paths import Paths
from modules.settings import Settings

TEXTS = ["a red cat\nNegative prompt: blur\nSteps: 4, Sampler: Euler, CFG scale: 6, Seed: 11, Size: 8x8, "
         "Model hash: abc123, Model: sd1",
         "a red cat\nNegative prompt: blur\nSteps: 4, Sampler: Euler, CFG scale: 6, Seed: 12, Size: 8x8, "
         "Model hash: abc123, Model: sd1"]


@pytest.fixture
def where(tmp_path):
    import argparse

    paths = Paths.from_args(argparse.Namespace(data_dir=str(tmp_path)))
    return paths, Settings(tmp_path / "config.json")


def _pictures():
    grid = Image.new("RGB", (16, 8), (0, 0, 255))
    return [grid, Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 255, 0))]


def test_save_keeps_the_picked_picture_and_logs_it(where):
    paths, settings = where
    settings.set("samples_filename_pattern", "[seed]-[prompt_words]")
    saved = save_button.save(_pictures(), [TEXTS[0], *TEXTS], 2, 1, settings, paths)
    folder = paths.data_dir / "log" / "images"
    assert saved.names == ["00000-12-a red cat.png"] and saved.files == [folder / saved.names[0]]
    with Image.open(saved.files[0]) as back:
        assert back.getpixel((0, 0)) == (0, 255, 0) and "Seed: 12" in back.info["parameters"]
    again = save_button.save(_pictures(), [TEXTS[0], *TEXTS], 0, 1, settings, paths)  # the grid: the whole job
    assert again.names == ["grid-0000.png", "00001-11-a red cat.png", "00002-12-a red cat.png"]
    rows = list(csv.reader((folder / "log.csv").open()))
    assert rows[0] == save_button.LOG_FIELDS and len(rows) == 3
    assert rows[1][:8] == ["a red cat", "12", "8", "8", "Euler", "6", "4", "00000-12-a red cat.png"]
    assert rows[1][8:] == ["blur", "sd1", "abc123"]


def test_zip_archives_them_and_the_settings_pick_subfolders_and_all_pictures(where):
    paths, settings = where
    settings.update({"save_selected_only": False, "use_save_to_dirs_for_ui": True,
                     "directories_filename_pattern": "[model_name]", "grid_zip_filename_pattern": "[seed]-[seed_last]"})
    saved = save_button.save(_pictures()[1:], TEXTS, 0, 0, settings, paths, make_zip=True)
    assert saved.files[0].name == "11-12.zip" and saved.names == ["sd1/00000-11.png", "sd1/00001-12.png"]
    with zipfile.ZipFile(saved.files[0]) as z:
        assert sorted(z.namelist()) == saved.names
    with pytest.raises(ValueError, match="Nothing to save"):
        save_button.save([], [], -1, 0, settings, paths)

"""A1111's 💾 Save and 🗃️ Zip buttons under a generation's gallery: the picked picture (or all of them: setting
`save_selected_only`) into `outdir_save` (log/images; in a subfolder with `use_save_to_dirs_for_ui`), named by the
file name pattern from each picture's own parameters, a row per click in `log.csv`, and for Zip one archive of
them named by `grid_zip_filename_pattern`. A gallery's grid, when picked, stands for the whole job (all pictures)."""
from __future__ import annotations

import csv
import dataclasses
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from modules import images
from modules.filename_pattern import NameFields, expand
from modules.infotext import parse_generation_parameters

LOG_FIELDS = ["prompt", "seed", "width", "height", "sampler", "cfgs", "steps", "filename", "negative_prompt",
              "sd_model_name", "sd_model_hash"]
DEFAULT_ZIP_PATTERN = "[datetime]_[[model_name]]_[seed]-[seed_last]"


@dataclass
class Saved:
    files: list[Path]  # the archive first (Zip), then each picture and its parameters file
    names: list[str]  # the pictures' names relative to the folder


def _int(value, default=None):
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return default


def _fields(text: str, image: Image.Image) -> tuple[NameFields, dict]:
    params = parse_generation_parameters(text or "")
    fields = NameFields(
        seed=_int(params.get("Seed")), prompt=params.get("Prompt", ""),
        negative_prompt=params.get("Negative prompt", ""), steps=_int(params.get("Steps")),
        cfg_scale=params.get("CFG scale"), width=image.width, height=image.height,
        sampler=params.get("Sampler", ""), scheduler=params.get("Schedule type", ""),
        model_name=params.get("Model", ""), model_hash=params.get("Model hash", ""), image=image)
    return fields, params


def _log_row(log: Path, row: list) -> None:
    """Append to log.csv; a file from an older layout gets today's header, its rows padded (A1111 does so)."""
    rows = []
    if log.exists():
        with log.open(encoding="utf8", newline="") as f:
            rows = list(csv.reader(f))
    if rows and rows[0] != LOG_FIELDS:
        rows = [LOG_FIELDS] + [r + [""] * (len(LOG_FIELDS) - len(r)) for r in rows[1:]]
    elif not rows:
        rows = [LOG_FIELDS]
    rows.append(row)
    text = io.StringIO()
    csv.writer(text).writerows(rows)
    from modules.fileio import atomic_write_text

    atomic_write_text(log, text.getvalue())


def save(pictures: list[Image.Image], infotexts: list[str], index: int, first_image: int, settings, paths,
         make_zip: bool = False) -> Saved:
    """Save as the gallery's Save (`make_zip` False) or Zip button does; `index` is the picked picture (-1:
    none), `first_image` the index of the first picture that is not the grid."""
    if not pictures:
        raise ValueError("Nothing to save: generate a picture first")
    get = settings.get
    folder = paths.resolve_data_path(str(get("outdir_save", "log/images") or "log/images"))
    chosen = list(range(len(pictures)))
    if 0 <= index < len(pictures) and get("save_selected_only", True) and index >= first_image:
        chosen = [index]
    options = images.SaveOptions.from_options(get)
    if not get("use_save_to_dirs_for_ui", False):
        options = dataclasses.replace(options, folder_pattern=None)
    fmt = str(get("samples_format", "png") or "png")
    files, names, parsed = [], [], []
    for i in chosen:
        picture, text = pictures[i], infotexts[i] if i < len(infotexts) else ""
        fields, params = _fields(text, picture)
        parsed.append((fields, params))
        if i < first_image:  # the grid: numbered as grids are
            path = images.save_grid(picture, folder, text or None, fmt,
                                    options=dataclasses.replace(options, short=True), fields=fields)
        else:
            path = images.save_sample(picture, folder, fields.seed, text or None, fmt, options=options, fields=fields)
        files.append(path)
        names.append(path.relative_to(folder).as_posix())
        if get("save_txt", False) and text:
            files.append(images.save_parameters_file(path, text))
    fields, params = parsed[0]
    _log_row(folder / "log.csv", [fields.prompt, fields.seed, fields.width, fields.height, fields.sampler,
                                  params.get("CFG scale", ""), fields.steps, names[0], fields.negative_prompt,
                                  fields.model_name, fields.model_hash])
    if make_zip:
        zip_fields = dataclasses.replace(fields, all_seeds=[f.seed for f, _ in parsed], batch_size=len(parsed))
        stem = expand(str(get("grid_zip_filename_pattern", "") or DEFAULT_ZIP_PATTERN), zip_fields,
                      int(get("directories_max_prompt_words", 8) or 8))
        base = images.safe_name(stem).strip(" .") or "images"
        archive, n = folder / f"{base}.zip", 1
        while archive.exists():  # an archive made the same second stays
            archive, n = folder / f"{base}-{n}.zip", n + 1
        with zipfile.ZipFile(archive, "w") as z:
            for path in files:
                z.write(path, path.relative_to(folder).as_posix())
        files.insert(0, archive)
    return Saved(files, names)

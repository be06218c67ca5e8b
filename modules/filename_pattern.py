"""A1111's file and folder name patterns (settings `samples_filename_pattern`, `directories_filename_pattern`):
`[seed]-[prompt_spaces]`, `[date]`, `[datetime<%Y%m%d_%H%M%S><Europe/Paris>]`, `[prompt_words]`, `[model_name]`,
`[hasprompt<cat|nocat>]`, `[image_hash<8>]`, … — every tag A1111 knows, with its meaning. An unknown tag stays as
written; a tag with nothing to say (`[batch_number]` of a one-picture batch) takes the text before it away too."""
from __future__ import annotations

import datetime
import hashlib
import re
import string
from dataclasses import dataclass, field

from PIL import Image

MAX_PART_LENGTH = 128  # A1111's --filenames-max-length default
_INVALID = '#<>:"/\\|?*\n\r\t'
_NON_LETTERS = re.compile(r"[\s" + re.escape(string.punctuation) + "]+")
_PATTERN = re.compile(r"(.*?)(?:\[([^\[\]]+)\]|$)")
_ARGUMENT = re.compile(r"(.*)<([^>]*)>$")
_SKIP = object()  # "nothing here, and no separator before it either"
DEFAULT_TIME_FORMAT = "%Y%m%d%H%M%S"


def sanitize_part(text: str | None, replace_spaces: bool = True) -> str | None:
    """A piece of a file name: no characters a file system refuses, no leading space, no trailing dot or space."""
    if text is None:
        return None
    if replace_spaces:
        text = text.replace(" ", "_")
    text = text.translate({ord(c): "_" for c in _INVALID})
    return text.lstrip(" ")[:MAX_PART_LENGTH].rstrip(" .")


@dataclass
class NameFields:
    """What one saved picture's name can be made of."""

    seed: int | None = None
    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] = field(default_factory=list)
    style_prompts: list[str] = field(default_factory=list)  # the styles' prompt texts, for [prompt_no_styles]
    steps: int | None = None
    cfg_scale: float | None = None
    width: int | None = None
    height: int | None = None
    sampler: str = ""
    scheduler: str = ""
    model_name: str = ""
    model_hash: str = ""
    vae_name: str | None = None
    clip_skip: int | None = None
    denoising_strength: float | None = None
    all_seeds: list[int] = field(default_factory=list)
    batch_size: int = 1
    n_iter: int = 1
    batch_index: int = 0
    iteration: int = 0
    job_timestamp: str = ""
    user: str | None = None
    image: Image.Image | None = None


def _hash(text: str, *args) -> str:
    length = int(args[0]) if args and args[0] else 8
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _datetime(*args) -> str:
    now = datetime.datetime.now().astimezone()
    if len(args) > 1 and args[1]:
        try:
            from zoneinfo import ZoneInfo

            now = now.astimezone(ZoneInfo(args[1]))
        except (KeyError, ValueError, OSError):  # an unknown zone: local time, as A1111
            pass
    try:
        text = now.strftime(args[0] if args and args[0] else DEFAULT_TIME_FORMAT)
    except (ValueError, TypeError):
        text = now.strftime(DEFAULT_TIME_FORMAT)
    return sanitize_part(text, replace_spaces=False)


def _prompt_words(fields: NameFields, max_words: int) -> str:
    words = [w for w in _NON_LETTERS.split(fields.prompt or "") if w] or ["empty"]
    return sanitize_part(" ".join(words[:max_words]), replace_spaces=False)


def _prompt_no_styles(fields: NameFields) -> str:
    """The prompt with the styles' texts taken out again (styles are applied before the name is made)."""
    prompt = fields.prompt or ""
    for style in (s for s in fields.style_prompts if s):
        for part in style.split("{prompt}"):
            prompt = prompt.replace(part, "").replace(", ,", ",").strip().strip(",")
        prompt = prompt.replace(style, "").strip().strip(",").strip()
    return sanitize_part(prompt, replace_spaces=False)


def _hasprompt(fields: NameFields, *args) -> str:
    lower, out = (fields.prompt or "").lower(), ""
    for arg in args:
        if arg:
            wanted, _, default = arg.partition("|")
            out += wanted.lower() if wanted.lower() in lower else default
    return sanitize_part(out)


def _tags(fields: NameFields, max_words: int) -> dict:
    f = fields
    single = f.batch_size == 1
    return {
        "seed": lambda: f.seed if f.seed is not None else "",
        "seed_first": lambda: f.seed if single or not f.all_seeds else f.all_seeds[0],
        "seed_last": lambda: _SKIP if single or not f.all_seeds else f.all_seeds[-1],
        "steps": lambda: f.steps,
        "cfg": lambda: f.cfg_scale,
        "width": lambda: f.image.width if f.image is not None else f.width,
        "height": lambda: f.image.height if f.image is not None else f.height,
        "styles": lambda: sanitize_part(", ".join(s for s in f.styles if s != "None") or "None", False),
        "sampler": lambda: sanitize_part(f.sampler, False),
        "scheduler": lambda: sanitize_part(f.scheduler, False),
        "sampler_scheduler": lambda: sanitize_part(f"{f.sampler} {f.scheduler}".strip(), False),
        "model_hash": lambda: f.model_hash,
        "model_name": lambda: sanitize_part(f.model_name, False),
        "date": lambda: datetime.date.today().strftime("%Y-%m-%d"),
        "datetime": _datetime,
        "job_timestamp": lambda: f.job_timestamp,
        "prompt_hash": lambda *a: _hash(f.prompt or "", *a),
        "negative_prompt_hash": lambda *a: _hash(f.negative_prompt or "", *a),
        "full_prompt_hash": lambda *a: _hash(f"{f.prompt} {f.negative_prompt}", *a),
        "prompt": lambda: sanitize_part(f.prompt or ""),
        "prompt_no_styles": lambda: _prompt_no_styles(f),
        "prompt_spaces": lambda: sanitize_part(f.prompt or "", False),
        "prompt_words": lambda: _prompt_words(f, max_words),
        "batch_number": lambda: _SKIP if single else f.batch_index + 1,
        "batch_size": lambda: f.batch_size,
        "generation_number": lambda: _SKIP if f.n_iter == 1 and single
        else f.iteration * f.batch_size + f.batch_index + 1,
        "hasprompt": lambda *a: _hasprompt(f, *a),
        "clip_skip": lambda: f.clip_skip,
        "denoising": lambda: f.denoising_strength if f.denoising_strength else _SKIP,
        "user": lambda: f.user,
        "vae_filename": lambda: f.vae_name.rsplit(".", 1)[0] if f.vae_name else "NoneType",
        "none": lambda: "",
        "image_hash": lambda *a: hashlib.sha256(f.image.tobytes()).hexdigest()[:int(a[0]) if a and a[0] else None]
        if f.image is not None else None,
    }


def expand(pattern: str, fields: NameFields, max_prompt_words: int = 8) -> str:
    """`pattern` with each known `[tag]` / `[tag<arg>…]` replaced (A1111's FilenameGenerator.apply)."""
    tags = _tags(fields, max_prompt_words)
    out = ""
    for match in _PATTERN.finditer(pattern):
        text, tag = match.groups()
        if tag is None:
            out += text
            continue
        args = []
        name = tag
        while (m := _ARGUMENT.match(name)) is not None:
            name, arg = m.groups()
            args.insert(0, arg)
        fun = tags.get(name.lower())
        if fun is not None:
            try:
                value = fun(*args)
            except (TypeError, ValueError, IndexError, AttributeError):  # a tag given arguments it does not take
                value = None
            if value is _SKIP:
                continue
            if value is not None:
                out += text + str(value)
                continue
        out += f"{text}[{tag}]"
    return out

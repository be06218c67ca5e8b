"""Files we write honour the umask (A1111 gives 0644), and temp files a kill -9 left behind are swept at start."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from modules import fileio, images

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_saved_images_and_settings_honour_the_umask(tmp_path, umask, expected):
    code = (
        "import os, sys; os.umask(int(sys.argv[2], 8)); sys.path.insert(0, sys.argv[3])\n"
        "from pathlib import Path\nfrom PIL import Image\nfrom modules import fileio, images\n"
        "d = Path(sys.argv[1])\n"
        "images.save_sample(Image.new('RGB', (8, 8)), d, 1, 'a cat')\n"
        "fileio.atomic_write_json(d / 'config.json', {'a': 1})\n"
        "with fileio.atomic_path(d / 'model.safetensors') as p: p.write_bytes(b'x')\n")
    subprocess.run([sys.executable, "-c", code, str(tmp_path), oct(umask)[2:], str(ROOT)], check=True)
    written = sorted(p for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert len(written) == 3
    for path in written:
        assert path.stat().st_mode & 0o777 == expected, (path.name, oct(path.stat().st_mode))


def test_stale_temp_files_are_swept_at_start_and_fresh_ones_kept(tmp_path):
    from modules import cmd_args
    from modules.engine import Engine
    from modules.paths import Paths

    paths = Paths.from_args(cmd_args.parse_args(["--data-dir", str(tmp_path)], env={}))
    paths.ensure_dirs()
    day = paths.outputs_dir / "txt2img-images" / "2026-12-01"
    day.mkdir(parents=True)
    stale = [tmp_path / ".config.json.ab12cd34.tmp", day / ".00003-42.png.k2j3h4g5.tmp"]
    fresh = day / ".00004-43.png.zzzzzzzz.tmp"
    keep = [day / "00002-41.png", tmp_path / "notes.tmp"]
    for path in [*stale, fresh, *keep]:
        path.write_bytes(b"x")
    old = time.time() - 3600
    for path in stale:
        os.utime(path, (old, old))
    Engine.create(paths)
    assert not any(p.exists() for p in stale)
    assert fresh.exists() and all(p.exists() for p in keep)

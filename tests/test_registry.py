import argparse
import hashlib
import json
import os
import struct
import threading

import pytest

from modules.hashes import HashCache, addnet_hash_safetensors, model_hash_legacy, sha256_file
from modules.models.registry import (CheckpointInfo, CheckpointRegistry, VaeInfo, diffusers_folder_sha256,
                                     find_vae_for_checkpoint, list_vaes)
from modules.paths import Paths


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_paths(tmp_path, **flags) -> Paths:
    ns = argparse.Namespace(data_dir=str(tmp_path / "data"), **flags)
    paths = Paths.from_args(ns)
    paths.ensure_dirs()
    return paths


def write(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def tree(tmp_path):
    paths = make_paths(tmp_path)
    sd = paths.ckpt_dirs[0]
    files = {
        "a.safetensors": b"model a" * 100,
        "sub/dir/b.ckpt": b"model b" * 50,
        "model10.safetensors": b"ten",
        "model2.safetensors": b"two",
    }
    for name, data in files.items():
        write(sd / name, data)
    write(sd / "a.vae.safetensors", b"vae beside a")  # a VAE, not a checkpoint
    write(sd / "notes.txt", b"hello")
    write(sd / "a.yaml", b"model: {}")
    write(sd / ".hidden" / "h.safetensors", b"hidden")
    diff = sd / "diffusers-model"
    write(diff / "model_index.json", b'{"_class_name": "StableDiffusionPipeline"}')
    write(diff / "unet" / "config.json", b"{}")
    write(diff / "unet" / "diffusion_pytorch_model.safetensors", b"unet weights")
    write(diff / "vae" / "diffusion_pytorch_model.safetensors", b"vae weights")
    return paths, files


def test_paths_layout(tmp_path):
    paths = make_paths(tmp_path)
    data = tmp_path / "data"
    assert paths.data_dir == data and paths.models_dir == data / "models"
    assert paths.ckpt_dirs == [data / "models" / "Stable-diffusion"]
    assert paths.vae_dirs == [data / "models" / "VAE"]
    assert paths.lora_dir == data / "models" / "Lora"
    assert paths.embeddings_dir == data / "embeddings"
    assert paths.config_file == data / "config.json" and paths.cache_file == data / "cache.json"
    assert paths.styles_file == data / "styles.csv" and paths.ui_config_file == data / "ui-config.json"
    assert paths.extensions_dir == data / "extensions"
    for sub in ("txt2img-images", "txt2img-grids", "img2img-images", "img2img-grids", "extras-images"):
        assert (data / "outputs" / sub).is_dir()
    for d in (paths.ckpt_dirs[0], paths.vae_dirs[0], paths.lora_dir, paths.embeddings_dir):
        assert d.is_dir()
    with pytest.raises(Exception):
        paths.data_dir = tmp_path  # frozen


def test_paths_flags(tmp_path):
    ns = argparse.Namespace(data_dir=str(tmp_path / "d"), models_dir=str(tmp_path / "m"),
                            ckpt_dir=str(tmp_path / "c"), vae_dir=str(tmp_path / "v"),
                            lora_dir=str(tmp_path / "l"), embeddings_dir=str(tmp_path / "e"),
                            ui_settings_file=str(tmp_path / "cfg.json"), styles_file=[str(tmp_path / "s.csv")])
    p = Paths.from_args(ns)
    assert p.ckpt_dirs == [tmp_path / "m" / "Stable-diffusion", tmp_path / "c"]
    assert p.vae_dirs == [tmp_path / "m" / "VAE", tmp_path / "v"]
    assert p.lora_dir == tmp_path / "l" and p.embeddings_dir == tmp_path / "e"
    assert p.config_file == tmp_path / "cfg.json" and p.styles_file == tmp_path / "s.csv"
    assert p.outputs_dir == tmp_path / "d" / "outputs"


def test_lists_nested_files_and_diffusers(tree):
    paths, files = tree
    reg = CheckpointRegistry(paths, HashCache(paths.cache_file))
    infos = reg.refresh()
    assert [i.name for i in infos] == ["a.safetensors", "diffusers-model", "model2.safetensors",
                                       "model10.safetensors", "sub/dir/b.ckpt"]
    b = reg.get("sub/dir/b.ckpt")
    assert b.model_name == "sub_dir_b" and b.name_for_extra == "b" and not b.is_diffusers
    assert b.filename == paths.ckpt_dirs[0] / "sub" / "dir" / "b.ckpt"
    d = reg.get("diffusers-model")
    assert d.is_diffusers and d.filename == paths.ckpt_dirs[0] / "diffusers-model" and d.config is None
    a = reg.get("a.safetensors")
    assert a.config == paths.ckpt_dirs[0] / "a.yaml"
    # nothing hashed yet (no cache): titles are the bare names, and refresh() read no file
    assert all(i.sha256 is None and i.title == i.name for i in infos)
    assert reg.hash_cache.computed == 0


def test_titles_after_background_hashing(tree):
    paths, files = tree
    reg = CheckpointRegistry(paths, HashCache(paths.cache_file))
    reg.refresh()
    t = reg.hash_all_in_background()
    assert t is not None and t.daemon
    assert reg.wait_for_hashes(30)
    for name, data in files.items():
        info = reg.get(name)
        assert info.sha256 == sha(data)
        assert info.title == f"{name} [{sha(data)[:10]}]"
        assert info.shorthash == sha(data)[:10]
    cache = json.loads(paths.cache_file.read_text())
    entry = cache["hashes"]["checkpoint/a.safetensors"]
    assert entry["sha256"] == sha(files["a.safetensors"])
    assert entry["mtime"] == os.path.getmtime(paths.ckpt_dirs[0] / "a.safetensors")
    assert entry["size"] == len(files["a.safetensors"])
    assert "checkpoint/sub/dir/b.ckpt" in cache["hashes"]
    assert reg.hash_all_in_background() is None  # everything hashed


def test_cache_reused_and_invalidated(tree):
    paths, files = tree
    reg = CheckpointRegistry(paths, HashCache(paths.cache_file))
    reg.refresh()
    reg.hash_all_in_background()
    reg.wait_for_hashes(30)

    cache2 = HashCache(paths.cache_file)
    reg2 = CheckpointRegistry(paths, cache2)
    infos = reg2.refresh()
    assert all(i.sha256 for i in infos)  # straight from cache.json
    assert reg2.hash_all_in_background() is None
    assert cache2.computed == 0

    # content + mtime change → recomputed
    a = paths.ckpt_dirs[0] / "a.safetensors"
    a.write_bytes(b"new content of a")
    st = os.stat(a)
    os.utime(a, (st.st_atime, st.st_mtime + 10))
    info = next(i for i in reg2.refresh() if i.name == "a.safetensors")
    assert info.sha256 is None and info.title == "a.safetensors"
    assert reg2.ensure_hash(info) == sha(b"new content of a")
    assert cache2.computed == 1

    # same mtime, different size → recomputed too
    b = paths.ckpt_dirs[0] / "sub" / "dir" / "b.ckpt"
    st = os.stat(b)
    b.write_bytes(b"b changed size")
    os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns))
    info = next(i for i in reg2.refresh() if i.name == "sub/dir/b.ckpt")
    assert info.sha256 is None
    assert reg2.ensure_hash(info) == sha(b"b changed size")


def test_a1111_cache_entry_without_size_is_used(tmp_path):
    paths = make_paths(tmp_path)
    f = write(paths.ckpt_dirs[0] / "m.safetensors", b"abc")
    fake = "f" * 64  # proves the value came from the cache
    paths.cache_file.write_text(json.dumps({
        "hashes": {"checkpoint/m.safetensors": {"mtime": os.path.getmtime(f), "sha256": fake}},
        "safetensors-metadata": {"lora/x": {"mtime": 1, "value": {}}},
    }))
    cache = HashCache(paths.cache_file)
    reg = CheckpointRegistry(paths, cache)
    (info,) = reg.refresh()
    assert info.sha256 == fake and info.title == "m.safetensors [ffffffffff]"
    # other sections of cache.json survive our writes
    cache.store("checkpoint/other", "0" * 64, 1.0, 1)
    assert "safetensors-metadata" in json.loads(paths.cache_file.read_text())


def test_corrupt_cache_is_ignored(tmp_path):
    paths = make_paths(tmp_path)
    write(paths.ckpt_dirs[0] / "m.safetensors", b"abc")
    paths.cache_file.write_text("{not json")
    reg = CheckpointRegistry(paths, HashCache(paths.cache_file))
    (info,) = reg.refresh()
    assert reg.ensure_hash(info) == sha(b"abc")
    assert json.loads(paths.cache_file.read_text())["hashes"]["checkpoint/m.safetensors"]["sha256"] == sha(b"abc")


def test_lookup(tree):
    paths, files = tree
    reg = CheckpointRegistry(paths, HashCache(paths.cache_file))
    reg.refresh()
    reg.hash_all_in_background()
    reg.wait_for_hashes(30)
    a = reg.get("a.safetensors")
    h = sha(files["a.safetensors"])
    assert reg.get(a.title) is a
    assert reg.get(f"a.safetensors [{h[:10]}]") is a
    assert reg.get("a") is a  # model_name / stem
    assert reg.get(h[:10]) is a and reg.get(h) is a and reg.get(h[:12]) is a and reg.get(h[:10].upper()) is a
    assert reg.get("a.safetensors [0000000000]") is a  # stale hash in the title: the name decides
    assert reg.get("sub_dir_b") is reg.get("sub/dir/b.ckpt")
    assert reg.get("b [" + sha(files["sub/dir/b.ckpt"])[:10] + "]") is reg.get("sub/dir/b.ckpt")  # short title
    assert reg.get("model1") is reg.get("model10.safetensors")  # A1111 fuzzy: shortest title containing it
    assert reg.get("model1", fuzzy=False) is None
    assert reg.get("nothing-like-this") is None and reg.get("") is None and reg.get(None) is None
    assert reg.get_exact(a.title) is a and reg.get_exact("model1") is None
    assert reg.select(None) is reg.list()[0]
    assert reg.select("model2") is reg.get("model2.safetensors")
    assert reg.select("missing") is reg.list()[0]


def test_lookup_by_hash_before_background_hashing(tree):
    paths, files = tree
    reg = CheckpointRegistry(paths, HashCache(paths.cache_file))
    reg.refresh()
    h10 = sha(files["model2.safetensors"])[:10]
    assert reg.get(h10, fuzzy=False) is None
    assert reg.get(h10, hash_missing=True) is reg.get("model2.safetensors")


def test_no_hashing(tree):
    paths, files = tree
    reg = CheckpointRegistry(paths, HashCache(paths.cache_file), no_hashing=True)
    infos = reg.refresh()
    assert reg.hash_all_in_background() is None
    assert reg.ensure_hash(infos[0]) is None and infos[0].title == infos[0].name
    assert reg.ensure_hash(infos[0], force=True) == sha(files["a.safetensors"])
    assert not paths.cache_file.exists() or "hashes" in json.loads(paths.cache_file.read_text())


def test_ckpt_flag_and_extra_dir(tmp_path):
    extra = tmp_path / "extra"
    write(extra / "x.safetensors", b"x")
    outside = write(tmp_path / "elsewhere" / "solo.ckpt", b"solo")
    paths = make_paths(tmp_path, ckpt_dir=str(extra), ckpt=str(outside))
    write(paths.ckpt_dirs[0] / "y.safetensors", b"y")
    reg = CheckpointRegistry(paths, HashCache(paths.cache_file))
    names = [i.name for i in reg.refresh()]
    assert names == ["solo.ckpt", "x.safetensors", "y.safetensors"]
    assert reg.cmd_ckpt is reg.get("solo.ckpt")
    assert reg.select(None) is reg.cmd_ckpt
    # --ckpt pointing inside a checkpoint dir is not listed twice
    paths2 = make_paths(tmp_path, ckpt=str(paths.ckpt_dirs[0] / "y.safetensors"))
    reg2 = CheckpointRegistry(paths2, HashCache(None))
    assert [i.name for i in reg2.refresh()] == ["y.safetensors"]
    assert reg2.cmd_ckpt.name == "y.safetensors"


def test_diffusers_hash_is_deterministic(tree):
    paths, _ = tree
    folder = paths.ckpt_dirs[0] / "diffusers-model"
    expected_lines = "".join(f"{rel}\t{sha((folder / rel).read_bytes())}\n" for rel in sorted(
        ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
         "vae/diffusion_pytorch_model.safetensors"]))
    assert diffusers_folder_sha256(folder) == sha(expected_lines.encode())
    reg = CheckpointRegistry(paths, HashCache(paths.cache_file))
    reg.refresh()
    info = reg.get("diffusers-model")
    assert reg.ensure_hash(info) == sha(expected_lines.encode())
    assert info.title == f"diffusers-model [{info.sha256[:10]}]"
    # a changed component invalidates the cached hash
    write(folder / "unet" / "diffusion_pytorch_model.safetensors", b"other unet weights!")
    reg2 = CheckpointRegistry(paths, HashCache(paths.cache_file))
    reg2.refresh()
    assert reg2.get("diffusers-model").sha256 is None


def test_concurrent_ensure_hash_computes_once(tmp_path):
    paths = make_paths(tmp_path)
    write(paths.ckpt_dirs[0] / "m.safetensors", os.urandom(3 * 1024 * 1024 + 5))
    cache = HashCache(paths.cache_file)
    reg = CheckpointRegistry(paths, cache)
    (info,) = reg.refresh()
    copies = [CheckpointInfo(info.filename, info.name) for _ in range(4)]
    results = []
    threads = [threading.Thread(target=lambda c=c: results.append(reg.ensure_hash(c))) for c in copies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and results[0] == sha256_file(info.filename)
    assert cache.computed == 1


def test_vaes(tmp_path):
    vae_extra = tmp_path / "vae-extra"
    paths = make_paths(tmp_path, vae_dir=str(vae_extra))
    sd, vae = paths.ckpt_dirs[0], paths.vae_dirs[0]
    write(sd / "a.safetensors", b"a")
    write(sd / "a.vae.safetensors", b"va")
    write(sd / "sub" / "c.safetensors", b"c")
    write(vae / "c.pt", b"vc")
    write(vae / "kl-f8.safetensors", b"kl")
    write(vae / "nested" / "other.ckpt", b"o")
    write(vae / "readme.txt", b"no")
    write(sd / "d.safetensors", b"d")
    write(vae / "d-special.safetensors", b"vd")
    write(vae_extra / "e.safetensors", b"e")
    vaes = list_vaes(paths)
    assert [v.name for v in vaes] == ["a.vae.safetensors", "c.pt", "d-special.safetensors", "e.safetensors",
                                      "kl-f8.safetensors", "other.ckpt"]
    assert all(isinstance(v, VaeInfo) for v in vaes)
    reg = CheckpointRegistry(paths, HashCache(None))
    reg.refresh()
    assert [i.name for i in reg.list()] == ["a.safetensors", "d.safetensors", "sub/c.safetensors"]
    by = {v.name: v for v in vaes}
    assert find_vae_for_checkpoint(reg.get("a.safetensors"), vaes) is by["a.vae.safetensors"]
    assert find_vae_for_checkpoint(reg.get("sub/c.safetensors"), vaes) is by["c.pt"]
    assert find_vae_for_checkpoint(reg.get("d.safetensors"), vaes) is by["d-special.safetensors"]  # A1111 prefix
    write(sd / "zzz.safetensors", b"z")
    reg.refresh()
    assert find_vae_for_checkpoint(reg.get("zzz.safetensors"), vaes) is None


def test_addnet_and_legacy_hashes(tmp_path):
    header = json.dumps({"__metadata__": {"ss_network_dim": "4"}, "w": {"dtype": "F32", "shape": [2],
                                                                           "data_offsets": [0, 8]}}).encode()
    body = struct.pack("<2f", 1.0, 2.0)
    f = write(tmp_path / "lora.safetensors", struct.pack("<Q", len(header)) + header + body)
    assert addnet_hash_safetensors(f) == sha(body)
    with open(f, "rb") as fh:
        assert addnet_hash_safetensors(fh) == sha(body)
    # changing only the metadata keeps the addnet hash
    header2 = header.replace(b'"4"', b'"8"')
    f2 = write(tmp_path / "lora2.safetensors", struct.pack("<Q", len(header2)) + header2 + body)
    assert addnet_hash_safetensors(f2) == sha(body)

    data = os.urandom(0x100000 + 0x10000 + 100)
    big = write(tmp_path / "big.ckpt", data)
    assert model_hash_legacy(big) == sha(data[0x100000:0x110000])[:8]
    assert model_hash_legacy(tmp_path / "missing") == "NOFILE"
    assert sha256_file(big) == sha(data)


def test_hash_cache_addnet_section(tmp_path):
    f = write(tmp_path / "x.safetensors", struct.pack("<Q", 2) + b"{}" + b"tail")
    cache = HashCache(tmp_path / "cache.json")
    assert cache.sha256(f, "lora/x", use_addnet_hash=True) == sha(b"tail")
    data = json.loads((tmp_path / "cache.json").read_text())
    assert data["hashes-addnet"]["lora/x"]["sha256"] == sha(b"tail")
    assert HashCache(tmp_path / "cache.json").sha256(f, "lora/x", use_addnet_hash=True) == sha(b"tail")
    assert cache.sha256(tmp_path / "gone", "lora/gone") is None


def test_hidden_folders_are_listed_as_the_setting_says(tmp_path, tiny_models):
    """A1111's "Load models/files in hidden directories" (on by default): checkpoints and LoRAs in `.folder`s."""
    import argparse
    import shutil

    from modules.engine import Engine
    from modules.paths import Paths

    paths = Paths.from_args(argparse.Namespace(data_dir=str(tmp_path)))
    paths.ensure_dirs()
    write(paths.ckpt_dirs[0] / ".kept" / "h.safetensors", b"not read: listed only")
    (paths.lora_dir / ".kept").mkdir(parents=True)
    shutil.copy(tiny_models.path("sd1.safetensors"), paths.lora_dir / ".kept" / "style.safetensors")
    engine = Engine.create(paths)
    assert any(i.name == ".kept/h.safetensors" for i in engine.registry.list())
    assert any(f.name == "style" for f in engine.loras.list())
    engine.settings.set("list_hidden_files", False)
    engine.registry.refresh()
    engine.loras.refresh()
    assert not any(".kept" in i.name for i in engine.registry.list()) and not engine.loras.list()

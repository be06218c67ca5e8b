"""Checkpoint merger: each mode equals its formula tensor by tensor, the options do what they say, the result is
listed and loads, and merging streams (peak memory stays near one model)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from modules.hashes import sha256_file
from tests.allocator import default_allocator_env
from modules.models.merge import (ADD_DIFFERENCE, INPUT_CONV, NO_INTERPOLATION, WEIGHTED_SUM, MergeError,
                                  MergeOptions, merge_from_registry)

ROOT = Path(__file__).resolve().parent.parent
POSITION_IDS = "cond_stage_model.transformer.text_model.embeddings.position_ids"


@pytest.fixture(scope="module")
def merge_engine(tmp_path_factory, tiny_models):
    """An engine whose checkpoint folder holds three different SD1 models (A, B, C), an SD1 inpainting model, an
    SDXL model and, in models/VAE, a VAE that differs from A's."""
    from modules import cmd_args
    from modules.engine import Engine
    from modules.models.ldm_export import components_to_ldm
    from modules.paths import Paths
    from tests.tiny_models import build_tiny, write_single_file

    data = tmp_path_factory.mktemp("merge-data")
    ckpt = data / "models" / "Stable-diffusion"
    ckpt.mkdir(parents=True)
    os.symlink(tiny_models.path("sd1.safetensors"), ckpt / "a.safetensors")
    for name in ("sd1-inpainting.safetensors", "sdxl.safetensors"):
        os.symlink(tiny_models.path(name), ckpt / name)
    write_single_file(build_tiny("sd1", seed=1), "sd1", ckpt / "b.safetensors")
    write_single_file(build_tiny("sd1", seed=2), "sd1", ckpt / "c.ckpt")
    other = build_tiny("sd1", seed=3)
    vae = {k.removeprefix("first_stage_model."): v.contiguous()
           for k, v in components_to_ldm("sd1", other["unet"], other["vae"], other["text_encoder"], None).items()
           if k.startswith("first_stage_model.")}
    (data / "models" / "VAE").mkdir(parents=True)
    save_file(vae, str(data / "models" / "VAE" / "other.vae.safetensors"))
    ns = cmd_args.parse_args(["--data-dir", str(data), "--skip-install"], env={})
    engine = Engine.create(Paths.from_args(ns))
    engine.registry.refresh()
    return engine


def _sd(engine, name: str) -> dict[str, torch.Tensor]:
    from modules.models.loader import read_state_dict

    return read_state_dict(engine.registry.get(name).filename)


def _merged(key: str, t: torch.Tensor) -> bool:
    return "model" in key and key != POSITION_IDS and t.is_floating_point()


def test_weighted_sum_equals_formula_and_loads(merge_engine):
    opts = MergeOptions(mode=WEIGHTED_SUM, multiplier=0.3, custom_name="ws")
    calls = []
    result = merge_from_registry(merge_engine.registry, "a.safetensors", "b.safetensors", None, opts,
                                 progress=lambda done, total, what: calls.append((done, total)))
    assert result.path == merge_engine.paths.ckpt_dirs[0] / "ws.safetensors"
    a, b, out = _sd(merge_engine, "a"), _sd(merge_engine, "b"), load_file(str(result.path))
    assert out.keys() == a.keys()
    for key, t in out.items():
        expected = (1 - 0.3) * a[key] + 0.3 * b[key] if _merged(key, a[key]) else a[key]
        assert torch.equal(t, expected), key
    assert not torch.equal(out[INPUT_CONV], a[INPUT_CONV])
    assert calls[-1][0] == calls[-1][1] > 0  # the progress bar reaches the end
    # The new file is listed and loads like any checkpoint.
    assert any(i.name == "ws.safetensors" for i in merge_engine.registry.list())
    model = merge_engine.models.get("ws.safetensors")
    assert model.family == "sd1"
    conv = model.unet.conv_in.weight.detach()
    assert torch.allclose(conv, out[INPUT_CONV].to(conv.dtype))


def test_add_difference_equals_formula_with_ckpt_input(merge_engine):
    opts = MergeOptions(mode=ADD_DIFFERENCE, multiplier=0.5)
    result = merge_from_registry(merge_engine.registry, "a", "b", "c.ckpt", opts)
    assert result.path.name == "a + 0.5(b - c).safetensors"  # A1111's default name
    a, b, c = _sd(merge_engine, "a"), _sd(merge_engine, "b"), _sd(merge_engine, "c")
    out = load_file(str(result.path))
    for key, t in out.items():
        expected = a[key] + 0.5 * (b[key] - c[key]) if _merged(key, a[key]) else a[key]
        assert torch.equal(t, expected), key


def test_no_interpolation_fp16_ckpt_and_discard(merge_engine):
    opts = MergeOptions(mode=NO_INTERPOLATION, checkpoint_format="ckpt", save_as_half=True, custom_name="half",
                        discard_weights=r"^model_ema\.|first_stage_model\.encoder\.")
    result = merge_from_registry(merge_engine.registry, "a", None, None, opts)
    assert result.path.suffix == ".ckpt"
    out = torch.load(result.path, weights_only=True)
    a = _sd(merge_engine, "a")
    kept = [k for k in a if not k.startswith("first_stage_model.encoder.")]
    assert sorted(out) == sorted(kept) and len(kept) < len(a)
    for key in kept:
        if a[key].dtype == torch.float32:
            assert out[key].dtype == torch.float16 and torch.equal(out[key], a[key].half()), key
        else:
            assert torch.equal(out[key], a[key]), key


def test_bake_in_vae_and_recipe_metadata(merge_engine):
    vae_path = merge_engine.paths.vae_dirs[0] / "other.vae.safetensors"
    opts = MergeOptions(mode=WEIGHTED_SUM, multiplier=0.25, custom_name="baked", bake_in_vae=vae_path)
    result = merge_from_registry(merge_engine.registry, "a", "b", None, opts)
    out, vae = load_file(str(result.path)), load_file(str(vae_path))
    for key, t in vae.items():
        assert torch.equal(out["first_stage_model." + key], t), key
    with safe_open(str(result.path), framework="pt") as f:
        meta = f.metadata()
    recipe, models = json.loads(meta["sd_merge_recipe"]), json.loads(meta["sd_merge_models"])
    sha_a, sha_b = (sha256_file(merge_engine.registry.get(n).filename) for n in ("a", "b"))
    assert recipe["type"] == "webui" and recipe["interp_method"] == "Weighted sum"
    assert recipe["multiplier"] == 0.25 and recipe["bake_in_vae"] == "other.vae.safetensors"
    assert (recipe["primary_model_hash"], recipe["secondary_model_hash"]) == (sha_a, sha_b)
    assert models[sha_a]["name"] == "a.safetensors" and models[sha_b]["name"] == "b.safetensors"
    assert meta["format"] == "pt"


def test_inpainting_a_with_normal_b_merges_four_channels(merge_engine):
    opts = MergeOptions(mode=ADD_DIFFERENCE, multiplier=1.0, custom_name="inp")
    result = merge_from_registry(merge_engine.registry, "sd1-inpainting", "b", "a", opts)
    assert result.path.name == "inp.inpainting.safetensors" and result.is_inpainting
    inp, a, b = _sd(merge_engine, "sd1-inpainting"), _sd(merge_engine, "a"), _sd(merge_engine, "b")
    conv = load_file(str(result.path))[INPUT_CONV]
    assert conv.shape[1] == 9
    assert torch.equal(conv[:, :4], inp[INPUT_CONV][:, :4] + 1.0 * (b[INPUT_CONV] - a[INPUT_CONV]))
    assert torch.equal(conv[:, 4:], inp[INPUT_CONV][:, 4:])
    with pytest.raises(MergeError, match="A must be the inpainting model"):
        merge_from_registry(merge_engine.registry, "a", "sd1-inpainting", None, MergeOptions(custom_name="x"))


def test_refuses_different_families_and_existing_output(merge_engine):
    ckpt_dir = merge_engine.paths.ckpt_dirs[0]
    before = sorted(p.name for p in ckpt_dir.iterdir())
    with pytest.raises(MergeError, match=r"different families.*SD 1\.x.*SDXL"):
        merge_from_registry(merge_engine.registry, "a", "sdxl", None, MergeOptions(custom_name="mixed"))
    with pytest.raises(MergeError, match="not a valid regular expression"):
        merge_from_registry(merge_engine.registry, "a", "b", None, MergeOptions(discard_weights="(["))
    with pytest.raises(MergeError, match="not a usable file name"):
        merge_from_registry(merge_engine.registry, "a", "b", None, MergeOptions(custom_name="../escape"))
    assert sorted(p.name for p in ckpt_dir.iterdir()) == before  # nothing written, no temp file left
    existing = ckpt_dir / "b.safetensors"
    digest = sha256_file(existing)
    with pytest.raises(MergeError, match="already exists"):
        merge_from_registry(merge_engine.registry, "a", None, None,
                            MergeOptions(mode=NO_INTERPOLATION, custom_name="b"))
    assert sha256_file(existing) == digest


_RSS_SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from modules.models.merge import MergeInput, MergeOptions, merge_checkpoints

    def status_kib(field):  # VmHWM is this process's own peak (ru_maxrss would include the forking pytest's)
        line = next(l for l in open("/proc/self/status") if l.startswith(field + ":"))
        return int(line.split()[1]) * 1024

    work = Path(sys.argv[2])
    before = status_kib("VmRSS")
    merge_checkpoints(MergeInput(work / "big_a.safetensors"), MergeInput(work / "big_b.safetensors"), None,
                      MergeOptions(custom_name="big_merged"), work)
    print(json.dumps({"increase": status_kib("VmHWM") - before}))
""")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux's /proc/self/status (VmHWM)")
def test_peak_memory_stays_near_one_model(tmp_path, tiny_models, record_property):
    """Two ~200 MiB SD1 checkpoints (the tiny model's layout plus big float16 EMA tensors) merge in a fresh process
    whose peak RSS grows by less than 1.6x one model (loading both and the result would take 3x)."""
    base = load_file(str(tiny_models.path("sd1.safetensors")))
    block = 1024 * 2048
    for name, seed in (("big_a", 1), ("big_b", 2)):
        # each block a window of one random pool, shifted per block: 48 different tensors from 2.1 M random numbers
        # instead of 100 M (the memory measured is the same; the values only need to differ between A and B)
        pool = torch.randn(block + 48 * 1031, generator=torch.Generator().manual_seed(seed))
        sd = {k: v.half() if v.is_floating_point() else v for k, v in base.items()}
        sd.update({f"model_ema.diffusion_modelblock{i:03d}weight":
                   pool[i * 1031:i * 1031 + block].view(1024, 2048).half() for i in range(48)})
        save_file(sd, str(tmp_path / f"{name}.safetensors"))
        del sd
    model_size = (tmp_path / "big_a.safetensors").stat().st_size
    proc = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(ROOT), str(tmp_path)], capture_output=True,
                          text=True, timeout=120, env=default_allocator_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    increase = json.loads(proc.stdout.strip().splitlines()[-1])["increase"]
    ratio = increase / model_size
    record_property("merge_peak_rss", f"{increase / 2**20:.0f} MiB for a {model_size / 2**20:.0f} MiB model "
                                      f"({ratio:.2f}x)")
    print(f"merge peak RSS increase: {increase / 2**20:.0f} MiB, model {model_size / 2**20:.0f} MiB, "
          f"ratio {ratio:.2f}")
    assert ratio < 1.6
    merged = tmp_path / "big_merged.safetensors"
    assert 0 <= merged.stat().st_size - model_size < 4096  # same tensors; only the header (recipe) differs
    with safe_open(str(merged), framework="pt") as f, safe_open(str(tmp_path / "big_a.safetensors"), "pt") as a, \
            safe_open(str(tmp_path / "big_b.safetensors"), "pt") as b:
        key = "model_ema.diffusion_modelblock047weight"
        expected = ((1 - 0.3) * a.get_tensor(key).float() + 0.3 * b.get_tensor(key).float()).half()
        assert torch.equal(f.get_tensor(key), expected)

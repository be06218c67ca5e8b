"""LoRA and textual-inversion training on the tiny models: the loss goes down, the files are what kohya/A1111 write
and our loaders apply them, resume continues exactly, interrupt saves, bad input is a clear error, the CLI works."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from modules.hashes import addnet_hash_safetensors
from modules.networks import lora
from modules.networks.embeddings import EmbeddingDatabase
from modules.sampling import conditioning
from modules.training.common import TrainingError, noise_scheduler, noisy_latents_and_target
from modules.training.config import EmbeddingTrainingConfig, LoraTrainingConfig
from modules.training.embedding_trainer import create_embedding, train_embedding
from modules.training.lora_trainer import train_lora, unet_prediction
from modules.training.session import engine_session
from modules.training.text_encoding import encode_text

DEMO = Path(__file__).resolve().parent.parent / "models" / "Stable-diffusion" / "demo-shapes.safetensors"
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220), "yellow": (230, 220, 40)}
GEN = {"negative_prompt": "", "steps": 3, "width": 64, "height": 64, "cfg_scale": 7, "sampler_name": "Euler",
       "seed": 77, "do_not_save_grid": True, "do_not_save_samples": True}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny training steps are dominated by thread hand-offs; on a shared 2-core box one thread is 10x faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "5_squares"
    folder.mkdir()
    for name, colour in COLOURS.items():
        Image.new("RGB", (64, 64), colour).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(f"{name} square, flat colour")
    return folder


def lora_config(images, **kw) -> LoraTrainingConfig:
    base = dict(dataset_dir=str(images), output_name="squares", steps=30, resolution=64, learning_rate=2e-3,
                rank=4, alpha=4, seed=3, resume=False)
    return LoraTrainingConfig(**{**base, **kw})


def run_lora(engine, config, checkpoint="sd1.safetensors", on_progress=None):
    with engine_session(engine, "train-lora", checkpoint, on_progress=on_progress) as session:
        return train_lora(session, config)


def run_embedding(engine, config, checkpoint="sd1.safetensors", on_progress=None):
    with engine_session(engine, "train-embedding", checkpoint, on_progress=on_progress) as session:
        return train_embedding(session, config)


def pixels(result):
    return torch.tensor(list(result.images[0].convert("RGB").getdata()), dtype=torch.float32)


@torch.no_grad()
def fixed_loss(model, images, prompt_of) -> float:
    """Denoising loss on the training images at fixed noise and timesteps (a stable measure, unlike one step's)."""
    from modules.training.dataset import encode_images, scan_folder

    items = scan_folder(images)
    data = encode_images(model, items, 64, False, 64, torch.Generator().manual_seed(0))
    bucket = data.buckets[0]
    latents = torch.stack(bucket.latents).repeat(4, 1, 1, 1)
    captions = [prompt_of(c) for c in bucket.captions] * 4
    noisy, t, target = noisy_latents_and_target(noise_scheduler(model.scheduler_config), latents,
                                                torch.Generator().manual_seed(1))
    cond = encode_text(model, captions)
    return torch.nn.functional.mse_loss(unet_prediction(model, noisy, t, cond, bucket.size), target).item()


@pytest.mark.slow
def test_lora_training_writes_a_kohya_file_that_our_loader_applies(engine, images):
    prompt = "red square, flat colour"
    before = engine.txt2img({"prompt": prompt, **GEN})
    model = engine.models.get("sd1.safetensors")
    keys_before = list(model.unet.state_dict())
    loss_before = fixed_loss(model, images, lambda c: c)
    reports = []
    result = run_lora(engine, lora_config(images, train_text_encoder=True, sample_every=15, sample_prompt=prompt,
                                          sample_steps=2), on_progress=reports.append)

    assert result.output == engine.paths.lora_dir / "squares.safetensors" and result.steps_done == 30
    assert [r.step for r in reports if r.loss is not None][:3] == [1, 2, 3]
    assert "it/s" in reports[-1].text() and "ETA" in reports[-1].text()
    assert len(result.samples) == 2 and all(p.is_file() for p in result.samples)
    assert Image.open(result.loss_plot).size == (640, 320)
    # The model is back to its own modules and weights: same keys, and an untagged prompt gives the same image.
    assert list(model.unet.state_dict()) == keys_before
    after = engine.txt2img({"prompt": prompt, **GEN})
    assert torch.equal(pixels(after), pixels(before))

    sd = load_file(result.output)
    names = {k.rsplit(".lora_", 1)[0].removesuffix(".alpha") for k in sd}
    assert all(k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha")) for k in sd)
    assert any(n.startswith("lora_unet_down_blocks_0_attentions_0_") for n in names)
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj" in names
    assert sd["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"].shape == (4, 32, 1, 1)
    deltas = lora.compute_deltas(sd, lora.module_index(model))
    assert deltas.unmatched == [] and deltas.errors == [] and len(deltas.deltas) == len(names)

    with safe_open(str(result.output), "pt") as f:
        meta = f.metadata()
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_network_dim"] == "4"
    assert meta["ss_network_alpha"] == "4.0" and meta["ss_max_train_steps"] == "30" and meta["ss_steps"] == "30"
    assert meta["ss_output_name"] == "squares" and meta["ss_sd_model_name"] == "sd1.safetensors"
    assert meta["ss_resolution"] == "(64, 64)" and float(meta["ss_learning_rate"]) == 2e-3
    assert json.loads(meta["ss_tag_frequency"]) == {"5_squares": {
        "red square": 1, "green square": 1, "blue square": 1, "yellow square": 1, "flat colour": 4}}
    assert float(meta["ss_training_started_at"]) <= float(meta["ss_training_finished_at"])
    assert meta["sshs_model_hash"] == addnet_hash_safetensors(result.output)

    tagged = engine.txt2img({"prompt": prompt + " <lora:squares:1>", **GEN})
    assert (pixels(tagged) - pixels(before)).abs().mean() > 1
    assert "Lora hashes" in tagged.infotexts[0]
    # Applied by our loader, the file lowers the denoising loss on the training images.
    entry = engine.loras.find("squares")
    lora.apply_networks(model, [lora.ActiveNetwork(entry)])
    try:
        assert fixed_loss(model, images, lambda c: c) < loss_before * 0.95
    finally:
        lora.restore(model)


def test_sdxl_lora_uses_te1_te2_and_sgm_unet_names(engine, images):
    result = run_lora(engine, lora_config(images, steps=2, train_text_encoder=True, output_name="xl"),
                      checkpoint="sdxl.safetensors")
    sd = load_file(result.output)
    prefixes = {k.split("_text_model_")[0] if "_text_model_" in k else "_".join(k.split("_")[:3]) for k in sd}
    assert {"lora_te1", "lora_te2"} <= prefixes
    assert any(p.startswith("lora_unet_input") or p.startswith("lora_unet_output") for p in prefixes)
    model = engine.models.get("sdxl.safetensors")
    deltas = lora.compute_deltas(sd, lora.module_index(model))
    assert deltas.unmatched == [] and len(deltas.deltas) == len(sd) // 3
    with safe_open(str(result.output), "pt") as f:
        assert f.metadata()["ss_base_model_version"] == "sdxl_base_v1-0"


@pytest.mark.slow
def test_resume_continues_exactly_where_it_stopped(engine, images):
    straight = run_lora(engine, lora_config(images, steps=6, output_name="straight"))
    first = run_lora(engine, lora_config(images, steps=3, output_name="resumed", resume=True))
    reports = []
    second = run_lora(engine, lora_config(images, steps=6, output_name="resumed", resume=True),
                      on_progress=reports.append)
    assert first.steps_done == 3 and second.steps_done == 6
    assert reports[0].step == 3 and reports[0].message == "resumed"
    assert [r.step for r in reports if r.loss is not None][1] == 4
    assert second.losses[:3] == first.losses and len(second.losses) == 6
    a, b = load_file(straight.output), load_file(second.output)
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-3) for k in a)
    with pytest.raises(TrainingError, match="rank"):
        run_lora(engine, lora_config(images, steps=8, output_name="resumed", resume=True, rank=2, alpha=2))


def test_interrupt_saves_the_state_so_far(engine, images):
    def stop_at_two(progress):
        if progress.step == 2:
            engine.interrupt()

    result = run_lora(engine, lora_config(images, steps=50, output_name="stopped"), on_progress=stop_at_two)
    assert result.interrupted and result.steps_done == 2
    with safe_open(str(result.output), "pt") as f:
        assert f.metadata()["ss_steps"] == "2"
    assert torch.load(result.resume_file, weights_only=True)["step"] == 2
    assert not engine.state.active  # the queue turn and job state were given back


def test_bad_inputs_are_clear_errors_and_write_nothing(engine, tmp_path, images):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TrainingError, match="no images"):
        run_lora(engine, lora_config(empty))
    with pytest.raises(TrainingError, match="does not exist"):
        run_lora(engine, lora_config(tmp_path / "missing"))
    (images / "broken.png").write_bytes(b"not a png")
    with pytest.raises(TrainingError, match="broken.png"):
        run_lora(engine, lora_config(images))
    (images / "broken.png").unlink()
    with pytest.raises(TrainingError, match="unknown setting"):
        LoraTrainingConfig.from_dict({"dataset_dir": "x", "output_name": "y", "ranks": 4})
    with pytest.raises(TrainingError, match="sample settings"):
        run_lora(engine, lora_config(images, sample_every=5, sample_prompt="x", sample_sampler="No such sampler"))
    assert not (engine.paths.lora_dir / "squares.safetensors").exists()


def test_create_embedding_from_init_text(engine, load_tiny):
    sd1 = load_tiny("sd1.safetensors")
    path = create_embedding(sd1, engine.paths.embeddings_dir, "shiny", num_vectors=3, init_text="red square")
    vec = load_file(path)["emb_params"]
    ids = sd1.tokenizer(["red square"], add_special_tokens=False)["input_ids"][0]
    table = sd1.text_encoder.get_input_embeddings().weight
    assert vec.shape == (3, 64) and len(ids) == 2
    assert torch.equal(vec[0], table[ids[0]]) and torch.equal(vec[1], table[ids[0]])  # i·2//3 → 0, 0, 1
    assert torch.equal(vec[2], table[ids[1]])
    with pytest.raises(TrainingError, match="already exists"):
        create_embedding(sd1, engine.paths.embeddings_dir, "shiny")

    xl = load_tiny("sdxl.safetensors")
    xl_path = create_embedding(xl, engine.paths.embeddings_dir / "xl", "shinyxl", num_vectors=2, init_text="")
    tensors = load_file(xl_path)
    assert tensors["clip_l"].shape == (2, 64) and tensors["clip_g"].shape == (2, 128)
    db = EmbeddingDatabase(engine.paths.embeddings_dir)
    db.load(xl)
    assert "shinyxl" in db and "shiny" not in db


@pytest.mark.slow
def test_embedding_training_changes_only_its_vectors(engine, images):
    model = engine.models.get("sd1.safetensors")
    weights = {k: v.clone() for net in (model.unet, model.text_encoder) for k, v in net.state_dict().items()}
    config = EmbeddingTrainingConfig(dataset_dir=str(images), output_name="sqtok", num_vectors=2, init_text="square",
                                     steps=8, resolution=32, learning_rate=0.05, resume=False, sample_every=8,
                                     sample_prompt="a photo of sqtok", sample_steps=2)
    result = run_embedding(engine, config)
    assert result.output == engine.paths.embeddings_dir / "sqtok.safetensors" and result.samples
    trained = load_file(result.output)["emb_params"]
    square = model.text_encoder.get_input_embeddings().weight[
        model.tokenizer(["square"], add_special_tokens=False)["input_ids"][0][0]]
    assert trained.shape == (2, 64) and not torch.allclose(trained[0], square)
    after = {k: v for net in (model.unet, model.text_encoder) for k, v in net.state_dict().items()}
    assert all(torch.equal(weights[k], after[k]) for k in weights)
    with safe_open(str(result.output), "pt") as f:
        assert f.metadata()["step"] == "8"

    engine.embeddings.load(model)
    with_token = conditioning.encode(model, ["a photo of sqtok"], embeddings=engine.embeddings)
    plain = conditioning.encode(model, ["a photo of sqtok"])
    assert (with_token.embeds - plain.embeds).abs().max() > 1e-3
    image = engine.txt2img({"prompt": "a photo of sqtok", **GEN})
    assert "TI hashes: \"sqtok: " in image.infotexts[0]


def test_cli_trains_from_a_toml_config(engine, data_dir, images, tmp_path, capsys):
    from modules import cli

    cfg = tmp_path / "lora.toml"
    cfg.write_text('output_name = "cli-lora"\nsteps = 2\nresolution = 32\nrank = 2\nalpha = 1.0\n'
                   'learning_rate = 0.001\n')
    code = cli.main(["train-lora", "--data-dir", str(data_dir), "--config", str(cfg), "--dataset-dir", str(images),
                     "--checkpoint", "sd1.safetensors"])
    out = capsys.readouterr()
    assert code == 0, out.err
    info = json.loads(out.out)
    assert info["steps"] == 2 and info["output"].endswith("models/Lora/cli-lora.safetensors")
    assert "Step 2/2" in out.err
    with safe_open(info["output"], "pt") as f:
        assert f.metadata()["ss_network_dim"] == "2"

    cfg.write_text('output_name = "x"\nrank = 4\nsteps = "many"\n')
    assert cli.main(["train-embedding", "--data-dir", str(data_dir), "--config", str(cfg)]) == 2
    assert "steps" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not DEMO.is_file(), reason="demo checkpoint missing: python -m modules.training.demo_recipe")
def test_lora_trained_on_green_tinted_pictures_turns_pictures_green(tmp_path):
    """On the bundled demo model (it draws what prompts say): a LoRA trained on green-tinted shapes makes its
    pictures green; without the tag they stay as they were. Takes up to 30 s."""
    import numpy as np

    from modules import cmd_args
    from modules.engine import Engine
    from modules.paths import Paths
    from modules.training import shapes

    (tmp_path / "models" / "Stable-diffusion").mkdir(parents=True)
    (tmp_path / "models" / "Stable-diffusion" / DEMO.name).symlink_to(DEMO)
    engine = Engine.create(Paths.from_args(cmd_args.parse_args(["--data-dir", str(tmp_path), "--skip-install"],
                                                               env={})))
    folder = tmp_path / "green"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, scene in enumerate(shapes.all_scenes()[::8]):
        picture = shapes.draw(scene, rng)
        Image.blend(picture, Image.new("RGB", picture.size, (0, 255, 0)), 0.5).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(scene.caption)

    def greenness(prompt: str) -> float:
        a = np.asarray(engine.txt2img({**GEN, "prompt": prompt, "steps": 15, "cfg_scale": 5}).images[0],
                       dtype=np.float32)
        return float((a[..., 1] - (a[..., 0] + a[..., 2]) / 2).mean())

    prompt = "a red circle on a blue background"
    before = greenness(prompt)
    run_lora(engine, lora_config(folder, output_name="greentint", steps=60, batch_size=2, resolution=64,
                                 learning_rate=3e-3, rank=8, alpha=8), checkpoint=None)
    assert greenness(prompt + " <lora:greentint:1>") > before + 20
    assert greenness(prompt) == before


def test_captions_templates_and_aspect_buckets(tmp_path):
    import random

    from modules.training import dataset as ds

    Image.new("RGB", (64, 32), (255, 0, 0)).save(tmp_path / "0012-a_red_ball.png")
    Image.new("RGB", (20, 40), (0, 0, 255)).save(tmp_path / "b.png")
    (tmp_path / "b.txt").write_text("blue,  cube\n")
    items = ds.scan_folder(tmp_path)
    assert [(i.path.name, i.caption) for i in items] == [("0012-a_red_ball.png", "a red ball"), ("b.png", "blue, cube")]
    assert ds.tag_frequency(items) == {"a red ball": 1, "blue": 1, "cube": 1}
    template = ds.CaptionTemplate.resolve("subject_filewords")
    assert template.fill("tok", "a red ball", random.Random(0)).endswith(" a tok, a red ball")
    (tmp_path / ds.TEMPLATE_DIR_NAME).mkdir()
    (tmp_path / ds.TEMPLATE_DIR_NAME / "mine.txt").write_text("[filewords] by [name]\n\n")
    assert ds.CaptionTemplate.resolve("mine", [tmp_path / ds.TEMPLATE_DIR_NAME]).lines == ["[filewords] by [name]"]
    buckets = ds.bucket_sizes(512, 64)
    assert (512, 512) in buckets and all(w * h <= 512 * 512 and w % 64 == h % 64 == 0 for w, h in buckets)
    assert ds.nearest_bucket(1920, 1080, buckets) == (640, 384) and ds.nearest_bucket(300, 900, buckets) == (320, 640)
    wide = ds.to_pixels(ds.open_image(items[0].path), (32, 16))
    assert wide.shape == (3, 16, 32) and wide[0].min() == 1.0 and wide[2].max() == -1.0


def test_config_reads_json_and_rejects_bad_values(tmp_path):
    path = tmp_path / "ti.json"
    path.write_text(json.dumps({"dataset_dir": "imgs", "output_name": "tok", "num_vectors": 4, "steps": 10}))
    config = EmbeddingTrainingConfig.from_file(path, steps=20)
    assert (config.num_vectors, config.steps, config.learning_rate) == (4, 20, 0.005)
    config.validate()
    with pytest.raises(TrainingError, match="vectors per token"):
        EmbeddingTrainingConfig(dataset_dir="d", output_name="t", num_vectors=0).validate()
    with pytest.raises(TrainingError, match="file name"):
        LoraTrainingConfig(dataset_dir="d", output_name="../evil").validate()


def test_train_tab_streams_progress_and_shows_errors(engine, images, tmp_path):
    import gradio as gr

    from webui import train_tab

    with gr.Blocks():
        buttons = train_tab.build_train(engine)
    assert set(buttons) == {"interrupt", "train_lora", "train_embedding", "create"}
    updates = list(train_tab.stream_training(engine, "train-lora", train_lora,
                                             lambda: lora_config(images, steps=3, output_name="ui-lora")))
    progress, status, plot, _ = updates[-1]
    assert "Step 3/3" in progress and "Finished 3 steps" in status and plot.endswith("loss.png")
    assert (engine.paths.lora_dir / "ui-lora.safetensors").is_file()
    progress, status, _, _ = list(train_tab.stream_training(engine, "train-lora", train_lora,
                                                            lambda: lora_config(tmp_path / "nowhere")))[-1]
    assert "sd-error" in status and "does not exist" in status

"""What the page tells the user, without a browser: progress (loading, measured ETA, queued runs), PNG Info's
parameters, settings section titles, non-image uploads, the Train tab's default size (issue 14: 10, 13, 17, 18)."""
from __future__ import annotations

import logging
import re
from types import SimpleNamespace

import gradio as gr
import pytest
from PIL import Image, PngImagePlugin

from modules import jobs
from modules.jobs import JobState
from webui import runner


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(jobs, "_now", c)
    return c


def test_eta_comes_from_measured_step_times_not_from_the_model_load(clock):
    s = JobState()
    s.begin("txt2img", job_count=1)
    clock.t += 30  # loading the model and encoding the prompt
    s.sampling_steps, s.sampling_step = 20, 0
    clock.t += 0.5
    s.sampling_step = 1
    assert s.eta() == pytest.approx(19 * 0.5)  # the old estimate (elapsed / progress) said 579 s here
    clock.t += 1.5
    s.sampling_step = 4  # steps seen in one go (a slow poll, or a callback every few steps)
    assert s.eta() == pytest.approx(16 * 0.5)


def test_eta_counts_the_batches_left_and_the_time_between_them(clock):
    s = JobState()
    s.begin("txt2img", job_count=3)
    s.sampling_steps, s.sampling_step = 10, 0
    for step in range(1, 11):
        clock.t += 0.2
        s.sampling_step = step
    clock.t += 1.0  # decoding and saving the first batch
    s.next_job()
    s.sampling_step = 0
    clock.t += 0.2
    s.sampling_step = 1
    # 9 steps of this batch + 10 of the last, at 0.2 s; a 1 s tail after each of the 2 batches left to finish
    assert s.eta() == pytest.approx(19 * 0.2 + 2 * 1.0)


def test_eta_is_zero_before_any_step_was_measured(clock):
    s = JobState()
    s.begin("txt2img")
    assert s.eta() == 0.0
    s.sampling_steps, s.sampling_step = 20, 0
    assert s.eta() == 0.0


def _engine(state, loading=None):
    return SimpleNamespace(state=state, models=SimpleNamespace(loading=loading))


def test_progress_line_says_loading_model_then_steps(clock):
    s = JobState()
    s.begin("txt2img")
    text = runner.progress_html(_engine(s, loading="model.safetensors [abc]"), waiting=False)
    assert "Loading model model.safetensors [abc] …" in text and "Step" not in text
    text = runner.progress_html(_engine(s), waiting=False)
    assert "Preparing" in text and "Step 0/0" not in text
    s.sampling_steps, s.sampling_step = 20, 0
    clock.t += 0.5
    s.sampling_step = 1
    text = runner.progress_html(_engine(s), waiting=False, queued_behind=1)
    assert "Step 1/20" in text and "ETA 10s" in text and "1 more queued" in text
    assert "Waiting in queue…" in runner.progress_html(_engine(s), waiting=True)


class _Run:
    """A queued job that starts after two reads of its state and then takes one 50 ms step per read (60 steps, a
    preview every 10), followed by `runner._follow_one` as the page follows it; the clock is the test's."""

    def __init__(self, clock, refresh_ms):
        self.clock, self.reads = clock, 0
        self.state = JobState()
        self.job = SimpleNamespace(id="j", status="queued", progress=None, mode="txt2img", stage="")
        queue = SimpleNamespace(wait=self.read, position=lambda job: 1)
        self.engine = SimpleNamespace(state=self.state, models=SimpleNamespace(loading=None), visible_queue=queue,
                                      settings=SimpleNamespace(get=lambda name, default: {
                                          runner.REFRESH_SETTING: refresh_ms}.get(name, default)))

    def read(self, job_id, timeout):
        self.clock.t += 0.05
        self.reads += 1
        s, job = self.state, self.job
        if self.reads == 3:
            job.status = "running"
            s.begin("txt2img")
        elif self.reads == 4:
            s.sampling_steps = 60
        elif self.reads > 4 and s.sampling_step < 60:
            s.sampling_step += 1
            if s.sampling_step % 10 == 0:
                s.current_image, s.current_image_step = f"preview {s.sampling_step}", s.sampling_step
        elif self.reads > 4:
            job.status = "cancelled"  # the end of the run; what the page shows then is not this test's concern

    def lines(self, monkeypatch):
        """(time, progress line, preview) of each update that changes the progress line or the preview."""
        monkeypatch.setattr(runner, "time", SimpleNamespace(time=self.clock))
        shown = []
        for update in runner._follow_one(self.engine, self.job, ("session", "txt2img"), object()):
            line, preview = update[3], update[4]
            if isinstance(line, str) or preview.get("value") is not None:
                shown.append((self.clock.t, line if isinstance(line, str) else None, preview.get("value")))
        return shown[:-1]  # the last is the run's end


def test_progress_and_preview_update_at_the_refresh_period_and_a_new_phase_at_once(clock, monkeypatch):
    """A1111's "Progressbar and preview update period" (live_preview_refresh_period, default 1000 ms): every update
    re-renders the page's progress line and preview, which kept a browser ~0.4 CPU-s busy per second of a fast
    generation when each 0.1 s read of the state sent one."""
    every_read = _Run(clock, 0).lines(monkeypatch)
    steps = [line for _, line, _ in every_read if line and "Step " in line]
    assert len(steps) == 61 and "Step 0/60" in steps[0] and "Step 60/60" in steps[-1]
    assert [p for _, _, p in every_read if p] == [f"preview {n}" for n in range(10, 61, 10)]

    throttled = _Run(clock, 1000).lines(monkeypatch)
    kinds = [re.sub("<[^>]+>", "", line)[:8] for _, line, _ in throttled if line]
    assert kinds[:3] == ["Waiting ", "Preparin", "Step 0/6"]  # each phase at once, sampling's start too
    step_times = [t for t, line, _ in throttled if line and "Step " in line]
    assert 3 <= len(step_times) <= 5  # 3 s of steps: about one update a second, not 60
    gaps = [b - a for a, b in zip(step_times, step_times[1:])]
    assert all(gap >= 1.0 - 1e-9 for gap in gaps), gaps
    previews = [p for _, _, p in throttled if p]
    assert 2 <= len(previews) <= 4 and len(set(previews)) == len(previews)


def test_runs_of_one_browser_tab_keep_their_click_order():
    runs = runner._TabRuns()
    key = ("session", "txt2img")
    first, second = runs.add(key), runs.add(key)
    other = runs.add(("other session", "txt2img"))
    assert runs.position(key, first) == (0, 1) and runs.position(key, second) == (1, 0)
    assert runs.position(("other session", "txt2img"), other) == (0, 0)
    runs.remove(key, first)
    assert runs.position(key, second) == (0, 0)


def test_non_image_upload_names_the_file_not_gradios_internals(tmp_path):
    from gradio.components.image import ImageData

    text_file = tmp_path / "3f2a9c" / "notes.png"
    text_file.parent.mkdir()
    text_file.write_text("not a picture")
    image = gr.Image(type="pil")
    runner.guard_image_input(image, on_upload=False)
    with pytest.raises(gr.Error) as err:
        image.preprocess(ImageData(path=str(text_file), orig_name="notes.png"))
    assert str(err.value.message) == "not an image: notes.png"
    payload = {"path": str(text_file), "orig_name": "notes.png"}
    assert runner.unreadable_upload(payload) == "notes.png"
    assert runner.unreadable_upload({"background": payload, "layers": [], "composite": None}) == "notes.png"
    good = tmp_path / "good.png"
    Image.new("RGB", (8, 8)).save(good)
    assert runner.unreadable_upload({"path": str(good), "orig_name": "good.png"}) is None
    assert image.preprocess(ImageData(path=str(good), orig_name="good.png")).size == (8, 8)


def test_png_info_lists_only_what_the_file_holds(tmp_path):
    from webui.other_tabs import pnginfo_html

    text = "a cat\nNegative prompt: a dog\nSteps: 4, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 5, Size: 64x96"
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    path = tmp_path / "x.png"
    Image.new("RGB", (64, 96)).save(path, pnginfo=info)
    with Image.open(path) as im:
        page, raw = pnginfo_html(im)
    assert raw == text
    rows = page.split("<table", 1)[1]
    for shown in ("<th>Steps</th><td>4</td>", "<th>Sampler</th><td>DPM++ 2M Karras</td>",
                  "<th>Size</th><td>64x96</td>"):
        assert shown in rows
    for default in ("Clip skip", "RNG", "Schedule type", "Hires resize", "Size-1", "Masked area padding"):
        assert default not in rows


def test_settings_sections_have_a1111s_titles():
    from modules import shared
    from modules.settings import OPTIONS, section_title

    assert section_title("sd") == "Stable Diffusion" and section_title("vae") == "VAE"
    assert section_title("API") == "API" and section_title("saving-images") == "Saving images/grids"
    assert section_title("sdxl") == "Stable Diffusion XL" and section_title("ui") == "User interface"
    try:
        shared.opts.add_option("test_ext_opt", shared.OptionInfo(1, "x", section=("my-ext", "My Extension")))
        for key, value in shared.options_section(("other-ext", "Other Extension"),
                                                 {"test_ext_opt2": shared.OptionInfo(2, "y")}).items():
            shared.opts.add_option(key, value)
        assert section_title("my-ext") == "My Extension" and section_title("other-ext") == "Other Extension"
        assert section_title("no-title_here") == "No title here"
    finally:
        OPTIONS.pop("test_ext_opt", None)
        OPTIONS.pop("test_ext_opt2", None)


def test_train_tab_defaults_to_the_models_native_size(tiny_models):
    from pathlib import Path

    from webui.train_tab import native_size

    def engine_for(path, loaded=()):
        info = SimpleNamespace(filename=Path(path), is_diffusers=False)
        return SimpleNamespace(models=SimpleNamespace(resolve=lambda: info, loaded=list(loaded)))

    root = Path(__file__).resolve().parent.parent
    assert native_size(engine_for(root / "models" / "Stable-diffusion" / "demo-shapes.safetensors")) == 64
    assert native_size(engine_for(tiny_models.path("sdxl.safetensors"))) == 1024
    assert native_size(engine_for(tiny_models.path("sd1.safetensors"))) == 512
    loaded = SimpleNamespace(filename=tiny_models.path("sd1.safetensors"),
                             unet=SimpleNamespace(config=SimpleNamespace(sample_size=96)),
                             vae=SimpleNamespace(config=SimpleNamespace(block_out_channels=[1, 2, 3, 4])))
    assert native_size(engine_for(tiny_models.path("sd1.safetensors"), [loaded])) == 768


def test_corrupt_settings_file_is_backed_up_and_warned_about_once(tmp_path, caplog):
    """Every reader at start (extension preload, installers, the engine) loads config.json: the first moves the
    corrupt file aside, the others find none."""
    from modules.settings import Settings

    path = tmp_path / "config.json"
    path.write_text('{"samples_format": ')
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert Settings.load(path).samples_format == "png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json.bad"]
    assert caplog.text.count("is unusable") == 1


def test_do_not_show_images_samples_log_stdout_and_the_memory_line(capsys):
    """A1111's "Do not show any images in gallery" (the parameters still show), "Always print all generation
    info to standard output" (the generation info, as JSON, once per generation) and the memory line."""
    import json

    result = SimpleNamespace(images=[Image.new("RGB", (8, 8))], infotexts=["a cat\nSteps: 3, Seed: 9"],
                             index_of_first_image=0, interrupted=False, warnings=[], seed=9,
                             js=lambda: {"prompt": "a cat", "seed": 9})

    def finish(**settings):
        job = SimpleNamespace(id="j", status="done", result=result, progress=None, mode="txt2img", stage="",
                              finished=2.0, started=1.0, delivered=False)
        engine = SimpleNamespace(state=JobState(), settings=SimpleNamespace(get=lambda n, d: settings.get(n, d)),
                                 visible_queue=SimpleNamespace(wait=lambda *a, **k: None),
                                 memory=SimpleNamespace(summary=lambda: "Memory: everything on the GPU"))
        return list(runner._follow_one(engine, job, ("session", "txt2img"), object()))[-1]

    shown = finish()
    assert len(shown[0]) == 1 and capsys.readouterr().out == "" and "Memory: everything" in shown[2]
    assert "Memory" not in finish(memmon_poll_rate=0)[2]  # A1111's "VRAM usage polls per second": 0 is off
    hidden = finish(do_not_show_images=True, samples_log_stdout=True)
    assert hidden[0] == [] and "Steps: 3" in hidden[2]
    assert json.loads(capsys.readouterr().out) == {"prompt": "a cat", "seed": 9}

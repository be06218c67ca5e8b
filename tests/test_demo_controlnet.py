"""The bundled demo ControlNet (canny, trained by `modules.training.controlnet_recipe`) makes the map decide the shape.

Both shipped files go through the user's path (an Engine over a data dir with models/Stable-diffusion and
models/ControlNet); "a red circle on a white background" with a canny unit on a drawn square must give red squares,
on a drawn triangle triangles, and without a unit circles. 20 seeds per case in one batch request each.
"""
from __future__ import annotations

import pytest

from modules.training.controlnet_recipe import DEMO_CHECKPOINT, DEMO_CONTROLNET, make_engine, measure

pytestmark = pytest.mark.skipif(
    not (DEMO_CHECKPOINT.is_file() and DEMO_CONTROLNET.is_file()),
    reason="demo ControlNet missing: python -m modules.training.controlnet_recipe")


@pytest.fixture(scope="module")
def rates(tmp_path_factory):
    engine = make_engine(tmp_path_factory.mktemp("demo-cn-data"))
    return measure(engine, seeds=20, seed=1000)


def test_the_file_is_small_and_loads_as_an_sd1_controlnet(tmp_path):
    from modules import devices
    from modules.controlnet.models import load_file

    assert DEMO_CONTROLNET.stat().st_size <= 8 * 2**20
    loaded = load_file(DEMO_CONTROLNET, "demo", devices.cpu().device, devices.cpu().dtype)
    assert (loaded.kind, loaded.family) == ("controlnet", "sd1")
    assert loaded.model.config.cross_attention_dim == 64


@pytest.mark.slow
def test_the_map_decides_the_shape_and_the_prompt_the_colour(rates):
    square, triangle, plain = rates["square"], rates["triangle"], rates["no_unit"]
    assert square["shape_rate"] >= 0.8 and square["red_rate"] >= 0.8, square
    assert triangle["shape_rate"] >= 0.8 and triangle["red_rate"] >= 0.8, triangle
    assert square["circle_rate"] < 0.5 and triangle["circle_rate"] < 0.5, (square, triangle)
    assert plain["circle_rate"] >= 0.8, plain

"""ui-config.json's slider keys as A1111 reads them: `/minimum`, `/maximum`, `/step` and `/value`; a hand-edited
value outside the range, or a range that cannot be, is replaced with a warning instead of breaking Generate."""
from __future__ import annotations

import json
import logging

from webui.ui_config import UiConfig


def test_a_raised_maximum_allows_the_stored_value_and_built_ins_are_written(tmp_path):
    path = tmp_path / "ui-config.json"
    path.write_text(json.dumps({"txt2img/Sampling steps/maximum": 500, "txt2img/Sampling steps/value": 400}))
    cfg = UiConfig(path)
    assert cfg.slider("txt2img/Sampling steps", 1, 150, 20, 1) == {"minimum": 1, "maximum": 500, "step": 1,
                                                                    "value": 400}
    assert cfg.slider("txt2img/Width", 64, 2048, 512, 8)["value"] == 512
    cfg.save()
    saved = json.loads(path.read_text())
    assert saved["txt2img/Width/minimum"] == 64 and saved["txt2img/Width/step"] == 8
    assert saved["txt2img/Sampling steps/maximum"] == 500 and saved["txt2img/Sampling steps/minimum"] == 1


def test_an_impossible_value_or_range_is_replaced_with_a_warning(tmp_path, caplog):
    path = tmp_path / "ui-config.json"
    path.write_text(json.dumps({"a/Steps/value": 999, "b/Steps/minimum": 50, "b/Steps/maximum": 10,
                                "c/Steps/maximum": "lots", "d/Steps/step": 0}))
    cfg = UiConfig(path)
    with caplog.at_level(logging.WARNING):
        assert cfg.slider("a/Steps", 1, 150, 20, 1)["value"] == 150
        assert cfg.slider("b/Steps", 1, 150, 20, 1) == {"minimum": 1, "maximum": 150, "step": 1, "value": 20}
        assert cfg.slider("c/Steps", 1, 150, 20, 1)["maximum"] == 150
        assert cfg.slider("d/Steps", 1, 150, 20, 1)["step"] == 1
    text = caplog.text
    assert "a/Steps/value 999 is outside 1 to 150" in text and "b/Steps has minimum 50, maximum 10" in text
    assert "c/Steps/maximum is 'lots'" in text and "d/Steps has minimum 1, maximum 150, step 0" in text

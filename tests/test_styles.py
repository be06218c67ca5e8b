"""styles.csv as A1111: {prompt} placeholder, else appended with ", "; atomic save; several files."""
from __future__ import annotations

from modules.request_types import Txt2ImgRequest
from modules.styles import PromptStyle, StyleDatabase, merge_prompts


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_merge_prompts():
    assert merge_prompts("masterpiece", "a cat") == "a cat, masterpiece"
    assert merge_prompts("photo of {prompt}, 4k", "a cat") == "photo of a cat, 4k"
    assert merge_prompts("masterpiece", "") == "masterpiece"
    assert merge_prompts("", "a cat ") == "a cat"


def test_apply_styles_from_csv(tmp_path):
    f = _write(tmp_path / "styles.csv", 'name,prompt,negative_prompt\n'
               'Photo,"photo of {prompt}, 4k","cartoon, drawing"\n'
               'Quality,masterpiece,lowres\n'
               'Empty,,\n')
    db = StyleDatabase(f)
    assert db.names() == ["Photo", "Quality", "Empty"]
    p, n = db.apply("a cat", "blurry", ["Photo", "Quality", "Unknown"])
    assert p == "photo of a cat, 4k, masterpiece"
    assert n == "blurry, cartoon, drawing, lowres"
    assert db.apply("a cat", "", ["Empty"]) == ("a cat", "")
    req = Txt2ImgRequest(prompt="a dog", negative_prompt="", styles=["Quality"])
    db.apply_to_request(req)
    assert (req.prompt, req.negative_prompt) == ("a dog, masterpiece", "lowres")
    found, prompt, negative = db.extract_styles_from_prompt("photo of a cat, 4k, masterpiece",
                                                           "blurry, cartoon, drawing, lowres")
    assert found == ["Photo", "Quality"] and prompt == "a cat" and negative == "blurry"


def test_save_is_atomic_and_keeps_files_apart(tmp_path):
    first = _write(tmp_path / "styles.csv", "name,prompt,negative_prompt\nA,a,na\n")
    second = _write(tmp_path / "more.csv", "name,prompt,negative_prompt\nB,\"b, with comma\",nb\n")
    db = StyleDatabase([first, second])
    db.save_style(PromptStyle("C", "c {prompt}", ""))
    db.save_style(PromptStyle("B", "b2", "nb2"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left behind
    again = StyleDatabase([first, second])
    assert again.styles["C"].prompt == "c {prompt}" and again.styles["C"].path == first
    assert again.styles["B"].prompt == "b2" and again.styles["B"].path == second
    assert "A" in first.read_text() and "B" not in first.read_text()
    again.delete_style("A")
    assert "A" not in StyleDatabase([first, second]).styles


def test_missing_file_is_empty(tmp_path):
    assert StyleDatabase(tmp_path / "nope.csv").names() == []

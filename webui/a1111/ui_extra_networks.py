"""A1111's `modules.ui_extra_networks`: extension pages for the Extra Networks panel are accepted and listed;
our panel shows LoRA, embeddings and checkpoints, and registered pages are kept for a later panel version."""
from __future__ import annotations

extra_pages: list = []
allowed_dirs: set = set()


class ExtraNetworksPage:
    def __init__(self, title):
        self.title = title
        self.name = title.lower()
        self.id_page = self.name.replace(" ", "_")
        self.items: dict = {}
        self.allow_negative_prompt = False

    def refresh(self):
        pass

    def list_items(self):
        return []

    def allowed_directories_for_previews(self):
        return []

    def create_item(self, name, index=None, enable_filter=True):
        return None


def register_page(page) -> None:
    extra_pages.append(page)
    allowed_dirs.update(page.allowed_directories_for_previews())


def quote_js(s):
    s = str(s).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'

"""A1111's DeepDanbooru and CLIP interrogators: not included; the names exist and say so when used."""
from __future__ import annotations

from modules.a1111.unsupported import Unsupported


class DeepDanbooru:
    def __init__(self):
        self.model = None

    def load(self):
        Unsupported("deepbooru.model", "DeepDanbooru is not included").load()

    def tag(self, pil_image):
        Unsupported("deepbooru.model", "DeepDanbooru is not included").tag()

    def tag_multi(self, pil_image, force_disable_ranks=False):
        self.tag(pil_image)

    def start(self):
        self.load()

    def stop(self):
        """Nothing is loaded."""


model = DeepDanbooru()


class InterrogateModels:
    def __init__(self, content_dir=None):
        self.content_dir = content_dir

    def interrogate(self, pil_image):
        Unsupported("interrogate.InterrogateModels", "the CLIP interrogator is not included").interrogate()

    def load(self):
        self.interrogate(None)

    def unload(self):
        """Nothing is loaded."""

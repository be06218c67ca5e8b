"""What a cluster worker runs (a Ray actor, one per device): its own Engine over the shared data folder, taking
typed requests and the head's settings, saving pictures into the shared outputs folder (the file names are taken
atomically, so workers never overwrite each other's) and answering the result. The head indexes the saved files;
a worker keeps no history database of its own. Its JobState is read by the head while a job runs (the actor is
threaded, so `state`, `interrupt` and `skip` answer during `run`)."""
from __future__ import annotations

import io
import os
import time
from typing import Any


class EngineWorker:
    def __init__(self, argv: list[str], name: str):
        from modules import cmd_args
        from modules.startup_heap import long_lived

        self.name = name
        ns, _ = cmd_args.build_parser().parse_known_args(argv)  # extensions' flags mean nothing to a worker
        with long_lived():  # the engine and the model code, before any checkpoint is read
            from modules.engine import Engine
            from modules.models.loader import import_model_classes

            self.engine = Engine.from_args(ns, history=False)
            import_model_classes()
        self._preview_step = -1
        self.loads: dict[str, int] = {}  # how often each checkpoint was read from disk here

    def pid(self) -> int:
        return os.getpid()

    def info(self) -> dict[str, Any]:
        engine = self.engine
        device = engine.device_config.device
        memory = ""
        if device.type == "cuda":
            import torch

            free, total = torch.cuda.mem_get_info(device)
            memory = f"{(total - free) / 2**30:.1f}/{total / 2**30:.1f} GiB"
        return {"name": self.name, "device": str(device), "memory": memory,
                "loaded": [str(m.filename) for m in engine.models.loaded], "loads": dict(self.loads)}

    def run(self, request, settings: dict[str, Any], script_args: list | None = None) -> dict[str, Any]:
        """The request with the head's settings of the moment (in memory here, never saved by a worker)."""
        engine = self.engine
        for name, value in settings.items():
            if engine.settings.get(name, None) != value:
                try:
                    engine.settings.set(name, value, allow_unknown=True)
                except ValueError:
                    continue  # a setting this worker's code does not know: the head's choice does not apply here
        self._preview_step = -1
        started = time.time()
        before = {str(m.filename) for m in engine.models.loaded}
        try:
            result = engine.generate(request, script_args)
        finally:
            for name in {str(m.filename) for m in engine.models.loaded} - before:
                self.loads[name] = self.loads.get(name, 0) + 1
        steps = max(1, int(getattr(result, "steps", 0) or 0)) * max(1, len(result.all_seeds) or 1)
        return {"result": result, "seconds": time.time() - started, "steps": steps, **self.info()}

    def state(self) -> dict[str, Any]:
        """The running job's progress (A1111's progress fields), its ETA, and the live preview when it changed."""
        st = self.engine.state
        out = {"active": st.active, "job": st.job, "job_count": st.job_count, "job_no": st.job_no,
               "sampling_step": st.sampling_step, "sampling_steps": st.sampling_steps, "textinfo": st.textinfo,
               "progress": st.progress(), "eta": st.eta(), "interrupted": st.interrupted, "skipped": st.skipped,
               "preview": None, "preview_step": st.current_image_step}
        image = st.current_image
        if image is not None and st.current_image_step != self._preview_step:
            self._preview_step = st.current_image_step
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            out["preview"] = buf.getvalue()
        return out

    # -- files from the head (setting "cluster_copy_models"; modules/cluster/files.py) --------------------------

    def missing(self, files: list) -> list:
        from modules.cluster.files import Receiver

        return Receiver(self.engine.paths.models_dir, self.engine.paths.embeddings_dir).missing(files)

    def write(self, rel: str, offset: int, data: bytes) -> None:
        from modules.cluster.files import Receiver

        Receiver(self.engine.paths.models_dir, self.engine.paths.embeddings_dir).write(rel, offset, data)

    def commit(self, rel: str, sha256: str) -> None:
        """The file is in place (its sha256 checked): the checkpoint and LoRA lists know it now."""
        from modules.cluster.files import Receiver

        Receiver(self.engine.paths.models_dir, self.engine.paths.embeddings_dir).commit(rel, sha256)
        self.engine.registry.refresh()
        self.engine.loras.refresh()

    def interrupt(self) -> None:
        self.engine.interrupt()

    def stop_generating(self) -> None:
        self.engine.stop_after_current()

    def skip(self) -> None:
        self.engine.skip()

"""A1111's task progress (POST /internal/progress's answers, modules/task_progress.py) for tasks extensions keep
with A1111's modules.progress functions: queued with their place, running with the engine's progress, done."""
from __future__ import annotations

from types import SimpleNamespace

from modules import task_progress
from modules.a1111 import progress as tasks
from modules.jobs import JobState


def test_an_extensions_task_is_queued_then_running_then_completed():
    engine = SimpleNamespace(visible_queue=None, state=JobState())
    tasks.add_task_to_queue("task(first)")
    tasks.add_task_to_queue("task(second)")
    try:
        second = task_progress.progress(engine, "task(second)")
        assert second["queued"] and not second["active"] and second["textinfo"] == "In queue: 2/2"
        assert task_progress.pending(engine) == {"size": 2, "tasks": ["task(first)", "task(second)"]}

        tasks.start_task("task(first)")
        engine.state.begin("txt2img")
        engine.state.sampling_steps, engine.state.sampling_step = 10, 5
        running = task_progress.progress(engine, "task(first)")
        assert running["active"] and not running["queued"] and 0 < running["progress"] < 1
        assert task_progress.progress(engine, "task(second)")["textinfo"] == "In queue: 1/1"

        engine.state.end()
        tasks.finish_task("task(first)")
        done = task_progress.progress(engine, "task(first)")
        assert done["completed"] and not done["active"]
        response = tasks.progressapi(SimpleNamespace(id_task="task(first)"))
        assert response.completed is True and response.id_live_preview == -1
    finally:
        tasks.pending_tasks.clear()
        tasks.current_task = None

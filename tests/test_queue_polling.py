"""An idle server leaves the CPU alone: Gradio's queue looks for work every 50 ms instead of every 1 ms while nothing
arrives, and at Gradio's own speed for a second after something does (webui/queue_polling.py)."""
from __future__ import annotations

import asyncio

import gradio as gr

from webui import queue_polling


def test_the_queue_polls_slowly_when_idle_and_quickly_after_a_push(monkeypatch):
    monkeypatch.setattr(queue_polling, "BUSY_FOR_S", 0.2)
    with gr.Blocks() as demo:
        gr.Textbox()
    demo.queue()
    queue = demo._queue
    gradio_speed = queue.sleep_when_free
    pushed = []

    async def push(body, request, username=None):
        pushed.append(body)
        return True, "event-1", None

    queue.push = push
    queue_polling.calm_when_idle(demo)
    assert queue.sleep_when_free == max(gradio_speed, 0.05)
    assert queue.progress_update_sleep_when_free >= 0.1

    async def scenario():
        answer = await queue.push("click", None)
        fast = queue.sleep_when_free
        await asyncio.sleep(0.1)
        await queue.push("then", None)  # a chained event keeps it quick for another period
        await asyncio.sleep(0.15)
        still_fast = queue.sleep_when_free
        await asyncio.sleep(0.15)
        return answer, fast, still_fast, queue.sleep_when_free

    answer, fast, still_fast, later = asyncio.run(scenario())
    assert answer == (True, "event-1", None) and pushed == ["click", "then"]
    assert fast == still_fast == gradio_speed
    assert later == max(gradio_speed, 0.05)


def test_a_gradio_without_these_settings_is_left_as_it_is():
    class Queue:
        sleep_when_free = "unknown"

    class Demo:
        _queue = Queue()

    queue_polling.calm_when_idle(Demo())
    assert Demo._queue.sleep_when_free == "unknown" and not hasattr(Demo._queue, "push")

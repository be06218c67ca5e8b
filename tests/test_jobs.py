"""One generation at a time, in arrival order, each caller getting its own results."""
import pytest
import threading
import time

from modules.jobs import JobQueue, JobState


def test_queue_serves_in_arrival_order_one_at_a_time():
    """Each caller joins the queue only after the previous one is waiting (no sleeps that a busy machine reorders)."""
    q = JobQueue()
    order, running = [], []
    first_has_turn, release = threading.Event(), threading.Event()

    def job(name):
        with q.turn():
            running.append(name)
            assert len(running) == 1
            order.append(name)
            if name == "j0":
                first_has_turn.set()
                release.wait(10)
            running.remove(name)

    threads = [threading.Thread(target=job, args=(f"j{i}",)) for i in range(5)]
    threads[0].start()
    assert first_has_turn.wait(10)
    for i, t in enumerate(threads[1:], start=1):
        t.start()
        deadline = time.monotonic() + 10
        while q.pending < i and time.monotonic() < deadline:
            time.sleep(0.001)
        assert q.pending == i
    release.set()
    for t in threads:
        t.join()
    assert order == ["j0", "j1", "j2", "j3", "j4"]


def test_state_progress_and_eta():
    s = JobState()
    s.begin("txt2img", job_count=2)
    s.sampling_steps, s.sampling_step = 10, 5
    assert s.progress() == 0.25
    s.next_job()
    assert s.job_no == 1 and s.progress() == 0.5
    assert s.eta() >= 0
    s.end()
    assert not s.active and s.progress() == 0.0


@pytest.mark.slow
def test_two_callers_at_once_get_their_own_images(engine):
    results = {}

    def run(seed):
        results[seed] = engine.txt2img({"prompt": "x", "steps": 2, "width": 64, "height": 64, "seed": seed,
                                        "do_not_save_samples": True})

    threads = [threading.Thread(target=run, args=(s,)) for s in (11, 22)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[11].all_seeds == [11] and results[22].all_seeds == [22]
    assert "Seed: 11," in results[11].infotexts[0] and "Seed: 22," in results[22].infotexts[0]

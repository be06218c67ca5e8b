"""Several GPUs (or machines) behind one UI: the visible queue's jobs run on Ray actors, each owning one Engine on
one device (`--cluster`). `dispatch` picks a worker for a job (pure), `worker` is what an actor runs, `executor`
connects them to the queue. Nothing here is imported, and Ray is not needed, unless `--cluster` is given."""

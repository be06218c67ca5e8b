"""`python launch.py --worker --cluster address=HOST:PORT`: this machine becomes a node of the head's Ray cluster
(Ray's own `ray start --address … --block`), so the head's workers can be placed on its GPUs. The repository and the
data folder must be at the same paths as on the head (the workers import the code and read the models there)."""
from __future__ import annotations

import shutil
import subprocess
import sys


def node_command(address: str, gpus: int | None) -> list[str]:
    ray = shutil.which("ray") or "ray"
    cmd = [ray, "start", f"--address={address}", "--block", "--disable-usage-stats"]
    if gpus is not None:
        cmd.append(f"--num-gpus={gpus}")
    return cmd


def join_as_node(ns) -> int:
    address = str(ns.cluster or "")
    for prefix in ("address=", "ray://"):
        address = address.removeprefix(prefix)
    if not address or address == "auto":
        print("launch.py: error: --worker needs the head's address: --cluster address=HOST:PORT", file=sys.stderr)
        return 2
    if shutil.which("ray") is None:
        print("launch.py: error: --worker needs Ray: pip install -r requirements-cluster.txt", file=sys.stderr)
        return 2
    try:
        import torch

        gpus = torch.cuda.device_count()
    except ImportError:
        gpus = None
    print(f"Joining the Ray cluster at {address} as a worker node ({gpus or 0} GPU(s)); Ctrl+C to leave", flush=True)
    return subprocess.call(node_command(address, gpus))

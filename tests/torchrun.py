"""Run ``nlframe`` under ``torch.distributed.run`` (gloo, CPU processes) from a test."""

import os
import socket
import subprocess
import sys

import pytest
import torch.distributed as dist

needs_gloo = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def torchrun(args: list[str], nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run … -m nlframe *args`` on ``nproc`` local processes,
    rendezvous on a free loopback port, output captured as text."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes=1",
                           f"--nproc_per_node={nproc}", "--rdzv-backend=c10d",
                           f"--rdzv-endpoint=127.0.0.1:{port}", "-m", "nlframe", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)

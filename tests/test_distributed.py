"""Data-parallel training under torchrun (gloo, 2 CPU processes) equals one process."""

import os
import socket
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from .test_train import tiny_spec

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_two_process_ddp_matches_single_process(tmp_path):
    spec = tiny_spec(tmp_path, steps=3)
    one, two = tmp_path / "one", tmp_path / "two"
    common = ["train", str(spec), "--no-progress"]
    subprocess.run([sys.executable, "-m", "nlframe", *common, "--out", str(one)], check=True,
                   capture_output=True, timeout=300)
    with socket.socket() as sock:  # a free loopback port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes=1",
                        "--nproc_per_node=2", "--rdzv-backend=c10d",
                        f"--rdzv-endpoint=127.0.0.1:{port}", "-m", "nlframe", *common,
                        "--out", str(two)], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "checkpoint:" in r.stdout  # rank 0's summary is flushed before the worker exits
    w1 = load_file(str(one / "checkpoint" / "model.safetensors"))
    w2 = load_file(str(two / "checkpoint" / "model.safetensors"))
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5, msg=k)


def test_exit_worker_flushes_its_output_and_exits_with_the_code():
    code = ("import logging, sys; from nlframe.distributed import exit_worker; "
            "print('out', end=''); sys.stderr.write('err'); "
            "logging.basicConfig(stream=sys.stderr); logging.warning('logged'); exit_worker(3)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout) == (3, "out")
    assert r.stderr.startswith("err") and "logged" in r.stderr

"""Data-parallel training under torchrun (gloo, 2 CPU processes) equals one process."""

import subprocess
import sys

import torch
from safetensors.torch import load_file

from .test_train import tiny_spec
from .torchrun import needs_gloo, torchrun


@needs_gloo
def test_two_process_ddp_matches_single_process(tmp_path):
    spec = tiny_spec(tmp_path, steps=3)
    one, two = tmp_path / "one", tmp_path / "two"
    common = ["train", str(spec), "--no-progress"]
    subprocess.run([sys.executable, "-m", "nlframe", *common, "--out", str(one)], check=True,
                   capture_output=True, timeout=300)
    r = torchrun([*common, "--out", str(two)])
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

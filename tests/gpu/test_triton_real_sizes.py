"""The ``triton`` kernels at real sizes in half precision, on a CUDA device.

Skipped without one (CI checks the kernels through Triton's CPU interpreter at small
shapes in ``tests/plugins/backends``). Run on a GPU machine with
``pytest tests/gpu``. ``NLFRAME_GPU_TESTS_ON_CPU=1`` runs the same cases on the CPU
through the interpreter at small shapes, to check this module itself.

Each family of levels the kernels compute (linear memory with momentum, CMS chunk
writes of an MLP memory, DGD with self targets, linear and MLP) runs at B=2, H=4,
T=1024 and head dims 64 and 128 in float16 and bfloat16; the ``reference`` loop runs
in float64 on the same rounded inputs, so the error is what the kernels' half
precision inputs and outputs leave (they compute in float32 inside). Tolerances,
norm-wise relative: reads and final state 1e-2 (float16) / 5e-2 (bfloat16); the
gradients of ``Σ y·w`` w.r.t. q, k, v and the gates 3e-2 / 1e-1. Measured at the small
CPU shapes (from a random nonzero W0): reads and state 2e-4–1.3e-3 (float16) and
1.6e-3–1.7e-2 (bfloat16, the largest the MLP memory's DGD state), gradients up to
1.5e-3 and 1.6e-2; the real sizes are unmeasured until a GPU run.
"""

from __future__ import annotations

import os

import pytest
import torch

import nlframe
from nlframe.scan import make_memory, make_rule
from nlframe.testing.assertions import rel_rmse

pytest.importorskip("triton")

ON_CPU = os.environ.get("NLFRAME_GPU_TESTS_ON_CPU") == "1"
if not (torch.cuda.is_available() or ON_CPU):
    pytest.skip("needs a CUDA device (or NLFRAME_GPU_TESTS_ON_CPU=1)", allow_module_level=True)

DEVICE = torch.device("cpu" if ON_CPU else "cuda")
B, H, T = (1, 2, 37) if ON_CPU else (2, 4, 1024)
DIMS = (16,) if ON_CPU else (64, 128)
TOL = {torch.float16: (1e-2, 3e-2), torch.bfloat16: (5e-2, 1e-1)}  # (reads, gradients)

FAMILIES = {
    "linear-momentum-token": dict(memory="linear", optimizer="momentum", chunk_size=1),
    "linear-momentum-chunk16": dict(memory="linear", optimizer="momentum", chunk_size=16),
    "mlp-cms": dict(memory="mlp", optimizer="momentum", chunk_size=16, read="chunk_start",
                    write="chunk"),
    "linear-dgd-self": dict(memory="linear", optimizer="dgd", chunk_size=8, read="chunk_start",
                            self_target=True),
    "mlp-dgd-self": dict(memory="mlp", optimizer="dgd", chunk_size=8, read="chunk_start",
                         self_target=True),
}


@pytest.fixture(autouse=True)
def interpret(monkeypatch):
    if ON_CPU:
        monkeypatch.setenv("TRITON_INTERPRET", "1")


def inputs(D: int, dtype: torch.dtype, momentum: bool) -> dict[str, torch.Tensor]:
    """Inputs rounded to ``dtype``: unit-norm keys, θ ∈ [0, 0.5], α ∈ [0, 0.02], η ∈ [0, 0.9]."""
    gen = torch.Generator().manual_seed(D)
    q, k, v = (torch.randn(B, H, T, D, generator=gen) for _ in range(3))
    out = dict(q=q, k=k / k.norm(dim=-1, keepdim=True), v=v,
               lr=0.5 * torch.rand(B, H, T, generator=gen),
               decay=0.02 * torch.rand(B, H, T, generator=gen))
    if momentum:
        out["momentum"] = 0.9 * torch.rand(B, H, T, generator=gen)
    return {n: x.to(dtype).to(DEVICE) for n, x in out.items()}


def run(backend: str, x: dict[str, torch.Tensor], dtype: torch.dtype, family: dict,
        weight: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Reads and final parameters, and the gradients of ``Σ y·w`` w.r.t. every input."""
    leaves = {n: t.detach().to(dtype).requires_grad_() for n, t in x.items()}
    D = x["q"].shape[-1]
    memory_kwargs = {"hidden": 2 * D} if family["memory"] == "mlp" else {}
    gen = torch.Generator().manual_seed(7)
    memory = make_memory(family["memory"], D, D, **memory_kwargs)
    params = {n: p + 0.5 * torch.randn(p.shape, generator=gen) / D**0.5  # W0 ≠ 0 (linear's is 0)
              for n, p in memory.init_params(generator=gen).items()}
    state = nlframe.initial_state(memory,
                                  make_rule(family["optimizer"]), batch=B, heads=H,
                                  params={n: p.to(DEVICE, dtype) for n, p in params.items()},
                                  chunk_size=family["chunk_size"])
    gates = {n: t for n, t in leaves.items() if n not in ("q", "k", "v")}
    y, new = nlframe.memory_scan(leaves["q"], leaves["k"], leaves["v"], **gates, **family,
                                 memory_kwargs=memory_kwargs, state=state, backend=backend)
    grads = torch.autograd.grad((y * weight.to(dtype)).sum(), list(leaves.values()))
    out = {"y": y, **{f"W.{n}": p for n, p in new.params.items()}}
    return out, dict(zip(leaves, grads))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("D", DIMS)
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_half_precision_at_real_sizes(name, D, dtype):
    family = FAMILIES[name]
    x = inputs(D, dtype, family["optimizer"] == "momentum")
    weight = torch.randn(B, H, T, D, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    exact, exact_g = run("reference", x, torch.float64, family, weight)
    got, got_g = run("triton", x, dtype, family, weight)
    read_tol, grad_tol = TOL[dtype]
    for key in exact:
        assert got[key].dtype == dtype
        assert rel_rmse(got[key], exact[key]) <= read_tol, (key, rel_rmse(got[key], exact[key]))
    for key in exact_g:
        err = rel_rmse(got_g[key], exact_g[key])
        assert err <= grad_tol, (f"d/d{key}", err)

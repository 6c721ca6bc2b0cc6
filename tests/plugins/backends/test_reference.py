"""The ``reference`` backend: an independent per-(b, h) loop with ``torch.func``,
autograd bookkeeping and genericity over update rules."""

from __future__ import annotations

import pytest
import torch
from torch.func import grad

import nlframe
from nlframe.scan import make_memory, make_objective

from .scan_cases import DT, assert_close, gates, qkv, random_state


@pytest.mark.parametrize("memory,objective,chunk", [("mlp", "huber", 3), ("residual-mlp", "lp", 2),
                                                    ("linear", "lp", 1), ("mlp", "dot", 1)])
def test_matches_unbatched_functional_loop(memory, objective, chunk):
    """The batched autograd trick (gradient of the summed per-(b, h) losses) equals
    one ``torch.func.grad`` per (b, h, t) on unbatched parameters."""
    gen = torch.Generator().manual_seed(0)
    B, H, T, D = 2, 2, 9, 3
    q, k, v = qkv(gen, B, H, T, D, D)
    lr, decay, mom = gates(gen, (B, H, T), lr_max=0.5)
    mkw = {"hidden": 4} if memory != "linear" else {}
    state = random_state(gen, memory, B, H, D, D, mkw)
    y, new = nlframe.memory_scan(q, k, v, memory=memory, objective=objective, lr=lr, decay=decay,
                                 momentum=mom, chunk_size=chunk, state=state, memory_kwargs=mkw,
                                 backend="reference")
    mem, obj = make_memory(memory, D, D, **mkw), make_objective(objective)

    def loss(params, kt, vt):
        return obj.loss(mem.read(params, kt[None]), vt[None]).sum()

    for b in range(B):
        for h in range(H):
            W = {n: p[b, h] for n, p in state.params.items()}
            S = {n: p[b, h] for n, p in state.momentum.items()}
            for t in range(T):
                if t % chunk == 0:
                    W_cs = dict(W)
                g = grad(loss)(W_cs, k[b, h, t], v[b, h, t])
                S = {n: mom[b, h, t] * S[n] - lr[b, h, t] * g[n] for n in S}
                W = {n: (1 - decay[b, h, t]) * W[n] + S[n] for n in W}
                assert_close(y[b, h, t], mem.read(W, q[b, h, t][None])[0], f"y[{b},{h},{t}]")
            assert_close({n: p[b, h] for n, p in new.params.items()}, W, "params")
            assert_close({n: p[b, h] for n, p in new.momentum.items()}, S, "momentum")


def test_no_graph_unless_an_input_requires_grad():
    gen = torch.Generator().manual_seed(1)
    q, k, v = qkv(gen, 1, 1, 4, 2, 2)
    y, s = nlframe.memory_scan(q, k, v, memory="mlp", chunk_size=2, backend="reference")
    assert not y.requires_grad and not s.params["W1"].requires_grad
    k.requires_grad_()
    y, s = nlframe.memory_scan(q, k, v, memory="mlp", chunk_size=2, backend="reference")
    assert y.requires_grad and s.params["W1"].requires_grad
    (g,) = torch.autograd.grad(y.sum(), k)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    with torch.no_grad():
        y, s = nlframe.memory_scan(q, k, v, memory="mlp", chunk_size=2, backend="reference")
    assert not y.requires_grad and not s.params["W1"].requires_grad


def test_learnable_initial_params_receive_gradients():
    """A model learns W_0 by passing it to ``initial_state`` (here an MLP memory)."""
    gen = torch.Generator().manual_seed(2)
    q, k, v = qkv(gen, 2, 2, 6, 3, 3)
    mem = make_memory("mlp", 3, 3, hidden=4)
    w0 = {n: p.to(DT).requires_grad_() for n, p in mem.init_params().items()}
    rule = nlframe.scan.make_rule("momentum")
    state = nlframe.initial_state(mem, rule, batch=2, heads=2, params=w0)
    y, _ = nlframe.memory_scan(q, k, v, memory="mlp", memory_kwargs={"hidden": 4}, chunk_size=3,
                               state=state, backend="reference")
    grads = torch.autograd.grad(y.square().sum(), list(w0.values()))
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)

"""The ``reference`` backend: the scan contract as an explicit token loop (ground truth)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from nlframe.interfaces import Backend, ScanRequest
from nlframe.level import MemoryState, tree_map


def _tracks_grad(request: ScanRequest) -> bool:
    """Whether any input of the scan is part of an autograd graph we must extend."""
    if not torch.is_grad_enabled():
        return False
    leaves: list[Any] = [request.q, request.k, request.v, *request.hyper.values(),
                         request.state.params, request.state.opt_state, request.state.chunk_params]
    found = []
    tree_map(lambda t: found.append(t.requires_grad), leaves)
    return any(found)


class ReferenceBackend(Backend):
    """Token loop of DESIGN.md §2 for any memory, objective and update rule.

    For every token ``t`` (chunk size ``C``; a chunk opens when ``position = 0``)::

        W_cs ← W                                   if position = 0
        g_t = ∇_W ℓ(W_cs; k_t, v_t)                (autograd, batched over (B, H))
        (W, opt) ← rule.update(g_t, opt, W, θ_t, α_t, η_t, …)
        y_t = M_W(q_t)                             (read after write)

    For ``momentum`` this is ``S_t = η_t S_{t−1} − θ_t g_t``, ``W_t = (1−α_t) W_{t−1} + S_t``
    (Titans arXiv 2501.00663 eqs. 9–10, 13; NL arXiv 2512.24695, levels updated every
    ``C`` tokens). The per-(b, h) losses are independent, so the gradient of their
    sum is every element's own gradient. The inner gradients are taken with
    ``create_graph`` when an outer graph exists, so the outer level trains through
    the loop. Clarity over speed: one Python iteration per token.
    """

    priority = 0

    def supports(self, request: ScanRequest) -> str | None:
        return None

    def scan(self, request: ScanRequest) -> tuple[Tensor, MemoryState]:
        memory, objective, rule, C = request.memory, request.objective, request.rule, request.chunk_size
        state = request.state
        track = _tracks_grad(request)
        params, opt_state = dict(state.params), state.opt_state
        chunk_params, position = dict(state.chunk_params), state.position
        T = request.q.shape[2]
        ys = []
        with torch.enable_grad():
            for t in range(T):
                if position == 0:
                    chunk_params = dict(params)
                point = {n: p if p.requires_grad else p.detach().requires_grad_(True)
                         for n, p in chunk_params.items()}
                pred = memory.read(point, request.k[:, :, t:t + 1])  # (B, H, 1, Dv)
                loss = objective.loss(pred, request.v[:, :, t:t + 1]).sum()
                names = list(point)
                grads = torch.autograd.grad(loss, [point[n] for n in names], create_graph=track,
                                            allow_unused=True)
                grads = {n: torch.zeros_like(point[n]) if g is None else g
                         for n, g in zip(names, grads)}
                params, opt_state = rule.update(grads, opt_state, params, **request.hyper_at(t))
                if not track:
                    params, opt_state = tree_map(Tensor.detach, params), tree_map(Tensor.detach, opt_state)
                ys.append(memory.read(params, request.q[:, :, t:t + 1]))  # (B, H, 1, Dv)
                position = (position + 1) % C
        y = torch.cat(ys, dim=2)
        if not track:
            y = y.detach()
        if position == 0:
            chunk_params = dict(params)
        return y, MemoryState(params=params, opt_state=opt_state, chunk_params=chunk_params,
                              position=position, chunk_size=C, step=state.step + T)

"""The ``reference`` backend: the scan contract as an explicit token loop (ground truth)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from nlframe.interfaces import Backend, Params, ScanRequest
from nlframe.level import MemoryState, tree_map
from nlframe.utils import bcast


def _tracks_grad(request: ScanRequest) -> bool:
    """Whether any input of the scan is part of an autograd graph we must extend."""
    if not torch.is_grad_enabled():
        return False
    leaves: list[Any] = [request.q, request.k, request.v, *request.hyper.values(),
                         request.state.params, request.state.opt_state, request.state.chunk_params,
                         request.state.pending]
    found = []
    tree_map(lambda t: found.append(t.requires_grad), leaves)
    return any(found)


def clip_rows(delta: Tensor, max_norm: float | None) -> Tensor:
    """``δ_t · min(1, τ/‖δ_t‖)`` per token (last dim): the per-token surprise clip."""
    if max_norm is None:
        return delta
    norm = delta.norm(dim=-1, keepdim=True)
    return delta * (max_norm / norm.clamp_min(max_norm))


def _dgd_step(params: Params, grads: Params, inputs: dict[str, Tensor], theta: Tensor,
              alpha: Tensor) -> Params:
    """``W⁽ˡ⁾ ← W⁽ˡ⁾((1 − α)I − θ x xᵀ) − θ g⁽ˡ⁾`` (NL eqs. 88, 93) with ``x (B, H, N, Din)``
    (``N`` inputs: ``Σ_n x_n x_nᵀ``, θ already folded into them by the caller when N > 1)."""
    out = {}
    for n, W in params.items():
        new = (1 - bcast(alpha, W)) * W - bcast(theta, W) * grads[n]
        x = inputs.get(n)
        if x is not None:
            new = new - (W @ x.transpose(-1, -2)) @ x * bcast(theta, W)
        out[n] = new
    return out


class ReferenceBackend(Backend):
    """Token loop of the scan contract (docs/concepts.md) for any memory, objective, rule
    and every read/write mode.

    For every token ``t`` (chunk size ``C``; a chunk opens when ``position = 0``)::

        W_c ← W                                     if position = 0
        target_t = M_{W_c}(v_t) if self_target else v_t
        δ_t = clip(∂ℓ/∂pred_t) at pred_t = M_{W_c}(k_t);  g_t = (∂pred_t/∂W)ᵀ δ_t   (autograd)
        write="token": (W, opt) ← rule step on g_t (momentum, dgd, or rule.update)
        write="chunk": G += θ_t g_t (+ θ_t (W_c x_t) x_tᵀ for dgd); at the chunk's last token
                       W ← (1 − α_t) W − G (dgd) or rule.update(G, opt, W, lr=1, …)
        y_t = M_W(q_t) (after_write) or M_{W_c}(q_t) (chunk_start)

    The per-(b, h) losses are independent, so the gradient of their sum is every
    element's own gradient. The inner gradients are taken with ``create_graph``
    when an outer graph exists, so the outer level trains through the loop; the
    self-generated target is read at ``W_c`` outside the inner differentiation (a
    constant for it, not for the outer level). Clarity over speed: one Python
    iteration per token. Equations: Titans arXiv 2501.00663 eqs. 9–13 (momentum,
    forgetting), NL arXiv 2512.24695 eqs. 71 (chunk writes), 87–93 (self targets, DGD).
    """

    priority = 0

    def supports(self, request: ScanRequest) -> str | None:
        return None

    def scan(self, request: ScanRequest) -> tuple[Tensor, MemoryState]:
        memory, objective, rule, C = request.memory, request.objective, request.rule, request.chunk_size
        dgd = request.rule_structure == "dgd"
        state = request.state
        track = _tracks_grad(request)
        params, opt_state = dict(state.params), state.opt_state
        chunk_params, position = dict(state.chunk_params), state.position
        pending = dict(state.pending)
        if position == 0:
            pending = {}
        T = request.q.shape[2]
        ys, norms = [], []
        with torch.enable_grad():
            for t in range(T):
                # truncated: a chunk's write starts from its (detached) start state, except
                # the stream's first chunk; its reads still see the attached W_c
                cut = request.truncate and state.step + t - position > 0
                if position == 0:
                    chunk_params, pending = dict(params), {}
                    if cut:
                        params = tree_map(Tensor.detach, params)
                        opt_state = tree_map(Tensor.detach, opt_state)
                wp = tree_map(Tensor.detach, chunk_params) if cut else chunk_params  # write point
                point = {n: p.view_as(p) if p.requires_grad else p.detach().requires_grad_(True)
                         for n, p in wp.items()}
                kt, vt = request.k[:, :, t:t + 1], request.v[:, :, t:t + 1]
                target = memory.read(wp, vt) if request.self_target else vt
                pred = memory.read(point, kt)  # (B, H, 1, Dv)
                delta = objective.grad(pred, target)
                norms.append(delta.detach().norm(dim=-1))
                names = list(point)
                grads = torch.autograd.grad(pred, [point[n] for n in names],
                                            grad_outputs=clip_rows(delta, request.grad_clip),
                                            create_graph=track, allow_unused=True)
                grads = {n: torch.zeros_like(point[n]) if g is None else g
                         for n, g in zip(names, grads)}
                hyper = request.hyper_at(t)
                inputs = memory.layer_inputs(wp, kt) if dgd else {}
                if request.write == "token":
                    if dgd:
                        params = _dgd_step(params, grads, inputs, hyper["lr"], hyper["decay"])
                    else:
                        params, opt_state = rule.update(grads, opt_state, params, **hyper)
                else:
                    theta = hyper.get("lr", 1.0)
                    step = {n: bcast(theta, g) * g for n, g in grads.items()}
                    if dgd:  # θ_t (W_c x_t) x_tᵀ: the chunk's Σ θ x xᵀ applied to W_c
                        for n, x in inputs.items():
                            step[n] = step[n] + bcast(theta, x) * (wp[n] @ x.mT) @ x
                    pending = {n: pending[n] + s if n in pending else s for n, s in step.items()}
                    if position == C - 1:  # the chunk's last token: one step on G_c
                        if dgd:
                            params = {n: (1 - bcast(hyper["decay"], W)) * W - pending[n]
                                      for n, W in params.items()}
                        else:
                            one = {**hyper, "lr": 1.0} if "lr" in rule.hyperparams else hyper
                            params, opt_state = rule.update(pending, opt_state, params, **one)
                        pending = {}
                if not track:
                    params, opt_state = tree_map(Tensor.detach, params), tree_map(Tensor.detach, opt_state)
                    pending = tree_map(Tensor.detach, pending)
                if request.outputs:
                    at = params if request.read == "after_write" else chunk_params
                    ys.append(memory.read(at, request.q[:, :, t:t + 1]))  # (B, H, 1, Dv)
                position = (position + 1) % C
        B, H, _, Dv = request.v.shape
        y = torch.cat(ys, dim=2) if ys else request.q.new_zeros(B, H, 0, Dv)
        if not track:
            y = y.detach()
        if position == 0:
            chunk_params, pending = dict(params), {}
        return y, MemoryState(params=params, opt_state=opt_state, chunk_params=chunk_params,
                              position=position, chunk_size=C, step=state.step + T,
                              pending=pending, surprise=torch.cat(norms, 2).mean(-1))

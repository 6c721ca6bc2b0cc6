"""The scan contract as the most literal loop: an independent oracle for backends.

Per (batch, head), token by token (docs/concepts.md)::

    g_t = ∇_W ℓ(W_{cC}; k_t, v_t)               gradient at the chunk start, by autograd
    (W_t, state_t) = rule.update(g_t, state_{t-1}, W_{t-1}, **hyper_t)
    y_t = M_{W_t}(q_t)                           read after write

For the ``momentum`` rule ``update`` is ``S_t = η_t S_{t-1} − θ_t g_t``,
``W_t = (1 − α_t) W_{t-1} + S_t``. Nothing here is fast or clever on purpose:
the ``reference`` backend itself is checked against it.
"""

from __future__ import annotations

from numbers import Real
from typing import Any, Mapping

import torch
from torch import Tensor

from ..interfaces import ScanRequest
from ..level import MemoryState
from ..scan import initial_state, make_memory, make_objective, make_rule

__all__ = ["build_request", "contract_scan", "SCAN_GATES", "CONTRACT"]

CONTRACT = "contract"
"""Name under which the assertions accept this module's loop as the reference."""

SCAN_GATES = ("lr", "decay", "momentum")
"""``memory_scan`` arguments that feed the update rule's hyperparameters of the same name."""


def _gate(value: Any, q: Tensor) -> Tensor:
    B, H, T = q.shape[:3]
    if isinstance(value, Tensor):
        return value.to(q.dtype).expand(B, H, T)
    return torch.tensor(float(value), dtype=q.dtype, device=q.device).expand(B, H, T)


def build_request(q: Tensor, k: Tensor, v: Tensor, *, memory: str = "linear",
                  objective: str = "l2", optimizer: str = "momentum",
                  chunk_size: int = 1, state: MemoryState | None = None,
                  memory_kwargs: Mapping[str, Any] | None = None,
                  objective_kwargs: Mapping[str, Any] | None = None,
                  optimizer_kwargs: Mapping[str, Any] | None = None,
                  **gates: Any) -> ScanRequest:
    """The :class:`ScanRequest` that ``memory_scan`` hands a backend for these arguments.

    ``gates`` are ``lr``/``decay``/``momentum`` (floats or ``(B, H, T)``); the
    ones the rule accepts become per-token ``(B, H, T)`` hyperparameters, as do
    tensor ``optimizer_kwargs``; the rest of ``optimizer_kwargs`` is static.
    Used to ask a backend whether it ``supports`` a combination, and by
    :func:`contract_scan`.
    """
    bad = set(gates) - set(SCAN_GATES)
    if bad:
        raise TypeError(f"build_request: unknown gate(s) {sorted(bad)}; gates are {SCAN_GATES}")
    B, H, _, Dk = q.shape
    mem = make_memory(memory, Dk, v.shape[-1], **dict(memory_kwargs or {}))
    obj = make_objective(objective, **dict(objective_kwargs or {}))
    rule = make_rule(optimizer)
    hyper = {n: _gate(g, q) for n, g in gates.items() if n in rule.hyperparams}
    static = {}
    for n, val in dict(optimizer_kwargs or {}).items():
        if isinstance(val, Tensor) and val.dim() > 0:
            hyper[n] = _gate(val, q)
        else:
            static[n] = float(val) if isinstance(val, Real) and not isinstance(val, bool) else val
    if state is None:
        state = initial_state(mem, rule, batch=B, heads=H, chunk_size=chunk_size, dtype=q.dtype,
                              device=q.device)
    return ScanRequest(q=q, k=k, v=v, memory=mem, objective=obj, rule=rule, hyper=hyper,
                       static_hyper=static, chunk_size=chunk_size, state=state,
                       names={"memory": memory, "objective": objective, "optimizer": optimizer})


def _surprise(request: ScanRequest, W: dict[str, Tensor], t: int) -> dict[str, Tensor]:
    """``g_t = ∇_W ℓ(W; k_t, v_t)`` per (batch, head), differentiable for outer training."""
    graph = torch.is_grad_enabled()
    with torch.enable_grad():
        leaves = {n: p if p.requires_grad else p.detach().requires_grad_(True) for n, p in W.items()}
        pred = request.memory.read(leaves, request.k[:, :, t:t + 1])       # (B, H, 1, Dv)
        loss = request.objective.loss(pred, request.v[:, :, t:t + 1]).sum()
        grads = torch.autograd.grad(loss, list(leaves.values()), create_graph=graph)
    return dict(zip(leaves, grads))


def contract_scan(request: ScanRequest) -> tuple[Tensor, MemoryState]:
    """``y (B, H, T, Dv)`` and the final :class:`MemoryState` of ``request`` by the contract loop."""
    st = request.state
    W, opt, Wc = dict(st.params), st.opt_state, dict(st.chunk_params)
    pos, C, T = st.position, request.chunk_size, request.q.shape[2]
    ys = []
    for t in range(T):
        if pos == 0:
            Wc = W                                           # a chunk opens: W_{cC}
        g = _surprise(request, Wc, t)
        h = request.hyper_at(t)
        if request.rule_structure == "dgd":  # W⁽ˡ⁾((1 − α)I − θ x xᵀ) − θ g⁽ˡ⁾, x at W_{cC} (NL eq. 88)
            xs = request.memory.layer_inputs(Wc, request.k[:, :, t:t + 1])
            th, al = h["lr"][..., None, None], h.get("decay", 0.0)
            al = al[..., None, None] if isinstance(al, Tensor) else al
            W = {n: (1 - al) * p - th * g[n] - th * (p @ xs[n].mT) @ xs[n] for n, p in W.items()}
        else:
            W, opt = request.rule.update(g, opt, W, **h)
        pos = (pos + 1) % C
        ys.append(request.memory.read(W, request.q[:, :, t:t + 1]))  # (B, H, 1, Dv)
    new = MemoryState(params=W, opt_state=opt, chunk_params=Wc if pos else dict(W),
                      position=pos, chunk_size=C, step=st.step + T)
    return torch.cat(ys, dim=2), new

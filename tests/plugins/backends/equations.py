"""Float64 ground truth for ``memory_scan``'s read/write modes, written from the equations.

Nothing here calls nlframe: memories, objectives, their gradients and the update
rules are written out in closed form with plain torch ops (no autograd inside), so
the loop can be differentiated with ``torch.autograd`` for the *outer* gradients.
Every tensor carries leading batch dims ``(B, H)``; the equations act per (b, h).

Memories (parameter names as in ``plugins/memories``)::

    linear         M(x) = W x                      W  (Dv, Dk)
    mlp            M(x) = W2 σ(W1 x)               W1 (Dh, Dk), W2 (Dv, Dh)
    residual-mlp   M(x) = x + W2 σ(W1 x)           (Dk = Dv)

Objectives (``δ = ∂ℓ/∂pred``)::

    l2    ℓ = ½‖M(k) − u‖²      δ = M(k) − u
    dot   ℓ = −⟨M(k), u⟩        δ = −u

Closed-form parameter gradients at ``W`` for key ``k`` and target ``u``::

    linear:  g_W = δ kᵀ                                   x⁽W⁾ = k
    mlp:     z = W1 k, a = σ(z), δ2 = δ, δ1 = (W2ᵀ δ2) ∘ σ′(z)
             g_W2 = δ2 aᵀ, g_W1 = δ1 kᵀ                   x⁽W1⁾ = k, x⁽W2⁾ = a

The scan (chunk ``c`` = tokens ``cC..cC+C−1``, chunk-start parameters ``W_c``)::

    u_t = M_{W_c}(v_t) if self_target else v_t
    g_t = ∇_W ℓ(M_W(k_t), u_t) at W = W_c          (u_t held constant)

    write="token" — the rule steps at every token:
      momentum  S = η_t S − θ_t g_t ;  W = (1 − α_t) W + S
                (Titans arXiv 2501.00663 eqs. 9–10, 13; NL arXiv 2512.24695 eq. 71)
      dgd       W⁽ˡ⁾ = W⁽ˡ⁾((1 − α_t) I − θ_t x⁽ˡ⁾_t x⁽ˡ⁾_tᵀ) − θ_t g⁽ˡ⁾_t
                (NL arXiv 2512.24695 eqs. 87–93, delta gradient descent with retention)
      sgd       W = W − θ_t g_t
    write="chunk" — one step at the chunk's last token on G_c = Σ_{t∈c} θ_t g_t,
    with α, η of that last token:
      momentum  S = η S − G_c ;  W = (1 − α) W + S
      dgd       W⁽ˡ⁾ = W⁽ˡ⁾((1 − α) I − Σ_t θ_t x⁽ˡ⁾_t x⁽ˡ⁾_tᵀ) − G⁽ˡ⁾_c
      sgd       W = W − G_c

    read="after_write"  y_t = M_W(q_t), W after token t's write
    read="chunk_start"  y_t = M_{W_c}(q_t)

A chunk left open at the end stays pending: ``chunk_params = W_c`` and
``position = T mod C``; when ``position = 0``, ``chunk_params`` is the final ``W``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = ["gelu", "gelu_prime", "mem_read", "mem_grads", "oracle_scan", "PARAM_NAMES"]

PARAM_NAMES = {"linear": ("W",), "mlp": ("W1", "W2"), "residual-mlp": ("W1", "W2")}


def gelu(z: Tensor) -> Tensor:
    """Exact gelu ``σ(z) = z Φ(z)``, ``Φ(z) = ½(1 + erf(z/√2))``."""
    return 0.5 * z * (1.0 + torch.erf(z / math.sqrt(2.0)))


def gelu_prime(z: Tensor) -> Tensor:
    """``σ′(z) = Φ(z) + z φ(z)``, ``φ(z) = exp(−z²/2)/√(2π)``."""
    return 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0))) + z * torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


def _mv(W: Tensor, x: Tensor) -> Tensor:
    """``W x`` for ``W (…, m, n)``, ``x (…, n)``."""
    return torch.einsum("...mn,...n->...m", W, x)


def _outer(a: Tensor, b: Tensor) -> Tensor:
    """``a bᵀ`` for ``a (…, m)``, ``b (…, n)``."""
    return torch.einsum("...m,...n->...mn", a, b)


def mem_read(memory: str, W: dict[str, Tensor], x: Tensor) -> Tensor:
    """``M_W(x)`` for one vector per leading element: ``x (…, Dk)`` → ``(…, Dv)``."""
    if memory == "linear":
        return _mv(W["W"], x)
    out = _mv(W["W2"], gelu(_mv(W["W1"], x)))
    if memory == "residual-mlp":
        out = x + out
    elif memory != "mlp":
        raise ValueError(memory)
    return out


def mem_grads(memory: str, objective: str, W: dict[str, Tensor], k: Tensor,
              target: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Closed-form ``g = ∇_W ℓ(M_W(k), target)`` and each weight matrix's input ``x⁽ˡ⁾``."""
    if memory == "linear":
        pred = _mv(W["W"], k)
        delta = _delta(objective, pred, target)
        return {"W": _outer(delta, k)}, {"W": k}
    z = _mv(W["W1"], k)
    a = gelu(z)
    pred = _mv(W["W2"], a)
    if memory == "residual-mlp":
        pred = k + pred
    delta2 = _delta(objective, pred, target)
    delta1 = torch.einsum("...vh,...v->...h", W["W2"], delta2) * gelu_prime(z)
    return {"W1": _outer(delta1, k), "W2": _outer(delta2, a)}, {"W1": k, "W2": a}


def _delta(objective: str, pred: Tensor, target: Tensor) -> Tensor:
    if objective == "l2":
        return pred - target
    if objective == "dot":
        return -target
    raise ValueError(objective)


def _g(x: Tensor | None, t: int) -> Tensor:
    """Gate of token ``t`` shaped to broadcast over a matrix: ``(B, H, 1, 1)``."""
    return x[..., t, None, None]


def oracle_scan(q: Tensor, k: Tensor, v: Tensor, *, memory: str, objective: str, optimizer: str,
                lr: Tensor, decay: Tensor | None, momentum: Tensor | None, chunk_size: int,
                read: str, write: str, self_target: bool, W0: dict[str, Tensor],
                S0: dict[str, Tensor] | None = None, truncate: bool = False) -> dict[str, Any]:
    """The contract's loop from a fresh state (position 0) at ``W0`` (and momentum ``S0``).

    ``truncate``: every chunk but the first writes from its detached start state (the
    write's gradient point and the state it updates are cut from the outer graph), while
    its reads keep the attached ``W_c``.

    ``q, k (B, H, T, Dk)``, ``v (B, H, T, Dv)``, gates ``(B, H, T)`` (``decay`` and
    ``momentum`` may be ``None`` = 0). Returns ``y``, ``params``, ``momentum`` (``None``
    unless ``optimizer="momentum"``), ``chunk_params`` and ``position``.
    """
    assert optimizer in ("momentum", "dgd", "sgd"), optimizer
    assert read in ("after_write", "chunk_start") and write in ("token", "chunk")
    T, C = q.shape[2], chunk_size
    zero = torch.zeros_like(lr)
    decay = zero if decay is None else decay
    momentum = zero if momentum is None else momentum
    W = dict(W0)
    S = ({n: torch.zeros_like(p) for n, p in W.items()} if S0 is None else dict(S0)) \
        if optimizer == "momentum" else None
    Wc: dict[str, Tensor] = dict(W)
    G: dict[str, Tensor] = {}
    XX: dict[str, Tensor] = {}
    position, ys = 0, []
    for t in range(T):
        if position == 0:  # a chunk opens: its gradient point and fresh accumulators
            Wc = dict(W)
            if truncate and t > 0:
                W = {n: p.detach() for n, p in W.items()}
                S = None if S is None else {n: m.detach() for n, m in S.items()}
            G = {n: torch.zeros_like(p) for n, p in W.items()}
            XX = {n: torch.zeros(*p.shape[:-2], p.shape[-1], p.shape[-1], dtype=p.dtype)
                  for n, p in W.items()}
        kt, vt, qt = k[:, :, t], v[:, :, t], q[:, :, t]
        Wg = {n: p.detach() for n, p in Wc.items()} if truncate and t >= C else Wc
        target = mem_read(memory, Wg, vt) if self_target else vt
        g, x = mem_grads(memory, objective, Wg, kt, target)
        th, al, et = _g(lr, t), _g(decay, t), _g(momentum, t)
        if write == "token":
            W, S = _step(optimizer, W, S, {n: th * g[n] for n in g},
                         {n: th * _outer(x[n], x[n]) for n in x}, al, et)
        else:
            G = {n: G[n] + th * g[n] for n in G}
            XX = {n: XX[n] + th * _outer(x[n], x[n]) for n in XX}
            if position == C - 1:
                W, S = _step(optimizer, W, S, G, XX, al, et)
        position = (position + 1) % C
        ys.append(mem_read(memory, W if read == "after_write" else Wc, qt))
    if position == 0:
        Wc = dict(W)
    return {"y": torch.stack(ys, dim=2), "params": W, "momentum": S, "chunk_params": Wc,
            "position": position}


def _step(optimizer: str, W: dict[str, Tensor], S: dict[str, Tensor] | None,
          G: dict[str, Tensor], XX: dict[str, Tensor], al: Tensor, et: Tensor):
    """One rule step on the (θ-weighted) gradient ``G`` and input Gram ``XX = Σ θ x xᵀ``."""
    if optimizer == "momentum":
        S = {n: et * S[n] - G[n] for n in S}
        W = {n: (1 - al) * W[n] + S[n] for n in W}
    elif optimizer == "dgd":
        new = {}
        for n, p in W.items():
            eye = torch.eye(p.shape[-1], dtype=p.dtype)
            new[n] = p @ ((1 - al) * eye - XX[n]) - G[n]
        W = new
    else:  # sgd
        W = {n: W[n] - G[n] for n in W}
    return W, S

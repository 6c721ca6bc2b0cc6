"""Small local plugins the kit's own tests run on (independent of the built-ins).

``kit-linear`` (``M_W(x) = W x``), ``kit-mlp2`` (``M_W(x) = x + W2 tanh(W1 x)``),
``kit-l2`` (``ℓ = ½‖pred − target‖²``), ``kit-reference`` (a backend that is
the kit's contract loop) and ``kit-linear-l2`` (a closed-form backend for the
linear memory with L2 and plain momentum, chunk form of docs/concepts.md).
"""

from __future__ import annotations

import types

import torch

import nlframe
from nlframe.interfaces import Backend, Memory, Objective
from nlframe.level import MemoryState
from nlframe.testing import contract_scan


class KitLinear(Memory):
    """Linear memory ``M_W(x) = W x`` with ``W: (Dv, Dk)``."""

    structure = "linear"

    def param_shapes(self):
        return {"W": (self.dim_v, self.dim_k)}

    def init_params(self, *, generator=None, dtype=torch.float32, device=None):
        return {"W": 0.1 * torch.randn(self.dim_v, self.dim_k, generator=generator, dtype=dtype)}

    def read(self, params, x):
        return x @ params["W"].transpose(-1, -2)


class KitResidual(Memory):
    """Residual MLP memory ``M_W(x) = x + W2 tanh(W1 x)`` (needs ``Dk = Dv``)."""

    structure = "residual-mlp"

    def __init__(self, dim_k, dim_v, hidden=3):
        super().__init__(dim_k, dim_v)
        if dim_k != dim_v:
            raise ValueError(f"residual memory needs dim_k == dim_v, got {dim_k} and {dim_v}")
        self.hidden = hidden

    def param_shapes(self):
        return {"W1": (self.hidden, self.dim_k), "W2": (self.dim_v, self.hidden)}

    def init_params(self, *, generator=None, dtype=torch.float32, device=None):
        return {n: 0.3 * torch.randn(*s, generator=generator, dtype=dtype)
                for n, s in self.param_shapes().items()}

    def read(self, params, x):
        h = torch.tanh(x @ params["W1"].transpose(-1, -2))
        return x + h @ params["W2"].transpose(-1, -2)


class KitL2(Objective):
    """L2 surprise ``ℓ = ½‖pred − target‖²``, ``∂ℓ/∂pred = pred − target``."""

    affine_grad = (1.0, -1.0)

    def loss(self, pred, target):
        return 0.5 * (pred - target).pow(2).sum(-1)

    def grad(self, pred, target):
        return pred - target


class KitReference(Backend):
    """The contract loop as a backend: ``y_t = M_{W_t}(q_t)`` token by token."""

    def supports(self, request):
        return None

    def scan(self, request):
        return contract_scan(request)


class KitLinearL2(Backend):
    """Closed-form linear+L2 momentum scan: ``g_t = (W_{cC} k_t − v_t) k_tᵀ``, then the rule."""

    priority = -1

    def supports(self, request):
        if request.memory.structure != "linear" or request.objective.affine_grad != (1.0, -1.0):
            return "only linear memory with L2"
        if request.names["optimizer"] != "momentum":
            return "only the momentum rule"
        return None

    def scan(self, request):
        st = request.state
        W, S, Wc, pos = st.params["W"], st.opt_state["momentum"]["W"], st.chunk_params["W"], st.position
        ys = []
        for t in range(request.q.shape[2]):
            if pos == 0:
                Wc = W
            h = request.hyper_at(t)
            k, v = request.k[:, :, t], request.v[:, :, t]                      # (B, H, D)
            g = ((Wc @ k.unsqueeze(-1)).squeeze(-1) - v).unsqueeze(-1) * k.unsqueeze(-2)
            eta = h.get("momentum", 0.0)
            S = _b(eta) * S - _b(h["lr"]) * g
            W = (1 - _b(h.get("decay", 0.0))) * W + S
            pos = (pos + 1) % request.chunk_size
            ys.append((W @ request.q[:, :, t].unsqueeze(-1)).squeeze(-1))
        return torch.stack(ys, 2), MemoryState(
            params={"W": W}, opt_state={"momentum": {"W": S}},
            chunk_params={"W": Wc if pos else W}, position=pos,
            chunk_size=request.chunk_size, step=st.step + request.q.shape[2])


def _b(h):
    return h[..., None, None] if isinstance(h, torch.Tensor) else h


def module(name="kit_local_plugins", **extra):
    """A plugin module registering the kit plugins (plus ``extra``: kind → [(name, obj)])."""
    regs = {"memory": [("kit-linear", KitLinear), ("kit-residual", KitResidual)],
            "objective": [("kit-l2", KitL2)],
            "backend": [("kit-reference", KitReference), ("kit-linear-l2", KitLinearL2)]}
    for kind, items in extra.items():
        regs.setdefault(kind, []).extend(items)
    return bare_module(name, **regs)


def bare_module(name, **regs):
    """A plugin module registering ``regs``: kind → [(name, obj)]."""
    mod = types.ModuleType(name)
    for kind, items in regs.items():
        def hook(register, _items=items):
            for n, obj in _items:
                register(n, obj)
        hook.__name__ = f"nlframe_register_{kind}"
        setattr(mod, hook.__name__, nlframe.hookimpl(hook))
    return mod

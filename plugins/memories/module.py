"""``module``: any ``torch.nn.Module`` as a memory whose parameters are the fast weights."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from nlframe.interfaces import Memory, Params

RECIPES = ("mlp",)
"""Modules a spec can name (a spec is data; any other module is Python-only)."""

_PYTHON_ONLY = ("pass the module itself in Python: ModuleMemory(dim_k, dim_v, module=m), "
                "nlframe.Level(ModuleMemory(...), ...) or nlframe.layer(..., memory={'type': "
                "'module', 'module': m})")


def _mlp(dim_k: int, dim_v: int, hidden: int, seed: int) -> nn.Module:
    """``Linear(Dk, Dh) → GELU → Linear(Dh, Dv)`` with biases, torch's init under ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(dim_k, hidden), nn.GELU(), nn.Linear(hidden, dim_v))


class ModuleMemory(Memory):
    """A module ``f`` as a memory: ``M_W(x) = f(x; W)``, ``W`` = its parameters as fast weights
    (the generic memory of the scan contract, docs/concepts.md).

    ``read`` runs ``torch.func.functional_call(f, W, (x,))``, vmapped over the leading
    ``(B, H)`` dims, so every sequence and head has its own copy of ``W``; the scan's
    ``g_t = ∇_W ℓ(f(k_t; W), v_t)`` comes from autograd through that call (``structure``
    is ``None``: the ``reference`` backend runs it, ``chunked`` declines it). ``f`` maps
    ``(N, Dk) → (N, Dv)`` (an ``nn.Sequential`` of linears, a Hugging Face MLP, …).

    Options: ``module`` — an ``nn.Module`` (Python only) or ``"mlp"`` (the default, also
    from a spec: ``Linear(Dk, hidden) → GELU → Linear(hidden, Dv)`` with biases,
    ``hidden`` default ``4·Dk``, torch's initialisation under ``seed``). Parameter names
    are the module's with ``.`` → ``_`` (``"0.weight"`` → ``"0_weight"``). ``W_0``
    (:meth:`init_params`) is the module's current parameters, e.g. pretrained weights;
    the module itself is never changed. Its buffers are used as they are (on its own
    device); keep it free of randomness (no dropout in train mode) under ``vmap``.
    """

    structure = None

    def __init__(self, dim_k: int, dim_v: int, *, module: nn.Module | str = "mlp",
                 hidden: int | None = None, seed: int = 0) -> None:
        super().__init__(dim_k, dim_v)
        if self.dim_k < 1 or self.dim_v < 1:
            raise ValueError(f"memory 'module': dim_k and dim_v must be >= 1, got {dim_k}, {dim_v}")
        if isinstance(module, str):
            if module not in RECIPES:
                raise ValueError(f"memory 'module': unknown module {module!r}; a spec can name "
                                 f"{', '.join(map(repr, RECIPES))}; for any other, {_PYTHON_ONLY}")
            hidden = 4 * self.dim_k if hidden is None else hidden
            if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
                raise ValueError(f"memory 'module': hidden must be a positive int, got {hidden!r}")
            module = _mlp(self.dim_k, self.dim_v, hidden, int(seed))
        elif isinstance(module, nn.Module):
            if hidden is not None or seed != 0:
                raise TypeError("memory 'module': hidden and seed apply to module='mlp' only, "
                                "not to a given nn.Module")
        else:
            raise TypeError(f"memory 'module': module must be a torch.nn.Module or 'mlp', got "
                            f"{module!r} ({type(module).__name__}); {_PYTHON_ONLY}")
        self.module = module
        self.paths: dict[str, str] = {}  # fast-parameter name → the module's parameter path
        for path in dict(module.named_parameters()):
            name = path.replace(".", "_")
            if name in self.paths:
                raise ValueError(f"memory 'module': parameters {self.paths[name]!r} and {path!r} "
                                 f"both map to the name {name!r}")
            self.paths[name] = path
        if not self.paths:
            raise ValueError("memory 'module': the module has no parameters to write")
        self._probe()

    def _probe(self) -> None:
        """Check that the module maps ``(2, Dk)`` to ``(2, Dv)``."""
        p = next(self.module.parameters())
        x = torch.zeros(2, self.dim_k, dtype=p.dtype, device=p.device)
        try:
            with torch.no_grad():
                y = self.module(x)
        except Exception as exc:  # noqa: BLE001 - any failure of the user's module
            raise ValueError(f"memory 'module': calling the module on x of shape (N, Dk) = "
                             f"{tuple(x.shape)} failed: {type(exc).__name__}: {exc}") from None
        if not isinstance(y, Tensor) or tuple(y.shape) != (2, self.dim_v):
            got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"memory 'module': the module maps x (N, Dk) = {tuple(x.shape)} to "
                             f"{got}; expected (N, Dv) = {(2, self.dim_v)}")

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        params = dict(self.module.named_parameters())
        return {n: tuple(params[path].shape) for n, path in self.paths.items()}

    def init_params(self, *, generator: torch.Generator | None = None,
                    dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> Params:
        """``W_0``: copies of the module's parameters (``generator`` unused: the module is
        its own initialisation)."""
        params = dict(self.module.named_parameters())
        return {n: params[path].detach().to(dtype=dtype, device=device, copy=True)
                for n, path in self.paths.items()}

    def read(self, params: Params, x: Tensor) -> Tensor:
        """``f(x; W)``: params ``(*lead, *shape)``, ``x (*lead, N, Dk)`` → ``(*lead, N, Dv)``
        (leading dims broadcast)."""
        shapes = self.param_shapes()
        leads = [p.shape[:p.dim() - len(shapes[n])] for n, p in params.items()]
        lead = torch.broadcast_shapes(*leads, x.shape[:-2])

        def call(ps: Params, xi: Tensor) -> Tensor:
            return functional_call(self.module, {self.paths[n]: p for n, p in ps.items()}, (xi,))

        if not lead:
            return call(params, x)
        flat = {n: p.expand(*lead, *shapes[n]).reshape(-1, *shapes[n]) for n, p in params.items()}
        xs = x.expand(*lead, *x.shape[-2:]).reshape(-1, *x.shape[-2:])
        y = vmap(call)(flat, xs)  # (prod(lead), N, Dv)
        return y.reshape(*lead, *y.shape[1:])

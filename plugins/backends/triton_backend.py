"""The ``triton`` backend: fused Triton kernels of Titans' linear-memory level, the
self-modifying Titans level (DGD) and the CMS level (MLP memories written per chunk)."""

from __future__ import annotations

import importlib.util
import os

import torch
from torch import Tensor

from nlframe.interfaces import Backend, ScanRequest
from nlframe.level import MemoryState

from .chunked import is_classic

INSTALL = "pip install 'nlframe[triton]'"

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
"""Input dtypes of every kernel (half types are computed in float32)."""


def interpret_requested() -> bool:
    """Whether ``TRITON_INTERPRET`` asks Triton to run kernels through its CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes")


# -- checks every kernel family makes (no triton needed) ----------------------------------
def objective_reason(request: ScanRequest) -> str | None:
    """Why the kernels cannot take ``request``'s objective: they need ``∂ℓ/∂pred = a·pred + b·target``."""
    if request.objective.affine_grad is None:
        return (f"objective {request.names.get('objective')!r} declares no affine gradient "
                "(∂ℓ/∂pred = a·pred + b·target; l2 and dot do)")
    return None


def hyper_reason(request: ScanRequest, gates: frozenset[str]) -> str | None:
    """Why the kernels cannot take ``request``'s hyperparameters: per-token ``lr`` and at
    most the ``gates``, nothing static."""
    if request.static_hyper:
        return f"static hyperparameters {sorted(request.static_hyper)} are not supported"
    if "lr" not in request.hyper or not set(request.hyper) <= gates:
        return f"per-token hyperparameters {sorted(request.hyper)} are not supported"
    return None


def dtype_device_reason(request: ScanRequest) -> str | None:
    """Why the kernels cannot take ``request``'s dtype or device (``None``: they can)."""
    if request.q.dtype not in DTYPES:
        return f"dtype {request.q.dtype} is not supported (float32, float16 or bfloat16)"
    device = request.q.device
    if device.type == "cpu" and not interpret_requested():
        return "CPU tensors run only through Triton's interpreter (TRITON_INTERPRET=1)"
    if device.type not in ("cpu", "cuda"):
        return f"device {device.type!r} is not supported (CUDA, or CPU with TRITON_INTERPRET=1)"
    return None


def _family(request: ScanRequest) -> str:
    """Which kernels a request goes to: ``dgd`` (any memory), ``cms`` (MLP memories
    written per chunk) or ``linear`` (everything else: declined there with a reason)."""
    if request.rule_structure == "dgd":
        return "dgd"
    if request.memory.structure in ("mlp", "residual-mlp"):
        return "cms"
    return "linear"


def _kernels(family: str):
    """``(unsupported_reason, scan)`` of the kernels of ``family`` (imported on demand:
    they need triton)."""
    if family == "dgd":
        from .triton_ops.dgd_self_target import dgd_self_unsupported_reason, scan_dgd_self

        return dgd_self_unsupported_reason, scan_dgd_self
    from .triton_ops.chunk_writes_mlp import cms_unsupported_reason, scan_cms

    return cms_unsupported_reason, scan_cms


class TritonBackend(Backend):
    """Fused Triton kernels, forward and backward, of three families of levels. Titans'
    level on a ``linear`` memory (plugins/backends/triton_ops/linear_recurrent.py): per
    (b, h), token t
    (docs/concepts.md scan contract; Titans arXiv 2501.00663)::

        W_c ← W if the token opens a chunk;  δ_t = a·(W_c k_t) + b·v_t;  g_t = δ_t k_tᵀ
        S ← η_t S − θ_t g_t;  W ← (1 − α_t) W + S;  y_t = W q_t

    for an objective with an affine gradient ``(a, b)`` (``l2``, ``dot``), the
    ``momentum`` rule with per-token θ, α, η, every chunk size and streaming from any
    position. Each program keeps a block of rows of ``W, S, W_c`` in registers for the
    whole sequence; the backward recomputes from checkpoints. float32 (float16 and
    bfloat16 inputs are computed in float32). CUDA tensors, or CPU tensors through
    Triton's interpreter when ``TRITON_INTERPRET=1`` (slow: for tests).

    Two more families of kernels, chosen by the request's rule and write mode (each
    family's ``*_unsupported_reason`` says what it declines):

    * ``dgd`` (self-modifying Titans, NL eqs. 88–93: chunk-start reads, token writes,
      self targets, per-token clipping, truncation) on ``linear``, ``mlp`` and
      ``residual-mlp`` memories — triton_ops/dgd_self_target.py;
    * ``momentum`` with ``write="chunk"`` (CMS levels, NL eq. 71) on ``mlp`` /
      ``residual-mlp`` memories — triton_ops/chunk_writes_mlp.py.

    Every other memory, rule and mode is declared unsupported, with the reason.
    """

    priority = 20
    block_v: int | None = None
    """Rows per program (``None``: :func:`~.triton_ops.linear_recurrent.block_sizes`)."""

    def unavailable_reason(self) -> str | None:
        if importlib.util.find_spec("triton") is None:
            return f"triton is not installed ({INSTALL})"
        if not (torch.cuda.is_available() or interpret_requested()):
            return "no CUDA device (set TRITON_INTERPRET=1 to run the kernels on CPU through " \
                   "Triton's interpreter)"
        return None

    def supports(self, request: ScanRequest) -> str | None:
        family = _family(request)
        if family == "linear":
            return self._linear_reason(request)
        if importlib.util.find_spec("triton") is None:  # the kernels' own checks need it
            return self.unavailable_reason()
        # what the kernels compute first, the machine last (as for the linear family), so
        # `nlframe backends list` shows the supported combinations on a machine without CUDA
        return _kernels(family)[0](request) or self.unavailable_reason()

    def _linear_reason(self, request: ScanRequest) -> str | None:
        memory, names = request.memory, request.names
        if not (memory.structure == "linear" and set(memory.param_shapes()) == {"W"}):
            return (f"memory {names.get('memory')!r} has structure {memory.structure!r}; the "
                    "triton kernels compute 'linear' memories (one param W) and 'mlp' / "
                    "'residual-mlp' ones (W1, W2)")
        if reason := objective_reason(request):
            return reason
        if request.rule_structure != "momentum":
            return (f"optimizer {names.get('optimizer')!r} has structure "
                    f"{request.rule_structure!r}; the kernels compute 'momentum' "
                    "(S ← ηS − θg, W ← (1−α)W + S)")
        if not is_classic(request):
            modes = [f"read={request.read!r} (the kernels read after the write)"
                     if request.read != "after_write" else "",
                     f"write={request.write!r} (the kernels write every token)"
                     if request.write != "token" else "",
                     "self_target=True (the kernels' targets are v)" if request.self_target else "",
                     f"grad_clip={request.grad_clip} (no per-token clipping)"
                     if request.grad_clip is not None else "",
                     "truncate=True (no truncated writes)" if request.truncate else ""]
            return "; ".join(m for m in modes if m) + " is not supported"
        if not request.outputs:
            return "write-only scans (outputs=False) are not supported"
        if reason := hyper_reason(request, frozenset({"lr", "decay", "momentum"})):
            return reason
        return self.unavailable_reason() or dtype_device_reason(request)

    def scan(self, request: ScanRequest) -> tuple[Tensor, MemoryState]:
        family = _family(request)
        if family != "linear":
            return _kernels(family)[1](request)
        from .triton_ops.linear_recurrent import linear_recurrent

        state, C, p = request.state, request.chunk_size, request.state.position
        lr = request.hyper["lr"]
        zeros = torch.zeros_like(lr)
        W0 = state.params["W"]
        Wc0 = state.chunk_params["W"] if p else W0
        y, W, S, Wc, sq = linear_recurrent(
            request.q, request.k, request.v, lr, request.hyper.get("decay", zeros),
            request.hyper.get("momentum", zeros), W0, state.opt_state["momentum"]["W"], Wc0,
            position=p, chunk_size=C, affine=request.objective.affine_grad,
            block_v=self.block_v)
        T = request.q.shape[2]
        params = {"W": W}
        position = (p + T) % C
        chunk_params = dict(params) if position == 0 else {"W": Wc}
        surprise = sq.sqrt().mean(-1).to(request.q.dtype).detach()  # mean ‖δ_t‖ per (B, H)
        return y, MemoryState(params=params, opt_state={"momentum": {"W": S}},
                              chunk_params=chunk_params, position=position, chunk_size=C,
                              step=state.step + T, surprise=surprise)

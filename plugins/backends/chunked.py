"""The ``chunked`` backend: matmul-heavy chunk-parallel scan, the CPU default."""

from __future__ import annotations

import torch
from torch import Tensor

from nlframe.interfaces import Backend, ScanRequest
from nlframe.level import MemoryState

from ..optimizers.momentum import Momentum
from . import chunked_linear, chunked_mlp
from .tiles import TilePlan, Tiles

TILE = 32
"""Default tile length ``L`` (tokens per step of the sequential loop)."""


def unsupported_reason(request: ScanRequest) -> str | None:
    """Why the chunked form cannot compute ``request`` exactly (``None`` if it can)."""
    if not isinstance(request.rule, Momentum):
        return (f"optimizer {request.names['optimizer']!r}: the chunk form is derived for the "
                "momentum rule only (S ← ηS − θg, W ← (1−α)W + S)")
    if request.static_hyper:
        return f"static hyperparameters {sorted(request.static_hyper)} are not supported"
    if request.q.dtype not in (torch.float32, torch.float64):
        return f"dtype {request.q.dtype} is not supported (float32 or float64)"
    memory, C = request.memory, request.chunk_size
    names = set(memory.param_shapes())
    if memory.structure == "linear" and names == {"W"}:
        if request.objective.affine_grad is None and C < 2:
            return (f"objective {request.names['objective']!r} has no affine gradient, so "
                    "chunk_size=1 is a nonlinear token-by-token recurrence")
        return None
    if memory.structure in ("mlp", "residual-mlp") and names == {"W1", "W2"}:
        if not (callable(getattr(memory, "activation", None))
                and callable(getattr(memory, "activation_grad", None))):
            return "an MLP memory must expose activation and activation_grad (σ, σ′)"
        if C < 2:
            return ("an MLP memory with chunk_size=1 is a nonlinear token-by-token recurrence; "
                    "use chunk_size >= 2")
        return None
    return (f"memory {request.names['memory']!r} has structure {memory.structure!r}; the chunk "
            "form knows 'linear', 'mlp' and 'residual-mlp'")


def chunked_scan(request: ScanRequest, *, tile: int = TILE) -> tuple[Tensor, MemoryState]:
    """Run ``request`` in the chunk form with tiles of at most ``tile`` tokens
    (results never depend on ``tile`` beyond float tolerance)."""
    reason = unsupported_reason(request)
    if reason is not None:
        raise ValueError(f"chunked backend: {reason}")
    q, k, v, state, C = request.q, request.k, request.v, request.state, request.chunk_size
    gates = (request.hyper["lr"], request.hyper["decay"], request.hyper["momentum"])  # (B, H, T)
    T, p = q.shape[2], state.position
    mom = state.opt_state["momentum"]
    point = state.chunk_params if p else state.params
    psi = request.objective.grad

    def cut(lo: int, hi: int) -> list[Tensor]:
        return [x[:, :, lo:hi] for x in (q, k, v, *gates)]

    if request.memory.structure == "linear":
        W, S, Wg = state.params["W"], mom["W"], point["W"]
        affine = request.objective.affine_grad
        if affine is not None and 2 * C <= tile:
            # finish the open chunk (gradient point known), then chunk-aligned tiles
            head = min(T, C - p) if p else 0
            ys = []
            if head:
                tiles = Tiles.gather(TilePlan.within_chunks(head, C, p, tile, q.device), *cut(0, head))
                y, W, S, Wg = chunked_linear.scan_within_chunks(tiles, W, S, Wg, psi)
                ys.append(tiles.plan.scatter(y))
            if T > head:
                L = C * (tile // C)
                tiles = Tiles.gather(TilePlan.aligned(T - head, L, q.device), *cut(head, T))
                y, W, S, Wg = chunked_linear.scan_aligned(tiles, W, S, C, *affine)
                ys.append(tiles.plan.scatter(y))
            y = torch.cat(ys, 2)
        else:
            tiles = Tiles.gather(TilePlan.within_chunks(T, C, p, tile, q.device), *cut(0, T))
            y, W, S, Wg = chunked_linear.scan_within_chunks(tiles, W, S, Wg, psi)
            y = tiles.plan.scatter(y)
        params, new_mom, chunk_params = {"W": W}, {"W": S}, {"W": Wg}
    else:
        memory = request.memory
        tiles = Tiles.gather(TilePlan.within_chunks(T, C, p, tile, q.device), *cut(0, T))
        y, params, new_mom, chunk_params = chunked_mlp.scan_within_chunks(
            tiles, state.params, mom, point, memory.activation, memory.activation_grad, psi,
            residual=memory.structure == "residual-mlp")
        y = tiles.plan.scatter(y)
    position = (p + T) % C
    if position == 0:
        chunk_params = dict(params)
    return y, MemoryState(params=params, opt_state={"momentum": new_mom},
                          chunk_params=chunk_params, position=position, chunk_size=C,
                          step=state.step + T)


class ChunkedBackend(Backend):
    """Chunk-parallel scan: ``W_j = D_j W_b + c_j S_b − Σ_{i≤j} A_{ji} g_i`` per tile
    (DESIGN.md §2 chunk form), reads and writes as batched matmuls.

    Supports the ``momentum`` rule with: a ``linear`` memory and an affine
    objective (``dot``, ``l2``) at every chunk size, including the delta rule at
    ``chunk_size=1`` with per-token decay and momentum (UT transform, DeltaNet arXiv
    2406.06484); a ``linear`` memory with any other objective for ``chunk_size ≥ 2``;
    ``mlp`` / ``residual-mlp`` memories for ``chunk_size ≥ 2`` (TTT arXiv 2407.04620
    mini-batch dual form). Pure torch ops: autograd reaches q, k, v, the gates and
    the initial state. Everything else is declared unsupported.
    """

    priority = 10
    tile: int = TILE

    def supports(self, request: ScanRequest) -> str | None:
        return unsupported_reason(request)

    def scan(self, request: ScanRequest) -> tuple[Tensor, MemoryState]:
        return chunked_scan(request, tile=self.tile)

"""The ``chunked`` backend: matmul-heavy chunk-parallel scan, the CPU default."""

from __future__ import annotations

import torch
from torch import Tensor

from nlframe.interfaces import Backend, ScanRequest
from nlframe.level import MemoryState

from . import chunked_linear
from .chunked_levels import scan_levels
from .tiles import TilePlan, Tiles

TILE = 64
"""Default tile length ``L`` (tokens per step of the sequential loop). 64 against 32: the
head-to-head HOPE's CMS levels (C = 1, 4, 32, 128) took 0.78–0.84× the time on a 2-core CPU
(``benchmarks/fused_levels.py``), the Titans memory at titans-pytorch's size 0.91×."""


def is_classic(request: ScanRequest) -> bool:
    """Titans' level (read after write, token writes, momentum, targets ``v``, no clip)."""
    return (request.read == "after_write" and request.write == "token"
            and request.rule_structure == "momentum" and not request.self_target
            and request.grad_clip is None and not request.truncate)


def unsupported_reason(request: ScanRequest) -> str | None:
    """Why the chunked form cannot compute ``request`` exactly (``None`` if it can)."""
    if request.rule_structure not in ("momentum", "dgd") and request.write != "chunk":
        return (f"optimizer {request.names.get('optimizer')!r}: token writes in chunk form are "
                "derived for rules of structure 'momentum' (S ← ηS − θg, W ← (1−α)W + S) and "
                "'dgd' (other rules: write='chunk')")
    if request.static_hyper and request.write != "chunk":
        return f"static hyperparameters {sorted(request.static_hyper)} are not supported"
    if request.q.dtype not in (torch.float32, torch.float64):
        return f"dtype {request.q.dtype} is not supported (float32 or float64)"
    memory, C = request.memory, request.chunk_size
    names = set(memory.param_shapes())
    if memory.structure == "linear" and names == {"W"}:
        if is_classic(request) and request.objective.affine_grad is None and C < 2:
            return (f"objective {request.names.get('objective')!r} has no affine gradient, so "
                    "chunk_size=1 is a nonlinear token-by-token recurrence")
        return None
    if memory.structure in ("mlp", "residual-mlp") and names == {"W1", "W2"}:
        if not (callable(getattr(memory, "activation", None))
                and callable(getattr(memory, "activation_grad", None))):
            return "an MLP memory must expose activation and activation_grad (σ, σ′)"
        if is_classic(request) and C < 2:
            return ("an MLP memory read after momentum writes with chunk_size=1 is a nonlinear "
                    "token-by-token recurrence; use chunk_size >= 2")
        return None
    return (f"memory {request.names.get('memory')!r} has structure {memory.structure!r}; the "
            "chunk form knows 'linear', 'mlp' and 'residual-mlp'")


def chunked_scan(request: ScanRequest, *, tile: int = TILE) -> tuple[Tensor, MemoryState]:
    """Run ``request`` in the chunk form with tiles of at most ``tile`` tokens
    (results never depend on ``tile`` beyond float tolerance)."""
    reason = unsupported_reason(request)
    if reason is not None:
        raise ValueError(f"chunked backend: {reason}")
    if not (is_classic(request) and request.memory.structure == "linear"):
        return scan_levels(request, tile=tile)  # every mode; MLP memories always
    q, k, v, state, C = request.q, request.k, request.v, request.state, request.chunk_size
    zeros = torch.zeros_like(request.hyper["lr"])
    gates = (request.hyper["lr"], request.hyper.get("decay", zeros),
             request.hyper.get("momentum"))  # (B, H, T); momentum None: η ≡ 0
    T, p = q.shape[2], state.position
    mom = state.opt_state["momentum"]
    point = state.chunk_params if p else state.params
    psi = request.objective.grad
    norms = []

    def cut(lo: int, hi: int) -> list[Tensor | None]:
        return [None if x is None else x[:, :, lo:hi] for x in (q, k, v, *gates)]

    def masked(n: Tensor, plan: TilePlan) -> Tensor:
        return (n * plan.valid[:, None, None].to(n.dtype)).sum((0, -1))

    W, S, Wg = state.params["W"], mom["W"], point["W"]
    affine = request.objective.affine_grad
    if affine is not None and 2 * C <= tile:
        # finish the open chunk (gradient point known), then chunk-aligned tiles
        head = min(T, C - p) if p else 0
        ys = []
        if head:
            tiles = Tiles.gather(TilePlan.within_chunks(head, C, p, tile, q.device), *cut(0, head))
            y, W, S, Wg, n = chunked_linear.scan_within_chunks(tiles, W, S, Wg, psi)
            ys.append(tiles.plan.scatter(y))
            norms.append(masked(n, tiles.plan))
        if T > head:
            L = C * (tile // C)
            tiles = Tiles.gather(TilePlan.aligned(T - head, L, q.device), *cut(head, T))
            y, W, S, Wg, n = chunked_linear.scan_aligned(tiles, W, S, C, *affine,
                                                         momentum=gates[2] is not None)
            ys.append(tiles.plan.scatter(y))
            norms.append(masked(n, tiles.plan))
        y = torch.cat(ys, 2)
    else:
        tiles = Tiles.gather(TilePlan.within_chunks(T, C, p, tile, q.device), *cut(0, T))
        y, W, S, Wg, n = chunked_linear.scan_within_chunks(tiles, W, S, Wg, psi)
        y = tiles.plan.scatter(y)
        norms.append(masked(n, tiles.plan))
    params, new_mom, chunk_params = {"W": W}, {"W": S}, {"W": Wg}
    position = (p + T) % C
    if position == 0:
        chunk_params = dict(params)
    return y, MemoryState(params=params, opt_state={"momentum": new_mom},
                          chunk_params=chunk_params, position=position, chunk_size=C,
                          step=state.step + T, surprise=(sum(norms) / T).detach())


class ChunkedBackend(Backend):
    """Chunk-parallel scan: ``W_j = D_j W_b + c_j S_b − Σ_{i≤j} A_{ji} g_i`` per tile
    (docs/concepts.md chunk form), reads and writes as batched matmuls.

    Titans' level (read after write, token writes, ``momentum``): a ``linear`` memory
    and an affine objective (``dot``, ``l2``) at every chunk size, including the
    delta rule at ``chunk_size=1`` with per-token decay and momentum (UT transform,
    DeltaNet arXiv 2406.06484); a ``linear`` memory with any other objective for
    ``chunk_size ≥ 2``; ``mlp`` / ``residual-mlp`` memories for ``chunk_size ≥ 2``
    (TTT arXiv 2407.04620 mini-batch dual form). Every other mode of the contract
    (chunk-start reads, chunk writes, self targets, per-token clipping) and the
    ``dgd`` rule, for the same memories at every chunk size: chunked_levels.py.
    Pure torch ops: autograd reaches q, k, v, the gates and the initial state (chunk
    writes of MLP memories sum a tile's weight gradients in one step of their own, so
    that path is differentiable once — the outer gradient — not twice).
    Any batched rule with ``write="chunk"`` (one ``update`` per chunk). Token writes
    of other rules and other memories are declared unsupported.
    """

    priority = 10
    tile: int = TILE

    def supports(self, request: ScanRequest) -> str | None:
        return unsupported_reason(request)

    def scan(self, request: ScanRequest) -> tuple[Tensor, MemoryState]:
        return chunked_scan(request, tile=self.tile)

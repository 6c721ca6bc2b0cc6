"""Chunk-parallel scan of every read / write mode for linear and two-layer MLP memories.

Tiles lie inside chunks (tiles.py ``TilePlan.within_chunks``), so every token of a
tile takes its gradient at the known chunk-start parameters ``W_c``: one batched
forward and backward at ``W_c`` gives, per weight matrix ``l``, the inputs
``X_l`` and errors ``E_l`` of all tokens (``g⁽ˡ⁾_i = e⁽ˡ⁾_i x⁽ˡ⁾_iᵀ``, never
materialised). Per tile starting from the running ``(W_b, S_b)``:

* ``write="token"``, momentum (tiles.py: ``A, Bθ, D, c, P``)::

      W_L = D_L W_b + c_L S_b − Eᵀ(A_{L,:}ᵀ∘X),   S_L = P_L S_b − Eᵀ((Bθ)_{L,:}ᵀ∘X)

* ``write="token"``, DGD (NL eqs. 88, 93) — ``W_j = W_{j−1}((1−α_j)I − θ_j x_j x_jᵀ) −
  θ_j e_j x_jᵀ``. With ``r_j = W_{j−1} x_j + e_j`` and ``A_{ji} = Π_{i<m≤j}(1−α_m) θ_i``
  (the momentum kernel at η = 0), ``W_j = D_j W_b − Σ_{i≤j} A_{ji} r_i x_iᵀ`` and the
  ``r_i`` solve a unit lower-triangular system (the UT / WY form of the delta rule,
  DeltaNet arXiv 2406.06484, with the errors of the chunk start)::

      (I + N) R = D̃∘(X W_bᵀ) + E,   N_{im} = A_{i−1,m} (x_m·x_i) (m < i),  D̃_i = D_{i−1}
      W_L = D_L W_b − Rᵀ(A_{L,:}ᵀ∘X)

  — rank-``L`` work per tile, no ``D×D`` products.
* ``write="chunk"`` (NL eq. 71): ``G += Eᵀ(θ∘X)`` (DGD adds ``(X W_cᵀ)ᵀ(θ∘X)``, i.e.
  ``W_c Σθ x xᵀ``); at the tile that closes a chunk: momentum ``S = η_L S − G``,
  ``W = (1 − α_L) W + S``; DGD ``W = (1 − α_L) W − G``; any other rule one
  ``update(G, state, W, lr=1, …)`` with the last token's hyperparameters.

The chunk loop of a multi-chunk tile of chunk writes without momentum (GD with retention,
the CMS levels' rule) on an MLP memory runs as one autograd Function with a hand-written
backward pass (tile_recurrence.py); with momentum, self targets or a linear memory,
autograd differentiates the plain loop.

Reads: ``chunk_start`` is ``M_{W_c}(Q)``; ``after_write`` for token writes is, layer by
layer with input ``u`` (``q``, then the hidden ``h``)::

    W_j u_j = D_j W_b u_j + c_j S_b u_j − Σ_{i≤j} A_{ji} (x_i·u_j) e_i     (e = E, or R for DGD)

and for chunk writes ``M_{W_c}(q)`` except at a chunk's last token, which reads the new W.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

from nlframe.interfaces import Params, ScanRequest
from nlframe.level import MemoryState, tree_map

from .dgd_tile import DGDWriteTile, dgd_spec
from .reference import clip_rows
from .tile_recurrence import ChunkWriteTile, tile_spec
from .tile_end import tile_end
from .tiles import TileGates, TilePlan, Tiles, per_tile


class LayerView:
    """The algebra of a structured memory: its weight matrices in read order, their
    inputs and errors at a gradient point (linear: ``W``; mlp: ``W1``, ``W2``)."""

    def __init__(self, memory: Any) -> None:
        self.memory = memory
        self.structure = memory.structure
        self.names = ("W",) if self.structure == "linear" else ("W1", "W2")
        self.residual = self.structure == "residual-mlp"

    def forward_backward(self, G: Params, K: Tensor, target: Tensor, objective: Any,
                         clip: float | None) -> tuple[dict, dict, Tensor]:
        """Inputs ``X_l``, errors ``E_l`` at ``G`` for keys ``K (…, L, Dk)``, and ``‖∂ℓ/∂pred‖``."""
        if self.structure == "linear":
            pred = K @ G["W"].transpose(-1, -2)
            delta = objective.grad(pred, target)
            return {"W": K}, {"W": clip_rows(delta, clip)}, delta.norm(dim=-1)
        m = self.memory
        z = K @ G["W1"].transpose(-1, -2)  # (…, L, Dh)
        act = m.activation(z)
        pred = act @ G["W2"].transpose(-1, -2)
        if self.residual:
            pred = pred + K
        delta = objective.grad(pred, target)
        d2 = clip_rows(delta, clip)
        d1 = (d2 @ G["W2"]) * m.activation_grad(z)
        return {"W1": K, "W2": act}, {"W1": d1, "W2": d2}, delta.norm(dim=-1)

    def read(self, params: Params, x: Tensor) -> Tensor:
        return self.memory.read(params, x)


def scan_levels(request: ScanRequest, *, tile: int) -> tuple[Tensor, MemoryState]:
    """Run ``request`` (linear / mlp / residual-mlp; momentum or dgd; any read, write,
    self target, clip). With a momentum rule and chunks shorter than half a tile, whole
    chunks run several to a tile: chunk writes read at the chunk start take
    :func:`scan_chunk_writes` (full inner gradient) or :func:`scan_chunk_writes_truncated`,
    token writes (full inner gradient, either read) :func:`scan_token_writes` where the
    weights outweigh its loop (:data:`TOKEN_TILE_RATIO`). The chunk
    open at the call's start is finished first, and a truncated call that opens the
    stream writes its first chunk from the attached start state, tile by tile. Chunk
    writes of chunks longer than the tile take tiles of a whole chunk
    (:data:`CHUNK_WRITE_TILE_MAX`)."""
    C, p, T = request.chunk_size, request.state.position, request.q.shape[2]
    chunk_writes = request.write == "chunk" and request.read == "chunk_start"
    token_writes = (request.write == "token" and not request.truncate
                    and _weights_outweigh_loop(request, tile))
    if not ((chunk_writes or token_writes) and request.rule_structure == "momentum"
            and not request.static_hyper and 2 * C <= tile):
        if request.write == "chunk":  # no in-tile kernel: a tile may hold a whole chunk
            tile = max(tile, min(C, CHUNK_WRITE_TILE_MAX))
        return scan_within_chunk_tiles(request, tile=tile)
    if p:
        lo = C - p  # the open chunk's remaining tokens
    else:
        lo = C if (request.truncate and request.state.step == 0) else 0  # the stream's first chunk
    hi = lo + max(T - lo, 0) // C * C
    if hi - lo < 2 * C:
        return scan_within_chunk_tiles(request, tile=tile)
    if token_writes:
        fast = scan_token_writes
    else:
        fast = scan_chunk_writes_truncated if request.truncate else scan_chunk_writes
    pieces = [(lo, hi, lambda r: fast(r, tile=tile))]
    if lo:
        pieces.insert(0, (0, lo, lambda r: scan_within_chunk_tiles(r, tile=tile)))
    if hi < T:
        pieces.append((hi, T, lambda r: scan_within_chunk_tiles(r, tile=tile)))
    state, ys, surprise = request.state, [], 0.0
    for a, b, run in pieces:
        y, state = run(_slice(request, a, b, state))
        ys.append(y)
        surprise = surprise + state.surprise * (b - a) / T
    return torch.cat(ys, 2), attrs.evolve(state, surprise=surprise)


CHUNK_WRITE_TILE_MAX = 256
"""Chunk writes of chunks longer than the tile run tile by tile inside chunks with tiles
of up to a whole chunk, at most this many tokens: a tile of chunk writes has no in-tile
kernel to grow (every token takes its gradient at ``W_c``), and each tile forms a
parameter-sized weight gradient. Measured on a 2-core CPU (CMS level 256 → 1024 → 256,
B = 2, T = 512, C = 128, training step of the level): tiles of 128 take 0.88–0.90× the
time of tiles of 64, truncated and full inner gradient; tiles of two chunks of 128 through
:func:`scan_chunk_writes_truncated` 1.36×."""

TOKEN_TILE_RATIO = 0.05
"""Token writes of the momentum rule take tiles of several chunks (:func:`scan_token_writes`)
where the weights each chunk end would form outweigh the extra work of the tile's chunk
loop: ``Σ_l |W_l| ≥ ratio · C · tile · Σ_l (rows_l + cols_l)``. Measured on a 2-core CPU
(MLP memories, B·H = 8–32, T = 256–512, C = 4–16, tile 64), the training step of the
memory took 0.81–0.86× the time of chunk-by-chunk tiles at ratios 0.06–0.1, 0.95–1.05×
at 0.04–0.05, and 1.17–1.22× at 0.02–0.03 (titans-tiny's memory: 32 → 64 → 32, C = 16)."""


def _weights_outweigh_loop(request: ScanRequest, tile: int) -> bool:
    """The rule of :data:`TOKEN_TILE_RATIO` for ``request``'s memory."""
    shapes = list(request.memory.param_shapes().values())
    size = sum(math.prod(s) for s in shapes)
    return size >= TOKEN_TILE_RATIO * request.chunk_size * tile * sum(sum(s) for s in shapes)


def _slice(request: ScanRequest, lo: int, hi: int, state: MemoryState | None = None) -> ScanRequest:
    """Tokens ``lo:hi`` of ``request`` (from ``state`` when given)."""
    cut = {n: h[:, :, lo:hi] for n, h in request.hyper.items()}
    return ScanRequest(q=request.q[:, :, lo:hi], k=request.k[:, :, lo:hi], v=request.v[:, :, lo:hi],
                       memory=request.memory, objective=request.objective, rule=request.rule,
                       hyper=cut, static_hyper=request.static_hyper, chunk_size=request.chunk_size,
                       state=state or request.state, names=request.names, read=request.read,
                       write=request.write, self_target=request.self_target,
                       grad_clip=request.grad_clip, rule_structure=request.rule_structure,
                       outputs=request.outputs, truncate=request.truncate,
                       read_after=request.read_after if hi == request.q.shape[2] else None)


def scan_chunk_writes(request: ScanRequest, *, tile: int) -> tuple[Tensor, MemoryState]:
    """Chunk writes of the momentum rule, read at chunk starts, ``m = ⌊tile/C⌋`` whole
    chunks per tile, the fast weights materialised only at tile ends (NL eq. 71).

    At chunk granularity the rule is the token recurrence with ``g = G_j``: with the
    tile gates of the chunks' last-token ``α_j, η_j`` and ``θ = 1`` (tiles.py), chunk
    ``j`` starts from ``W⁽ʲ⁾ = D_{j−1} W_b + c_{j−1} S_b − Σ_{j'<j} A_{j−1,j'} G_{j'}``, so
    every gradient of chunk ``j`` with layer input ``u`` (``k``, then the hidden ``h``) is::

        W⁽ʲ⁾ u = D_{j−1} W_b u + c_{j−1} S_b u − Σ_{i in chunks < j} A_{j−1,c(i)} θ_i (x_i·u) e_i

    — kernel products against the tile's earlier tokens, never a per-chunk weight. The
    chunks' gradients run in order; their reads feed nothing inside the scan, so all reads
    of a tile take the same form at once, after it (:meth:`_ChunkTiles.reads`). The tile
    ends at ``W_L = D W_b + c S_b − Eᵀ(a∘X)``, ``S_L = P S_b − Eᵀ(b∘X)``.
    """
    state, view = request.state, LayerView(request.memory)
    ct = _ChunkTiles.cut(request, tile)
    gates = TileGates.build(torch.ones_like(ct.alpha), ct.alpha, ct.eta)  # chunk level, θ = 1
    W, S = dict(state.params), dict(state.opt_state["momentum"])
    fused = _fused_spec(request, view)
    ys, norms = [], []
    for t in range(ct.n):
        D = F.pad(gates.D[t], (1, 0), value=1.0)  # (B, H, m+1): D_{j−1}
        c = F.pad(gates.c[t], (1, 0))
        # kernel weights of every chunk against every token of the tile, in one op:
        # w[j, i] = A_{j−1, c(i)} θ_i (row j of the padded A holds A_{j−1,:}; A is lower
        # triangular, so the tokens of chunk j and later get weight 0)
        w_all = _kernel_weights(gates.A[t], ct.theta[t])  # (B, H, m+1, m·C)
        chunks = ct.chunks_in(t)
        if fused is not None:  # the same loop, run and differentiated by hand
            X, E = _fused_tile(ct, t, chunks, W, w_all, D, fused, norms)
        else:
            X, E = _autograd_tile(ct, t, chunks, view, W, S, w_all, D, c, norms)
        if request.outputs:
            ys.append(ct.reads(t, chunks, view, W, S, X, E, w_all, D, c))
        W, S = ct.chunk_end(t, chunks, gates, ct.theta[t], W, S, E, X)
    return ct.finish(ys, norms, W, S)


def scan_chunk_writes_truncated(request: ScanRequest, *, tile: int) -> tuple[Tensor, MemoryState]:
    """:func:`scan_chunk_writes` with ``truncate=True`` in a call that does not open the
    stream (``state.step > 0``): every chunk writes from its detached start state and is
    read at the attached one, so (``sg``: stop-gradient; θ = 1 at chunk level)::

        W⁽ʲ⁾ = (1 − α_{j−1}) sg W⁽ʲ⁻¹⁾ + η_{j−1} sg S⁽ʲ⁻¹⁾ − G_{j−1}(sg W⁽ʲ⁻¹⁾),   W⁽⁰⁾ = W_b
        S⁽ʲ⁾ = η_{j−1} sg S⁽ʲ⁻¹⁾ − G_{j−1}

    Values are those of the full form. The gradients of chunk ``j`` are computed at
    ``sg W⁽ʲ⁾`` (kernel products against the tile's detached earlier tokens: the outer
    gradient reaches only the chunk's own keys and values). The reads ``u`` (``q``, then
    the hidden ``h``) take the same detached form and add a correction of value 0 that
    carries the rest of their gradient::

        −(α_{j−1} − sg α_{j−1}) sg W⁽ʲ⁻¹⁾u + (η_{j−1} − sg η_{j−1}) sg S⁽ʲ⁻¹⁾u − (G_{j−1} sg u − sg ·)
        (j = 0:  W_b sg u − sg ·)

    and the tile ends at the last chunk's write from the detached ``W⁽ˡᵃˢᵗ⁾, S⁽ˡᵃˢᵗ⁾``.
    The backward pass never crosses more than one write.
    """
    state, view = request.state, LayerView(request.memory)
    ct = _ChunkTiles.cut(request, tile)
    gates = TileGates.build(torch.ones_like(ct.alpha), ct.alpha.detach(), ct.eta.detach())
    W, S = dict(state.params), dict(state.opt_state["momentum"])
    has_mom, C = ct.has_mom, ct.C
    fused = _fused_spec(request, view)
    ys, norms, link = [], [], {}
    for t in range(ct.n):
        Wb = {nm: w.detach() for nm, w in W.items()}
        Sb = {nm: w.detach() for nm, w in S.items()}
        D = F.pad(gates.D[t], (1, 0), value=1.0)  # (B, H, m+1): D_{j−1}, c_{j−1}, P_{j−1}
        c = F.pad(gates.c[t], (1, 0))
        P = F.pad(gates.P[t], (1, 0), value=1.0)
        th_sg = ct.theta[t].detach()
        # kernel weights of W⁽ʲ⁾ and S⁽ʲ⁾ against the tile's tokens (rows j = 0..m), detached
        wa = _kernel_weights(gates.A[t], th_sg)
        wb = _kernel_weights(gates.Btheta[t], th_sg)
        chunks = ct.chunks_in(t)
        if fused is not None:  # the same loop, run and differentiated by hand
            X, E = _fused_tile(ct, t, chunks, Wb, wa, D, fused, norms)
            Xs = {n: x.detach() for n, x in X.items()}
            Es = {n: e.detach() for n, e in E.items()}
        else:
            X, E, Xs, Es = _autograd_tile_truncated(ct, t, chunks, view, Wb, Sb, wa, D, c,
                                                    norms)
        alpha, eta, theta = ct.alpha[t], ct.eta[t], ct.theta[t]  # attached
        if request.outputs:
            R = chunks * C
            rows = lambda x: x[..., :chunks].repeat_interleave(C, -1)[..., None]  # noqa: E731
            prev = lambda x: rows(F.pad(x, (1, 0))[..., :-1])  # noqa: E731  chunk j → x_{j−1}
            before = th_sg.new_ones(chunks - 1).diag(-1)  # chunk j → chunk j − 1
            band = before.repeat_interleave(C, 0).repeat_interleave(C, 1) \
                * theta[..., :chunks, :].flatten(-2)[..., None, :]  # θ_i, i in chunk c(r) − 1
            wq_W = wa[..., :chunks, :R].repeat_interleave(C, -2)
            wq_S = wb[..., :chunks, :R].repeat_interleave(C, -2)
            Dp, cp, Pp = prev(D), prev(c), prev(P)

            def correction(name: str, u: Tensor, sW: Tensor, sS: Tensor | None) -> Tensor:
                ub = u.detach()
                with torch.no_grad():  # sg W⁽ʲ⁻¹⁾u and sg S⁽ʲ⁻¹⁾u (zero weight in chunk 0)
                    ux = ub @ Xs[name].transpose(-1, -2)
                    shift = lambda w: F.pad(w, (0, 0, C, 0))[..., :R, :]  # noqa: E731
                    W_u = Dp * sW - (ux * shift(wq_W)) @ Es[name]
                    if has_mom:
                        W_u = W_u + cp * sS
                        S_u = Pp * sS - (ux * shift(wq_S)) @ Es[name]
                attach_Wb = F.pad(_attached_read(ub[..., :C, :], W[name], link.get(name)),
                                  (0, 0, 0, R - C))
                total = attach_Wb - ((ub @ X[name].transpose(-1, -2)) * band) @ E[name] \
                    - prev(alpha) * W_u
                if has_mom:
                    total = total + prev(eta) * S_u
                return _grad_only(total)

            ys.append(ct.reads(t, chunks, view, Wb, Sb, Xs, Es, wa, D, c, correction))
        # end of tile: the last chunk's write from its detached start state
        jl, prev_tokens = chunks - 1, (chunks - 1) * C
        keep, eta_l = 1.0 - alpha[..., jl, None, None], eta[..., jl, None, None]
        neg_th = theta[..., jl, :, None].neg()
        starts = {name: _ChunkStart.of(Wb[name], Sb[name] if has_mom else None, Es[name],
                                       Xs[name], prev_tokens, D[..., jl], c[..., jl], P[..., jl],
                                       wa[..., jl, :], wb[..., jl, :] if has_mom else None)
                  for name in view.names}
        ends = {name: (E[name][..., prev_tokens:, :], X[name][..., prev_tokens:, :] * neg_th)
                for name in view.names}  # the last chunk's E and −θ∘X, attached
        if t < ct.n - 1:
            # W_L's value alone (that of the full form, from the detached tile); the next
            # tile's reads differentiate it through its factors
            with torch.no_grad():
                W, S_L = ct.chunk_end(t, chunks, gates, th_sg, Wb, Sb, Es, Xs)
            # without momentum (η ≡ 0, c = 0) S reaches no read and no write: only the
            # call's last tile forms it (the last chunk's −G, for the returned state)
            S = S_L if has_mom else S
            link = {name: _TileLink(starts[name], keep, eta_l if has_mom else None, *ends[name])
                    for name in view.names}
            continue
        newW, newS = {}, dict(S)
        for name in view.names:  # the call's last tile: the state it returns, attached
            W_l, S_l = starts[name].weights()
            E_l, Xn_l = ends[name]
            neg_G = E_l.transpose(-1, -2) @ Xn_l
            # (η ≡ 0: 0·S_b keeps the call's S_b in the returned state's graph, ∂S_b = 0)
            newS[name] = neg_G.addcmul_(eta_l, S_l if has_mom else S[name])
            newW[name] = torch.addcmul(newS[name], keep, W_l)
        W, S = newW, newS
    return ct.finish(ys, norms, W, S)


@attrs.frozen
class _ChunkStart:
    """The start of a truncated tile's last chunk, ``W_l = D₀ W_b + c₀ S_b + Eₚᵀ X_W`` and
    ``S_l = P₀ S_b + Eₚᵀ X_S`` (``Eₚ``: the tile's earlier rows' errors, ``X_W, X_S``:
    their inputs times ``−w``, the kernel weights of the last chunk; ``S = None`` without
    momentum), all detached, kept as these factors."""

    W_b: Tensor
    S_b: Tensor | None
    D0: Tensor
    c0: Tensor
    P0: Tensor
    E_p: Tensor | None
    X_W: Tensor | None
    X_S: Tensor | None

    @classmethod
    def of(cls, W_b: Tensor, S_b: Tensor | None, E: Tensor, X: Tensor, rows: int, D0: Tensor,
           c0: Tensor, P0: Tensor, wa: Tensor, wb: Tensor | None) -> "_ChunkStart":
        """From the tile's detached errors ``E`` and inputs ``X``, the last chunk's first
        row ``rows``, its gates ``D₀, c₀, P₀ (B, H)`` and kernel weights ``wa, wb (B, H,
        ≥ rows)``."""
        scalar = lambda x: x.detach()[..., None, None]  # noqa: E731
        E_p = X_W = X_S = None
        if rows:
            with torch.no_grad():
                X_p = X[..., :rows, :]
                E_p, X_W = E[..., :rows, :], X_p * wa[..., :rows, None].neg()
                X_S = None if wb is None else X_p * wb[..., :rows, None].neg()
        return cls(W_b, S_b, scalar(D0), scalar(c0), scalar(P0), E_p, X_W, X_S)

    @torch.no_grad()
    def weights(self) -> tuple[Tensor, Tensor | None]:
        """``W_l, S_l`` themselves (fresh buffers; ``W_b, S_b`` for a one-chunk tile)."""
        if self.E_p is None:
            return self.W_b, self.S_b
        ET = self.E_p.transpose(-1, -2)
        W_l = (ET @ self.X_W).addcmul_(self.D0, self.W_b)
        if self.S_b is None:
            return W_l, None
        return W_l.addcmul_(self.c0, self.S_b), (ET @ self.X_S).addcmul_(self.P0, self.S_b)

    @torch.no_grad()
    def reads(self, u: Tensor) -> tuple[Tensor, Tensor | None]:
        """``u W_lᵀ, u S_lᵀ`` from the factors (``u``'s rows are few)."""
        uW = u @ self.W_b.transpose(-1, -2)
        uS = None if self.S_b is None else u @ self.S_b.transpose(-1, -2)
        if self.E_p is None:
            return uW, uS
        rW = self.D0 * uW + (u @ self.X_W.transpose(-1, -2)) @ self.E_p
        if uS is None:
            return rW, None
        rW = rW + self.c0 * uS
        return rW, self.P0 * uS + (u @ self.X_S.transpose(-1, -2)) @ self.E_p


@attrs.frozen
class _TileLink:
    """How a truncated tile's end ``W_L = keep·W_l + η_l S_l + Eᵀ X`` (``W_l, S_l``: the
    last chunk's detached :class:`_ChunkStart`, ``X``: its inputs times ``−θ``; ``η_l =
    None`` without momentum) reaches the next tile's reads, which differentiate their
    reads of ``W_L`` (its value formed alone) through these factors."""

    start: _ChunkStart
    keep: Tensor
    eta: Tensor | None
    E: Tensor
    X: Tensor


def _attached_read(u: Tensor, W: Tensor, link: _TileLink | None) -> Tensor:
    """``u Wᵀ`` with the gradient of the attached ``W``. Where ``W`` ends a truncated tile
    (``link``), its gradient is ``∂W = ȳᵀu``, of rank ``u``'s rows; autograd of ``u Wᵀ``
    would form it dense and push it through the tile end's products and dot products.
    Here the read is ``keep·sg(u W_lᵀ) + η_l sg(u S_lᵀ) + (u Xᵀ) E``, of the same value,
    whose gradient reaches ``keep, η_l, E, X`` by products of ``u``'s rows alone."""
    if link is None:
        return u @ W.transpose(-1, -2)
    start, mom = link.start.reads(u)
    y = ((u @ link.X.transpose(-1, -2)) @ link.E).addcmul(link.keep, start)
    return y if mom is None else y.addcmul(link.eta, mom)


def scan_token_writes(request: ScanRequest, *, tile: int) -> tuple[Tensor, MemoryState]:
    """Token writes of the momentum rule (full inner gradient, either read), ``m =
    ⌊tile/C⌋`` whole chunks per tile, the fast weights materialised only at tile ends.

    Every token's gradient is taken at its chunk start. With the token-level tile gates
    (tiles.py; ``A`` holds θ) chunk ``j`` starts at the tile's row ``jC − 1``, so its
    gradients with layer input ``u`` (``k``, then the hidden ``h``) are::

        W⁽ʲ⁾ u = D_{jC−1} W_b u + c_{jC−1} S_b u − Σ_{i<jC} A_{jC−1,i} (x_i·u) e_i

    — the chunk loop of :func:`scan_chunk_writes` with token-level kernel weights, where
    :func:`scan_within_chunk_tiles` forms a parameter-sized ``W`` and ``S`` at every
    chunk end. Reads after every write take the whole tile's token kernel at once
    (:func:`_read_after`), chunk-start reads row ``jC − 1`` (:meth:`_ChunkTiles.reads`).
    The tile ends at ``W_L = D_L W_b + c_L S_b − Eᵀ(A_{L,:}ᵀ∘X)``, ``S_L = P_L S_b −
    Eᵀ((Bθ)_{L,:}ᵀ∘X)``.
    """
    state, view = request.state, LayerView(request.memory)
    ct = _ChunkTiles.cut(request, tile)
    gates = ct.token_gates()
    C, has_mom = ct.C, ct.has_mom
    W, S = dict(state.params), dict(state.opt_state["momentum"])
    fused = _fused_spec(request, view)
    ys, norms = [], []
    for t in range(ct.n):
        A, D, c = gates.A[t], gates.D[t], gates.c[t]  # (B, H, L, L), (B, H, L)
        # chunk j's start is the token row jC − 1 (row −1: the tile start, D = 1, c = 0)
        Dj = F.pad(D, (1, 0), value=1.0)[..., ::C]  # (B, H, m+1)
        cj = F.pad(c, (1, 0))[..., ::C]
        w_all = F.pad(A, (0, 0, 1, 0))[..., ::C, :]  # (B, H, m+1, L): A_{jC−1, i}
        chunks = ct.chunks_in(t)
        R = chunks * C
        if fused is not None:  # no momentum: the loop of the CMS tiles, by hand
            X, E = _fused_tile(ct, t, chunks, W, w_all, Dj, fused, norms)
        else:
            X, E = _autograd_tile(ct, t, chunks, view, W, S, w_all, Dj, cj, norms)
        if request.outputs and request.read == "after_write":
            Q = ct.Q[t][:, :, :chunks].flatten(2, 3)
            ys.append(_read_after(view, W, S if has_mom else None, E, X, Q, A[..., :R, :R],
                                  D[..., :R], c[..., :R]))
        elif request.outputs:
            ys.append(ct.reads(t, chunks, view, W, S, X, E, w_all, Dj, cj))
        W, S = ct.end(t, W, S, E, X, D[..., R - 1], c[..., R - 1], gates.P[t][..., R - 1],
                      A[..., R - 1, :R], gates.Btheta[t][..., R - 1, :R])
    return ct.finish(ys, norms, W, S)


def _autograd_tile(ct: "_ChunkTiles", t: int, chunks: int, view: LayerView, W: Params, S: Params,
                   w_all: Tensor, D: Tensor, c: Tensor, norms: list) -> tuple[dict, dict]:
    """Layer inputs ``X`` and errors ``E`` of tile ``t``'s tokens, chunk by chunk, for
    autograd to differentiate (any momentum-family request of :func:`scan_chunk_writes`)."""
    request, objective, clip = ct.request, ct.request.objective, ct.request.grad_clip
    has_mom, first, C = ct.has_mom, view.names[0], ct.C
    Kc, Vc = ct.K[t].unbind(2), ct.V[t].unbind(2)  # chunks (B, H, C, D)
    # the first layer's state part of every gradient in the tile, one matmul per matrix
    pre_W = ct.state_part(t, W[first])  # per chunk (B, H, R·C, Dout)
    pre_S = ct.state_part(t, S[first]) if has_mom else None
    # later layers are applied chunk by chunk: their weight gradients are summed over
    # the tile in one matmul in the backward pass, not formed chunk by chunk
    Wd = {nm: _TileWeight.wrap(W[nm]) for nm in view.names if nm != first}
    Sd = {nm: _TileWeight.wrap(S[nm]) for nm in view.names if nm != first} if has_mom else {}
    # layer inputs and errors of the tile's earlier tokens, (B, H, j·C, ·), grown by
    # one concatenation per chunk (a constant number of ops per chunk)
    X: dict[str, Tensor] = {}
    E: dict[str, Tensor] = {}
    for j in range(chunks):
        U = torch.cat([Kc[j], Vc[j]], 2) if request.self_target else Kc[j]
        w = w_all[..., j, None, :j * C]  # (B, H, 1, j·C)
        out, acts = U, {}
        for name in view.names:
            if name == first:
                base = D[..., j, None, None] * pre_W[j]
                if has_mom:
                    base = base + c[..., j, None, None] * pre_S[j]
            else:
                base = D[..., j, None, None] * Wd[name].times(out, transpose=True)
                if has_mom:
                    base = base + c[..., j, None, None] * Sd[name].times(out, transpose=True)
            if j:
                base = base - ((out @ X[name].transpose(-1, -2)) * w) @ E[name]
            acts[name] = (out, base)
            out = view.memory.activation(base) if name == "W1" else base
        e_out = ct.errors(out, U, Vc[j], view, objective, clip, norms)
        # errors per layer, backwards through the chunk-start forward
        for name in reversed(view.names):
            inp, pre = acts[name]
            if name == "W2":  # e1 = (W2⁽ʲ⁾ᵀ e2) ∘ σ′(z1), against earlier chunks only
                back = D[..., j, None, None] * Wd[name].times(e_out)
                if has_mom:
                    back = back + c[..., j, None, None] * Sd[name].times(e_out)
                if j:
                    back = back - ((e_out @ E[name].transpose(-1, -2)) * w) @ X[name]
            X[name] = _grow(X.get(name), inp[..., :C, :])
            E[name] = _grow(E.get(name), e_out)
            if name == "W2":
                e_out = back * view.memory.activation_grad(acts["W1"][1][..., :C, :])
    return X, E


def _autograd_tile_truncated(ct: "_ChunkTiles", t: int, chunks: int, view: LayerView, Wb: Params,
                             Sb: Params, wa: Tensor, D: Tensor, c: Tensor,
                             norms: list) -> tuple[dict, dict, dict, dict]:
    """:func:`_autograd_tile` of :func:`scan_chunk_writes_truncated`: every chunk's errors
    at its detached start weights; ``X, E`` attached, ``Xs, Es`` detached."""
    request, objective, clip = ct.request, ct.request.objective, ct.request.grad_clip
    has_mom, first, C = ct.has_mom, view.names[0], ct.C
    Kc, Vc = ct.K[t].unbind(2), ct.V[t].unbind(2)
    pre_W = ct.state_part(t, Wb[first])
    pre_S = ct.state_part(t, Sb[first]) if has_mom else None
    Xs: dict[str, Tensor] = {}  # detached inputs and errors of the tile's earlier chunks
    Es: dict[str, Tensor] = {}
    Xa: dict[str, list] = {n: [] for n in view.names}  # attached ones, per chunk
    Ea: dict[str, list] = {n: [] for n in view.names}
    for j in range(chunks):
        U = torch.cat([Kc[j], Vc[j]], 2) if request.self_target else Kc[j]
        w = wa[..., j, None, :j * C]
        out, acts = U, {}
        for name in view.names:
            if name == first:
                sW, sS = pre_W[j], pre_S[j] if has_mom else None
            else:
                sW = out @ Wb[name].transpose(-1, -2)
                sS = out @ Sb[name].transpose(-1, -2) if has_mom else None
            base = D[..., j, None, None] * sW
            if has_mom:
                base = base + c[..., j, None, None] * sS
            if j:
                base = base - ((out @ Xs[name].transpose(-1, -2)) * w) @ Es[name]
            acts[name] = (out, base)
            out = view.memory.activation(base) if name == "W1" else base
        e_out = ct.errors(out, U, Vc[j], view, objective, clip, norms)
        for name in reversed(view.names):  # errors at sg W⁽ʲ⁾, backwards
            inp = acts[name][0][..., :C, :]
            if name == "W2":
                back = D[..., j, None, None] * (e_out @ Wb[name])
                if has_mom:
                    back = back + c[..., j, None, None] * (e_out @ Sb[name])
                if j:
                    back = back - ((e_out @ Es[name].transpose(-1, -2)) * w) @ Xs[name]
            Xa[name].append(inp)
            Ea[name].append(e_out)
            Xs[name] = _grow(Xs.get(name), inp.detach())
            Es[name] = _grow(Es.get(name), e_out.detach())
            if name == "W2":
                e_out = back * view.memory.activation_grad(acts["W1"][1][..., :C, :])
    X = {n: torch.cat(x, 2) for n, x in Xa.items()}  # (B, H, chunks·C, ·)
    E = {n: torch.cat(e, 2) for n, e in Ea.items()}
    return X, E, Xs, Es


FUSED_TILES = True
"""Run the chunk loop of :func:`scan_chunk_writes` as :class:`~.tile_recurrence.ChunkWriteTile`
and the DGD token writes of a tile that opens a chunk as :class:`~.dgd_tile.DGDWriteTile`
where they apply (tests switch it off to compare with autograd through the plain loop)."""


def _fused_spec(request: ScanRequest, view: LayerView) -> dict | None:
    """The :class:`~.tile_recurrence.ChunkWriteTile` spec of ``request``'s tiles, or
    ``None`` where the plain loop runs: momentum (``η``) given, self targets, a linear
    memory, an objective without an affine gradient, or under ``torch.compile``."""
    if not FUSED_TILES or request.self_target or view.structure == "linear" \
            or "momentum" in request.hyper or request.objective.affine_grad is None \
            or torch.compiler.is_compiling():
        return None
    return tile_spec(request.memory, request.objective, request.chunk_size, request.grad_clip,
                     truncate=request.truncate)


def _dgd_fused_spec(request: ScanRequest, view: LayerView) -> dict | None:
    """The :class:`~.dgd_tile.DGDWriteTile` spec of ``request``'s tiles that open a chunk,
    or ``None`` where the plain tile runs: not DGD token writes read at the chunk start,
    a linear memory, an objective without an affine gradient, or under ``torch.compile``."""
    if not FUSED_TILES or request.write != "token" or request.rule_structure != "dgd" \
            or request.read != "chunk_start" or view.structure == "linear" \
            or request.objective.affine_grad is None or torch.compiler.is_compiling():
        return None
    return dgd_spec(request.memory, request.objective, request.grad_clip, request.self_target)


def _fused_dgd_tile(W: Params, K: Tensor, V: Tensor, Q: Tensor | None, Qn: Tensor | None,
                    A: Tensor, D: Tensor, spec: dict, norms: list,
                    valid: Tensor | None) -> tuple[Params, Tensor | None, Tensor | None]:
    """The new ``W``, the read ``M_W(Q)`` and the read ``M_{W_new}(Qn)`` (each when its
    inputs are given) of a tile that opens a chunk, by one :class:`~.dgd_tile.DGDWriteTile`
    call (``valid``: the tile's real slots, ``None`` when all are)."""
    lead = K.shape[:2]
    W1, W2 = (W[n].expand(*lead, *W[n].shape[-2:]) for n in ("W1", "W2"))
    W1, W2, y, yn, nrm = DGDWriteTile.apply(K, V, Q, Qn, W1, W2, A, D, spec)
    norms.append(nrm if valid is None else nrm * valid.to(nrm.dtype))
    return {"W1": W1, "W2": W2}, y, yn


def _one_dgd_chunk(request: ScanRequest, view: LayerView, spec: dict) -> tuple[Tensor, MemoryState]:
    """A call that is exactly one chunk from its start, no longer than a tile (a routed
    level's per-chunk write, :meth:`~nlframe.level.Level.scan_routed`): the one fused DGD
    tile of :func:`scan_within_chunk_tiles` on the request's own tensors, without the tile
    plan, gathers and scatter, which are identities here."""
    q, state = request.q, request.state
    B, H, T, _ = q.shape
    A, D = TileGates.without_momentum(request.hyper["lr"], request.hyper.get("decay"))
    W = dict(state.params)
    cut = request.truncate and state.step > 0  # truncated: the write starts detached
    Wb = {n: w.detach() for n, w in W.items()} if cut else W
    norms: list[Tensor] = []
    new, y, ahead = _fused_dgd_tile(Wb, request.k, request.v,
                                    q if request.outputs and not cut else None,
                                    request.read_after, A, D, spec, norms, None)
    if not request.outputs:
        y = q.new_zeros(B, H, 0, request.v.shape[-1])
    elif cut:
        y = view.read(W, q)  # the read sees the attached W_c
    return y, MemoryState(params=new, opt_state={}, chunk_params=dict(new), position=0,
                          chunk_size=request.chunk_size, step=state.step + T, pending={},
                          surprise=(norms[0].sum(-1) / T).detach(), read_after=ahead)


def _fused_tile(ct: "_ChunkTiles", t: int, chunks: int, W: Params, w_all: Tensor, D: Tensor,
                spec: dict, norms: list) -> tuple[dict, dict]:
    """Layer inputs ``X`` and errors ``E`` of tile ``t``'s tokens by one
    :class:`~.tile_recurrence.ChunkWriteTile` call (heads folded into its batch)."""
    C, R = ct.C, chunks * ct.C
    U = ct.K[t][:, :, :chunks].flatten(2, 3)  # (B, H, R, Din)
    V = ct.V[t][:, :, :chunks].flatten(2, 3)
    lead = U.shape[:2]
    W1, W2 = (W[n].expand(*lead, *W[n].shape[-2:]) for n in ("W1", "W2"))
    Mw = w_all[..., :chunks, :R].repeat_interleave(C, -2)  # (B, H, R, R)
    Dr = D[..., :chunks].repeat_interleave(C, -1)[..., None]  # (B, H, R, 1)
    flat = lambda x: None if x is None else x.reshape(-1, *x.shape[2:])  # noqa: E731
    if "decay" not in ct.request.hyper:
        Dr = None  # no retention: every D is exactly 1
    H, E1, E2, nrm = ChunkWriteTile.apply(flat(U), flat(V), flat(W1), flat(W2), flat(Mw),
                                          flat(Dr), spec)
    norms.append(nrm.view(*lead, R))
    H, E1, E2 = (x.view(*lead, *x.shape[1:]) for x in (H, E1, E2))
    return {"W1": U, "W2": H}, {"W1": E1, "W2": E2}


def _kernel_weights(M: Tensor, theta: Tensor) -> Tensor:
    """``w[j, i] = M_{j−1, c(i)} θ_i`` for chunk-level ``M: (…, m, m)`` and per-token
    ``θ: (…, m, C)``: ``(…, m+1, m·C)`` (row 0, the tile start, is 0)."""
    return (F.pad(M, (0, 0, 1, 0))[..., None] * theta[..., None, :, :]).flatten(-2)


def _grad_only(x: Tensor) -> Tensor:
    """``x − sg x``: value 0, gradient that of ``x``."""
    return x - x.detach()


@attrs.define
class _ChunkTiles:
    """The tiles of :func:`scan_chunk_writes`: ``m = ⌊tile/C⌋`` whole chunks of ``C``
    tokens each (the last tile padded), per tile ``K, Q, V: (B, H, m, C, D)`` and
    ``theta: (B, H, m, C)``; ``alpha, eta: (n, B, H, m)`` the gates of each chunk's last
    token (its write's); ``has_mom``: η is given (otherwise ``η ≡ 0``, ``S`` never
    reaches ``W``)."""

    request: ScanRequest
    C: int
    m: int
    n: int
    K: tuple
    Q: tuple
    V: tuple
    theta: tuple
    alpha: Tensor
    eta: Tensor
    has_mom: bool

    @classmethod
    def cut(cls, request: ScanRequest, tile: int) -> "_ChunkTiles":
        C = request.chunk_size
        T = request.q.shape[2]
        m = tile // C
        n = -(-T // (m * C))
        tiles_of = lambda x: _tiles_of(x, n, m, C)  # noqa: E731
        zeros = torch.zeros_like(request.hyper["lr"])
        K, Q, V, th = per_tile(*(tiles_of(x) for x in (request.k, request.q, request.v,
                                                        request.hyper["lr"])))
        return cls(request=request, C=C, m=m, n=n, K=K, Q=Q, V=V, theta=th,
                   alpha=tiles_of(request.hyper.get("decay", zeros))[..., -1],
                   eta=tiles_of(request.hyper.get("momentum", zeros))[..., -1],
                   has_mom="momentum" in request.hyper)

    def token_gates(self) -> TileGates:
        """The token-level gate kernel of every tile, ``(n, B, H, m·C)`` slots (padded
        slots carry ``θ = α = η = 0``; without momentum, the gates of η ≡ 0)."""
        hyper, zeros = self.request.hyper, torch.zeros_like(self.request.hyper["lr"])
        alpha = _tiles_of(hyper.get("decay", zeros), self.n, self.m, self.C).flatten(-2)
        eta = _tiles_of(hyper["momentum"], self.n, self.m, self.C).flatten(-2) \
            if self.has_mom else None
        return TileGates.build(torch.stack(self.theta).flatten(-2), alpha, eta)

    def end(self, t: int, W: Params, S: Params, E: dict, X: dict, D: Tensor, c: Tensor,
            P: Tensor, a: Tensor, b: Tensor) -> tuple[Params, Params]:
        """The end of tile ``t`` from the gates of its last row, ``D, c, P (B, H)`` and the
        token weights ``a, b (B, H, R)``: ``W_L = D W_b + c S_b − Eᵀ(a∘X)``, ``S_L = P S_b −
        Eᵀ(b∘X)`` (:func:`~.tile_end.tile_end`). Without momentum (η = 0: ``c = P = 0``)
        ``S_L`` is ``−θ G`` of the tile's last token or chunk alone and no later tile reads
        it: only the call's last tile forms it, for the returned state (its ``P``, 0, keeps
        ``S_b`` in that state's graph: ``∂S_b = 0``)."""
        need_S = self.has_mom or t == self.n - 1
        return tile_end(W, S, E, X, D, c if self.has_mom else None, P if need_S else None,
                        a.neg(), b.neg() if need_S else None)

    def chunk_end(self, t: int, chunks: int, gates: TileGates, theta: Tensor, W: Params,
                  S: Params, E: dict, X: dict) -> tuple[Params, Params]:
        """:meth:`end` of tile ``t`` of ``chunks`` chunks from the chunk-level ``gates`` (θ =
        1) and the tokens' ``θ``: ``W_L = D W_b + c S_b − Σ_i A_{m−1,c(i)} θ_i e_i x_iᵀ``,
        ``S_L`` likewise with ``Bθ``."""
        jl = chunks - 1
        a = (gates.A[t][..., jl, :chunks, None] * theta[..., :chunks, :]).flatten(-2)
        b = (gates.Btheta[t][..., jl, :chunks, None] * theta[..., :chunks, :]).flatten(-2)
        return self.end(t, W, S, E, X, gates.D[t][..., jl], gates.c[t][..., jl],
                        gates.P[t][..., jl], a, b)

    def chunks_in(self, t: int) -> int:
        """Whole chunks in tile ``t`` (the padding is never read)."""
        return min(self.m, (self.request.q.shape[2] - t * self.m * self.C) // self.C)

    def state_part(self, t: int, M: Tensor) -> tuple[Tensor, ...]:
        """``[k; (v)] Mᵀ`` for every chunk of tile ``t`` in one matmul (``v`` for self
        targets): per chunk ``(B, H, R·C, Dout)``."""
        rows = torch.cat([self.K[t], self.V[t]], 3) if self.request.self_target else self.K[t]
        return (rows.flatten(2, 3) @ M.transpose(-1, -2)).unflatten(2, rows.shape[2:4]).unbind(2)

    def errors(self, out: Tensor, U: Tensor, v: Tensor, view: LayerView, objective: Any,
               clip: float | None, norms: list) -> Tensor:
        """The output error of one chunk's keys from the memory's output ``out`` on rows
        ``U = [k; (v)]``; its norm is appended to ``norms``."""
        read = out + U if view.residual else out
        C = self.C
        target = read[..., C:, :] if self.request.self_target else v
        delta = objective.grad(read[..., :C, :], target)
        norms.append(delta.norm(dim=-1).detach())
        return clip_rows(delta, clip)

    def reads(self, t: int, chunks: int, view: LayerView, W: Params, S: Params, X: dict,
              E: dict, w: Tensor, D: Tensor, c: Tensor, correction=None) -> Tensor:
        """``M_{W⁽ʲ⁾}(q)`` for every chunk of tile ``t`` at once, layer by layer with input
        ``u``: ``D_{j−1} W_b u + c_{j−1} S_b u − ((u Xᵀ) ∘ w_{c(u)}) E`` (``w``, ``D``, ``c``:
        the padded kernel weights and gates, rows per chunk) ``+ correction(name, u,
        W_b u, S_b u)``."""
        C, R = self.C, chunks * self.C
        Q = self.Q[t][..., :chunks, :, :].flatten(2, 3)  # (B, H, R, Dk)
        wq = w[..., :chunks, :R].repeat_interleave(C, -2)  # (B, H, R, R)
        Dr = D[..., :chunks].repeat_interleave(C, -1)[..., None]
        cr = c[..., :chunks].repeat_interleave(C, -1)[..., None]
        u = Q
        for name in view.names:
            sW = u @ W[name].transpose(-1, -2)
            sS = u @ S[name].transpose(-1, -2) if self.has_mom else None
            y = Dr * sW - ((u @ X[name].transpose(-1, -2)) * wq) @ E[name]
            if self.has_mom:
                y = y + cr * sS
            if correction is not None:
                y = y + correction(name, u, sW, sS)
            u = view.memory.activation(y) if name == "W1" else y
        return u + Q if view.residual else u

    def finish(self, ys: list, norms: list, W: Params, S: Params) -> tuple[Tensor, MemoryState]:
        q, v, state = self.request.q, self.request.v, self.request.state
        B, H, T, _ = q.shape
        y = torch.cat(ys, 2)[:, :, :T] if self.request.outputs \
            else q.new_zeros(B, H, 0, v.shape[-1])
        surprise = torch.cat(norms, 2)[:, :, :T].mean(-1)
        return y, MemoryState(params=W, opt_state={"momentum": S}, chunk_params=dict(W),
                              position=0, chunk_size=self.C, step=state.step + T,
                              surprise=surprise)


def _tiles_of(x: Tensor, n: int, m: int, C: int) -> Tensor:
    """``x (B, H, T, …)`` as ``n`` tiles of ``m`` chunks of ``C`` slots, ``(n, B, H, m, C,
    …)``, zero-padded at the end."""
    B, H, T = x.shape[:3]
    pad = n * m * C - T
    if pad:
        x = torch.cat([x, x.new_zeros(B, H, pad, *x.shape[3:])], 2)
    return x.reshape(B, H, n, m, C, *x.shape[3:]).movedim(2, 0)


class _TileWeight:
    """A weight matrix ``M`` used by many small products in one tile, whose gradient is
    formed once: every product ``x Mᵀ`` or ``e M`` records its factor pair in the
    backward pass (``g`` and ``x``: ``∂M += gᵀ x``; ``e`` and ``g``: ``∂M += eᵀ g``) and
    ``M``'s own node sums them all as one ``Aᵀ B`` over the stacked rows, instead of one
    parameter-sized outer product (and its accumulation) per chunk.

    Pairs are kept per backward pass (autograd's graph task id), so a retained graph run
    again, or ``autograd.grad`` asked for other inputs first, never mixes passes. The
    products are differentiable once (the outer gradient), not twice. Under
    ``torch.compile`` (the ``compiled`` backend) the products are plain matmuls: the
    compiler's own backward graph replaces the deferral, which it cannot trace."""

    def __init__(self, M: Tensor, pairs: dict | None) -> None:
        self.M, self.pairs = M, pairs

    @classmethod
    def wrap(cls, M: Tensor) -> "_TileWeight":
        if not (torch.is_grad_enabled() and M.requires_grad and _HAS_TASK_ID) \
                or torch.compiler.is_compiling():
            return cls(M, None)
        pairs: dict = {}
        return cls(_GatherGrads.apply(M, pairs), pairs)

    def times(self, x: Tensor, transpose: bool = False) -> Tensor:
        """``x Mᵀ`` (``transpose``) or ``x M``."""
        if self.pairs is None:
            return x @ (self.M.transpose(-1, -2) if transpose else self.M)
        return _DeferredProduct.apply(x, self.M, self.pairs, transpose)


_HAS_TASK_ID = hasattr(torch._C, "_current_graph_task_id")


class _GatherGrads(torch.autograd.Function):
    @staticmethod
    def forward(ctx, M: Tensor, pairs: dict) -> Tensor:  # type: ignore[override]
        ctx.pairs = pairs
        ctx.set_materialize_grads(False)
        return M.view_as(M)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor | None):  # type: ignore[override]
        pairs = ctx.pairs.pop(torch._C._current_graph_task_id(), None)
        if pairs:
            a = torch.cat([p[0] for p in pairs], -2)
            b = torch.cat([p[1] for p in pairs], -2)
            total = a.transpose(-1, -2) @ b
            grad = total if grad is None else grad + total
        return grad, None


class _DeferredProduct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, M: Tensor, pairs: dict, transpose: bool) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, M)
        ctx.pairs, ctx.transpose = pairs, transpose
        return x @ (M.transpose(-1, -2) if transpose else M)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor):  # type: ignore[override]
        x, M = ctx.saved_tensors
        if ctx.needs_input_grad[1]:
            task = torch._C._current_graph_task_id()
            ctx.pairs.setdefault(task, []).append((g, x) if ctx.transpose else (x, g))
        gx = None
        if ctx.needs_input_grad[0]:
            gx = g @ M if ctx.transpose else g @ M.transpose(-1, -2)
        return gx, None, None, None


def _grow(rows: Tensor | None, x: Tensor) -> Tensor:
    """``rows`` with ``x`` appended along dim 2 (``x`` itself when ``rows`` is ``None``)."""
    return x if rows is None else torch.cat([rows, x], 2)


def scan_within_chunk_tiles(request: ScanRequest, *, tile: int) -> tuple[Tensor, MemoryState]:
    """Every mode, tile by tile inside chunks (module docstring)."""
    q, k, v, state, C = request.q, request.k, request.v, request.state, request.chunk_size
    view, objective, clip = LayerView(request.memory), request.objective, request.grad_clip
    fused = _dgd_fused_spec(request, view)
    T, p = q.shape[2], state.position
    if fused is not None and p == 0 and T == C <= tile:
        return _one_dgd_chunk(request, view, fused)
    dgd = request.rule_structure == "dgd"
    token_write, after = request.write == "token", request.read == "after_write"
    zeros = torch.zeros_like(request.hyper["lr"])
    theta = request.hyper["lr"]
    alpha = request.hyper.get("decay", zeros)
    eta = None if dgd else request.hyper.get("momentum")  # None: η ≡ 0
    plan = TilePlan.within_chunks(T, C, p, tile, q.device)
    tiles = Tiles.gather(plan, q, k, v, theta, alpha, eta)
    g = tiles.gates
    closes = [(p + e + 1) % C == 0 for e in plan.end_tokens]

    # write="chunk" only: a rule without a known structure, or with static options
    generic = request.rule_structure not in ("momentum", "dgd") or bool(request.static_hyper)
    W = dict(state.params)
    S = dict(state.opt_state["momentum"]) if request.rule_structure == "momentum" else None
    opt_state = state.opt_state
    Gp = dict(state.chunk_params) if p else dict(W)
    pending = dict(state.pending) if (p and not token_write) else {}
    cut = request.truncate and state.step - p > 0  # the chunk open at the call's start
    ahead = None  # M_{W_new}(request.read_after), where the last tile computes it
    owned = False  # the pending gradient is this call's own buffer (not the state's)
    last_G = None  # η ≡ 0: the last chunk gradient written (the momentum state is −G)
    ys, norms = [], []
    qs, ks, vs, As, thetas = per_tile(tiles.q, tiles.k, tiles.v, g.A, tiles.theta)
    for t, opens in enumerate(plan.opens_chunk):
        # truncated: a chunk's write starts from its detached start state (not the stream's
        # first chunk); its reads still see the attached W_c
        if opens:
            cut = request.truncate and state.step + plan.end_tokens[t] - plan.last_slots[t] > 0
            Gp, pending = dict(W), {}
            if cut:
                W = {n: w.detach() for n, w in W.items()}
                S = {n: m.detach() for n, m in S.items()} if S is not None else None
                last_G = {n: g.detach() for n, g in last_G.items()} if last_G else None
                opt_state = tree_map(Tensor.detach, opt_state)
        Gw = {n: g.detach() for n, g in Gp.items()} if cut else Gp  # the write's gradient point
        Q, K, V = qs[t], ks[t], vs[t]  # (B, H, L, D)
        if fused is not None and opens:  # W = W_c: the whole tile by hand (dgd_tile.py)
            last = t == plan.index.shape[0] - 1 and closes[t]  # ends the call at a chunk end
            W, y, ahead = _fused_dgd_tile(
                W, K, V, Q if request.outputs and not cut else None,
                request.read_after if last else None, As[t], g.D[t], fused, norms, plan.valid[t])
            if request.outputs:
                ys.append(view.read(Gp, Q) if cut else y)  # cut: the read sees the attached W_c
            continue
        target = view.read(Gw, V) if request.self_target else V
        X, E, norm = view.forward_backward(Gw, K, target, objective, clip)
        norms.append(norm * plan.valid[t].to(norm.dtype))
        A = As[t]  # (B, H, L, L)
        if token_write:
            if dgd:
                E = _dgd_residuals(W, X, E, A, g.D[t])
            y = _read_after(view, W, S, E, X, Q, A, g.D[t], g.c[t]) if (after and request.outputs) \
                else None
            advanced = {n: tiles.advance(t, W[n], S[n] if S is not None else None, E[n], X[n])
                        for n in view.names}
            W = {n: w for n, (w, _) in advanced.items()}
            S = {n: m for n, (_, m) in advanced.items()} if S is not None else None
            if y is None and request.outputs:
                y = view.read(Gp, Q)
        else:
            th = thetas[t][..., None]  # (B, H, L, 1)
            step = {n: E[n].transpose(-1, -2) @ (X[n] * th) for n in view.names}
            if dgd:
                step = {n: s + (X[n] @ Gw[n].transpose(-1, -2)).transpose(-1, -2) @ (X[n] * th)
                        for n, s in step.items()}
            # the chunk's gradient so far: summed into this call's own buffer in place
            pending = {n: (pending[n].add_(s) if owned else pending[n] + s)
                       if n in pending else s for n, s in step.items()}
            owned = True
            y = view.read(Gp, Q) if request.outputs else None
            if closes[t]:
                if generic:  # one update(G_c, state, W) with the last token's hyperparameters
                    end = plan.end_tokens[t]
                    hyper = {**request.static_hyper,
                             **{n: h[:, :, end] for n, h in request.hyper.items()}}
                    if "lr" in request.rule.hyperparams:
                        hyper["lr"] = 1.0
                    W, opt_state = request.rule.update(pending, opt_state, W, **hyper)
                else:
                    W, S_new = _apply_chunk(W, S, pending, tiles, t, plan.last_slots[t],
                                            no_momentum=eta is None)  # DGD or η ≡ 0
                    if S_new is not None:
                        S = S_new
                    elif S is not None:  # η ≡ 0: S = −G_c reaches nothing; formed at the end
                        last_G = pending
                pending = {}
                if after and request.outputs:
                    j = plan.last_slots[t]
                    y = y.clone()
                    y[..., j:j + 1, :] = view.read(W, Q[..., j:j + 1, :])
        if request.outputs:
            ys.append(y)
    B, H, _, Dv = v.shape
    y = plan.scatter(torch.stack(ys)) if ys else q.new_zeros(B, H, 0, Dv)
    position = (p + T) % C
    chunk_params = dict(W) if position == 0 else Gp
    if position == 0:
        pending = {}
    surprise = (torch.stack(norms).sum((0, -1)) / T).detach()
    if last_G is not None:  # S = 0·S_b − G_c: the call's S_b stays in the state's graph (∂S_b = 0)
        S_b = state.opt_state["momentum"]
        S = {n: torch.mul(S_b[n], 0.0).sub_(g) for n, g in last_G.items()}
    if not generic:
        opt_state = {} if dgd else {"momentum": S}
    return y, MemoryState(params=W, opt_state=opt_state, chunk_params=chunk_params,
                          position=position, chunk_size=C, step=state.step + T,
                          pending=pending, surprise=surprise, read_after=ahead)


def _dgd_residuals(W: Params, X: dict, E: dict, A: Tensor, D: Tensor) -> dict:
    """``R = (I + N)⁻¹ (D̃∘(X W_bᵀ) + E)`` per weight matrix (module docstring)."""
    L = A.shape[-1]
    A_prev = torch.nn.functional.pad(A, (0, 0, 1, 0))[..., :L, :]  # row i holds A_{i−1,:}
    D_prev = torch.nn.functional.pad(D, (1, 0), value=1.0)[..., :L]  # D̃_i = D_{i−1}
    out = {}
    for n, x in X.items():
        N = A_prev * (x @ x.transpose(-1, -2))  # strictly lower triangular
        rhs = D_prev[..., None] * (x @ W[n].transpose(-1, -2)) + E[n]
        eye = torch.eye(L, dtype=x.dtype, device=x.device).expand_as(N)
        # the L×L inverse, then one matmul: batched triangular solves against a wide
        # right-hand side are far slower on CPU than this
        inv = torch.linalg.solve_triangular(N + eye, eye, upper=False, unitriangular=True)
        out[n] = inv @ rhs
    return out


def _read_after(view: LayerView, W: Params, S: Params | None, E: dict, X: dict, Q: Tensor,
                A: Tensor, D: Tensor, c: Tensor) -> Tensor:
    """Reads after every token's write inside one tile, layer by layer."""
    u = Q
    for n in view.names:
        out = D[..., None] * (u @ W[n].transpose(-1, -2))
        if S is not None:
            out = out + c[..., None] * (u @ S[n].transpose(-1, -2))
        out = out - (A * (u @ X[n].transpose(-1, -2))) @ E[n]
        u = view.memory.activation(out) if n == "W1" else out
    return u + Q if view.residual else u


def _apply_chunk(W: Params, S: Params | None, G: Params, tiles: Tiles, t: int, j: int,
                 no_momentum: bool) -> tuple[Params, Params | None]:
    """The one step of a chunk write at its last token (slot ``j``), with that token's α and η:
    ``S ← η S − G``, then ``W ← (1 − α) W + S`` (``no_momentum``, DGD or η ≡ 0: ``W ← (1 − α)
    W − G`` in one fresh buffer, and no ``S``)."""
    keep = 1.0 - tiles.alpha[t][..., j, None, None]  # (B, H, 1, 1)
    if no_momentum:
        return {n: torch.mul(W[n], keep).sub_(G[n]) for n in W}, None
    eta = tiles.eta[t][..., j, None, None]
    newS = {n: eta * S[n] - G[n] for n in W}
    return {n: keep * W[n] + newS[n] for n in W}, newS

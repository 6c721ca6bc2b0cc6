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

Reads: ``chunk_start`` is ``M_{W_c}(Q)``; ``after_write`` for token writes is, layer by
layer with input ``u`` (``q``, then the hidden ``h``)::

    W_j u_j = D_j W_b u_j + c_j S_b u_j − Σ_{i≤j} A_{ji} (x_i·u_j) e_i     (e = E, or R for DGD)

and for chunk writes ``M_{W_c}(q)`` except at a chunk's last token, which reads the new W.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

from nlframe.interfaces import Params, ScanRequest
from nlframe.level import MemoryState, tree_map

from .reference import clip_rows
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
    self target, clip). Chunk writes of a momentum rule read at the chunk start with
    chunks shorter than a tile take :func:`scan_chunk_writes` on whole chunks."""
    C, p, T = request.chunk_size, request.state.position, request.q.shape[2]
    if (request.write == "chunk" and request.read == "chunk_start" and not request.truncate
            and request.rule_structure == "momentum" and not request.static_hyper
            and 2 * C <= tile and p == 0 and T >= 2 * C):
        full = (T // C) * C
        y, state = scan_chunk_writes(_slice(request, 0, full), tile=tile)
        if full == T:
            return y, state
        y2, state2 = scan_within_chunk_tiles(_slice(request, full, T, state), tile=tile)
        surprise = (state.surprise * full + state2.surprise * (T - full)) / T
        return torch.cat([y, y2], 2), attrs.evolve(state2, surprise=surprise)
    return scan_within_chunk_tiles(request, tile=tile)


def _slice(request: ScanRequest, lo: int, hi: int, state: MemoryState | None = None) -> ScanRequest:
    """Tokens ``lo:hi`` of ``request`` (from ``state`` when given)."""
    cut = {n: h[:, :, lo:hi] for n, h in request.hyper.items()}
    return ScanRequest(q=request.q[:, :, lo:hi], k=request.k[:, :, lo:hi], v=request.v[:, :, lo:hi],
                       memory=request.memory, objective=request.objective, rule=request.rule,
                       hyper=cut, static_hyper=request.static_hyper, chunk_size=request.chunk_size,
                       state=state or request.state, names=request.names, read=request.read,
                       write=request.write, self_target=request.self_target,
                       grad_clip=request.grad_clip, rule_structure=request.rule_structure,
                       outputs=request.outputs, truncate=request.truncate)


def scan_chunk_writes(request: ScanRequest, *, tile: int) -> tuple[Tensor, MemoryState]:
    """Chunk writes of the momentum rule, read at chunk starts, ``m = ⌊tile/C⌋`` whole
    chunks per tile, the fast weights materialised only at tile ends (NL eq. 71).

    At chunk granularity the rule is the token recurrence with ``g = G_j``: with the
    tile gates of the chunks' last-token ``α_j, η_j`` and ``θ = 1`` (tiles.py), chunk
    ``j`` starts from ``W⁽ʲ⁾ = D_{j−1} W_b + c_{j−1} S_b − Σ_{j'<j} A_{j−1,j'} G_{j'}``, so
    every read and gradient of chunk ``j`` with layer input ``u`` is::

        W⁽ʲ⁾ u = D_{j−1} W_b u + c_{j−1} S_b u − Σ_{i in chunks < j} A_{j−1,c(i)} θ_i (x_i·u) e_i

    — kernel products against the tile's earlier tokens, never a per-chunk weight.
    The tile ends at ``W_L = D W_b + c S_b − Eᵀ(a∘X)``, ``S_L = P S_b − Eᵀ(b∘X)``.
    """
    q, k, v, state, C = request.q, request.k, request.v, request.state, request.chunk_size
    view, objective, clip = LayerView(request.memory), request.objective, request.grad_clip
    B, H, T, _ = q.shape
    m = tile // C
    L, n = m * C, -(-T // (m * C))
    pad = n * L - T
    zeros = torch.zeros_like(request.hyper["lr"])

    def tiles_of(x: Tensor) -> Tensor:  # (B, H, T, …) → (n, B, H, m, C, …)
        if pad:
            x = torch.cat([x, x.new_zeros(B, H, pad, *x.shape[3:])], 2)
        return x.reshape(B, H, n, m, C, *x.shape[3:]).movedim(2, 0)

    Q, K, V = tiles_of(q), tiles_of(k), tiles_of(v)
    th = tiles_of(request.hyper["lr"])  # (n, B, H, m, C)
    last_alpha = tiles_of(request.hyper.get("decay", zeros))[..., -1]  # (n, B, H, m)
    last_eta = tiles_of(request.hyper.get("momentum", zeros))[..., -1]
    gates = TileGates.build(torch.ones_like(last_alpha), last_alpha, last_eta)  # chunk level, θ = 1
    W, S = dict(state.params), dict(state.opt_state["momentum"])
    has_mom = "momentum" in request.hyper  # η ≡ 0 otherwise: c = 0, S never reaches W
    first = view.names[0]
    ys, norms = [], []
    Ks, Qs, Vs, ths = per_tile(K, Q, V, th)
    for t in range(n):
        D = F.pad(gates.D[t], (1, 0), value=1.0)  # (B, H, m+1): D_{j−1}
        c = F.pad(gates.c[t], (1, 0))
        # the first layer's state part of every read in the tile, in one matmul per matrix:
        # rows [k; q; v] of chunk j → (B, H, m, R·C, Dout)
        rows_all = torch.cat([Ks[t], Qs[t]] + ([Vs[t]] if request.self_target else []), 3)
        Kc, Qc, Vc = Ks[t].unbind(2), Qs[t].unbind(2), Vs[t].unbind(2)  # chunks (B, H, C, D)

        def state_part(M: Tensor) -> Tensor:
            return (rows_all.flatten(2, 3) @ M.transpose(-1, -2)).unflatten(2, rows_all.shape[2:4])

        pre_W = state_part(W[first]).unbind(2)  # per chunk (B, H, R·C, Dout)
        pre_S = state_part(S[first]).unbind(2) if has_mom else None
        # later layers are applied chunk by chunk: their weight gradients are summed over
        # the tile in one matmul in the backward pass, not formed chunk by chunk
        Wd = {nm: _TileWeight.wrap(W[nm]) for nm in view.names if nm != first}
        Sd = {nm: _TileWeight.wrap(S[nm]) for nm in view.names if nm != first} if has_mom else {}
        # kernel weights of every chunk against every token of the tile, in one op:
        # w[j, i] = A_{j−1, c(i)} θ_i (row j of the padded A holds A_{j−1,:}; A is lower
        # triangular, so the tokens of chunk j and later get weight 0)
        A = F.pad(gates.A[t], (0, 0, 1, 0))  # (B, H, m+1, m)
        w_all = (A[..., :, :, None] * ths[t][..., None, :, :]).flatten(-2)  # (B, H, m+1, m·C)
        # layer inputs and errors of the tile's earlier tokens, (B, H, j·C, ·), grown by one
        # concatenation per chunk (a constant number of ops per chunk, whatever its index)
        X: dict[str, Tensor] = {}
        E: dict[str, Tensor] = {}
        yt = []
        chunks = min(m, (T - t * L) // C)  # whole chunks in this tile (the padding is never read)
        for j in range(chunks):
            Kj, Qj, Vj = Kc[j], Qc[j], Vc[j]
            rows = [Kj, Qj] + ([Vj] if request.self_target else [])
            U = torch.cat(rows, 2)  # every read of chunk j at W⁽ʲ⁾
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
            read = out + U if view.residual else out
            nk = Kj.shape[2]
            pred, yq = read[..., :nk, :], read[..., nk:2 * nk, :]
            target = read[..., 2 * nk:, :] if request.self_target else Vj
            delta = objective.grad(pred, target)
            norms.append(delta.norm(dim=-1).detach())
            e_out = clip_rows(delta, clip)
            yt.append(yq)
            # errors per layer, backwards through the chunk-start forward
            for name in reversed(view.names):
                inp, pre = acts[name]
                if name == "W2":  # e1 = (W2⁽ʲ⁾ᵀ e2) ∘ σ′(z1), against earlier chunks only
                    back = D[..., j, None, None] * Wd[name].times(e_out)
                    if has_mom:
                        back = back + c[..., j, None, None] * Sd[name].times(e_out)
                    if j:
                        back = back - ((e_out @ E[name].transpose(-1, -2)) * w) @ X[name]
                X[name] = _grow(X.get(name), inp[..., :nk, :])
                E[name] = _grow(E.get(name), e_out)
                if name == "W2":
                    e_out = back * view.memory.activation_grad(acts["W1"][1][..., :nk, :])
        # end of tile: W_L = D W_b + c S_b − Σ_i A_{m−1,c(i)} θ_i e_i x_iᵀ, S_L likewise with Bθ
        jl = chunks - 1
        a_row = (gates.A[t][..., jl, :chunks, None] * ths[t][..., :chunks, :]).flatten(-2)
        b_row = (gates.Btheta[t][..., jl, :chunks, None] * ths[t][..., :chunks, :]).flatten(-2)
        DL, cL, PL = (x[..., jl, None, None] for x in (gates.D[t], gates.c[t], gates.P[t]))
        newW, newS = {}, {}
        for name in view.names:  # one fresh parameter-sized buffer per result, updated in place
            EaT = E[name].transpose(-1, -2)
            newW[name] = (EaT @ (X[name] * a_row.neg()[..., None])).addcmul_(DL, W[name])
            if has_mom:
                newW[name].addcmul_(cL, S[name])
            newS[name] = (EaT @ (X[name] * b_row.neg()[..., None])).addcmul_(PL, S[name])
        W, S = newW, newS
        ys.append(torch.cat(yt, 2))
    y = torch.cat(ys, 2)[:, :, :T] if request.outputs else q.new_zeros(B, H, 0, v.shape[-1])
    surprise = torch.cat(norms, 2)[:, :, :T].mean(-1)
    return y, MemoryState(params=W, opt_state={"momentum": S}, chunk_params=dict(W), position=0,
                          chunk_size=C, step=state.step + T, surprise=surprise)


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
    dgd = request.rule_structure == "dgd"
    token_write, after = request.write == "token", request.read == "after_write"
    zeros = torch.zeros_like(request.hyper["lr"])
    theta = request.hyper["lr"]
    alpha = request.hyper.get("decay", zeros)
    eta = zeros if dgd else request.hyper.get("momentum", zeros)
    T, p = q.shape[2], state.position
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
    ys, norms = [], []
    qs, ks, vs, As, thetas = per_tile(tiles.q, tiles.k, tiles.v, g.A, tiles.theta)
    for t, opens in enumerate(plan.opens_chunk):
        # truncated: a chunk's write starts from its detached start state (not the stream's
        # first chunk); its reads still see the attached W_c
        if opens:
            cut = request.truncate and state.step + int(plan.index[t, 0]) > 0
            Gp, pending = dict(W), {}
            if cut:
                W = {n: w.detach() for n, w in W.items()}
                S = {n: m.detach() for n, m in S.items()} if S is not None else None
                opt_state = tree_map(Tensor.detach, opt_state)
        Gw = {n: g.detach() for n, g in Gp.items()} if cut else Gp  # the write's gradient point
        Q, K, V = qs[t], ks[t], vs[t]  # (B, H, L, D)
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
            pending = {n: pending[n] + s if n in pending else s for n, s in step.items()}
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
                    W, S = _apply_chunk(W, S, pending, tiles, t, plan.last_slots[t], dgd)
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
    if not generic:
        opt_state = {} if dgd else {"momentum": S}
    return y, MemoryState(params=W, opt_state=opt_state, chunk_params=chunk_params,
                          position=position, chunk_size=C, step=state.step + T,
                          pending=pending, surprise=surprise)


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
                 dgd: bool) -> tuple[Params, Params | None]:
    """The one step of a chunk write at its last token (slot ``j``), with that token's α and η."""
    keep = 1.0 - tiles.alpha[t][..., j, None, None]  # (B, H, 1, 1)
    if dgd:
        return {n: keep * W[n] - G[n] for n in W}, None
    eta = tiles.eta[t][..., j, None, None]
    newS = {n: eta * S[n] - G[n] for n in W}
    return {n: keep * W[n] + newS[n] for n in W}, newS

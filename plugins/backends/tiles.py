"""Tiling of a scan into chunk-aligned tiles, and the gate kernel of one tile.

Shared by the chunk-parallel backends. A *tile* is a run of at most ``L``
consecutive tokens, padded at its end to exactly ``L`` slots; tiles never cross
a chunk boundary unless they hold whole chunks (the aligned plan). Inside a
tile starting from ``(W_b, S_b)``, with gradients ``g_i`` (docs/concepts.md, chunk
form; Titans arXiv 2501.00663, parallel training with momentum and decay)::

    W_j = D_j W_b + c_j S_b − Σ_{i≤j} A_{ji} g_i
    S_j = P_j S_b − Σ_{i≤j} B_{ji} θ_i g_i
    D_j = Π_{m≤j}(1−α_m),  P_j = Π_{m≤j} η_m,  B_{ji} = Π_{i<m≤j} η_m,
    A_{ji} = (1−α_j) A_{j−1,i} + B_{ji} θ_i,   c_j = (1−α_j) c_{j−1} + P_j.

Closed forms used here (no division by cumulative products, so gates equal to 0
are exact and differentiable): with ``Dm_{jm} = Π_{m<r≤j}(1−α_r)``,
``A = Dm · (B ∘ θ)`` and ``c = Dm · P``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def segment_products(x: Tensor) -> Tensor:
    """``M_{ji} = Π_{i<r≤j} x_r`` for ``j ≥ i`` (1 on the diagonal), 0 above: ``(..., L) → (..., L, L)``.

    One ``cumprod`` down the rows of a masked copy of ``x`` (row ``r`` holds
    ``x_r`` left of the diagonal, 1 elsewhere), so zeros in ``x`` are exact.
    """
    L = x.shape[-1]
    if L == 1:  # one slot (a token decoded at a time): the empty product
        return torch.ones((*x.shape, 1), dtype=x.dtype, device=x.device)
    r = torch.arange(L, device=x.device)
    below = r[:, None] > r[None, :]  # (L, L): row r strictly below column i
    ones = torch.ones((), dtype=x.dtype, device=x.device)
    m = torch.where(below, x.unsqueeze(-1), ones).cumprod(-2)
    return m * (r[:, None] >= r[None, :]).to(x.dtype)


def per_tile(*xs: Tensor) -> list[tuple[Tensor, ...]]:
    """Each ``(n, …)`` tensor as its ``n`` per-tile views (``unbind``). A loop over tiles
    indexes these instead of ``x[t]``: the backward of one ``unbind`` is one ``stack``,
    where every ``x[t]`` would scatter into a fresh zero tensor of the full size."""
    return [x.unbind(0) for x in xs]


def side_by_side(x: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``[a∘x | b∘x]``: rows of ``x (..., L, D)`` scaled by ``a, b (..., L)``, side by
    side → ``(..., L, 2D)`` (one op, no concatenation copy)."""
    scale = torch.stack([a, b], -1)[..., None]  # (..., L, 2, 1)
    return (x.unsqueeze(-2) * scale).flatten(-2)


@dataclass
class TileGates:
    """Gate kernel of a batch of tiles (leading dims ``...``, tile length ``L``).

    ``D, c, P: (..., L)``; ``A, Btheta: (..., L, L)`` with ``Btheta_{ji} = B_{ji} θ_i``.
    """

    D: Tensor
    c: Tensor
    P: Tensor
    A: Tensor
    Btheta: Tensor

    @classmethod
    def build(cls, theta: Tensor, alpha: Tensor, eta: Tensor | None) -> "TileGates":
        """Gates of tiles from per-slot ``θ, α, η: (..., L)``. ``η = None`` means ``η ≡ 0``:
        then ``B = I``, so ``Bθ = diag(θ)``, ``P = c = 0`` and ``A = Dm∘θ``
        (:meth:`without_momentum`), with no products of segments of ``η``."""
        if eta is None:
            A, D = cls.without_momentum(theta, alpha)
            zero = torch.zeros_like(theta)
            return cls(D=D, c=zero, P=zero, A=A, Btheta=torch.diag_embed(theta))
        keep = 1.0 - alpha
        decay = segment_products(keep)  # Dm (..., L, L)
        btheta = segment_products(eta) * theta.unsqueeze(-2)  # B_{ji} θ_i
        P = eta.cumprod(-1)
        return cls(D=keep.cumprod(-1), c=(decay @ P.unsqueeze(-1)).squeeze(-1), P=P,
                   A=decay @ btheta, Btheta=btheta)

    @staticmethod
    def without_momentum(theta: Tensor, alpha: Tensor | None) -> tuple[Tensor, Tensor]:
        """``A, D`` of :meth:`build` at ``η = 0`` (DGD), without the momentum terms:
        ``A_{ji} = Π_{i<r≤j}(1−α_r) θ_i`` and ``D_j = Π_{r≤j}(1−α_r)`` (``α = None``: no
        retention)."""
        keep = torch.ones_like(theta) if alpha is None else 1.0 - alpha
        return segment_products(keep) * theta.unsqueeze(-2), keep.cumprod(-1)

    def rows(self, last: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """End-of-tile coefficients at slot ``last`` (``(n,)`` over the first leading dim):
        ``D_L, c_L, P_L`` as ``(..., 1, 1)`` and the rows ``A_{L,:}``, ``(Bθ)_{L,:}`` as ``(..., L)``."""
        shape = (-1,) + (1,) * (self.D.dim() - 1)
        idx = last.view(shape).expand(*self.D.shape[:-1], 1)  # (..., 1)

        def at(x: Tensor) -> Tensor:
            return x.gather(-1, idx)[..., None]  # (..., 1, 1)

        def row(m: Tensor) -> Tensor:
            return m.gather(-2, idx[..., None].expand(*m.shape[:-2], 1, m.shape[-1])).squeeze(-2)

        return at(self.D), at(self.c), at(self.P), row(self.A), row(self.Btheta)


@dataclass
class TilePlan:
    """Which token sits in which slot: ``index: (n, L)`` (padded slots hold ``T``, an
    appended zero token), ``valid: (n, L)``, ``last: (n,)`` the slot of each tile's
    last token, ``opens_chunk[t]``: the gradient point of tile ``t`` is the state at
    its start (a chunk starts there). ``regular``: tiles are consecutive and full
    but the last, so gathering is a reshape. ``last_slots`` and ``end_tokens`` (each
    tile's last slot and last token) are ``last`` as Python ints, so that loops over
    tiles branch on them without reading a tensor (no graph break under
    ``torch.compile``)."""

    index: Tensor
    valid: Tensor
    last: Tensor
    opens_chunk: list[bool]
    tokens: int
    regular: bool
    last_slots: list[int]
    end_tokens: list[int]

    @property
    def size(self) -> int:
        return self.index.shape[1]

    @classmethod
    def from_runs(cls, runs: list[tuple[int, int, bool]], device) -> "TilePlan":
        """Tiles from ``(start, length, opens_chunk)`` runs of consecutive tokens, each
        padded to the longest run."""
        L = max(r[1] for r in runs)
        T = runs[-1][0] + runs[-1][1]
        slot = torch.arange(L)
        start = torch.tensor([r[0] for r in runs], dtype=torch.long)
        length = torch.tensor([r[1] for r in runs], dtype=torch.long)
        valid = slot[None, :] < length[:, None]
        index = torch.where(valid, start[:, None] + slot[None, :], torch.full((), T))
        regular = all(r[0] == i * L and (r[1] == L or i == len(runs) - 1)
                      for i, r in enumerate(runs))
        return cls(index=index.to(device), valid=valid.to(device), last=(length - 1).to(device),
                   opens_chunk=[r[2] for r in runs], tokens=T, regular=regular,
                   last_slots=[r[1] - 1 for r in runs], end_tokens=[r[0] + r[1] - 1 for r in runs])

    @classmethod
    def within_chunks(cls, T: int, chunk: int, position: int, max_tile: int, device) -> "TilePlan":
        """Tiles that each lie inside one chunk: every chunk (the first one continued
        from ``position``) is cut into pieces of at most ``⌈C / ⌈C / max_tile⌉⌉`` tokens.
        Plans are kept by their arguments (:data:`PLAN_CACHE_SIZE`): a stream decoded token
        by token asks for the same few again on every call."""
        key = (T, chunk, position, max_tile, str(device))
        cache = not torch.compiler.is_compiling()  # (a compiled graph builds its own)
        if cache and key in _PLANS:
            return _PLANS[key]
        plan = cls._within_chunks(T, chunk, position, max_tile, device)
        if cache and len(_PLANS) < PLAN_CACHE_SIZE:
            _PLANS[key] = plan
        return plan

    @classmethod
    def _within_chunks(cls, T: int, chunk: int, position: int, max_tile: int, device) -> "TilePlan":
        L = -(-chunk // -(-chunk // max_tile))
        runs: list[tuple[int, int, bool]] = []
        t, first = 0, True
        while t < T:
            length = min(T - t, chunk - position if first else chunk)
            for off in range(0, length, L):
                runs.append((t + off, min(L, length - off), off == 0 and not (first and position)))
            t, first = t + length, False
        return cls.from_runs(runs, device)

    @classmethod
    def aligned(cls, T: int, L: int, device) -> "TilePlan":
        """Tiles of ``L`` tokens from token 0 (the last one padded); each opens a chunk."""
        return cls.from_runs([(t, min(L, T - t), True) for t in range(0, T, L)], device)

    def gather(self, x: Tensor) -> Tensor:
        """``(B, H, T, *f)`` → contiguous ``(n, B, H, L, *f)``; padded slots are zero."""
        B, H, T = x.shape[:3]
        n, L = self.index.shape
        if self.regular:
            if n * L > T:
                x = torch.cat([x, x.new_zeros(B, H, n * L - T, *x.shape[3:])], 2)
            g = x.reshape(B, H, n, L, *x.shape[3:])
        else:
            x = torch.cat([x, x.new_zeros(B, H, 1, *x.shape[3:])], 2)
            g = x[:, :, self.index]
        return g.movedim(2, 0).contiguous()

    def scatter(self, y: Tensor) -> Tensor:
        """``(n, B, H, L, *f)`` → ``(B, H, T, *f)``: the valid slots in token order."""
        n, B, H, L = y.shape[:4]
        flat = y.movedim(0, 2).reshape(B, H, n * L, *y.shape[4:])
        if self.regular:
            return flat[:, :, : self.tokens]
        return flat.index_select(2, self.valid.reshape(-1).nonzero().squeeze(-1))


PLAN_CACHE_SIZE = 4096
"""How many :meth:`TilePlan.within_chunks` plans are kept (a plan is a few small index
tensors, never modified). Building one of one token took 37 µs on a 2-core CPU, against
1 µs to look it up; a scan call of one token takes about 0.5 ms."""

_PLANS: dict[tuple, TilePlan] = {}


@dataclass
class Tiles:
    """Inputs of a batch of tiles in loop-friendly layout ``(n, B, H, L, ...)``.

    ``q, k: (n, B, H, L, Dk)``, ``v: (n, B, H, L, Dv)``; ``gates`` of every tile;
    ``qdc = [D∘q | c∘q]: (n, B, H, L, 2Dk)`` (formed where read; the state part of
    every read is ``qdc [W_b | S_b]ᵀ``); end-of-tile coefficients ``DL, cL, PL:
    (n, B, H, 1, 1)`` and rows ``aL = A_{L,:}``, ``bL = (Bθ)_{L,:}: (n, B, H, L)``; the
    raw per-slot gates ``theta``, ``alpha``, ``eta: (n, B, H, L)``.
    """

    plan: TilePlan
    q: Tensor
    k: Tensor
    v: Tensor
    gates: TileGates
    DL: Tensor
    cL: Tensor
    PL: Tensor
    aL: Tensor
    bL: Tensor
    theta: Tensor
    alpha: Tensor
    eta: Tensor

    @classmethod
    def gather(cls, plan: TilePlan, q: Tensor, k: Tensor, v: Tensor, theta: Tensor,
               alpha: Tensor, eta: Tensor | None) -> "Tiles":
        """Cut ``q, k: (B, H, T, Dk)``, ``v: (B, H, T, Dv)`` and gates ``(B, H, T)`` into
        ``plan``'s tiles (padded slots: zero inputs, θ = α = η = 0, so they write nothing).
        ``eta = None``: no momentum (``η ≡ 0``, gates of :meth:`TileGates.build` without
        its momentum terms)."""
        th, al = plan.gather(theta), plan.gather(alpha)  # (n, B, H, L)
        et = torch.zeros_like(th) if eta is None else plan.gather(eta)
        gates = TileGates.build(th, al, None if eta is None else et)
        DL, cL, PL, aL, bL = gates.rows(plan.last)
        q = plan.gather(q)
        return cls(plan=plan, q=q, k=plan.gather(k), v=plan.gather(v), gates=gates,
                   DL=DL, cL=cL, PL=PL, aL=aL, bL=bL, theta=th, alpha=al, eta=et)

    @property
    def qdc(self) -> Tensor:
        """``[D∘q | c∘q]``, formed where it is read: only the joint-state loops of the
        linear memory need it, once each (no cache: ``torch.compile`` traces this)."""
        return side_by_side(self.q, self.gates.D, self.gates.c)

    def advance_joint(self, t: int, X: Tensor, err: Tensor, inp_ab: Tensor) -> Tensor:
        """:meth:`advance` on the joint state ``X = [W | S]: (B, H, R, 2I)`` with
        ``inp_ab = [−A_{L,:}ᵀ∘inp | −(Bθ)_{L,:}ᵀ∘inp]: (B, H, L, 2I)`` precomputed."""
        n_in = X.shape[-1] // 2
        W, S = X[..., :n_in], X[..., n_in:]
        U = err.transpose(-1, -2) @ inp_ab  # (B, H, R, 2I), a fresh buffer
        U[..., :n_in].addcmul_(self.DL[t], W).addcmul_(self.cL[t], S)
        U[..., n_in:].addcmul_(self.PL[t], S)
        return U

    def advance(self, t: int, W: Tensor, S: Tensor | None, err: Tensor,
                inp: Tensor) -> tuple[Tensor, Tensor | None]:
        """End of tile ``t`` for a layer with per-token gradients ``g_i = err_i inp_iᵀ``::

            W_L = D_L W + c_L S − errᵀ(A_{L,:}ᵀ∘inp),   S_L = P_L S − errᵀ((Bθ)_{L,:}ᵀ∘inp)

        ``W, S: (B, H, R, I)``, ``err: (B, H, L, R)``, ``inp: (B, H, L, I)``; ``S = None``
        for a rule without momentum (then ``c = 0`` and only ``W_L`` is returned, DGD's
        residuals in ``err``).
        """
        errT = err.transpose(-1, -2)
        W_new = (errT @ (inp * self.aL[t, ..., None].neg())).addcmul_(self.DL[t], W)
        if S is None:
            return W_new, None
        W_new = W_new.addcmul_(self.cL[t], S)
        S_new = (errT @ (inp * self.bL[t, ..., None].neg())).addcmul_(self.PL[t], S)
        return W_new, S_new

"""``memory_scan``'s read/write modes, self-generated targets and the DGD rule against a
float64 oracle written from the equations (``equations.py``).

The contract, per (b, h), chunk ``c`` = tokens ``cC..cC+C−1`` with chunk-start
parameters ``W_c`` (Titans arXiv 2501.00663 eqs. 9–13; NL arXiv 2512.24695
eqs. 71, 87–93)::

    u_t = M_{W_c}(v_t) if self_target else v_t,   g_t = ∇_W ℓ(M_W(k_t), u_t)|_{W=W_c}
    write="token":  momentum S = η_t S − θ_t g_t, W = (1−α_t)W + S
                    dgd      W⁽ˡ⁾ = W⁽ˡ⁾((1−α_t)I − θ_t x⁽ˡ⁾_t x⁽ˡ⁾_tᵀ) − θ_t g⁽ˡ⁾_t
    write="chunk":  the same step once per chunk, at its last token, on
                    G_c = Σ_t θ_t g_t (dgd: Σ_t θ_t x_t x_tᵀ), with that token's α, η
    read="after_write": y_t = M_W(q_t) after token t's write;  "chunk_start": y_t = M_{W_c}(q_t)

The oracle itself is checked first against things that exist independently of the
new modes: autograd of the written-out losses, the memory plugins' reads, the
current ``reference`` backend in its one mode (read after a per-token momentum
write), and the hand-written delta rule.
"""

from __future__ import annotations

import contextlib
import itertools
import zlib
from unittest import mock
from dataclasses import dataclass, replace
from typing import Any

import pytest
import torch
from torch import Tensor

import nlframe
from nlframe.scan import initial_state, make_memory, make_rule
from nlframe_plugins.backends import chunked_levels

from .scan_cases import tile
from .equations import PARAM_NAMES, gelu, gelu_prime, mem_grads, mem_read, oracle_scan

DT = torch.float64
B, H, T, D, DH = 2, 2, 11, 4, 6
MLP_KW = {"hidden": DH, "activation": "gelu"}
TOL = {"rtol": 1e-10, "atol": 1e-10}
GRAD_TOL = {"rtol": 1e-9, "atol": 1e-10}

MEMORIES = ("linear", "mlp", "residual-mlp")
OBJECTIVES = ("l2", "dot")
CHUNKS = (1, 2, 3, 5, 16)  # 16 > T: one chunk, left pending
READS = ("after_write", "chunk_start")
WRITES = ("token", "chunk")


# -- cases and inputs ------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    memory: str = "linear"
    objective: str = "l2"
    optimizer: str = "momentum"
    chunk: int = 1
    read: str = "after_write"
    write: str = "token"
    self_target: bool = False
    exact: bool = False  # gates with exact 0 and 1 entries
    truncate: bool = False  # memory_scan(truncate=True): inner_grad = "truncated"
    eta: bool = True  # False: the momentum rule without its gate η (η ≡ 0, as CMS levels run it)

    def __str__(self) -> str:
        return (f"{self.memory}-{self.objective}-{self.optimizer}-{self.read}-{self.write}-"
                f"{'self' if self.self_target else 'v'}-C{self.chunk}"
                + ("-exact" if self.exact else "") + ("-truncated" if self.truncate else "")
                + ("" if self.eta else "-no-eta"))

    @property
    def mkw(self) -> dict:
        return dict(MLP_KW) if self.memory != "linear" else {}


def mkw(memory: str) -> dict:
    return dict(MLP_KW) if memory != "linear" else {}


def make_inputs(case: Case, *, T: int = T, Dk: int = D, Dv: int = D, seed: int = 0) -> dict:
    """Deterministic float64 inputs for ``case``: q ~ N(0,1), keys of norm ≤ 1, v ~ N(0,1),
    θ ∈ (0, 0.5), α ∈ (0, 0.2), η ∈ (0, 0.9) per token (``None`` where the rule takes
    none), random ``W0`` and, for momentum, random ``S0``."""
    gen = torch.Generator().manual_seed(zlib.crc32(f"{case}/{seed}".encode()))
    q = torch.randn(B, H, T, Dk, generator=gen, dtype=DT)
    k = torch.randn(B, H, T, Dk, generator=gen, dtype=DT)
    k = k / k.norm(dim=-1, keepdim=True).clamp_min(1.0)
    v = torch.randn(B, H, T, Dv, generator=gen, dtype=DT)

    def gate(hi: float) -> Tensor:
        x = torch.rand(B, H, T, generator=gen, dtype=DT) * hi
        if case.exact:
            pick = torch.rand(B, H, T, generator=gen, dtype=DT)
            x = torch.where(pick < 0.2, torch.zeros_like(x), x)
            x = torch.where(pick > 0.8, torch.ones_like(x), x)
        return x

    lr, decay, mom = gate(0.5), gate(0.2), gate(0.9)
    if case.optimizer != "momentum" or not case.eta:
        mom = None
    if case.optimizer == "sgd":
        decay = None
    shapes = make_memory(case.memory, Dk, Dv, **case.mkw).param_shapes()
    W0 = {n: 0.3 * torch.randn(B, H, *s, generator=gen, dtype=DT) for n, s in shapes.items()}
    S0 = ({n: 0.1 * torch.randn(B, H, *s, generator=gen, dtype=DT) for n, s in shapes.items()}
          if case.optimizer == "momentum" else None)
    return {"q": q, "k": k, "v": v, "lr": lr, "decay": decay, "momentum": mom, "W0": W0, "S0": S0}


def build_state(case: Case, inp: dict):
    """A fresh ``MemoryState`` at ``W0`` (and momentum ``S0``) through the public helpers."""
    Dk, Dv = inp["k"].shape[-1], inp["v"].shape[-1]
    mem = make_memory(case.memory, Dk, Dv, **case.mkw)
    rule = make_rule(case.optimizer)
    state = initial_state(mem, rule, batch=B, heads=H, params=dict(inp["W0"]),
                          chunk_size=case.chunk)
    if inp["S0"] is not None:
        state.opt_state = {**state.opt_state, "momentum": dict(inp["S0"])}
    return state


def scan(backend: str, case: Case, inp: dict, *, state=None, lo: int = 0, hi: int | None = None,
         modes: bool = True):
    """``memory_scan`` on tokens ``lo:hi`` of ``inp``; ``modes=False`` leaves out the new
    keywords (read/write/self_target) so the call runs on the current code."""
    sl = slice(lo, hi)
    kw: dict[str, Any] = dict(memory=case.memory, objective=case.objective,
                              optimizer=case.optimizer, lr=inp["lr"][:, :, sl],
                              chunk_size=case.chunk, backend=backend,
                              state=build_state(case, inp) if state is None else state,
                              memory_kwargs=case.mkw)
    for name in ("decay", "momentum"):
        if inp[name] is not None:
            kw[name] = inp[name][:, :, sl]
    if modes:
        kw.update(read=case.read, write=case.write, self_target=case.self_target)
    q, k, v = inp["q"][:, :, sl], inp["k"][:, :, sl], inp["v"][:, :, sl]
    if case.truncate:
        kw["truncate"] = True
    return nlframe.memory_scan(q, k, v, **kw)


def scan_or_skip(backend: str, case: Case, inp: dict, **kw):
    """``scan``, skipping where the chunked backend declares the request unsupported."""
    try:
        return scan(backend, case, inp, **kw)
    except ValueError as exc:
        if backend == "chunked" and "does not support" in str(exc):
            pytest.skip(str(exc))
        raise


def oracle(case: Case, inp: dict, *, hi: int | None = None) -> dict:
    sl = slice(0, hi)
    cut = lambda x: None if x is None else x[:, :, sl]  # noqa: E731
    return oracle_scan(inp["q"][:, :, sl], inp["k"][:, :, sl], inp["v"][:, :, sl],
                       memory=case.memory, objective=case.objective, optimizer=case.optimizer,
                       lr=cut(inp["lr"]), decay=cut(inp["decay"]), momentum=cut(inp["momentum"]),
                       chunk_size=case.chunk, read=case.read, write=case.write,
                       self_target=case.self_target, W0=inp["W0"], S0=inp["S0"],
                       truncate=case.truncate)


def close(actual: Tensor, expected: Tensor, what: str, tol: dict = TOL) -> None:
    torch.testing.assert_close(actual.detach(), expected.detach(), **tol,
                               msg=lambda m: f"{what}: {m}")


def check_state(y: Tensor, state, expected: dict, T_total: int, what: str = "",
                tol: dict = TOL) -> None:
    """Outputs, final params, momentum, chunk_params, position and step against the oracle."""
    close(y, expected["y"], f"{what}y", tol)
    assert set(state.params) == set(expected["params"])
    for n in expected["params"]:
        close(state.params[n], expected["params"][n], f"{what}params[{n}]", tol)
        close(state.chunk_params[n], expected["chunk_params"][n], f"{what}chunk_params[{n}]", tol)
    if expected["momentum"] is None:
        assert state.momentum is None, f"{what}rule without momentum returned {state.momentum}"
    else:
        for n in expected["momentum"]:
            close(state.momentum[n], expected["momentum"][n], f"{what}momentum[{n}]", tol)
    assert state.position == expected["position"], f"{what}position"
    assert state.step == T_total, f"{what}step"


# -- 0. the oracle, checked against what exists independently of the new modes ---------
@pytest.mark.parametrize("memory", MEMORIES)
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_oracle_closed_form_gradients_are_autograd(memory, objective):
    """``g_W = δ kᵀ``; MLP ``g_W2 = δ2 aᵀ``, ``g_W1 = ((W2ᵀ δ2) ∘ σ′(z)) kᵀ`` equal autograd
    of ``ℓ = ½‖M(k) − u‖²`` / ``−⟨M(k), u⟩`` (summed over the independent (b, h))."""
    gen = torch.Generator().manual_seed(7)
    shapes = make_memory(memory, D, D, **mkw(memory)).param_shapes()
    W = {n: torch.randn(B, H, *s, generator=gen, dtype=DT).requires_grad_() for n, s in shapes.items()}
    k = torch.randn(B, H, D, generator=gen, dtype=DT)
    u = torch.randn(B, H, D, generator=gen, dtype=DT)
    pred = mem_read(memory, W, k)
    loss = (0.5 * (pred - u).square().sum() if objective == "l2" else -(pred * u).sum())
    names = sorted(W)
    auto = dict(zip(names, torch.autograd.grad(loss, [W[n] for n in names])))
    closed, x = mem_grads(memory, objective, {n: p.detach() for n, p in W.items()}, k, u)
    for n in names:
        close(closed[n], auto[n], f"g[{n}]", {"rtol": 1e-12, "atol": 1e-12})
    assert set(x) == set(PARAM_NAMES[memory])


def test_oracle_gelu_is_exact_gelu():
    z = torch.linspace(-6, 6, 241, dtype=DT, requires_grad=True)
    close(gelu(z), torch.nn.functional.gelu(z), "gelu", {"rtol": 1e-13, "atol": 1e-14})
    (auto,) = torch.autograd.grad(torch.nn.functional.gelu(z).sum(), z)
    close(gelu_prime(z), auto, "gelu'", {"rtol": 1e-12, "atol": 1e-13})


@pytest.mark.parametrize("memory", MEMORIES)
def test_oracle_read_matches_memory_plugin(memory):
    """Parameter names, shapes and ``M(x)`` agree with ``plugins/memories``."""
    gen = torch.Generator().manual_seed(8)
    mem = make_memory(memory, D, D, **mkw(memory))
    W = {n: torch.randn(B, H, *s, generator=gen, dtype=DT) for n, s in mem.param_shapes().items()}
    assert set(W) == set(PARAM_NAMES[memory])
    x = torch.randn(B, H, D, generator=gen, dtype=DT)
    close(mem_read(memory, W, x), mem.read(W, x[:, :, None])[:, :, 0], "read",
          {"rtol": 1e-13, "atol": 1e-13})


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("memory", MEMORIES)
def test_oracle_matches_current_reference_in_its_one_mode(memory, objective, chunk):
    """read="after_write", write="token", momentum, v targets is today's only mode:
    the oracle equals today's ``reference`` backend (called without the new keywords)."""
    case = Case(memory, objective, "momentum", chunk)
    inp = make_inputs(case)
    y, state = scan("reference", case, inp, modes=False)
    check_state(y, state, oracle(case, inp), T)


def test_oracle_dgd_chunk1_is_the_hand_written_delta_rule():
    """linear + l2 + dgd, C = 1 (so W_c = W_{t−1}), α = 0:
    ``W_t = W_{t−1}(I − θ_t k_t k_tᵀ) − θ_t (W_{t−1} k_t − v_t) k_tᵀ``; with α:
    ``W_{t−1}((1−α_t)I − θ_t k kᵀ) − θ_t (W_{t−1} k − v) kᵀ``. Both reads checked per token."""
    for zero_decay in (True, False):
        case = Case("linear", "l2", "dgd", 1)
        inp = make_inputs(case, seed=int(zero_decay))
        if zero_decay:
            inp["decay"] = None
        for read in READS:
            out = oracle(replace(case, read=read), inp)
            for b in range(B):
                for h in range(H):
                    W = inp["W0"]["W"][b, h]
                    for t in range(T):
                        kt, vt = inp["k"][b, h, t], inp["v"][b, h, t]
                        th = inp["lr"][b, h, t]
                        al = 0.0 if zero_decay else inp["decay"][b, h, t]
                        W_prev = W
                        W = W_prev @ ((1 - al) * torch.eye(D, dtype=DT) - th * torch.outer(kt, kt)) \
                            - th * torch.outer(W_prev @ kt - vt, kt)
                        seen = W if read == "after_write" else W_prev
                        close(out["y"][b, h, t], seen @ inp["q"][b, h, t], f"y[{b},{h},{t}]")
                    close(out["params"]["W"][b, h], W, f"W_T[{b},{h}]")


@pytest.mark.parametrize("seed", [0, 1])
def test_oracle_dgd_dot_chunk1_is_the_current_gated_delta_rule(seed):
    """linear, C = 1: dgd with the dot objective (g = −v kᵀ) gives
    ``W((1−α)I − θkkᵀ) + θvkᵀ``, which is today's momentum + l2 with η = 0 — a check
    of the oracle's dgd path against the current reference backend."""
    case = Case("linear", "dot", "dgd", 1)
    inp = make_inputs(case, seed=seed)
    expected = oracle(case, inp)
    mom_case = Case("linear", "l2", "momentum", 1)
    mom_inp = {**inp, "momentum": torch.zeros_like(inp["lr"]),
               "S0": {"W": torch.zeros_like(inp["W0"]["W"])}}
    y, state = scan("reference", mom_case, mom_inp, modes=False)
    close(y, expected["y"], "y")
    close(state.params["W"], expected["params"]["W"], "W_T")


@pytest.mark.parametrize("memory", MEMORIES)
@pytest.mark.parametrize("optimizer", ("momentum", "dgd"))
def test_oracle_self_consistency(memory, optimizer):
    """Identities of the equations: at C = 1 a chunk write is a token write and a
    chunk-start read is a read before the write (``y_t = M_{W_{t−1}}(q_t)``); sgd is
    momentum with η = α = 0; with C > T a chunk write never fires."""
    base = Case(memory, "l2", optimizer, 1, self_target=True)
    inp = make_inputs(base)
    tok = oracle(base, inp)
    chk = oracle(replace(base, write="chunk"), inp)
    close(chk["y"], tok["y"], "C=1: chunk write y")
    for n in tok["params"]:
        close(chk["params"][n], tok["params"][n], f"C=1: chunk write W[{n}]")
    before = oracle(replace(base, read="chunk_start"), inp)
    for t in range(T):
        W_prev = oracle(base, inp, hi=t)["params"] if t else inp["W0"]
        close(before["y"][:, :, t], mem_read(memory, W_prev, inp["q"][:, :, t]),
              f"C=1: chunk_start y[{t}] reads W_(t-1)")
    long = replace(base, chunk=T + 5, write="chunk")
    out = oracle(long, inp)
    for n in inp["W0"]:
        close(out["params"][n], inp["W0"][n], f"W[{n}] unchanged")
    assert out["position"] == T
    if optimizer == "momentum":
        zero = {**inp, "decay": torch.zeros_like(inp["lr"]), "momentum": torch.zeros_like(inp["lr"]),
                "S0": {n: torch.zeros_like(p) for n, p in inp["W0"].items()}}
        for write in WRITES:
            mom = replace(base, chunk=3, write=write)
            a = oracle(replace(mom, optimizer="sgd"), {**inp, "decay": None, "momentum": None,
                                                       "S0": None})
            e = oracle(mom, zero)
            close(a["y"], e["y"], f"sgd = momentum(η=α=0), write={write}: y")
            for n in e["params"]:
                close(a["params"][n], e["params"][n], f"sgd = momentum(η=α=0), write={write}: W[{n}]")


# -- 1./2. every mode against the oracle ----------------------------------------------------
CASES = [Case(m, o, opt, c, r, w, s)
         for r, w, s, opt, m, o, c in itertools.product(READS, WRITES, (False, True),
                                                        ("momentum", "dgd"), MEMORIES,
                                                        OBJECTIVES, CHUNKS)]
EXACT_CASES = [Case(m, "l2", opt, 3, r, w, s, exact=True)
               for r, w, s, opt, m in itertools.product(READS, WRITES, (False, True),
                                                        ("momentum", "dgd"), ("linear", "mlp"))]
SGD_CASES = [Case(m, "l2", "sgd", c, r, "chunk") for m in MEMORIES for c in (1, 3, 16)
             for r in READS]


@pytest.mark.parametrize("case", CASES + EXACT_CASES + SGD_CASES, ids=str)
def test_reference_matches_oracle(case):
    """Every read × write × target × rule × memory × objective × chunk size (and exact
    0/1 gates, and sgd chunk writes): reads, final W, S, W_c, position and step."""
    inp = make_inputs(case)
    y, state = scan("reference", case, inp)
    check_state(y, state, oracle(case, inp), T)


@pytest.mark.parametrize("case", CASES + EXACT_CASES + SGD_CASES, ids=str)
def test_chunked_matches_oracle_where_supported(case):
    """The same for ``chunked``, skipped only where it declares the scan unsupported."""
    inp = make_inputs(case)
    y, state = scan_or_skip("chunked", case, inp)
    check_state(y, state, oracle(case, inp), T)


def _family_cases() -> list[Case]:
    """The three families the chunked backend must run (l2 objective):
    (a) after_write/token/momentum/v (C ≥ 2 for MLPs), (b) chunk_start/token/dgd/self
    (every C), (c) chunk_start/chunk/momentum and sgd, v (every C)."""
    out = []
    for m in MEMORIES:
        some = CHUNKS if m == "linear" else tuple(c for c in CHUNKS if c >= 2)
        out += [Case(m, "l2", "momentum", c, "after_write", "token") for c in some]
        out += [Case(m, "l2", "dgd", c, "chunk_start", "token", True) for c in CHUNKS]
        out += [Case(m, "l2", opt, c, "chunk_start", "chunk") for c in CHUNKS
                for opt in ("momentum", "sgd")]
    return out


@pytest.mark.parametrize("case", _family_cases(), ids=str)
def test_chunked_supports_the_three_families(case):
    """No skip: the chunked backend declares these supported and matches the oracle."""
    inp = make_inputs(case)
    y, state = scan("chunked", case, inp)
    check_state(y, state, oracle(case, inp), T)


# -- 3. outer gradients ------------------------------------------------------------------------
FAMILIES = {
    "a": dict(read="after_write", write="token", optimizer="momentum", self_target=False),
    "b": dict(read="chunk_start", write="token", optimizer="dgd", self_target=True),
    "c": dict(read="chunk_start", write="chunk", optimizer="momentum", self_target=False),
    "c-sgd": dict(read="chunk_start", write="chunk", optimizer="sgd", self_target=False),
}


def _grad_cases() -> list[Case]:
    out = []
    for fam in FAMILIES.values():
        out += [Case("linear", "l2", chunk=1, **fam), Case("linear", "l2", chunk=3, **fam),
                Case("mlp", "l2", chunk=3, **fam)]
    out += [Case("mlp", "dot", chunk=4, **FAMILIES["b"]), Case("linear", "dot", chunk=2, **FAMILIES["c"])]
    # chunk writes of many chunks per tile (CMS levels of chunk 1 and 2): the tile's
    # weight gradients summed once in the backward pass (chunked_levels._TileWeight)
    out += [Case("mlp", "l2", chunk=1, **FAMILIES["c"]),
            Case("residual-mlp", "l2", chunk=2, **FAMILIES["c"]),
            Case("mlp", "l2", chunk=1, eta=False, **FAMILIES["c"]),  # η left out, as CMS does
            Case("mlp", "l2", chunk=2, eta=False, **FAMILIES["a"])]
    return out


def _leaves(inp: dict) -> dict[str, Tensor]:
    leaves = {n: inp[n] for n in ("q", "k", "v", "lr", "decay", "momentum") if inp[n] is not None}
    leaves.update({f"W0.{n}": p for n, p in inp["W0"].items()})
    if inp["S0"] is not None:
        leaves.update({f"S0.{n}": p for n, p in inp["S0"].items()})
    return {n: t.detach().clone().requires_grad_() for n, t in leaves.items()}


def _with_leaves(inp: dict, leaves: dict[str, Tensor]) -> dict:
    out = {**inp, **{n: t for n, t in leaves.items() if "." not in n}}
    out["W0"] = {n: leaves[f"W0.{n}"] for n in inp["W0"]}
    if inp["S0"] is not None:
        out["S0"] = {n: leaves[f"S0.{n}"] for n in inp["S0"]}
    return out


def _functional(y: Tensor, params: dict, momentum: dict | None) -> Tensor:
    """``(y·w).sum() + Σ (W_T·w₂).sum() (+ Σ (S_T·w₃).sum())`` with fixed random weights."""
    gen = torch.Generator().manual_seed(99)
    weight = lambda t: torch.randn(t.shape, generator=gen, dtype=DT)  # noqa: E731
    total = (y * weight(y)).sum()
    for group in (params, momentum or {}):
        for n in sorted(group):
            total = total + (group[n] * weight(group[n])).sum()
    return total


def _grads(total: Tensor, leaves: dict[str, Tensor]) -> dict[str, Tensor]:
    names = sorted(leaves)
    gs = torch.autograd.grad(total, [leaves[n] for n in names], allow_unused=True)
    return {n: torch.zeros_like(leaves[n]) if g is None else g for n, g in zip(names, gs)}


def oracle_grads(case: Case, inp: dict) -> dict[str, Tensor]:
    leaves = _leaves(inp)
    out = oracle(case, _with_leaves(inp, leaves))
    return _grads(_functional(out["y"], out["params"], out["momentum"]), leaves)


def scan_grads(backend: str, case: Case, inp: dict, *, modes: bool = True) -> dict[str, Tensor]:
    leaves = _leaves(inp)
    run = scan_or_skip if modes else scan
    y, state = run(backend, case, _with_leaves(inp, leaves), modes=modes)
    return _grads(_functional(y, state.params, state.momentum), leaves)


def check_grads(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for n in expected:
        close(got[n], expected[n], f"d/d{n}", GRAD_TOL)


@pytest.mark.parametrize("case", [Case("linear", "l2", chunk=1), Case("linear", "dot", chunk=3),
                                  Case("mlp", "l2", chunk=3), Case("residual-mlp", "l2", chunk=16)],
                         ids=str)
def test_oracle_outer_grads_match_current_reference(case):
    """Autograd through the oracle equals autograd through today's reference backend
    in its one mode (q, k, v, θ, α, η, W0, S0)."""
    inp = make_inputs(case)
    check_grads(scan_grads("reference", case, inp, modes=False), oracle_grads(case, inp))


@pytest.mark.parametrize("backend", ("reference", "chunked"))
@pytest.mark.parametrize("case", _grad_cases(), ids=str)
def test_outer_grads_match_oracle(case, backend):
    """Gradients of ``(y·w).sum() + (W_T·w₂).sum() (+ S_T)`` w.r.t. q, k, v, θ, α, η,
    W0 (and S0) equal autograd through the oracle (self targets are differentiated
    through ``M_{W_c}(v)``: only the *inner* gradient holds them constant)."""
    inp = make_inputs(case)
    check_grads(scan_grads(backend, case, inp), oracle_grads(case, inp))


@pytest.mark.parametrize("case", [Case("mlp", "l2", chunk=1, **FAMILIES["c"]),
                                  Case("residual-mlp", "l2", chunk=2, **FAMILIES["c"])], ids=str)
def test_chunk_writes_across_tiles_match_oracle(case):
    """Many chunks per tile and several tiles (tile 4 over T = 11): the chunked form's
    outputs, final state and outer gradients equal the float64 oracle."""
    inp = make_inputs(case)
    with tile(4):
        got = scan_grads("chunked", case, inp)
    check_grads(got, oracle_grads(case, inp))


def test_chunk_writes_gradients_per_backward_pass():
    """The tile-summed weight gradients (chunked_levels._TileWeight) are kept per backward
    pass: a retained graph differentiated twice, and ``autograd.grad`` for q before W0,
    give the reference's gradients every time."""
    case = Case("mlp", "l2", chunk=1, **FAMILIES["c"])
    inp = make_inputs(case)
    expected = oracle_grads(case, inp)
    leaves = _leaves(inp)
    with tile(4):
        y, state = scan_or_skip("chunked", case, _with_leaves(inp, leaves), modes=True)
    total = _functional(y, state.params, state.momentum)
    (g_q,) = torch.autograd.grad(total, [leaves["q"]], retain_graph=True)
    close(g_q, expected["q"], "d/dq", GRAD_TOL)
    for _ in range(2):
        (g_w,) = torch.autograd.grad(total, [leaves["W0.W2"]], retain_graph=True)
        close(g_w, expected["W0.W2"], "d/dW0.W2", GRAD_TOL)


TRUNCATED = [Case("mlp", "l2", chunk=1, truncate=True, **FAMILIES["c"]),
             Case("residual-mlp", "l2", chunk=2, truncate=True, **FAMILIES["c"]),
             Case("linear", "l2", chunk=2, truncate=True, **FAMILIES["c"]),
             Case("mlp", "l2", chunk=1, truncate=True, **FAMILIES["c-sgd"]),
             Case("mlp", "dot", chunk=2, truncate=True, **{**FAMILIES["c"], "self_target": True}),
             Case("mlp", "l2", chunk=1, truncate=True, exact=True, **FAMILIES["c"]),
             Case("mlp", "l2", chunk=1, truncate=True, eta=False, **FAMILIES["c"]),
             Case("residual-mlp", "l2", chunk=2, truncate=True, eta=False, **FAMILIES["c"])]


def _stream_grads(backend: str, case: Case, inp: dict, cuts: list[int]):
    """Outputs, final state and outer gradients of the stream fed in pieces ``cuts``."""
    leaves = _leaves(inp)
    full = _with_leaves(inp, leaves)
    state, ys = None, []
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        y, state = scan(backend, case, full, state=state, lo=lo, hi=hi)
        ys.append(y)
    y = torch.cat(ys, 2)
    return y, state, _grads(_functional(y, state.params, state.momentum), leaves)


@pytest.mark.parametrize("cuts", [[0, 11], [0, 4, 11], [0, 3, 11], [0, 1, 2, 9, 11]], ids=str)
@pytest.mark.parametrize("case", TRUNCATED, ids=str)
def test_truncated_chunk_writes_match_oracle(case, cuts):
    """``truncate=True`` chunk writes (CMS levels, ``inner_grad = "truncated"``) in the
    multi-chunk tiles (tile 4 over T = 11), fed in pieces that start at and inside chunks:
    outputs, final state and the outer gradients to q, k, v, θ, α, η, W0, S0 equal the
    float64 oracle whose writes start from detached chunk-start states."""
    inp = make_inputs(case)
    with tile(4):
        y, state, got = _stream_grads("chunked", case, inp, cuts)
    check_state(y, state, oracle(case, inp), T)
    check_grads(got, oracle_grads(case, inp))


def test_truncated_chunk_writes_take_the_tile_form_and_cut_the_gradient():
    """The multi-chunk tiles run truncated requests (no per-token fallback), and the
    truncation is real: chunk 0's keys reach the outputs of chunk 1 only, where the full
    inner gradient reaches every later chunk."""
    from nlframe_plugins.backends import chunked_levels

    case = Case("mlp", "l2", chunk=1, truncate=True, **FAMILIES["c"])
    inp = make_inputs(case)
    calls = []
    real = chunked_levels.scan_chunk_writes_truncated

    def spy(request, *, tile):
        calls.append(request.q.shape[2])
        return real(request, tile=tile)

    with tile(4), mock.patch.object(chunked_levels, "scan_chunk_writes_truncated", spy):
        for trunc in (True, False):
            leaves = _leaves(inp)
            y, _ = scan("chunked", replace(case, truncate=trunc), _with_leaves(inp, leaves))
            (g,) = torch.autograd.grad(y[:, :, 3:].sum(), [leaves["k"]])
            reach = g[:, :, 1].abs().sum()  # token 1's key, written into chunk 2 (token 2)
            assert (reach == 0) == trunc, (trunc, float(reach))
    assert calls == [T - 1]  # all but the stream's first chunk, in one call


@pytest.mark.parametrize("truncate", [False, True])
def test_a_call_starting_inside_a_chunk_finishes_it_then_takes_the_tile_form(truncate):
    """A streamed piece that starts inside a chunk writes the rest of that chunk tile by
    tile, then runs its whole chunks in the multi-chunk tiles: values and outer gradients
    as the float64 oracle's."""
    from nlframe_plugins.backends import chunked_levels

    case = Case("mlp", "l2", chunk=2, truncate=truncate, **FAMILIES["c"])
    inp = make_inputs(case)
    name = "scan_chunk_writes_truncated" if truncate else "scan_chunk_writes"
    real, calls = getattr(chunked_levels, name), []

    def spy(request, *, tile):
        calls.append((request.state.position, request.q.shape[2]))
        return real(request, tile=tile)

    with tile(4), mock.patch.object(chunked_levels, name, spy):
        y, state, got = _stream_grads("chunked", case, inp, [0, 3, 11])
    assert calls == [(0, 6)]  # tokens 4..9: the piece from 3 after its open chunk's token 3
    check_state(y, state, oracle(case, inp), T)
    check_grads(got, oracle_grads(case, inp))


@contextlib.contextmanager
def _token_write_calls():
    """Count the calls of ``chunked_levels.scan_token_writes`` (the multi-chunk token-write
    tiles): yields the list of their token counts."""
    from nlframe_plugins.backends import chunked_levels

    real, calls = chunked_levels.scan_token_writes, []

    def spy(request, *, tile):
        calls.append(request.q.shape[2])
        return real(request, tile=tile)

    with mock.patch.object(chunked_levels, "scan_token_writes", spy):
        yield calls


TOKEN_WRITES = [Case("mlp", "l2", chunk=2, **FAMILIES["a"]),
                Case("residual-mlp", "l2", chunk=3, **FAMILIES["a"]),
                Case("mlp", "l2", chunk=2, exact=True, **FAMILIES["a"]),
                Case("mlp", "dot", chunk=2, read="chunk_start", write="token", self_target=True),
                Case("linear", "l2", chunk=3, read="chunk_start", write="token"),
                Case("mlp", "l2", chunk=2, eta=False, **FAMILIES["a"]),
                Case("residual-mlp", "l2", chunk=3, eta=False, read="chunk_start", write="token")]


@pytest.mark.parametrize("cuts", [[0, 11], [0, 3, 11], [0, 1, 9, 11]], ids=str)
@pytest.mark.parametrize("case", TOKEN_WRITES, ids=str)
def test_token_writes_of_many_chunks_per_tile_match_oracle(case, cuts):
    """Token writes of the momentum rule with two whole chunks per tile and several tiles
    (tile 2C over T = 11), fed in pieces that start inside chunks: the multi-chunk tiles
    run (a spy counts them), and outputs, final state and the outer gradients to q, k, v,
    θ, α, η, W0, S0 equal the float64 oracle."""
    inp = make_inputs(case)
    with tile(2 * case.chunk), _token_write_calls() as calls:
        y, state, got = _stream_grads("chunked", case, inp, cuts)
    assert calls and all(n % case.chunk == 0 and n >= 2 * case.chunk for n in calls), calls
    check_state(y, state, oracle(case, inp), T)
    check_grads(got, oracle_grads(case, inp))


@pytest.mark.parametrize("case,clip", [(TOKEN_WRITES[0], 1.0), (TOKEN_WRITES[1], 1.0),
                                       (TOKEN_WRITES[3], 0.2)], ids=str)
def test_clipped_token_writes_of_many_chunks_per_tile_match_the_reference(case, clip):
    """``grad_clip`` in the multi-chunk token-write tiles, at a clip that changes the
    reference's outputs: outputs, surprise, final state and outer gradients equal the
    ``reference`` loop's."""
    inp = make_inputs(case)
    results = {}
    for backend, tau in (("chunked", clip), ("reference", clip), ("unclipped", None)):
        leaves = _leaves(inp)
        full = _with_leaves(inp, leaves)
        gates = {n: full[n] for n in ("decay", "momentum") if full[n] is not None}
        with tile(2 * case.chunk), _token_write_calls() as got_calls:
            y, state = nlframe.memory_scan(
                full["q"], full["k"], full["v"], memory=case.memory, objective=case.objective,
                optimizer=case.optimizer, lr=full["lr"], chunk_size=case.chunk,
                backend="reference" if backend == "unclipped" else backend, read=case.read,
                write=case.write, self_target=case.self_target, grad_clip=tau,
                memory_kwargs=case.mkw, state=build_state(case, full), **gates)
        results[backend] = (y, state, _grads(_functional(y, state.params, state.momentum), leaves))
        assert bool(got_calls) == (backend == "chunked"), (backend, got_calls)
    assert not torch.allclose(results["reference"][0], results["unclipped"][0]), "clip inactive"
    (y1, s1, g1), (y0, s0, g0) = results["chunked"], results["reference"]
    close(y1, y0, "y")
    close(s1.surprise, s0.surprise, "surprise")
    for n in s0.params:
        close(s1.params[n], s0.params[n], f"params[{n}]")
        close(s1.momentum[n], s0.momentum[n], f"momentum[{n}]")
    check_grads(g1, g0)


@pytest.mark.parametrize("dim,hidden,multi", [(32, 64, False), (256, 1024, True)])
def test_token_writes_take_multi_chunk_tiles_where_the_weights_outweigh_the_loop(dim, hidden,
                                                                                 multi):
    """chunked_levels.TOKEN_TILE_RATIO: titans-tiny's memory (32 → 64 → 32, C = 16, tile 64)
    keeps chunk-by-chunk tiles, titans-pytorch's width (256 → 1024 → 256) takes the
    multi-chunk ones."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, 64, dim, generator=gen) / dim ** 0.5 for _ in range(3))
    with _token_write_calls() as calls:
        nlframe.memory_scan(q, k, v, memory="mlp", objective="l2", optimizer="momentum",
                            lr=torch.full((1, 1, 64), 0.01), momentum=torch.full((1, 1, 64), 0.9),
                            chunk_size=16, backend="chunked", memory_kwargs={"hidden": hidden})
    assert bool(calls) == multi, calls


# -- 4. streaming --------------------------------------------------------------------------------
STREAM_T = 17


def _stream_cases() -> list[Case]:
    fams = {**FAMILIES, "d": dict(read="after_write", write="chunk", optimizer="dgd",
                                  self_target=True)}
    return [Case(m, "l2", chunk=c, **fam) for fam in fams.values() for m in ("linear", "mlp")
            for c in (3, 5)]


def _splits(case: Case, seed: int) -> list[int]:
    """Random cut points in ``1..STREAM_T−1``, at least one strictly inside a chunk."""
    gen = torch.Generator().manual_seed(zlib.crc32(f"{case}/split{seed}".encode()))
    n = int(torch.randint(2, 6, (1,), generator=gen))
    cuts = set(int(c) for c in torch.randperm(STREAM_T - 1, generator=gen)[:n] + 1)
    cuts.add(case.chunk + 1)  # inside the second chunk (C ≥ 2)
    return [0, *sorted(cuts), STREAM_T]


@pytest.mark.parametrize("backend", ("reference", "chunked"))
@pytest.mark.parametrize("case", _stream_cases(), ids=str)
def test_streaming_in_pieces_equals_one_pass(case, backend):
    """Feeding the stream in random pieces (splits inside chunks too), carrying
    ``state``, equals one pass and the oracle: outputs and the final state."""
    inp = make_inputs(case, T=STREAM_T)
    y_one, s_one = scan_or_skip(backend, case, inp)
    expected = oracle(case, inp)
    check_state(y_one, s_one, expected, STREAM_T, "one pass: ")
    for seed in range(2):
        bounds = _splits(case, seed)
        state, ys = build_state(case, inp), []
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            y, state = scan(backend, case, inp, state=state, lo=lo, hi=hi)
            assert state.position == hi % case.chunk and state.step == hi, (lo, hi)
            ys.append(y)
        y_pieces = torch.cat(ys, 2)
        check_state(y_pieces, state, expected, STREAM_T, f"pieces {bounds}: ")
        close(y_pieces, y_one, "pieces vs one pass")


# -- 5. batch independence -----------------------------------------------------------------
@pytest.mark.parametrize("backend", ("reference", "chunked"))
@pytest.mark.parametrize("case", [Case(m, "l2", chunk=3, **fam) for fam in FAMILIES.values()
                                  for m in ("linear", "mlp")], ids=str)
def test_batch_elements_are_independent(case, backend):
    """Perturbing element 1's q, k, v, gates and W0 leaves element 0's reads and state."""
    inp = make_inputs(case)
    y, state = scan_or_skip(backend, case, inp)
    gen = torch.Generator().manual_seed(5)

    def poke(t: Tensor | None) -> Tensor | None:
        if t is None:
            return None
        t = t.clone()
        t[1] = t[1] + 0.1 * torch.rand(t[1].shape, generator=gen, dtype=DT)
        return t

    other = {n: poke(inp[n]) for n in ("q", "k", "v", "lr", "decay", "momentum")}
    other["W0"] = {n: poke(p) for n, p in inp["W0"].items()}
    other["S0"] = None if inp["S0"] is None else {n: poke(p) for n, p in inp["S0"].items()}
    y2, state2 = scan(backend, case, other)
    exact = {"rtol": 0.0, "atol": 1e-13}
    close(y2[0], y[0], "y[0]", exact)
    for n in state.params:
        close(state2.params[n][0], state.params[n][0], f"params[{n}][0]", exact)
        close(state2.chunk_params[n][0], state.chunk_params[n][0], f"chunk_params[{n}][0]", exact)
    assert (y2[1] - y[1]).abs().max() > 1e-6, "element 1 did not change"


# -- 6. bad input ---------------------------------------------------------------------------
def _small(Dk: int = D, Dv: int = D):
    gen = torch.Generator().manual_seed(3)
    return (torch.randn(1, 1, 4, Dk, generator=gen, dtype=DT),
            torch.randn(1, 1, 4, Dk, generator=gen, dtype=DT),
            torch.randn(1, 1, 4, Dv, generator=gen, dtype=DT))


@pytest.mark.parametrize("arg,value", [("read", "bogus"), ("write", "x")])
def test_unknown_mode_names_the_argument(arg, value):
    q, k, v = _small()
    with pytest.raises(ValueError, match=rf"\b{arg}\b"):
        nlframe.memory_scan(q, k, v, backend="reference", **{arg: value})


@pytest.mark.parametrize("memory", ["linear", "mlp"])
def test_self_target_needs_dk_equal_dv(memory):
    q, k, v = _small(Dk=4, Dv=3)
    with pytest.raises(ValueError):
        nlframe.memory_scan(q, k, v, memory=memory, self_target=True, backend="reference",
                            memory_kwargs=mkw(memory))


def test_dgd_rejects_momentum():
    q, k, v = _small()
    with pytest.raises(ValueError):
        nlframe.memory_scan(q, k, v, optimizer="dgd", lr=0.1, momentum=0.5, backend="reference")


@pytest.mark.parametrize("cuts", [[0, 11], [0, 5, 11]], ids=str)
@pytest.mark.parametrize("case", [Case("mlp", "l2", chunk=8, **FAMILIES["c"]),
                                  Case("mlp", "l2", chunk=8, eta=False, **FAMILIES["c"]),
                                  Case("linear", "l2", chunk=6, eta=False, **FAMILIES["c"]),
                                  Case("mlp", "l2", chunk=8, truncate=True, eta=False,
                                       **FAMILIES["c"])], ids=str)
@pytest.mark.parametrize("tile_max", [3, 256])
def test_chunk_writes_longer_than_a_tile_match_oracle(case, cuts, tile_max, monkeypatch):
    """Chunk writes of chunks longer than the tile (tile 3, C = 6 and 8), fed whole and
    from inside a chunk: with tiles capped at 3 tokens (``CHUNK_WRITE_TILE_MAX``) each
    chunk spans several tiles (its gradient summed over them before the write), by default
    a tile is a whole chunk. Outputs, final state and outer gradients equal the float64
    oracle."""
    monkeypatch.setattr(chunked_levels, "CHUNK_WRITE_TILE_MAX", tile_max)
    inp = make_inputs(case)
    with tile(3):
        y, state, got = _stream_grads("chunked", case, inp, cuts)
    check_state(y, state, oracle(case, inp), T)
    check_grads(got, oracle_grads(case, inp))

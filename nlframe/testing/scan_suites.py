"""Conformance properties of memories, objectives and backends (all through ``memory_scan``).

Memory ``M_W``: parameters match ``param_shapes`` and the requested dtype,
``init_params`` is seeded; reads are batched over any leading dims, token-wise
(``M_W([x1; x2]) = [M_W(x1); M_W(x2)]``) and have finite-difference gradients.
Objective ``ℓ(pred, target)``: per-token loss, closed-form ``grad`` equal to
autograd (and to ``a·pred + b·target`` when ``affine_grad = (a, b)`` is
declared), finite-difference gradients. Both, inside a scan on the reference
backend: stream consistency for random split points (inside chunks too),
batch independence and gradients vs finite differences (float64).
Backend: equal to the reference — reads, final state and gradients — for every
combination it ``supports`` (the reference itself is held to the kit's contract
loop), stream consistency, batch independence and finite-difference gradients.
"""

from __future__ import annotations

import itertools
from typing import Any

import attrs
import torch
from hypothesis import assume
from torch.autograd.gradcheck import GradcheckError
from hypothesis import strategies as st

from ..registry import get_registry
from ..scan import initial_state, make_memory, make_objective, make_rule, memory_scan
from .assertions import (assert_backend_matches_reference, assert_close,
                         assert_streaming_consistent, seeded_state)
from .contract import CONTRACT, build_request
from .strategies import memory_dims, scan_inputs, tensors
from .suites import Property, Suite

__all__ = ["memory_suite", "objective_suite", "backend_suite", "ScanSubject"]

RTOL = {torch.float64: 1e-8, torch.float32: 2e-4}
GRAD_RTOL = {torch.float64: 1e-7, torch.float32: 2e-3}


@attrs.frozen
class ScanSubject:
    """What the scan properties run: ``combos`` of ``(memory, objective, optimizer,
    chunk_sizes, dtype)`` on ``backend``, compared with ``reference``."""

    name: str
    combos: tuple
    backend: str
    reference: str = "reference"


def _default(kind: str, preferred: str) -> str:
    names = get_registry().names(kind)
    if preferred in names:
        return preferred
    if not names:
        raise ValueError(f"the conformance suite needs a registered {kind} plugin; none is")
    return names[0]


def _draw_case(data: Any, subject: ScanSubject, *, max_T: int = 8, max_B: int = 2, max_D: int = 3):
    memory, objective, optimizer, chunks, dtype = data.draw(st.sampled_from(subject.combos),
                                                            label="combination")
    inp = data.draw(scan_inputs(memory, objective, optimizer=optimizer, max_T=max_T, max_B=max_B,
                                max_D=max_D, chunk_sizes=chunks, dtype=dtype), label="inputs")
    kw = dict(memory=memory, objective=objective, optimizer=optimizer)
    if subject.backend not in (CONTRACT, "reference"):
        req = build_request(inp.q, inp.k, inp.v, chunk_size=inp.chunk_size, **inp.gates, **kw)
        assume(get_registry().get("backend", subject.backend)().supports(req) is None)
    return inp, kw, dtype


# -- scan properties shared by the three suites -----------------------------------------
def scan_streaming_consistent(subject: ScanSubject, data: Any) -> None:
    """Scanning ``[x1; x2]`` equals scanning ``x1`` then ``x2`` from its state (any split)."""
    inp, kw, dtype = _draw_case(data, subject)
    seed = data.draw(st.integers(0, 2**16), label="split seed")
    assert_streaming_consistent(inp.q, inp.k, inp.v, n_splits=data.draw(st.integers(1, 3)),
                                seed=seed, rtol=RTOL[dtype], backend=subject.backend,
                                chunk_size=inp.chunk_size, **inp.gates, **kw)


def scan_batch_independent(subject: ScanSubject, data: Any) -> None:
    """Batch element ``b`` scanned with others equals ``b`` scanned alone: ``y[b] = scan(x[b])``."""
    inp, kw, dtype = _draw_case(data, subject)
    common = dict(backend=subject.backend, chunk_size=inp.chunk_size, **kw)
    state = seeded_state(inp.q, inp.v, **kw)
    y, st_all = memory_scan(inp.q, inp.k, inp.v, state=state, **inp.gates, **common)
    for b in range(inp.q.shape[0]):
        sl = slice(b, b + 1)
        gates = {n: (g[sl] if isinstance(g, torch.Tensor) else g) for n, g in inp.gates.items()}
        yb, st_b = memory_scan(inp.q[sl], inp.k[sl], inp.v[sl], state=state.select(sl), **gates,
                               **common)
        assert_close(y[sl], yb, rtol=RTOL[dtype], name=f"y of batch element {b}")
        assert_close(st_all.select(sl).params, st_b.params, rtol=RTOL[dtype],
                     name=f"final params of batch element {b}")


def scan_gradients_match_finite_differences(subject: ScanSubject, data: Any) -> None:
    """``∂y/∂(q, k, v, W_0, gates)`` of the scan equals central finite differences (float64).

    Run with the smooth ``momentum`` rule; gradients under other rules are held to
    the reference's by ``matches_reference``.
    """
    combos = [c for c in subject.combos if c[4] == torch.float64 and c[2] == "momentum"]
    if not combos:  # other rules may be non-smooth (sign, low-precision Newton–Schulz)
        return
    memory, objective, optimizer, chunks, _ = data.draw(st.sampled_from(combos), label="combination")
    inp = data.draw(scan_inputs(memory, objective, optimizer=optimizer, max_B=1, max_H=1, max_T=3,
                                max_D=2, chunk_sizes=chunks), label="inputs")
    if subject.backend not in (CONTRACT, "reference"):
        req = build_request(inp.q, inp.k, inp.v, chunk_size=inp.chunk_size, memory=memory,
                            objective=objective, optimizer=optimizer, **inp.gates)
        assume(get_registry().get("backend", subject.backend)().supports(req) is None)
    mem = make_memory(memory, inp.q.shape[-1], inp.v.shape[-1])
    w0 = {n: data.draw(tensors(s, scale=0.5), label=f"W_0[{n!r}]")  # generic, not a zero init
          for n, s in mem.param_shapes().items()}
    names = list(w0)
    tensor_gates = [n for n, g in inp.gates.items() if isinstance(g, torch.Tensor)]

    def scan(q, k, v, *rest):
        params = dict(zip(names, rest[:len(names)]))
        gates = {**inp.gates, **dict(zip(tensor_gates, rest[len(names):]))}
        state = initial_state(mem, make_rule(optimizer), batch=1, heads=1, params=params,
                              dtype=q.dtype)
        y, _ = memory_scan(q, k, v, memory=memory, objective=objective, optimizer=optimizer,
                           backend=subject.backend, chunk_size=inp.chunk_size, state=state,
                           **gates)
        return y

    leaves = [t.detach().clone().requires_grad_(True)
              for t in (inp.q, inp.k, inp.v, *w0.values(), *(inp.gates[n] for n in tensor_gates))]
    try:
        torch.autograd.gradcheck(scan, leaves, eps=1e-6, atol=1e-6, rtol=1e-4)
    except GradcheckError as exc:
        raise AssertionError(f"memory={memory!r}, objective={objective!r}, optimizer="
                             f"{optimizer!r}, chunk_size={inp.chunk_size}, inputs (q, k, v, "
                             f"W_0 {names}, gates {tensor_gates}): {exc}") from None


# -- memory ---------------------------------------------------------------------------
def _memory(subject: ScanSubject):
    return get_registry().get("memory", subject.combos[0][0])


def init_params_follow_shapes(subject: ScanSubject, data: Any) -> None:
    """``init_params`` gives ``param_shapes`` in the requested dtype, finite, and is seeded."""
    Dk, Dv = memory_dims(_memory(subject), data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5)))
    mem = _memory(subject)(Dk, Dv)
    shapes = mem.param_shapes()
    seed = data.draw(st.integers(0, 2**16), label="seed")
    for dtype in (torch.float64, torch.float32):
        p = mem.init_params(generator=torch.Generator().manual_seed(seed), dtype=dtype)
        again = mem.init_params(generator=torch.Generator().manual_seed(seed), dtype=dtype)
        if set(p) != set(shapes):
            raise AssertionError(f"init_params keys {sorted(p)} != param_shapes keys {sorted(shapes)}")
        for n, t in p.items():
            if tuple(t.shape) != tuple(shapes[n]) or t.dtype != dtype:
                raise AssertionError(f"init_params()[{n!r}] is {tuple(t.shape)} {t.dtype}; "
                                     f"expected {tuple(shapes[n])} {dtype} (Dk={Dk}, Dv={Dv})")
            if not torch.isfinite(t).all():
                raise AssertionError(f"init_params()[{n!r}] is not finite")
            if not torch.equal(t, again[n]):
                raise AssertionError(f"init_params()[{n!r}] differs for the same generator seed")


def _draw_memory_params(data: Any, subject: ScanSubject, lead: tuple[int, ...]):
    Dk, Dv = memory_dims(_memory(subject), data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4)))
    mem = _memory(subject)(Dk, Dv)
    params = {n: data.draw(tensors((*lead, *s), scale=0.5), label=f"params[{n!r}]")
              for n, s in mem.param_shapes().items()}
    return mem, params, Dk, Dv


def read_is_batched_and_tokenwise(subject: ScanSubject, data: Any) -> None:
    """``read`` over leading dims equals per-element reads, and each token is read alone."""
    lead = tuple(data.draw(st.lists(st.integers(1, 3), min_size=0, max_size=2), label="lead"))
    mem, params, Dk, Dv = _draw_memory_params(data, subject, lead)
    N = data.draw(st.integers(1, 4), label="tokens")
    x = data.draw(tensors((*lead, N, Dk)), label="x")
    y = mem.read(params, x)
    if tuple(y.shape) != (*lead, N, Dv):
        raise AssertionError(f"read of x {tuple(x.shape)} returned {tuple(y.shape)}; expected "
                             f"{(*lead, N, Dv)}")
    for idx in itertools.product(*map(range, lead)):
        one = mem.read({n: p[idx] for n, p in params.items()}, x[idx])
        assert_close(y[idx], one, rtol=1e-12, name=f"read of leading element {idx}")
    for t in range(N):
        assert_close(y[..., t:t + 1, :], mem.read(params, x[..., t:t + 1, :]), rtol=1e-12,
                     name=f"read of token {t} alone")


def read_gradients_match_finite_differences(subject: ScanSubject, data: Any) -> None:
    """``∂M_W(x)/∂(W, x)`` by autograd equals central finite differences (float64)."""
    mem, params, Dk, Dv = _draw_memory_params(data, subject, (1,))
    x = data.draw(tensors((1, 2, Dk)), label="x")
    names = list(params)

    def read(x, *ps):
        return mem.read(dict(zip(names, ps)), x)

    leaves = [t.clone().requires_grad_(True) for t in (x, *params.values())]
    try:
        torch.autograd.gradcheck(read, leaves, eps=1e-6, atol=1e-6, rtol=1e-4)
    except GradcheckError as exc:
        raise AssertionError(f"Dk={Dk}, Dv={Dv}: {exc}") from None


def memory_suite(name: str, *, objective: str | None = None, optimizer: str = "momentum",
                 backend: str = "reference") -> Suite:
    """The conformance :class:`Suite` of memory ``name``; scans use ``objective``
    (default ``l2``), ``optimizer`` and ``backend``."""
    get_registry().get("memory", name)
    objective = objective or _default("objective", "l2")
    subject = ScanSubject(name=name, backend=backend,
                          combos=((name, objective, optimizer, None, torch.float64),))
    props = [Property("init_params_follow_shapes", init_params_follow_shapes),
             Property("read_is_batched_and_tokenwise", read_is_batched_and_tokenwise),
             Property("read_gradients_match_finite_differences",
                      read_gradients_match_finite_differences),
             *_scan_properties()]
    return Suite(kind="memory", name=name, subject=subject, properties=props)


def _scan_properties() -> list[Property]:
    return [Property("scan_streaming_consistent", scan_streaming_consistent),
            Property("scan_batch_independent", scan_batch_independent),
            Property("scan_gradients_match_finite_differences",
                     scan_gradients_match_finite_differences)]


# -- objective ------------------------------------------------------------------------
def _objective(subject: ScanSubject):
    return make_objective(subject.combos[0][1])


def _pred_target(data: Any):
    lead = tuple(data.draw(st.lists(st.integers(1, 3), min_size=0, max_size=2), label="lead"))
    Dv = data.draw(st.integers(1, 4), label="Dv")
    return (data.draw(tensors((*lead, Dv)), label="pred"),
            data.draw(tensors((*lead, Dv)), label="target"), lead)


def loss_is_per_token(subject: ScanSubject, data: Any) -> None:
    """``loss(pred, target)`` has shape ``(...)``, is finite, and each token's loss is its own."""
    obj = _objective(subject)
    pred, target, lead = _pred_target(data)
    loss = obj.loss(pred, target)
    if tuple(loss.shape) != lead:
        raise AssertionError(f"loss of pred {tuple(pred.shape)} has shape {tuple(loss.shape)}; "
                             f"expected {lead} (one value per token, summed over features)")
    if not torch.isfinite(loss).all():
        raise AssertionError("loss is not finite for N(0, 1) inputs")
    for idx in itertools.product(*map(range, lead)):
        assert_close(loss[idx], obj.loss(pred[idx], target[idx]), rtol=1e-12,
                     name=f"loss of token {idx} alone")


def grad_matches_autograd(subject: ScanSubject, data: Any) -> None:
    """``grad(pred, target) = ∂ℓ/∂pred`` by autograd; ``= a·pred + b·target`` if ``affine_grad``."""
    obj = _objective(subject)
    pred, target, _ = _pred_target(data)
    p = pred.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(obj.loss(p, target).sum(), p)
    with torch.no_grad():
        closed = obj.grad(pred, target)
    assert_close(closed, auto, rtol=1e-10, atol=1e-12, name="grad vs autograd of loss")
    if obj.affine_grad is not None:
        a, b = obj.affine_grad
        assert_close(closed, a * pred + b * target, rtol=1e-10, atol=1e-12,
                     name=f"grad vs declared affine_grad {obj.affine_grad} (a·pred + b·target)")


def loss_gradients_match_finite_differences(subject: ScanSubject, data: Any) -> None:
    """``∂ℓ/∂(pred, target)`` and the closed-form ``grad``'s own derivatives equal finite
    differences (float64)."""
    obj = _objective(subject)
    pred, target, _ = _pred_target(data)
    leaves = [pred.clone().requires_grad_(True), target.clone().requires_grad_(True)]
    try:
        torch.autograd.gradcheck(obj.loss, leaves, eps=1e-6, atol=1e-6, rtol=1e-4)
        torch.autograd.gradcheck(obj.grad, leaves, eps=1e-6, atol=1e-6, rtol=1e-4)
    except GradcheckError as exc:
        raise AssertionError(str(exc)) from None


def objective_suite(name: str, *, memory: str | None = None, optimizer: str = "momentum",
                    backend: str = "reference") -> Suite:
    """The conformance :class:`Suite` of objective ``name``; scans use ``memory``
    (default ``linear``), ``optimizer`` and ``backend``."""
    get_registry().get("objective", name)
    memory = memory or _default("memory", "linear")
    subject = ScanSubject(name=name, backend=backend,
                          combos=((memory, name, optimizer, None, torch.float64),))
    props = [Property("loss_is_per_token", loss_is_per_token),
             Property("grad_matches_autograd", grad_matches_autograd),
             Property("loss_gradients_match_finite_differences",
                      loss_gradients_match_finite_differences),
             *_scan_properties()]
    return Suite(kind="objective", name=name, subject=subject, properties=props)


# -- backend --------------------------------------------------------------------------
PROBE_CHUNKS = (1, 2, 3, 5)


def supported_combinations(backend: str) -> tuple:
    """``(memory, objective, optimizer, chunk_sizes, dtype)`` the backend supports, probed
    with a small request per registered memory × objective × batched rule × chunk size."""
    reg = get_registry()
    impl = reg.get("backend", backend)()
    rules = [r for r in reg.names("optimizer") if getattr(reg.get("optimizer", r), "batched", False)]
    out = []
    for m, o, r in itertools.product(reg.names("memory"), reg.names("objective"), rules):
        Dk, Dv = memory_dims(m, 3, 2)
        for dtype in (torch.float64, torch.float32):
            q = torch.nn.functional.normalize(torch.ones(1, 1, 6, Dk, dtype=dtype), dim=-1)
            v = torch.ones(1, 1, 6, Dv, dtype=dtype)
            gates = {n: torch.full((1, 1, 6), 0.1, dtype=dtype) for n in ("lr", "decay", "momentum")}
            chunks = tuple(c for c in PROBE_CHUNKS if impl.supports(build_request(
                q, q, v, memory=m, objective=o, optimizer=r, chunk_size=c, **gates)) is None)
            if chunks:
                out.append((m, o, r, chunks, dtype))
                break
    return tuple(out)


def matches_reference(subject: ScanSubject, data: Any) -> None:
    """Reads, final state and gradients equal the reference's, within float tolerance."""
    inp, kw, dtype = _draw_case(data, subject)
    assert_backend_matches_reference(subject.backend, **kw, q=inp.q, k=inp.k, v=inp.v,
                                     chunk_size=inp.chunk_size, gates=inp.gates,
                                     reference=subject.reference, rtol=RTOL[dtype],
                                     grad_rtol=GRAD_RTOL[dtype])


def _sweep(combos: tuple) -> list[tuple]:
    """One case per supported memory × objective (with the first rule) and per rule (with
    the first memory and objective), chunk sizes taken in turn: breadth at bounded cost."""
    if not combos:
        return []
    rule = "momentum" if any(c[2] == "momentum" for c in combos) else combos[0][2]
    others: dict[str, tuple] = {}
    for c in combos:
        if c[2] != rule:
            others.setdefault(c[2], c)  # the first memory × objective the rule is supported with
    picked = [*(c for c in combos if c[2] == rule), *others.values()]
    return [(m, o, r, chunks[i % len(chunks)], dt)
            for i, (m, o, r, chunks, dt) in enumerate(picked)]


def every_supported_combination_matches(subject: ScanSubject, data: Any) -> None:
    """Every supported memory × objective, and every supported rule, matches the reference."""
    gen = torch.Generator().manual_seed(0)
    for m, o, r, c, dtype in _sweep(subject.combos):
        Dk, Dv = memory_dims(m, 3, 2)
        q, k = (torch.nn.functional.normalize(torch.randn(2, 1, 5, Dk, generator=gen, dtype=dtype),
                                              dim=-1) for _ in range(2))
        v = torch.randn(2, 1, 5, Dv, generator=gen, dtype=dtype)
        rule = get_registry().get("optimizer", r)
        gates = {n: 0.3 * torch.rand(2, 1, 5, generator=gen, dtype=dtype)
                 for n in ("lr", "decay", "momentum") if n in rule.hyperparams}
        assert_backend_matches_reference(subject.backend, m, o, r, q=q, k=k, v=v, chunk_size=c,
                                         gates=gates, reference=subject.reference,
                                         rtol=RTOL[dtype], grad_rtol=GRAD_RTOL[dtype])


def backend_suite(name: str, *, reference: str = "reference") -> Suite:
    """The conformance :class:`Suite` of backend ``name``: compared with ``reference`` (the
    ``reference`` backend itself with the kit's contract loop)."""
    impl = get_registry().get("backend", name)()
    ref = CONTRACT if name == reference else reference
    available = impl.is_available()
    combos = supported_combinations(name) if available else ()
    subject = ScanSubject(name=name, backend=name, reference=ref, combos=combos)

    def applies(s: ScanSubject) -> str | None:
        if not available:
            return f"backend {name!r} is not available on this machine"
        return None if s.combos else f"backend {name!r} supports no registered combination"

    props = [Property("matches_reference", matches_reference, applies=applies),
             Property("every_supported_combination_matches", every_supported_combination_matches,
                      applies=applies, examples=1),
             *[attrs.evolve(p, applies=applies) for p in _scan_properties()]]
    return Suite(kind="backend", name=name, subject=subject, properties=props)

"""The ``compiled`` backend against the float64 oracle of ``equations.py``.

It traces the chunked forms, so every case here is one of the chunked backend's
and must match the oracle at the same float64 tolerances (``TOL``, ``GRAD_TOL`` of
``test_scan_modes``: rtol 1e-10 / 1e-9). On 2 CPU cores inductor needs 5–50 s to
compile one case, so the CI set is: every family of ``DESIGN §2b`` the blocks use
for every memory, their outer gradients and streaming in pieces traced and run
through AOT autograd (``NLFRAME_COMPILE_BACKEND=aot_eager``: the same graphs,
``fullgraph=True``, no generated code), and cases through inductor itself
(generated C++): in CI the self-modifying family (b), ~50 s; families (a), (c) and
the whole matrix through inductor are marked ``slow``.
"""

from __future__ import annotations

import pytest
import torch

import nlframe
from nlframe.registry import get_registry
from nlframe_plugins.backends import compiled

from .test_scan_modes import (FAMILIES, STREAM_T, Case, _family_cases, _grad_cases, build_state,
                              check_grads, check_state, close, make_inputs, oracle,
                              oracle_grads, scan, scan_grads)


@pytest.fixture
def aot_eager(monkeypatch):
    monkeypatch.setenv("NLFRAME_COMPILE_BACKEND", "aot_eager")


def _families_per_memory() -> list[Case]:
    """One chunk size per family and memory (3, crossing chunk boundaries inside T = 11)."""
    return [Case(m, "l2", chunk=3, **fam) for fam in FAMILIES.values()
            for m in ("linear", "mlp", "residual-mlp")]


@pytest.mark.parametrize("case", _families_per_memory() + [Case("linear", "l2", chunk=1),
                                                           Case("linear", "dot", chunk=5)],
                         ids=str)
def test_compiled_traces_the_families_and_matches_the_oracle(case, aot_eager):
    inp = make_inputs(case)
    y, state = scan("compiled", case, inp)
    check_state(y, state, oracle(case, inp), 11)


@pytest.mark.parametrize("case", [c for c in _grad_cases() if c.memory == "linear" or c.chunk == 3],
                         ids=str)
def test_compiled_outer_grads_match_the_oracle(case, aot_eager):
    inp = make_inputs(case)
    check_grads(scan_grads("compiled", case, inp), oracle_grads(case, inp))


@pytest.mark.parametrize("case", [Case("linear", "l2", chunk=3, **FAMILIES["a"]),
                                  Case("mlp", "l2", chunk=5, **FAMILIES["b"]),
                                  Case("linear", "l2", chunk=3, **FAMILIES["c"])], ids=str)
def test_compiled_streams_in_pieces(case, aot_eager):
    """Pieces cut inside chunks (each piece is a shape of its own: one compile each)."""
    inp = make_inputs(case, T=STREAM_T)
    expected = oracle(case, inp)
    state, ys = build_state(case, inp), []
    for lo, hi in ((0, 4), (4, 9), (9, STREAM_T)):
        y, state = scan("compiled", case, inp, state=state, lo=lo, hi=hi)
        ys.append(y)
    check_state(torch.cat(ys, 2), state, expected, STREAM_T)


@pytest.mark.parametrize("case", [
    pytest.param(Case("linear", "l2", chunk=3, **FAMILIES["a"]), marks=pytest.mark.slow),
    Case("linear", "l2", chunk=3, **FAMILIES["b"]),
    pytest.param(Case("linear", "l2", chunk=2, **FAMILIES["c"]), marks=pytest.mark.slow)], ids=str)
def test_compiled_with_inductor_matches_the_oracle(case, monkeypatch):
    """Generated code (inductor's C++ on CPU): outputs, state and outer gradients."""
    monkeypatch.delenv("NLFRAME_COMPILE_BACKEND", raising=False)
    if get_registry().get("backend", "compiled")().unavailable_reason():
        pytest.skip(get_registry().get("backend", "compiled")().unavailable_reason())
    inp = make_inputs(case)
    y, state = scan("compiled", case, inp)
    check_state(y, state, oracle(case, inp), 11)
    check_grads(scan_grads("compiled", case, inp), oracle_grads(case, inp))


@pytest.mark.slow
@pytest.mark.parametrize("case", _family_cases(), ids=str)
def test_compiled_with_inductor_every_family_case(case, monkeypatch):
    monkeypatch.delenv("NLFRAME_COMPILE_BACKEND", raising=False)
    inp = make_inputs(case)
    y, state = scan("compiled", case, inp)
    check_state(y, state, oracle(case, inp), 11)


def test_a_second_call_of_the_same_shapes_does_not_compile_again(aot_eager):
    case = Case("mlp", "l2", chunk=3, **FAMILIES["b"])
    inp = make_inputs(case)
    scan("compiled", case, inp)
    fn = compiled._compiled("aot_eager")
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    y, _ = scan("compiled", case, make_inputs(case))  # fresh tensors, plugins and state
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == before
    assert fn is compiled._compiled("aot_eager")
    close(y, oracle(case, make_inputs(case))["y"], "second call")


@pytest.mark.parametrize("case", [Case("mlp", "l2", chunk=2, **FAMILIES["b"]),
                                  Case("mlp", "l2", chunk=2, truncate=True, **FAMILIES["c"])],
                         ids=str)
def test_equal_pieces_of_a_stream_compile_once(case, aot_eager):
    """Pieces of one shape at ever later stream positions reuse one compiled graph (the
    token count is not a guard), with the oracle's values, gradients' cut and ``step``."""
    T, n = 12, 2
    inp = make_inputs(case, T=T)
    expected = oracle(case, inp)
    state, ys = build_state(case, inp), []
    for lo in range(0, T, n):
        if lo == 2 * n:  # the first piece and the second (the stream has started) compiled
            before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        y, state = scan("compiled", case, inp, state=state, lo=lo, hi=lo + n)
        ys.append(y)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == before
    check_state(torch.cat(ys, 2), state, expected, T)


def test_compiled_refuses_what_chunked_refuses():
    q = k = v = torch.zeros(1, 1, 4, 3)
    with pytest.raises(ValueError, match="backend 'compiled'.*'sgd'"):
        nlframe.memory_scan(q, k, v, optimizer="sgd", backend="compiled")


def test_the_recompile_limit_raises_instead_of_running_eagerly(aot_eager, monkeypatch):
    monkeypatch.setenv("NLFRAME_COMPILE_LIMIT", "1")
    torch._dynamo.reset()
    case = Case("linear", "dot", chunk=2, **FAMILIES["a"])
    inp = make_inputs(case)
    scan("compiled", case, inp, hi=5)
    with pytest.raises(RuntimeError, match="NLFRAME_COMPILE_LIMIT"):
        scan("compiled", case, inp, hi=7)
    torch._dynamo.reset()


def test_bad_limit_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("NLFRAME_COMPILE_LIMIT", "many")
    with pytest.raises(ValueError, match="NLFRAME_COMPILE_LIMIT"):
        compiled.compile_limit()


def test_auto_prefers_chunked():
    q = k = v = torch.zeros(1, 1, 4, 3)
    from nlframe.scan import make_request, resolve_backend, make_memory, make_objective, make_rule
    request = make_request(q, k, v, memory=make_memory("linear", 3, 3),
                           objective=make_objective("l2"), rule=make_rule("momentum"),
                           names={"memory": "linear", "objective": "l2", "optimizer": "momentum"})
    assert resolve_backend("auto", request)[0] == "chunked"


def test_an_objective_without_a_closed_form_grad_is_declined():
    """The base class's grad is autograd of ``loss``, which dynamo cannot put in the graph."""
    from nlframe.interfaces import Objective
    from nlframe.scan import make_memory, make_request, make_rule

    class Cube(Objective):
        def loss(self, pred, target):
            return ((pred - target) ** 3).abs().sum(-1)

    q = torch.zeros(1, 1, 4, 3)
    request = make_request(q, q, q, memory=make_memory("linear", 3, 3), objective=Cube(),
                           rule=make_rule("momentum"), chunk_size=2,
                           names={"memory": "linear", "objective": "cube", "optimizer": "momentum"})
    reason = get_registry().get("backend", "compiled")().supports(request)
    assert reason is not None and "no closed-form grad" in reason

"""Conformance properties of an update rule ``(W', s') = update(g, s, W, **hyper)``.

Checked (float64, parameters are drawn matrices with 0–2 leading dims):

* ``zero_lr_is_identity`` — with the rule's ``zero_lr_hyper`` (default
  ``{"lr": 0.0}``) an update from any reachable state returns ``W`` exactly;
  ``zero_lr_hyper = None`` on the class opts out;
* ``batched_equals_per_element`` — for ``batched`` rules, an update over leading
  dims with per-element tensor hyperparameters equals a loop over elements (with
  0-d tensor hyperparameters), over several steps;
* ``pure`` — ``update`` and ``init`` leave their inputs untouched;
* ``state_round_trip`` — params and state saved with ``torch.save`` and loaded
  (``weights_only``) continue bit-identically;
* ``gradients_flow`` — ``W'`` and ``s'`` are differentiable w.r.t. ``W``, ``g``
  and the zero-lr hyperparameters (``lr``) passed as tensors; every gradient
  that exists is finite (a hyperparameter the configured variant ignores may
  get none);

Tensor hyperparameters vary per leading element in ``[0.5, 1]×`` their value;
they are every float hyperparameter, or those a rule lists in
``tensor_hyperparams`` when it accepts tensors for only some.
* ``deterministic`` — the same inputs give bit-identical outputs;
* ``finite_for_bounded_inputs`` — ``|W|, |g| ≤ 1`` (zero gradients included)
  stays finite over several steps;
* ``declared_invariants`` — every ``rule.invariants`` entry holds at each step.
"""

from __future__ import annotations

import io
import itertools
from typing import Any

import torch
from hypothesis import strategies as st
from torch import Tensor

from ..interfaces import UpdateRule
from ..level import tree_map
from ..registry import get_registry
from .assertions import assert_close
from .strategies import gradients, param_dicts, tensors
from .suites import Property, Suite

__all__ = ["optimizer_suite", "DEFAULT_ZERO_LR_HYPER"]

DEFAULT_ZERO_LR_HYPER = {"lr": 0.0}
"""Hyperparameters that make a rule the identity when it declares no ``zero_lr_hyper``."""

BATCHED_RTOL = 1e-10  # batched vs per-element in float64: only summation order differs


def _resolve_rule(name_or_rule: Any) -> tuple[str, UpdateRule]:
    if isinstance(name_or_rule, str):
        return name_or_rule, get_registry().get("optimizer", name_or_rule)()
    if isinstance(name_or_rule, type) and issubclass(name_or_rule, UpdateRule):
        return name_or_rule.__name__, name_or_rule()
    if isinstance(name_or_rule, UpdateRule):
        return type(name_or_rule).__name__, name_or_rule
    raise TypeError(f"check_optimizer: expected a registered name, an UpdateRule class or "
                    f"instance; got {type(name_or_rule).__name__}")


# -- drawing problems ------------------------------------------------------------------
def _float_names(rule: UpdateRule) -> list[str]:
    return [n for n, v in rule.defaults.items() if type(v) is float]


def _tensor_names(rule: UpdateRule) -> list[str]:
    """Hyperparameters passed as tensors: the rule's ``tensor_hyperparams`` declaration, or
    every float hyperparameter (the interface's default promise)."""
    declared = getattr(type(rule), "tensor_hyperparams", None)
    return [n for n in _float_names(rule) if declared is None or n in declared]


def _valid(rule: UpdateRule, values: dict[str, float]) -> bool:
    try:
        rule.check_hyper({**rule.defaults, **values})
    except ValueError:
        return False
    return True


def _draw_hyper(data: Any, rule: UpdateRule) -> dict[str, float]:
    """Float hyperparameters scaled by ``u ∈ [0.5, 1]`` from their defaults, kept when valid."""
    out = {}
    for n in _float_names(rule):
        val = rule.defaults[n] * data.draw(st.floats(0.5, 1.0), label=f"scale of {n}")
        if _valid(rule, {**out, n: val}):
            out[n] = val
    return out


def _tensor_hyper(data: Any, rule: UpdateRule, hyper: dict[str, float],
                  lead: tuple[int, ...]) -> dict[str, Tensor]:
    """Each float hyperparameter as a tensor over ``lead``, varying per element in [0.5, 1]×."""
    out = {}
    for n, val in hyper.items():
        if n not in _tensor_names(rule):
            continue
        scale = data.draw(tensors(lead, low=0.5, high=1.0), label=f"per-element scale of {n}")
        t = val * scale
        if all(_valid(rule, {**hyper, n: float(x)}) for x in t.reshape(-1)):
            out[n] = t
        else:
            out[n] = torch.full(lead, val, dtype=torch.float64)
    return out


def _problem(data: Any, *, batch_dims: Any = None, bound: float | None = None):
    params = data.draw(param_dicts(batch_dims=batch_dims, bound=bound), label="params")
    lead = tuple(next(iter(params.values())).shape[:-2])
    return params, lead


def _grads(data: Any, params, *, bound: float | None = None, label: str = "grads"):
    return data.draw(gradients(params, bound=bound), label=label)


def _warm(data: Any, rule: UpdateRule, params, hyper, steps: int):
    state = rule.init(params)
    for i in range(steps):
        params, state = rule.update(_grads(data, params, label=f"warm-up grads {i}"), state,
                                    params, **hyper)
    return params, state


def _clone(tree: Any) -> Any:
    return tree_map(lambda t: t.detach().clone(), tree)


def _assert_identical(actual: Any, expected: Any, what: str) -> None:
    """Bit-identical trees of tensors (NaN equal to NaN)."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict) or set(actual) != set(expected):
            raise AssertionError(f"{what}: keys {sorted(actual) if isinstance(actual, dict) else actual!r}"
                                 f" != {sorted(expected)}")
        for k in expected:
            _assert_identical(actual[k], expected[k], f"{what}[{k!r}]")
    elif isinstance(expected, (list, tuple)):
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            _assert_identical(a, e, f"{what}[{i}]")
    elif isinstance(expected, Tensor):
        ok = (isinstance(actual, Tensor) and actual.shape == expected.shape
              and actual.dtype == expected.dtype and torch.equal(
                  torch.nan_to_num(actual.detach(), 7.0), torch.nan_to_num(expected.detach(), 7.0)))
        if not ok:
            raise AssertionError(f"{what} differs: {actual!r} vs {expected!r}")
    elif actual != expected:
        raise AssertionError(f"{what}: {actual!r} != {expected!r}")


# -- properties ------------------------------------------------------------------------
def zero_lr_is_identity(rule: UpdateRule, data: Any) -> None:
    """An update with the rule's zero-lr hyperparameters leaves ``W`` unchanged: ``W' = W``."""
    zero = getattr(type(rule), "zero_lr_hyper", DEFAULT_ZERO_LR_HYPER)
    params, _ = _problem(data, batch_dims=data.draw(st.integers(0, 2), label="leading dims"))
    hyper = _draw_hyper(data, rule)
    params, state = _warm(data, rule, params, hyper, data.draw(st.integers(0, 3), label="steps"))
    new, _ = rule.update(_grads(data, params), state, params, **{**hyper, **zero})
    _assert_identical(new, params, f"params after an update with {zero}")


def _zero_lr_applies(rule: UpdateRule) -> str | None:
    zero = getattr(type(rule), "zero_lr_hyper", DEFAULT_ZERO_LR_HYPER)
    if zero is None:
        return "the rule declares zero_lr_hyper = None (no zero-lr identity)"
    missing = set(zero) - set(rule.hyperparams)
    if missing:
        raise AssertionError(
            f"{type(rule).__name__} has no hyperparameter(s) {sorted(missing)}; declare the "
            f"hyperparameters that make an update the identity as a class attribute, e.g. "
            f"zero_lr_hyper = {{'learning_rate': 0.0}} (or None to opt out)")
    return None


def _index(tree: Any, idx: tuple[int, ...], lead: tuple[int, ...]) -> Any:
    """Element ``idx`` of every tensor carrying the leading dims; other leaves are shared."""
    n = len(lead)
    return tree_map(lambda t: t[idx] if t.dim() >= n and tuple(t.shape[:n]) == lead else t, tree)


def batched_equals_per_element(rule: UpdateRule, data: Any) -> None:
    """Updating a batch equals updating each element alone: ``update(W)[b] = update(W[b])``."""
    params, lead = _problem(data, batch_dims=data.draw(st.integers(1, 2), label="leading dims"))
    hyper = _draw_hyper(data, rule)
    thyper = _tensor_hyper(data, rule, hyper, lead)
    state = rule.init(params)
    singles = {idx: (_index(params, idx, lead), rule.init(_index(params, idx, lead)))
               for idx in itertools.product(*map(range, lead))}
    for step in range(data.draw(st.integers(1, 3), label="steps")):
        g = _grads(data, params, label=f"grads {step}")
        params, state = rule.update(g, state, params, **{**hyper, **thyper})
        for idx, (p, s) in singles.items():
            h = {**hyper, **{n: t[idx] for n, t in thyper.items()}}  # 0-d tensors
            singles[idx] = rule.update(_index(g, idx, lead), s, p, **h)
            where = f"step {step}, element {idx} of leading dims {lead}"
            assert_close(_index(params, idx, lead), singles[idx][0], rtol=BATCHED_RTOL,
                         name=f"params ({where})")
            assert_close(_index(state, idx, lead), singles[idx][1], rtol=BATCHED_RTOL,
                         name=f"state ({where})")


def pure(rule: UpdateRule, data: Any) -> None:
    """``init`` and ``update`` never mutate their inputs (params, grads, state, tensor hyper)."""
    params, lead = _problem(data, batch_dims=data.draw(st.integers(0, 2), label="leading dims"))
    hyper = _draw_hyper(data, rule)
    thyper = _tensor_hyper(data, rule, hyper, lead) if rule.batched else {}
    p0 = _clone(params)
    rule.init(params)
    _assert_identical(params, p0, "params after init")
    params, state = _warm(data, rule, params, hyper, data.draw(st.integers(0, 2), label="steps"))
    g = _grads(data, params)
    before = _clone((g, state, params, thyper))
    rule.update(g, state, params, **{**hyper, **thyper})
    for what, a, b in zip(("grads", "state", "params", "hyper"), (g, state, params, thyper), before):
        _assert_identical(a, b, f"{what} after update (update must not write into its inputs)")


def state_round_trip(rule: UpdateRule, data: Any) -> None:
    """Params and state saved with ``torch.save`` and loaded continue exactly as the originals."""
    params, _ = _problem(data, batch_dims=data.draw(st.integers(0, 2), label="leading dims"))
    hyper = _draw_hyper(data, rule)
    params, state = _warm(data, rule, params, hyper, data.draw(st.integers(1, 3), label="steps"))
    buf = io.BytesIO()
    torch.save({"params": params, "state": state}, buf)
    buf.seek(0)
    try:
        loaded = torch.load(buf, weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise AssertionError(f"the state does not load with torch.load(weights_only=True) "
                             f"(keep it to dicts/lists of tensors and numbers): {exc}") from exc
    p2, s2 = loaded["params"], loaded["state"]
    for step in range(data.draw(st.integers(1, 3), label="more steps")):
        g = _grads(data, params, label=f"grads {step}")
        params, state = rule.update(g, state, params, **hyper)
        p2, s2 = rule.update(_clone(g), s2, p2, **hyper)
        _assert_identical(p2, params, f"params {step + 1} step(s) after the round trip")
        _assert_identical(s2, state, f"state {step + 1} step(s) after the round trip")


def gradients_flow(rule: UpdateRule, data: Any) -> None:
    """``W'``, ``s'`` are differentiable w.r.t. ``W``, ``g``, ``lr`` and tensor hyperparameters."""
    params, lead = _problem(data, batch_dims=data.draw(st.integers(0, 2), label="leading dims"))
    hyper = _draw_hyper(data, rule)
    params, state = _warm(data, rule, params, hyper, data.draw(st.integers(1, 2), label="steps"))
    thyper = _tensor_hyper(data, rule, hyper, lead)
    g = _grads(data, params)
    leaves = {**{f"params[{n!r}]": p.detach().requires_grad_(True) for n, p in params.items()},
              **{f"grads[{n!r}]": t.detach().requires_grad_(True) for n, t in g.items()},
              **{f"hyper {n!r}": t.requires_grad_(True) for n, t in thyper.items()}}
    P = {n: leaves[f"params[{n!r}]"] for n in params}
    G = {n: leaves[f"grads[{n!r}]"] for n in g}
    H = {**hyper, **{n: leaves[f"hyper {n!r}"] for n in thyper}}
    with torch.enable_grad():
        new_p, new_s = rule.update(G, state, P, **H)
        outs = []
        tree_map(lambda t: outs.append(t) if t.is_floating_point() and t.requires_grad else None,
                 (new_p, new_s))
        gen = torch.Generator().manual_seed(0)
        total = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in outs)
        if not outs:
            raise AssertionError("no output of update requires grad: the graph is cut")
        got = torch.autograd.grad(total, list(leaves.values()), allow_unused=True)
    zero = getattr(type(rule), "zero_lr_hyper", DEFAULT_ZERO_LR_HYPER) or {}
    must = {n for n in leaves if not n.startswith("hyper")} | {f"hyper {n!r}" for n in zero}
    for name, grad in zip(leaves, got):
        if grad is None and name in must:
            raise AssertionError(f"no gradient reaches {name} through update (detached or "
                                 f"converted to a Python number?)")
        if grad is None:
            continue  # a hyperparameter the configured variant does not use
        if not torch.isfinite(grad).all():
            raise AssertionError(f"the gradient w.r.t. {name} is not finite: {grad}")


def deterministic(rule: UpdateRule, data: Any) -> None:
    """Two calls on the same inputs give bit-identical ``init`` and ``update`` results."""
    params, _ = _problem(data, batch_dims=data.draw(st.integers(0, 2), label="leading dims"))
    hyper = _draw_hyper(data, rule)
    _assert_identical(rule.init(_clone(params)), rule.init(params), "init")
    params, state = _warm(data, rule, params, hyper, data.draw(st.integers(0, 2), label="steps"))
    g = _grads(data, params)
    a = rule.update(_clone(g), _clone(state), _clone(params), **hyper)
    b = rule.update(g, state, params, **hyper)
    _assert_identical(a, b, "(params, state) of a repeated update")


def finite_for_bounded_inputs(rule: UpdateRule, data: Any) -> None:
    """``|W| ≤ 1`` and ``|g| ≤ 1`` (zero gradients included) keep ``W'``, ``s'`` finite."""
    params, _ = _problem(data, batch_dims=data.draw(st.integers(0, 2), label="leading dims"),
                         bound=1.0)
    hyper = _draw_hyper(data, rule)
    state = rule.init(params)
    for step in range(data.draw(st.integers(1, 5), label="steps")):
        zero = data.draw(st.booleans(), label=f"zero grads at step {step}")
        g = (tree_map(torch.zeros_like, params) if zero
             else _grads(data, params, bound=1.0, label=f"grads {step}"))
        params, state = rule.update(g, state, params, **hyper)
        bad = []
        tree_map(lambda t: bad.append(t) if t.is_floating_point() and not torch.isfinite(t).all()
                 else None, (params, state))
        if bad:
            raise AssertionError(f"non-finite params/state after step {step} "
                                 f"({'zero' if zero else 'bounded'} grads): {bad[0]}")


def declared_invariants(rule: UpdateRule, data: Any) -> None:
    """Each ``invariant(rule, grads, state, params, new_params, new_state, hyper)`` holds."""
    params, _ = _problem(data, batch_dims=data.draw(st.integers(0, 2), label="leading dims"))
    hyper = rule.resolve(_draw_hyper(data, rule))
    state = rule.init(params)
    for step in range(data.draw(st.integers(1, 3), label="steps")):
        g = _grads(data, params, label=f"grads {step}")
        new_p, new_s = rule.update(g, state, params, **hyper)
        for inv in rule.invariants:
            try:
                inv(rule, g, state, params, new_p, new_s, hyper)
            except AssertionError as exc:
                doc = (inv.__doc__ or "").strip().splitlines()
                raise AssertionError(f"declared invariant {inv.__name__!r}"
                                     f"{f' ({doc[0]})' if doc else ''} fails at step {step}: "
                                     f"{exc}") from None
        params, state = new_p, new_s


def optimizer_suite(name_or_rule: Any) -> Suite:
    """The conformance :class:`Suite` of an update rule (see the module docstring)."""
    name, rule = _resolve_rule(name_or_rule)
    not_batched = (lambda r: None if r.batched else "the rule is not batched (batched = False)")
    props = [
        Property("zero_lr_is_identity", zero_lr_is_identity, applies=_zero_lr_applies),
        Property("batched_equals_per_element", batched_equals_per_element, applies=not_batched),
        Property("pure", pure),
        Property("state_round_trip", state_round_trip),
        Property("gradients_flow", gradients_flow),
        Property("deterministic", deterministic),
        Property("finite_for_bounded_inputs", finite_for_bounded_inputs),
        Property("declared_invariants", declared_invariants,
                 applies=lambda r: None if r.invariants else "the rule declares no invariants"),
    ]
    return Suite(kind="optimizer", name=name, subject=rule, properties=props)

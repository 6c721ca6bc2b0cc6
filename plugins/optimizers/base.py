"""Composable gradient transforms and the rule that applies a chain of them.

A :class:`Transform` is a pure pair ``init(params, h) -> state`` and
``update(updates, state, params, h) -> (updates, state)`` (optax's
``GradientTransformation``, torch-native): it maps incoming updates (at first
the gradients) to outgoing updates. :func:`chain` runs transforms in sequence,
:func:`partition` gives each parameter the transform its label selects, and
:class:`TransformRule` turns a transform into an
:class:`~nlframe.interfaces.UpdateRule` with ``W ← W + updates``.

Hyperparameters are not bound at construction: ``h`` is the rule's resolved
hyperparameter dict of the current call (numbers or tensors over the leading
dims). A transform reads them by *role*; ``Transform(key=..., role="name")``
renames the hyperparameter a role reads, so one transform can serve e.g. a
fast (``beta1``) and a slow (``beta3``) momentum in the same chain.

State layout (what :mod:`nlframe.optim` relies on to save per-parameter state
the ``torch.optim`` way): nested dicts whose innermost dicts are keyed by
parameter name, ``{slot: {param_name: tensor | int}}``, with shapes fixed by
``init``. ``init(params, h)`` sees the hyperparameters too, for the few slots
that exist only under an option (Adam's ``amsgrad`` maximum).
"""

from __future__ import annotations

import abc
import math
from numbers import Number
from typing import Any, Callable, ClassVar, Mapping

import torch
from torch import Tensor

from nlframe.interfaces import OptState, Params, UpdateRule

from . import ops

__all__ = ["Transform", "chain", "partition", "TransformRule", "ScaleByLr", "AddDecayedWeights",
           "check_nonneg", "check_unit", "check_betas", "check_positive", "check_choice",
           "check_int", "check_bool", "same_structure", "finite_in_finite_out"]


class Transform(abc.ABC):
    """One gradient transform: ``updates ← f(updates, state, params; h)``.

    ``roles`` maps each hyperparameter role this transform reads to its default;
    ``key`` names its slot in a chain's state.
    """

    roles: ClassVar[Mapping[str, Any]] = {}
    default_key: ClassVar[str] = ""

    def __init__(self, *, key: str | None = None, **names: str) -> None:
        unknown = set(names) - set(self.roles)
        if unknown:
            raise TypeError(f"{type(self).__name__}: unknown role(s) {sorted(unknown)}; "
                            f"roles: {sorted(self.roles)}")
        self.names = {role: names.get(role, role) for role in self.roles}
        self.key = key or self.default_key or type(self).__name__.lower()

    @property
    def hyperparams(self) -> dict[str, Any]:
        """Public hyperparameter name → default, for the roles this transform reads."""
        return {self.names[r]: d for r, d in self.roles.items()}

    def hp(self, h: Mapping[str, Any], role: str) -> Any:
        """The value of ``role`` in the resolved hyperparameters ``h``."""
        return h[self.names[role]]

    def init(self, params: Params, h: Mapping[str, Any]) -> OptState:
        """Initial state (stateless transforms: ``{}``); ``h``: resolved hyperparameters."""
        return {}

    @abc.abstractmethod
    def update(self, updates: Params, state: OptState, params: Params, h: Mapping[str, Any],
               inplace: bool = False) -> tuple[Params, OptState]:
        """New updates and state. ``inplace`` allows reusing *this transform's own*
        state storage; incoming ``updates`` are never modified."""


def names_of(updates: Params) -> list[str]:
    return list(updates)


def lists(names: list[str], *trees: Mapping[str, Any]) -> list[list]:
    """The values of each tree in ``names`` order."""
    return [[t[n] for n in names] for t in trees]


def as_dict(names: list[str], values: list) -> dict:
    return dict(zip(names, values))


class _Chain(Transform):
    """``chain(t1, t2, …)``: ``updates`` flows through each transform in turn."""

    def __init__(self, *transforms: Transform) -> None:
        super().__init__(key="chain")
        keys = [t.key for t in transforms]
        dup = {k for k in keys if keys.count(k) > 1}
        if dup:
            raise ValueError(f"chain: transforms share state key(s) {sorted(dup)}; pass key=")
        self.transforms = transforms

    @property
    def hyperparams(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for t in self.transforms:
            out.update(t.hyperparams)
        return out

    def init(self, params: Params, h: Mapping[str, Any]) -> OptState:
        return {t.key: t.init(params, h) for t in self.transforms}

    def update(self, updates, state, params, h, inplace=False):
        new_state = {}
        for t in self.transforms:
            updates, new_state[t.key] = t.update(updates, state[t.key], params, h, inplace)
        return updates, new_state


def chain(*transforms: Transform) -> Transform:
    """Compose transforms left to right (optax ``chain``)."""
    return _Chain(*transforms)


class _Partition(Transform):
    """Per-parameter choice: ``label(name, param)`` picks the transform of each parameter."""

    def __init__(self, label: Callable[[str, Tensor], str], transforms: Mapping[str, Transform]):
        super().__init__(key="partition")
        self.label, self.transforms = label, dict(transforms)

    @property
    def hyperparams(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for t in self.transforms.values():
            out.update(t.hyperparams)
        return out

    def _groups(self, params: Params) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {lab: [] for lab in self.transforms}
        for n, p in params.items():
            lab = self.label(n, p)
            if lab not in groups:
                raise ValueError(f"partition: parameter {n!r} (shape {tuple(p.shape)}) got label "
                                 f"{lab!r}; known labels: {sorted(groups)}")
            groups[lab].append(n)
        return groups

    def init(self, params, h):
        return {lab: self.transforms[lab].init({n: params[n] for n in ns}, h)
                for lab, ns in self._groups(params).items()}

    def update(self, updates, state, params, h, inplace=False):
        out: dict[str, Tensor] = {}
        new_state = {}
        for lab, ns in self._groups(params).items():
            sub = lambda tree: {n: tree[n] for n in ns}  # noqa: E731
            sub_state = _restrict(state[lab], set(ns))
            u, new_state[lab] = self.transforms[lab].update(sub(updates), sub_state, sub(params),
                                                            h, inplace)
            out.update(u)
        return {n: out[n] for n in updates}, new_state


def _restrict(state: Any, names: set[str]) -> Any:
    """The part of a leaf-keyed state that belongs to ``names``."""
    if isinstance(state, dict):
        if state and all(not isinstance(v, dict) for v in state.values()):
            return {n: v for n, v in state.items() if n in names}
        return {k: _restrict(v, names) for k, v in state.items()}
    return state


def partition(label: Callable[[str, Tensor], str],
              transforms: Mapping[str, Transform]) -> Transform:
    """Give each parameter the transform of its label (optax ``multi_transform``).

    ``label(name, param) -> str`` must return a key of ``transforms``.
    """
    return _Partition(label, transforms)


class ScaleByLr(Transform):
    """``u ← −γ·u``: the descent step with learning rate ``lr`` γ."""

    roles = {"lr": 1e-3}
    default_key = "lr"

    def update(self, updates, state, params, h, inplace=False):
        names = list(updates)
        return as_dict(names, ops.mul([updates[n] for n in names], -self.hp(h, "lr"))), state


class AddDecayedWeights(Transform):
    """``u ← u + λ·W``: before a momentum it is L2 regularisation (torch SGD/Adam
    ``weight_decay``); after the direction and before :class:`ScaleByLr` it is
    decoupled decay ``W ← W − γ(d + λW)`` (AdamW, Muon)."""

    roles = {"weight_decay": 0.0}
    default_key = "weight_decay"

    def update(self, updates, state, params, h, inplace=False):
        wd = self.hp(h, "weight_decay")
        if ops.is_num(wd) and wd == 0:
            return updates, state
        names = list(updates)
        u, p = lists(names, updates, params)
        return as_dict(names, ops.add(u, p, alpha=wd)), state


class TransformRule(UpdateRule):
    """An update rule from a transform: ``W ← W + T(∇L)``.

    Subclasses declare ``hyperparams`` and build their transform in
    :meth:`build`. A chain's tail is applied the way torch applies it, in as few
    passes: ``[…, ScaleByLr]`` as ``W + (−γ)·u`` (``param.add_(u, alpha=-lr)``),
    ``[…, AddDecayedWeights, ScaleByLr]`` as ``W·(1 − γλ) + (−γ)·u`` (decoupled
    decay), and a quotient transform (one with ``parts``, e.g. Adam's
    ``u = m / d / c``) right before them as ``addcdiv(W, m, d, −γ/c)``.
    :meth:`update_` is the in-place twin used by :class:`nlframe.optim.Optimizer`:
    same kernels, same results, bit for bit.
    """

    def __init__(self, **defaults: Any) -> None:
        super().__init__(**defaults)
        t = self.build()
        self.transform = t if isinstance(t, _Chain) else chain(t)
        missing = set(self.transform.hyperparams) - set(self.hyperparams)
        if missing:
            raise TypeError(f"{type(self).__name__}: its transform reads {sorted(missing)}, "
                            "which are not declared in hyperparams")
        self._head, self._quotient, self._decay, self._lr = self._tail_plan(self.transform)

    @staticmethod
    def _tail_plan(t: Transform) -> tuple[list, Any, Any, Any]:
        """Split ``t`` into ``head`` transforms and the fused tail (quotient, decay, lr)."""
        ts = list(t.transforms)
        lr = ts.pop() if isinstance(ts[-1], ScaleByLr) else None
        decay = ts.pop() if lr and ts and isinstance(ts[-1], AddDecayedWeights) else None
        quotient = ts.pop() if lr and ts and hasattr(ts[-1], "parts") else None
        return ts, quotient, decay, lr

    @abc.abstractmethod
    def build(self) -> Transform:
        """The transform (usually a :func:`chain`) this rule applies."""

    def init(self, params: Params, **hyper: Any) -> OptState:
        """Initial state; ``hyper`` (default: the rule's defaults) decides optional slots."""
        return self.transform.init(params, self.resolve(hyper))

    def _apply(self, grads: Params, state: OptState, params: Params, h: Mapping[str, Any],
               inplace: bool) -> tuple[list[Tensor], OptState]:
        """New params (in ``params`` order; written in place when ``inplace``) and state."""
        new_state: dict[str, Any] = {}
        u = grads
        for tr in self._head:
            u, new_state[tr.key] = tr.update(u, state[tr.key], params, h, inplace)
        names = list(params)
        p = [params[n] for n in names]
        if self._lr is None:
            return ops.add(p, [u[n] for n in names], inplace=inplace), new_state
        lr = self._lr.hp(h, "lr")
        for tr in (self._decay, self._lr):
            if tr is not None:
                new_state[tr.key] = state[tr.key]
        if self._decay is not None:
            wd = self._decay.hp(h, "weight_decay")
            if not (ops.is_num(wd) and wd == 0):
                p = ops.mul(p, [1 - a * b for a, b in zip(ops.per(lr, p), ops.per(wd, p))],
                            inplace=inplace)
        if self._quotient is not None:
            q = self._quotient
            u = {n: u[n] for n in names}  # parts come back in this order
            num, den, divisor, new_state[q.key] = q.parts(u, state[q.key], params, h, inplace)
            step = [-(a / c) for a, c in zip(ops.per(lr, p), divisor)]
            p = ops.addcdiv(p, num, den, step, inplace=inplace)
        else:
            p = ops.add(p, [u[n] for n in names], alpha=-lr, inplace=inplace)
        return p, {tr.key: new_state[tr.key] for tr in self.transform.transforms}

    def update(self, grads: Params, state: OptState, params: Params,
               **hyper: Any) -> tuple[Params, OptState]:
        new, new_state = self._apply(grads, state, params, self.resolve(hyper), False)
        return as_dict(list(params), new), new_state

    def update_(self, grads: Params, state: OptState, params: Params, **hyper: Any) -> OptState:
        """Like :meth:`update` but writes the new values into ``params`` and may reuse the
        storage of ``state``; returns the new state. For optimizers that own both."""
        new, new_state = self._apply(grads, state, params, self.resolve(hyper), True)
        for n, q in zip(params, new):
            if q is not params[n]:  # a path that could not work in place
                params[n].copy_(q)
        return new_state


# -- hyperparameter checks (numbers only; tensors are the caller's business) ----------------

def _num(v: Any) -> bool:
    return isinstance(v, Number) and not isinstance(v, bool)


def check_nonneg(h: Mapping[str, Any], *names: str) -> None:
    for n in names:
        v = h[n]
        if _num(v) and not (v >= 0):
            raise ValueError(f"{n} must be >= 0, got {v}")


def check_positive(h: Mapping[str, Any], *names: str) -> None:
    for n in names:
        v = h[n]
        if _num(v) and not (v > 0):
            raise ValueError(f"{n} must be > 0, got {v}")


def check_unit(h: Mapping[str, Any], *names: str, closed: bool = True) -> None:
    """``[0, 1]`` (``closed``) or ``[0, 1)``."""
    for n in names:
        v = h[n]
        if _num(v) and not (0 <= v <= 1 if closed else 0 <= v < 1):
            raise ValueError(f"{n} must be in [0, 1{']' if closed else ')'}, got {v}")


def check_betas(h: Mapping[str, Any], name: str, count: int) -> None:
    """A tuple of ``count`` betas, each in ``[0, 1)``."""
    v = h[name]
    if not isinstance(v, (tuple, list)) or len(v) != count:
        raise ValueError(f"{name} must be a tuple of {count} values, got {v!r}")
    for i, b in enumerate(v):
        if _num(b) and not 0 <= b < 1:
            raise ValueError(f"{name}[{i}] must be in [0, 1), got {b}")


def check_choice(h: Mapping[str, Any], name: str, choices: tuple) -> None:
    if h[name] not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {h[name]!r}")


def check_int(h: Mapping[str, Any], name: str, lo: int, hi: float = math.inf) -> None:
    v = h[name]
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v < hi:
        bound = f"in [{lo}, {hi})" if hi != math.inf else f">= {lo}"
        raise ValueError(f"{name} must be an int {bound}, got {v!r}")


def check_bool(h: Mapping[str, Any], *names: str) -> None:
    for n in names:
        if not isinstance(h[n], bool):
            raise ValueError(f"{n} must be a bool, got {h[n]!r}")


# -- declared invariants (checked by the conformance suite) ---------------------------------

def same_structure(rule, grads, state, params, new_params, new_state, hyper) -> None:
    """New params have the names, shapes and dtypes of the params."""
    assert list(new_params) == list(params), (list(new_params), list(params))
    for n, p in params.items():
        q = new_params[n]
        assert q.shape == p.shape and q.dtype == p.dtype, (n, q.shape, p.shape, q.dtype, p.dtype)


def finite_in_finite_out(rule, grads, state, params, new_params, new_state, hyper) -> None:
    """Finite params, grads, state and hyperparameters give finite new params."""
    def finite(tree: Any) -> bool:
        if isinstance(tree, Tensor):
            return bool(torch.isfinite(tree).all()) if tree.is_floating_point() else True
        if isinstance(tree, dict):
            return all(finite(v) for v in tree.values())
        if isinstance(tree, (list, tuple)):
            return all(finite(v) for v in tree)
        return not isinstance(tree, float) or math.isfinite(tree)

    if finite(grads) and finite(state) and finite(params) and finite(dict(hyper)):
        for n, q in new_params.items():
            assert torch.isfinite(q).all(), f"non-finite new param {n!r}"

"""``torch.optim`` adapter: any update-rule plugin trains a model's slow weights.

``Optimizer(model.parameters(), rule="adam", lr=1e-3)`` is a real
:class:`torch.optim.Optimizer`: param groups with their own hyperparameters,
``step(closure)``, ``zero_grad``, ``state_dict`` / ``load_state_dict`` (a
reloaded optimizer continues bit for bit) and ``torch.optim.lr_scheduler``
(schedulers write ``group["lr"]``, which is read at every step). Nothing else of
nlframe is needed in the training loop.

Each step calls the rule once per param group, on the parameters that have a
gradient: ``rule.update(grads, state, params, **group_hyper)`` — the same pure
function an inner level runs in a scan. A rule that also provides
``update_(grads, state, params, **hyper) -> state`` (adds its updates into the
params, may reuse the storage of the state it is given; every chain-built
built-in rule does) is called that way instead, which spares a copy per tensor.

Per-parameter state follows torch: ``optimizer.state[p]`` holds the rule's state
for ``p`` alone, e.g. ``{"adam": {"step": 3, "exp_avg": …, …}}``. This relies on
the layout of the built-in rules (innermost dicts keyed by parameter name); a
rule whose state has other leaves is called once per parameter instead.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable

import torch
from torch import Tensor

from .interfaces import UpdateRule
from .registry import get_registry

__all__ = ["Optimizer"]

_MISSING = object()


class _LayoutError(Exception):
    """A rule state that is not keyed by parameter name at its innermost level."""


def _split(tree: Any, names: list[str]) -> list:
    """A group state ``{slot: {name: leaf}}`` → one ``{slot: leaf}`` per name."""
    if not isinstance(tree, dict):
        raise _LayoutError
    if tree and all(not isinstance(v, dict) for v in tree.values()):
        if not set(tree) <= set(names):
            raise _LayoutError
        return [tree.get(n, _MISSING) for n in names]
    parts = {k: _split(v, names) for k, v in tree.items()}
    return [{k: ps[i] for k, ps in parts.items() if ps[i] is not _MISSING}
            for i in range(len(names))]


def _merge(states: list, names: list[str]) -> Any:
    """Inverse of :func:`_split`: per-name states → one group state."""
    leaves = [not isinstance(s, dict) for s in states]
    if any(leaves):
        kept = [(n, s) for n, s, leaf in zip(names, states, leaves) if leaf or s]
        if not all(not isinstance(s, dict) for _, s in kept):
            raise _LayoutError
        return dict(kept)
    keys = list(dict.fromkeys(k for s in states for k in s))
    out = {}
    for k in keys:
        sub = [(n, s[k]) for n, s in zip(names, states) if k in s]
        out[k] = _merge([s for _, s in sub], [n for n, _ in sub])
    return out


def _make_rule(rule: str | UpdateRule, hyper: dict[str, Any]) -> tuple[UpdateRule, dict]:
    if isinstance(rule, str):
        cls = get_registry().get("optimizer", rule)  # unknown names list the registered ones
        inst = cls(**hyper)
        return inst, dict(inst.defaults)
    if isinstance(rule, UpdateRule):
        defaults = rule.resolve(hyper)
        rule.check_hyper(defaults)
        return rule, defaults
    raise TypeError(f"rule must be a registered optimizer name or an UpdateRule, got "
                    f"{type(rule).__name__}")


class Optimizer(torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` driven by the update rule ``rule``.

    Args:
        params: parameters or param-group dicts (per-group hyperparameter
            overrides), as for any torch optimizer.
        rule: a registered optimizer name (``"adam"``, ``"muon"``, ``"m3"``, …)
            or an :class:`~nlframe.interfaces.UpdateRule` instance.
        **hyper: default hyperparameters (the rule's names, e.g. ``lr``,
            ``betas``, ``weight_decay``); unknown names and out-of-range values
            raise, naming them.
    """

    def __init__(self, params: Iterable[Any], rule: str | UpdateRule = "adam",
                 **hyper: Any) -> None:
        self.rule, defaults = _make_rule(rule, hyper)
        self.rule_name = rule if isinstance(rule, str) else type(rule).__name__
        self._per_param: bool | None = None
        self._init_hyper = any(a.kind is inspect.Parameter.VAR_KEYWORD
                               for a in inspect.signature(self.rule.init).parameters.values())
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        index = len(self.param_groups) - 1
        self._check_group(index, group)
        for i, p in enumerate(group["params"]):
            try:  # shape policies of the rule (e.g. muon and 1-D params), without allocating
                self._init({self._name(group, index, i): torch.empty_like(p, device="meta")},
                           self._hyper(group))
            except ValueError:
                raise
            except Exception:  # noqa: BLE001 - a rule that cannot init on "meta" is checked later
                pass

    # -- helpers ---------------------------------------------------------------------------
    def _hyper(self, group: dict[str, Any]) -> dict[str, Any]:
        return {k: group[k] for k in self.rule.hyperparams}

    def _check_group(self, index: int, group: dict[str, Any]) -> None:
        try:
            self.rule.check_hyper(self._hyper(group))
        except ValueError as exc:
            raise ValueError(f"optimizer {self.rule_name!r}, param group {index}: {exc}") from None

    @staticmethod
    def _name(group: dict[str, Any], index: int, i: int) -> str:
        names = group.get("param_names")
        return str(names[i]) if names else f"group{index}.param{i}"

    def _init(self, params: dict[str, Tensor], hyper: dict[str, Any]) -> Any:
        """``rule.init``, given the group's hyperparameters when it takes them (the
        built-ins do: optional slots such as Adam's amsgrad maximum follow the group)."""
        return self.rule.init(params, **hyper) if self._init_hyper else self.rule.init(params)

    def _state_of(self, p: Tensor, name: str, hyper: dict[str, Any]) -> Any:
        """The stored state of ``p`` (created on first use)."""
        st = self.state[p]
        if not st:
            full = self._init({name: p}, hyper)
            if self._per_param is None:
                try:
                    _split(full, [name])
                    self._per_param = False
                except _LayoutError:
                    self._per_param = True
            st.update(full if self._per_param else _split(full, [name])[0])
        return st

    # -- the step --------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One update of every parameter that has a gradient; returns ``closure()``'s loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for index, group in enumerate(self.param_groups):
            self._check_group(index, group)
            hyper = self._hyper(group)
            items = [(self._name(group, index, i), p) for i, p in enumerate(group["params"])
                     if p.grad is not None]
            if not items:
                continue
            for name, p in items:
                if p.grad.is_sparse:
                    raise RuntimeError(f"optimizer {self.rule_name!r}: parameter {name!r} has "
                                       "a sparse gradient, which update rules do not support")
            states = [self._state_of(p, name, hyper) for name, p in items]
            if self._per_param:
                for (name, p), st in zip(items, states):
                    self._apply({name: p}, {name: p.grad}, st, hyper, lambda new, st=st: (
                        st.clear(), st.update(new)))
                continue
            names = [n for n, _ in items]
            params = {n: p for n, p in items}

            def store(new_state: Any) -> None:
                for st, part in zip(states, _split(new_state, names)):
                    st.clear()
                    st.update(part)

            self._apply(params, {n: p.grad for n, p in items}, _merge(states, names), hyper, store)
        return loss

    def _apply(self, params: dict[str, Tensor], grads: dict[str, Tensor], state: Any,
               hyper: dict[str, Any], store: Callable[[Any], Any]) -> None:
        update_ = getattr(self.rule, "update_", None)
        if update_ is not None:
            store(update_(grads, state, params, **hyper))
            return
        new_params, new_state = self.rule.update(grads, state, params, **hyper)
        for n, p in params.items():
            p.copy_(new_params[n])
        store(new_state)

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

A param group with ``update_every = C`` (default 1) is updated every ``C``-th
``step()`` only, from the sum of the gradients of the ``C`` steps (optax's
``MultiSteps`` idea; the CMS "training frequency" of slow weights). The running
sum lives in ``optimizer.state[p]["update_every_grad"]`` and the count of steps
in the group's ``"update_every_calls"``, so both are checkpointed with the rest.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable

import torch
from torch import Tensor

from .interfaces import UpdateRule
from .registry import get_registry

__all__ = ["Optimizer", "build_optimizers"]

_MISSING = object()
_ACCUM = "update_every_grad"  # state key of the gradient sum of an update_every group


def _rule_state(st: dict[str, Any]) -> dict[str, Any]:
    """The rule's part of a parameter's state (without the update_every sum)."""
    return {k: v for k, v in st.items() if k != _ACCUM} if _ACCUM in st else st


def _replace(st: dict[str, Any], new: Any) -> None:
    """Store a new rule state for a parameter, keeping its update_every sum."""
    acc = st.get(_ACCUM)
    st.clear()
    st.update(new)
    if acc is not None:
        st[_ACCUM] = acc


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


def _fill_empty(state: dict[str, Any], fresh: Any) -> None:
    """Add the empty-dict slots of ``fresh`` that ``state`` lacks (nothing else)."""
    if not isinstance(fresh, dict):
        return
    for k, v in fresh.items():
        if isinstance(v, dict):
            if k not in state and not _has_leaves(v):
                state[k] = _empty_like_tree(v)
            elif isinstance(state.get(k), dict):
                _fill_empty(state[k], v)


def _has_leaves(tree: Any) -> bool:
    return not isinstance(tree, dict) or any(_has_leaves(v) for v in tree.values())


def _empty_like_tree(tree: dict[str, Any]) -> dict[str, Any]:
    return {k: _empty_like_tree(v) for k, v in tree.items()}


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
        if group.get("update_every", 1) != 1:
            group.setdefault("update_every_calls", 0)
        for i, p in enumerate(group["params"]):
            try:  # shape policies of the rule (e.g. muon and 1-D params), without allocating
                self._init({self._name(group, index, i): torch.empty_like(p, device="meta")},
                           self._hyper(group))
            except ValueError:
                raise
            except Exception:  # noqa: BLE001 - a rule that cannot init on "meta" is checked later
                pass

    @torch.no_grad()
    def init_state(self) -> None:
        """Create every parameter's state now (the rule's ``init``; a zero gradient sum
        in ``update_every`` groups) instead of at its first step — e.g. so that
        ``torch.distributed.checkpoint`` finds a complete state to load into."""
        for index, group in enumerate(self.param_groups):
            hyper = self._hyper(group)
            for i, p in enumerate(group["params"]):
                st = self._state_of(p, self._name(group, index, i), hyper)
                if group.get("update_every", 1) != 1 and _ACCUM not in st:
                    st[_ACCUM] = torch.zeros_like(p)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's ``load_state_dict``, then the empty slots of the rule state put back
        (formats that flatten state trees, such as ``torch.distributed.checkpoint``'s
        state dicts, drop empty dicts)."""
        super().load_state_dict(state_dict)
        for index, group in enumerate(self.param_groups):
            hyper = self._hyper(group)
            for i, p in enumerate(group["params"]):
                st = self.state.get(p)
                if not st:
                    continue
                name = self._name(group, index, i)
                try:
                    fresh = self._init({name: torch.empty_like(p, device="meta")}, hyper)
                    fresh = fresh if self._per_param else _split(fresh, [name])[0]
                except Exception:  # noqa: BLE001 - rules that cannot init on "meta"
                    continue
                _fill_empty(st, fresh)

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
        if not _rule_state(st):
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
            if not self._due(group):
                continue
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
                    self._apply({name: p}, {name: p.grad}, _rule_state(st), hyper,
                                lambda new, st=st: _replace(st, new))
                continue
            names = [n for n, _ in items]
            params = {n: p for n, p in items}

            def store(new_state: Any) -> None:
                for st, part in zip(states, _split(new_state, names)):
                    _replace(st, part)

            self._apply(params, {n: p.grad for n, p in items},
                        _merge([_rule_state(st) for st in states], names), hyper, store)
        return loss

    def _due(self, group: dict[str, Any]) -> bool:
        """Count a step of an ``update_every`` group; add its gradients to the running
        sum and, on the step it is due, hand the sum to the rule as the gradient."""
        every = group.get("update_every", 1)
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"optimizer {self.rule_name!r}: update_every must be a positive "
                             f"int, got {every!r}")
        if every == 1:
            return True
        group["update_every_calls"] = calls = group.get("update_every_calls", 0) + 1
        due = calls % every == 0
        for p in group["params"]:
            st = self.state[p]
            if p.grad is not None:
                st[_ACCUM] = p.grad.clone() if _ACCUM not in st else st[_ACCUM].add_(p.grad)
            if due:
                p.grad = st.pop(_ACCUM, None)
        return due

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


# ------------------------------------------------------- outer optimizers of a [train] table
def training_frequencies(model: torch.nn.Module) -> dict[str, int]:
    """Parameter name → ``C`` for the slow parameters a block asks to step only every
    ``C`` optimizer steps (:meth:`nlframe.interfaces.Block.update_every`)."""
    out: dict[str, int] = {}
    for prefix, module in model.named_modules():
        declared = getattr(module, "update_every", None)
        if not callable(declared) or not hasattr(module, "Config"):
            continue
        for name, every in declared().items():
            if every != 1:
                out[f"{prefix}.{name}" if prefix else name] = every
    return out


def _rule_takes(rule: UpdateRule, p: Tensor) -> bool:
    """Whether ``rule`` accepts a parameter of ``p``'s shape (its ``init`` raises
    ``ValueError`` otherwise; probed on the meta device, allocating nothing)."""
    try:
        rule.init({"p": torch.empty_like(p, device="meta")})
    except ValueError:
        return False
    except Exception:  # noqa: BLE001 - rules that cannot init on "meta" are checked by the optimizer
        return True
    return True


def build_optimizers(model: torch.nn.Module, cfg: Any) -> list[Optimizer]:
    """The outer optimizer(s) of a ``[train]`` table: ``cfg.optimizer`` (with
    ``cfg.optimizer_kwargs``) for the parameters it takes, ``cfg.fallback_optimizer``
    for the rest (e.g. vectors under ``muon``).

    Param groups: weight decay ``cfg.weight_decay`` on matrices, none on vectors
    (when the rule has a ``weight_decay``), and one group per training frequency
    ``update_every`` declared by the blocks (:func:`training_frequencies`).
    """
    reg = get_registry()
    every = training_frequencies(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    rule = reg.get("optimizer", cfg.optimizer)(**cfg.optimizer_kwargs)
    taken = [(n, p) for n, p in named if _rule_takes(rule, p)]
    taken_ids = {id(p) for _, p in taken}
    rest = [(n, p) for n, p in named if id(p) not in taken_ids]
    optimizers = []
    for name, items, extra in ((cfg.optimizer, taken, cfg.optimizer_kwargs),
                               (cfg.fallback_optimizer, rest, {})):
        if not items:
            continue
        accepts_wd = "weight_decay" in reg.get("optimizer", name).hyperparams
        groups: dict[tuple[float | None, int], list] = {}
        for n, p in items:
            wd = (cfg.weight_decay if p.dim() >= 2 else 0.0) if accepts_wd else None
            groups.setdefault((wd, every.get(n, 1)), []).append((n, p))
        param_groups = []
        for (wd, c), ps in groups.items():
            group: dict[str, Any] = {"params": [p for _, p in ps], "param_names": [n for n, _ in ps]}
            if wd is not None:
                group["weight_decay"] = wd
            if c != 1:
                group["update_every"] = c
            param_groups.append(group)
        optimizers.append(Optimizer(param_groups, rule=name, lr=cfg.lr, **extra))
    return optimizers

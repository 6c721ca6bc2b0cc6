"""Transforms compose: chain, partition, TransformRule (W ← W + updates, lr folded)."""

import pytest
import torch

from nlframe_plugins.optimizers.base import TransformRule, chain, partition
from nlframe_plugins.optimizers.newton_schulz import Orthogonalize
from nlframe_plugins.optimizers.transforms import (AddDecayedWeights, ScaleByAdam, ScaleByLr,
                                                   SGDMomentum)

from .helpers import randn, rel, rule


class MuonForMatricesAdamWElsewhere(TransformRule):
    """Per-parameter choice: NS-orthogonalised SGD momentum for matrices, Adam for the rest."""

    hyperparams = {"lr": 0.01, "momentum": 0.9, "dampening": 0.0, "nesterov": False,
                   "betas": (0.9, 0.999), "eps": 1e-8, "amsgrad": False,
                   "ns_coefficients": (3.4445, -4.7750, 2.0315), "ns_steps": 5,
                   "ns_dtype": None, "weight_decay": 0.0}

    def build(self):
        label = lambda name, p: "matrix" if p.dim() >= 2 else "vector"  # noqa: E731
        return chain(partition(label, {"matrix": chain(SGDMomentum(), Orthogonalize(eps="eps")),
                                       "vector": ScaleByAdam()}),
                     AddDecayedWeights(), ScaleByLr())


def test_partition_applies_each_parameters_own_transform():
    gen = torch.Generator().manual_seed(0)
    r = MuonForMatricesAdamWElsewhere()
    params = {"w": randn(4, 6, gen=gen), "b": randn(6, gen=gen)}
    grads = [{n: randn(*p.shape, gen=gen) for n, p in params.items()} for _ in range(5)]
    st = r.init(params)
    assert set(st["partition"]) == {"matrix", "vector"}
    assert set(st["partition"]["vector"]["exp_avg"]) == {"b"}
    p = params
    for g in grads:
        p, st = r.update(g, st, p)
    # the same parts run alone
    w_ref, _ = _alone(chain(SGDMomentum(), Orthogonalize(eps="eps"), ScaleByLr()),
                      {"w": params["w"]}, [{"w": g["w"]} for g in grads], r.defaults)
    b_ref, _ = _alone(chain(ScaleByAdam(), ScaleByLr()), {"b": params["b"]},
                      [{"b": g["b"]} for g in grads], r.defaults)
    assert rel(p["w"], w_ref["w"]) < 1e-14 and rel(p["b"], b_ref["b"]) < 1e-14


def _alone(t, params, grads, h):
    st = t.init(params, h)
    for g in grads:
        u, st = t.update(g, st, params, h)
        params = {n: params[n] + u[n] for n in params}
    return params, st


def test_partition_rejects_unknown_labels():
    t = partition(lambda n, p: "other", {"a": ScaleByLr()})
    with pytest.raises(ValueError, match="'x'.*'other'"):
        t.init({"x": torch.zeros(2)}, {"lr": 0.1})


def test_chain_rejects_clashing_state_keys():
    with pytest.raises(ValueError, match="adam"):
        chain(ScaleByAdam(), ScaleByAdam())
    chain(ScaleByAdam(), ScaleByAdam(key="adam2"))  # renamed: fine


def test_roles_can_be_renamed():
    t = SGDMomentum(momentum="beta")
    assert t.hyperparams == {"beta": 0.0, "dampening": 0.0, "nesterov": False}
    with pytest.raises(TypeError, match="unknown role"):
        SGDMomentum(velocity="beta")


def test_transform_rule_checks_declared_hyperparams():
    class Missing(TransformRule):
        hyperparams = {"lr": 0.1}

        def build(self):
            return chain(ScaleByAdam(), ScaleByLr())

    with pytest.raises(TypeError, match="betas"):
        Missing()


def test_sgd_chain_is_the_textbook_formula():
    """sgd = chain(negate, weight decay, momentum, −lr): checked against the plain equations."""
    gen = torch.Generator().manual_seed(1)
    W = randn(3, 4, gen=gen)
    gs = [randn(3, 4, gen=gen) for _ in range(4)]
    mu, tau, lam, lr = 0.9, 0.2, 0.01, 0.1
    p, _ = _run_rule("sgd", W, gs, lr=lr, momentum=mu, dampening=tau, weight_decay=lam)
    w, b = W.clone(), None
    for g in gs:
        d = g + lam * w
        b = d.clone() if b is None else mu * b + (1 - tau) * d
        w = w - lr * b
    assert rel(p, w) < 1e-14


def _run_rule(name, W, gs, **hyper):
    r = rule(name)
    params, st = {"W": W}, r.init({"W": W})
    for g in gs:
        params, st = r.update({"W": g}, st, params, **hyper)
    return params["W"], st


def test_optional_state_follows_init_hyper():
    """Adam's amsgrad maximum exists only when the state is created with amsgrad=True."""
    r = rule("adam")
    W = torch.zeros(2, 3, dtype=torch.float64)
    assert "max_exp_avg_sq" not in r.init({"W": W})["adam"]
    assert "max_exp_avg_sq" in r.init({"W": W}, amsgrad=True)["adam"]
    with pytest.raises(ValueError, match="amsgrad"):
        r.update({"W": W}, r.init({"W": W}), {"W": W}, amsgrad=True)

"""The optimizer suite passes a correct rule and names the property each broken rule violates."""

import pytest
import torch

from nlframe.interfaces import UpdateRule
from nlframe.testing import check_optimizer, suite
from nlframe.utils import bcast


class HeavyBall(UpdateRule):
    """Heavy ball: ``m ← β m + g``, ``W ← W − lr·m`` (a correct rule, the mutants' base)."""

    hyperparams = {"lr": 0.1, "beta": 0.9}

    def init(self, params):
        return {"m": {n: torch.zeros_like(p) for n, p in params.items()}, "count": 0}

    def update(self, grads, state, params, **hyper):
        h = self.resolve(hyper)
        m = {n: bcast(h["beta"], p) * state["m"][n] + grads[n] for n, p in params.items()}
        new = {n: p - bcast(h["lr"], p) * m[n] for n, p in params.items()}
        return new, {"m": m, "count": state["count"] + 1}


def step_at_most_lr_times_momentum(rule, grads, state, params, new_params, new_state, hyper):
    """``|W' − W| = lr·|m'|`` elementwise."""
    for n in params:
        delta = (new_params[n] - params[n]).abs()
        assert torch.allclose(delta, hyper["lr"] * new_state["m"][n].abs(), rtol=1e-9, atol=1e-12), n


class Declared(HeavyBall):
    invariants = (step_at_most_lr_times_momentum,)


class Mutating(HeavyBall):
    def update(self, grads, state, params, **hyper):
        new, st = super().update(grads, state, params, **hyper)
        for n in grads:
            grads[n].mul_(0.5)
        return new, st


class BatchMixing(HeavyBall):
    def update(self, grads, state, params, **hyper):
        g = {n: t - t.mean() for n, t in grads.items()}  # mean over leading dims too
        return super().update(g, state, params, **hyper)


class LrLeak(HeavyBall):
    def update(self, grads, state, params, **hyper):
        new, st = super().update(grads, state, params, **hyper)
        return {n: p - 1e-3 * grads[n] for n, p in new.items()}, st


class Detaching(HeavyBall):
    def update(self, grads, state, params, **hyper):
        return super().update({n: g.detach() for n, g in grads.items()}, state, params, **hyper)


class Noisy(HeavyBall):
    def update(self, grads, state, params, **hyper):
        new, st = super().update(grads, state, params, **hyper)
        return {n: p + 1e-6 * torch.randn_like(p) for n, p in new.items()}, st


class Unsavable(HeavyBall):
    def init(self, params):
        return {**super().init(params), "clock": object()}

    def update(self, grads, state, params, **hyper):
        new, st = super().update(grads, {k: v for k, v in state.items() if k != "clock"}, params, **hyper)
        return new, {**st, "clock": state["clock"]}


class NormalisedBadly(HeavyBall):
    def update(self, grads, state, params, **hyper):
        g = {n: t / t.abs().amax() for n, t in grads.items()}  # 0/0 on zero gradients
        return super().update(g, state, params, **hyper)


class WrongInvariant(HeavyBall):
    def update(self, grads, state, params, **hyper):
        new, st = super().update(grads, state, params, **hyper)
        return {n: 2 * p - params[n] for n, p in new.items()}, st  # steps twice as far

    invariants = (step_at_most_lr_times_momentum,)


class NoLr(HeavyBall):
    hyperparams = {"step_size": 0.1, "beta": 0.9}

    def update(self, grads, state, params, **hyper):
        h = self.resolve(hyper)
        return HeavyBall(lr=h["step_size"], beta=h["beta"]).update(grads, state, params)


class NoLrDeclared(NoLr):
    zero_lr_hyper = {"step_size": 0.0}


def test_correct_rule_passes_every_property():
    assert check_optimizer(Declared, max_examples=6) == []
    assert check_optimizer(HeavyBall(), max_examples=3) == ["declared_invariants"]


@pytest.mark.parametrize("rule, prop, words", [
    (Mutating, "pure", "grads after update"),
    (BatchMixing, "batched_equals_per_element", "element"),
    (LrLeak, "zero_lr_is_identity", "params after an update with {'lr': 0.0}"),
    (Detaching, "gradients_flow", "no gradient reaches grads"),
    (Noisy, "deterministic", "repeated update"),
    (Unsavable, "state_round_trip", "weights_only=True"),
    (NormalisedBadly, "finite_for_bounded_inputs", "zero grads"),
    (WrongInvariant, "declared_invariants", "step_at_most_lr_times_momentum"),
    (NoLr, "zero_lr_is_identity", "declare the hyperparameters"),
])
def test_broken_rule_fails_the_named_property(rule, prop, words):
    with pytest.raises(AssertionError) as info:
        suite("optimizer", rule).run(prop, max_examples=10)
    msg = str(info.value)
    assert f"violates {prop!r}" in msg and rule.__name__ in msg and words in msg, msg


def test_check_lists_every_failure_at_once():
    with pytest.raises(AssertionError) as info:
        check_optimizer(Noisy, max_examples=3, properties=["deterministic", "pure"])
    assert "1 conformance failure(s)" in str(info.value)


def test_zero_lr_hyper_declaration_is_used():
    assert check_optimizer(NoLrDeclared, max_examples=3, properties=["zero_lr_is_identity"]) == []


def test_non_batched_rule_skips_the_batched_property():
    class Global(HeavyBall):
        batched = False

    assert "batched_equals_per_element" in check_optimizer(Global, max_examples=2)


def test_registered_name_and_bad_subject():
    assert suite("optimizer", "momentum").name == "momentum"
    with pytest.raises(TypeError, match="expected a registered name"):
        suite("optimizer", 3)
    with pytest.raises(ValueError, match="no conformance suite for kind 'block'"):
        suite("block", "mlp")

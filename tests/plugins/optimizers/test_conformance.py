"""Every registered update rule passes nlframe's optimizer conformance suite (hypothesis):
zero lr is the identity, batched = per element, pure, state round trip, gradients flow to
params/grads/tensor hyperparameters, deterministic, finite for bounded inputs, invariants."""

import pytest

import nlframe
from nlframe.testing import check_optimizer
from nlframe_plugins.optimizers import RULES

NAMES = nlframe.get_registry().names("optimizer")


def test_all_built_in_rules_are_registered():
    reg = nlframe.get_registry()
    for name, cls in RULES.items():
        assert reg.get("optimizer", name) is cls
    assert {"sgd", "momentum", "adam", "adamw", "muon", "preconditioned-momentum",
            "delta-momentum", "dmgd", "nonlinear-output", "dgd", "m3"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_conformance(name):
    skipped = check_optimizer(name, max_examples=8)
    assert skipped == []


@pytest.mark.parametrize("name", NAMES)
def test_batched_and_documented(name):
    cls = nlframe.get_registry().get("optimizer", name)
    assert cls.batched
    assert cls.__doc__ and "=" in cls.__doc__.splitlines()[0] or "←" in cls.__doc__


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_conformance_exhaustive(name):
    assert check_optimizer(name, max_examples=200) == []

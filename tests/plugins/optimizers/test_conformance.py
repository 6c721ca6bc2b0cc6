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


@pytest.mark.parametrize("name", NAMES)
def test_negative_lr_is_rejected_by_name(name):
    cls = nlframe.get_registry().get("optimizer", name)
    with pytest.raises(ValueError, match="lr"):
        cls(lr=-0.1)


@pytest.mark.parametrize("name,hyper,needle", [
    ("adam", {"betas": (0.9, 1.2)}, "betas[1]"),
    ("adamw", {"eps": -1e-8}, "eps"),
    ("m3", {"betas": (0.9, 0.99, 1.0)}, "betas[2]"),
    ("m3", {"eps": 0.0}, "eps"),
    ("preconditioned-momentum", {"momentum": 1.5}, "momentum"),
    ("preconditioned-momentum", {"preconditioner": "shampoo"}, "preconditioner"),
    ("delta-momentum", {"beta2": 1.0}, "beta2"),
    ("dmgd", {"inner_lr": -1.0}, "inner_lr"),
    ("nonlinear-output", {"output": "relu"}, "output"),
    ("muon", {"ns_coefficients": (1.0, 2.0)}, "ns_coefficients"),
    ("muon", {"ns_dtype": "int8"}, "ns_dtype"),
    ("sgd", {"dampening": 2.0}, "dampening"),
    ("momentum", {"decay": 1.5}, "decay"),
])
def test_out_of_range_hyperparameters_are_named(name, hyper, needle):
    cls = nlframe.get_registry().get("optimizer", name)
    with pytest.raises(ValueError) as exc:
        cls(**hyper)
    assert needle in str(exc.value)


def test_unknown_hyperparameter_lists_the_accepted_ones():
    with pytest.raises(TypeError, match="accepted.*'lr'"):
        nlframe.get_registry().get("optimizer", "m3")(learning_rate=0.1)

"""The kit's strategies draw what they promise; the public API is what it lists."""

import re

import attrs
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import nlframe.testing as kit
from nlframe import get_registry
from nlframe.testing import (configs, gradients, hyper_schedules, param_dicts, scan_inputs,
                             specs)


def test_public_api_is_listed_and_versioned():
    assert re.fullmatch(r"\d+\.\d+", kit.API_VERSION)
    missing = [n for n in kit.__all__ if not hasattr(kit, n)]
    assert not missing


@settings(max_examples=15)
@given(st.data())
def test_scan_inputs_fit_the_memory(data):
    memory = data.draw(st.sampled_from(get_registry().names("memory")))
    inp = data.draw(scan_inputs(memory, optimizer="momentum", max_T=6, max_B=3))
    B, H, T = inp.shape
    assert inp.q.shape == inp.k.shape and inp.v.shape[:3] == (B, H, T)
    assert 1 <= T <= 6 and 1 <= B <= 3 and 1 <= inp.chunk_size <= T + 1
    assert torch.allclose(inp.k.norm(dim=-1), torch.ones(B, H, T, dtype=torch.float64))
    if get_registry().get("memory", memory).structure == "residual-mlp":
        assert inp.v.shape[-1] == inp.k.shape[-1]
    assert set(inp.gates) == {"lr", "decay", "momentum"}


@settings(max_examples=20)
@given(hyper_schedules((2, 3, 4)))
def test_gates_are_floats_or_per_token_tensors_in_range(gates):
    for name, high in (("lr", 0.5), ("decay", 0.3), ("momentum", 0.9)):
        g = gates[name]
        if isinstance(g, torch.Tensor):
            assert g.shape == (2, 3, 4) and 0 <= g.min() and g.max() <= high
        else:
            assert 0.0 <= g <= high


class OnlyLr:
    hyperparams = {"lr": 0.1}


@settings(max_examples=5)
@given(hyper_schedules((1, 1, 2), optimizer=OnlyLr))
def test_gates_follow_the_rules_hyperparameters(gates):
    assert set(gates) == {"lr"}


@settings(max_examples=15)
@given(st.data())
def test_param_dicts_and_gradients_share_shapes(data):
    params = data.draw(param_dicts({"W": (3, 2), "b": (3,)}, batch_dims=2, bound=1.0))
    lead = params["W"].shape[:2]
    assert params["W"].shape == (*lead, 3, 2) and params["b"].shape == (*lead, 3)
    assert all(p.abs().max() <= 1.0 for p in params.values())
    grads = data.draw(gradients(params))
    assert {n: g.shape for n, g in grads.items()} == {n: p.shape for n, p in params.items()}


def test_configs_are_valid_instances():
    @attrs.frozen
    class Cfg:
        width: int = attrs.field(default=4)
        kind: str = attrs.field(default="a", validator=attrs.validators.in_(["a", "b"]))

        @width.validator
        def _w(self, _a, v):
            if v < 1:
                raise ValueError("width must be positive")

    @settings(max_examples=20)
    @given(configs(Cfg, kind="b"))
    def check(cfg):
        assert cfg.width >= 1 and cfg.kind == "b"

    check()


@settings(max_examples=8)
@given(specs(max_blocks=2))
def test_specs_load_and_build(spec):
    from nlframe.build import build
    from nlframe.spec import load_spec

    loaded = load_spec(spec)
    assert [b["type"] for b in spec["model"]["blocks"]] == [b.type for b in loaded.model.config.blocks]
    model = build(loaded, seed=0)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_specs_reject_an_unknown_restriction():
    with pytest.raises(Exception, match="unknown block"):
        specs(blocks=["no-such-block"])

"""The ``titans`` block: the chunked scan against the reference token loop (outputs
and gradients), streaming in both layouts, learned initial memory, surprise."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nlframe.spec import MemoryRef, ObjectiveRef, SpecError, load_spec
from nlframe_plugins.blocks.titans import Titans
from ._helpers import feed_in_pieces, rel_err


def make(dim=16, seed=0, **cfg) -> Titans:
    cfg.setdefault("heads", 2)
    cfg.setdefault("chunk_size", 3)
    cfg.setdefault("memory", MemoryRef("mlp", {"hidden": 8}))
    torch.manual_seed(seed)
    return Titans(Titans.Config(**cfg), dim).double()


def inputs(b=2, t=11, dim=16, seed=1) -> torch.Tensor:
    return torch.randn(b, t, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("objective", ["l2", "huber"])
def test_chunked_equals_reference_outputs_and_gradients(objective):
    x = inputs()
    outs, grads = [], []
    for backend in ("chunked", "reference"):
        block = make(backend=backend, objective=ObjectiveRef(objective))
        y, _ = block(x)
        y.square().sum().backward()
        outs.append(y)
        grads.append({n: p.grad for n, p in block.named_parameters()})
    assert rel_err(outs[0], outs[1]) < 1e-10
    for n, g in grads[1].items():
        assert rel_err(grads[0][n], g) < 1e-8, n


@settings(max_examples=10)
@given(cuts=st.lists(st.integers(0, 11), max_size=3).map(sorted), mal=st.booleans())
def test_random_splits_equal_one_pass(cuts, mal):
    block = make(layout="mal" if mal else "standalone", window=4)
    x = inputs()
    full, _ = block(x)
    assert rel_err(feed_in_pieces(block, x, cuts)[0], full) < 1e-10


def test_token_by_token_mal():
    block = make(layout="mal", window=4)
    x = inputs()
    full, _ = block(x)
    state, steps = None, []
    for t in range(x.shape[1]):
        y, state = block(x[:, t:t + 1], state)
        steps.append(y)
    assert rel_err(torch.cat(steps, 1), full) < 1e-10
    assert block.handles_residual and set(state) == {"memory", "conv", "attention"}


def test_learned_initial_memory_is_trained_by_the_outer_level():
    block = make()
    y, state = block(inputs())
    y.square().sum().backward()
    for name, p in block.init.items():
        assert p.shape[0] == block.heads and p.grad is not None and p.grad.abs().sum() > 0, name
    with torch.no_grad():  # a different W_0 changes the output: the memory starts from it
        block.init["W1"].mul_(2.0)
    assert rel_err(block(inputs())[0], y) > 1e-3


def test_surprise_is_the_scans_write_time_error():
    """The block reports the surprise its memory scan computed: mean ‖∂ℓ/∂pred_t‖ at the
    chunk-start parameters (checked against a hand loop in the scan's own tests)."""
    block = make()
    _, state = block(inputs())
    got = block.surprise()["memory"]
    assert torch.isfinite(got) and got > 0
    assert float(got) == float(state["memory"].surprise.mean())


def test_config_errors():
    bad = {"model": {"dim": 16, "blocks": [{"type": "titans", "memory": {"type": "residual-mlp"},
                                            "heads": 4, "head_dim": 4, "layout": "mal",
                                            "attention_heads": 3}]}}
    with pytest.raises(SpecError, match=r"model.blocks\[0\].attention_heads: attention: 3 heads do not"):
        load_spec(bad)
    bad["model"]["blocks"][0]["layout"] = "mac"
    with pytest.raises(SpecError, match=r"model.blocks\[0\].layout: expected one of 'standalone', 'mal'"):
        load_spec(bad)

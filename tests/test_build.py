"""``build``: seeding, repeat, parameter counts, and every ready spec in ``specs/``
(validates, builds, trains a step on a (2, 64) byte batch, streams exactly)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import nlframe
from nlframe.build import build, count_parameters
from nlframe.spec import load_spec

SPECS = sorted((Path(__file__).resolve().parents[1] / "specs").glob("*.toml"))
TWO = '[model]\ndim = 16\n[[model.blocks]]\ntype = "attention"\nheads = 2\nrepeat = 2\n[[model.blocks]]\ntype = "mlp"\n'


def spec_param(path: Path):
    marks = [pytest.mark.slow] if "small" in path.stem else []  # the ≈20–50M models
    return pytest.param(path, id=path.stem, marks=marks)


def test_seed_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a, b, c = build(TWO, seed=1), build(TWO, seed=1), build(TWO, seed=2)
    assert torch.equal(torch.rand(3), expected_next)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_repeat_builds_independent_copies():
    model = build(TWO, seed=0)
    assert model.block_types == ["attention", "attention", "mlp"]
    assert model.blocks[0] is not model.blocks[1]
    assert not torch.equal(model.blocks[0].qkv.weight, model.blocks[1].qkv.weight)


def test_accepts_path_spec_and_dtype(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text(TWO)
    model = build(path, dtype=torch.float64)
    assert isinstance(build(load_spec(TWO)), nn.Module)
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert nlframe.build is build and nlframe.load_spec is load_spec


def test_count_parameters_matches_the_built_model():
    assert count_parameters(TWO) == sum(p.numel() for p in build(TWO).parameters())


@pytest.mark.parametrize("path", [spec_param(p) for p in SPECS])
def test_ready_spec_validates_builds_and_trains_a_step(path):
    spec = load_spec(path)
    model = build(spec, seed=0)
    assert count_parameters(spec) == sum(p.numel() for p in model.parameters())
    vocab = spec.model.config.vocab_size
    batch = torch.randint(0, min(vocab, 256), (2, 65), generator=torch.Generator().manual_seed(0))
    logits, _ = model(batch[:, :-1])
    assert logits.shape == (2, 64, vocab)
    loss = nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert torch.isfinite(loss) and all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("path", [spec_param(p) for p in SPECS])
def test_ready_spec_streams_exactly(path):
    model = build(path, seed=0, dtype=torch.float64)
    x = torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(1))
    full, _ = model(x)
    for cuts in ([3, 7], list(range(1, 10))):
        state, pieces = None, []
        for lo, hi in zip([0, *cuts], [*cuts, 10]):
            out, state = model(x[:, lo:hi], state)
            pieces.append(out)
        err = (torch.cat(pieces, 1) - full).norm() / full.norm()
        assert err < 1e-9, f"{path.name}: pieces {cuts} differ from one pass by {float(err):.2e}"


def test_transformer_tiny_learns():
    model = build(Path(__file__).resolve().parents[1] / "specs" / "transformer-tiny.toml", seed=0)
    batch = torch.randint(0, 256, (2, 65), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        logits, _ = model(batch[:, :-1])
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses

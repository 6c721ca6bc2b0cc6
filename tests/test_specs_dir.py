"""Every spec in ``specs/`` validates, builds, and runs forward and backward on a
(2, 64) byte batch; its parameter count matches its description's scale."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import nlframe
from nlframe.build import count_parameters
from nlframe.spec import dump_spec, load_spec, spec_to_dict

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SPECS = sorted((Path(__file__).resolve().parents[1] / "specs").glob("*.toml"))
SMALL = [p for p in SPECS if p.stem != "hope-small"]


def test_specs_are_present():
    names = {p.stem for p in SPECS}
    assert {"hope-tiny", "hope-small", "titans-tiny", "deltanet-tiny", "hope-attention-tiny",
            "novel-nested"} <= names


@pytest.mark.parametrize("path", SMALL, ids=lambda p: p.stem)
def test_spec_builds_and_trains_one_step(path):
    spec = load_spec(path)
    model = nlframe.build(spec, seed=0)
    tokens = torch.randint(0, spec.model.config.vocab_size, (2, 65),
                           generator=torch.Generator().manual_seed(0))
    logits, state = model(tokens[:, :-1])
    assert logits.shape == (2, 64, spec.model.config.vocab_size)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.embed.weight.grad.abs().sum() > 0
    for name, value in model.surprise().items():
        assert torch.isfinite(value) and value > 0, name


def test_hope_tiny_and_small_sizes():
    assert 1_000_000 <= count_parameters(SPECS[0].parent / "hope-tiny.toml") <= 3_000_000
    assert 20_000_000 <= count_parameters(SPECS[0].parent / "hope-small.toml") <= 50_000_000


def test_hope_small_builds_and_runs_forward():
    model = nlframe.build(SPECS[0].parent / "hope-small.toml", seed=0)
    with torch.no_grad():
        logits, _ = model(torch.randint(0, 256, (1, 64)))
    assert logits.shape == (1, 64, 256) and torch.isfinite(logits).all()


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_dump_spec_round_trips(path):
    """``tomli_w`` output reads back to the same spec; blocks with sub-tables are
    written as ``[[model.blocks]]`` sections, short ones may be inline."""
    spec = load_spec(path)
    text = dump_spec(spec)
    assert load_spec(text) == spec
    assert tomllib.loads(text) == spec_to_dict(spec)
    blocks = spec_to_dict(spec)["model"]["blocks"]
    if any(isinstance(v, dict) for b in blocks for v in b.values()):
        assert text.count("[[model.blocks]]") == len(blocks)

"""The ``lm`` model: streaming equals one pass, generation, residual convention,
surprise aggregation and parameter counts."""

from __future__ import annotations

import attrs
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import nlframe
from nlframe import hookimpl
from nlframe.interfaces import Block
from nlframe_plugins.blocks.lm import LM
from ._helpers import feed_in_pieces, rel_err

SPEC = """
[model]
dim = 16
vocab_size = 40
[[model.blocks]]
type = "attention"
heads = 2
[[model.blocks]]
type = "mlp"
hidden = 24
[[model.blocks]]
type = "attention"
heads = 4
window = 3
[[model.blocks]]
type = "mlp"
"""


@pytest.fixture(scope="module")
def lm() -> LM:
    return nlframe.build(SPEC, seed=0, dtype=torch.float64)


def tokens(b=2, t=13, seed=0, vocab=40):
    return torch.randint(0, vocab, (b, t), generator=torch.Generator().manual_seed(seed))


def test_token_by_token_equals_one_pass(lm):
    x = tokens()
    full, _ = lm(x)
    state, steps = None, []
    for t in range(x.shape[1]):
        logits, state = lm(x[:, t:t + 1], state)
        steps.append(logits)
    assert rel_err(torch.cat(steps, 1), full) < 1e-12
    assert len(state) == 4 and state[0]["pos"] == 13


@given(cuts=st.lists(st.integers(0, 13), max_size=4).map(sorted))
def test_random_splits_equal_one_pass(lm, cuts):
    x = tokens(seed=1)
    full, _ = lm(x)
    assert rel_err(feed_in_pieces(lm, x, cuts)[0], full) < 1e-12


def test_shapes_and_backward():
    model = nlframe.build(SPEC, seed=0)
    logits, _ = model(tokens())
    assert logits.shape == (2, 13, 40)
    nn.functional.cross_entropy(logits.flatten(0, 1), tokens(seed=3).flatten()).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_generate_with_seeded_generator_matches_re_encoding(lm):
    prompt = tokens(t=5, seed=2)
    g = torch.Generator().manual_seed(7)
    out = lm.generate(prompt, 8, temperature=0.9, top_k=10, generator=g)
    again = lm.generate(prompt, 8, temperature=0.9, top_k=10, generator=torch.Generator().manual_seed(7))
    assert out.shape == (2, 13) and torch.equal(out[:, :5], prompt) and torch.equal(out, again)
    # reference: re-encode the whole prefix for every new token
    g = torch.Generator().manual_seed(7)
    seq = prompt
    for _ in range(8):
        logits, _ = lm(seq)
        seq = torch.cat([seq, LM._sample(logits[:, -1], 0.9, 10, g)], 1)
    assert torch.equal(out, seq)


def test_generate_greedy_and_top1_and_1d(lm):
    prompt = tokens(b=1, t=4, seed=4)[0]
    greedy = lm.generate(prompt, 6, temperature=0.0)
    top1 = lm.generate(prompt, 6, top_k=1, generator=torch.Generator().manual_seed(0))
    assert greedy.shape == (10,) and torch.equal(greedy, top1)
    seq = prompt[None]
    for _ in range(6):
        seq = torch.cat([seq, lm(seq)[0][:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(greedy, seq[0])


def test_generate_feeds_one_token_per_step(lm, monkeypatch):
    seen = []
    block = lm.blocks[0]
    original = block.forward

    def spy(x, state=None):
        seen.append(x.shape[1])
        return original(x, state)

    monkeypatch.setattr(block, "forward", spy)
    lm.generate(tokens(t=6), 4, generator=torch.Generator().manual_seed(0))
    assert seen[0] == 6 and seen[1:] == [1, 1, 1]  # no re-encoding of the prefix


def test_generate_argument_errors(lm):
    with pytest.raises(ValueError, match="at least one token"):
        lm.generate(tokens(t=0), 3)
    with pytest.raises(ValueError, match="top_k must be >= 1, got 0"):
        lm.generate(tokens(t=2), 3, top_k=0)


def test_parameter_counts():
    tied = nlframe.build(SPEC)
    untied = nlframe.build(SPEC.replace("vocab_size = 40", "vocab_size = 40\ntie_embeddings = false"))
    assert untied.num_parameters() - tied.num_parameters() == 40 * 16
    assert tied.num_parameters() == sum(p.numel() for p in tied.parameters())
    assert tied.num_parameters(exclude_embeddings=True) == tied.num_parameters() - 40 * 16


def test_input_errors(lm):
    with pytest.raises(ValueError, match=r"tokens must be an integer tensor of shape \(B, T\), got shape \(2, 3\), dtype torch.float32"):
        lm(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 40\), got range \[0, 40\]"):
        lm(torch.tensor([[0, 40]]))
    with pytest.raises(ValueError, match="state must be the list of 4 block states"):
        lm(tokens(), state=[None])


# -- a local block plugin: residual convention and surprise aggregation -------
class Doubler(Block):
    """Test block that handles its own residual: ``y = 2x``."""

    handles_residual = True

    @attrs.frozen(kw_only=True)
    class Config:
        pass

    def __init__(self, config, dim):
        super().__init__()

    def forward(self, x, state=None):
        return 2 * x, state


class Surprising(Block):
    """Test block reporting the mean square of its input as a 'surprise'."""

    @attrs.frozen(kw_only=True)
    class Config:
        pass

    def __init__(self, config, dim):
        super().__init__()
        self.lin = nn.Linear(dim, dim)
        self.last = None

    def forward(self, x, state=None):
        self.last = x.pow(2).mean()
        return self.lin(x), state

    def surprise(self):
        return {"inner": self.last, "outer": 2 * self.last}


class _Plugin:
    @hookimpl
    def nlframe_register_block(self, register):
        register("test-doubler", Doubler)
        register("test-surprising", Surprising)


@pytest.fixture
def local_blocks():
    reg = nlframe.get_registry()
    plugin = _Plugin()
    reg.register_plugin(plugin, name="test-lm-blocks")
    yield
    reg.unregister_plugin(plugin)


def test_residual_convention(local_blocks):
    model = nlframe.build('[model]\ndim = 8\nvocab_size = 11\n[[model.blocks]]\ntype = "test-doubler"\n'
                          '[[model.blocks]]\ntype = "test-surprising"\n', dtype=torch.float64)
    x = tokens(vocab=11)
    h = 2 * model.embed.weight[x]  # the doubler: x ← block(x), no norm, no residual
    h = h + model.blocks[1](model.norms[1](h))[0]  # others: x ← x + block(norm(x))
    expected = nn.functional.linear(model.final_norm(h), model.embed.weight)
    assert isinstance(model.norms[0], nn.Identity)
    assert rel_err(model(x)[0], expected) < 1e-14


def test_surprise_is_prefixed_per_block(local_blocks):
    model = nlframe.build('[model]\ndim = 8\nvocab_size = 11\n[[model.blocks]]\ntype = "mlp"\n'
                          '[[model.blocks]]\ntype = "test-surprising"\nrepeat = 2\n')
    model(tokens(vocab=11))
    got = model.surprise()
    assert sorted(got) == ["blocks.1.test-surprising.inner", "blocks.1.test-surprising.outer",
                           "blocks.2.test-surprising.inner", "blocks.2.test-surprising.outer"]
    assert torch.equal(got["blocks.2.test-surprising.outer"], 2 * model.blocks[2].last)

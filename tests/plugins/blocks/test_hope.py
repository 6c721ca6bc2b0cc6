"""The ``hope`` and ``hope-attention`` blocks: composition, streaming, surprise,
nested config errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import nlframe
from nlframe.spec import SpecError, load_spec
from ._helpers import feed_in_pieces, rel_err

HOPE = """
[model]
dim = 16
vocab_size = 40
[[model.blocks]]
type = "hope"
[model.blocks.titans]
heads = 2
chunk_size = 3
proj_chunk_size = 4
proj_lr = 0.5
memory = { type = "residual-mlp", hidden = 8 }
proj_memory = { type = "residual-mlp", hidden = 8 }
[model.blocks.cms]
chunk_sizes = [4, 2]
variant = "nested"
memory = { type = "mlp", hidden = 12 }
rule = { type = "sgd", lr = 0.1 }
[[model.blocks]]
type = "hope-attention"
attention = { heads = 2, window = 5 }
cms = { chunk_sizes = [3], memory = { type = "mlp", hidden = 12 } }
"""


@pytest.fixture(scope="module")
def lm():
    return nlframe.build(HOPE, seed=0, dtype=torch.float64)


def tokens(t=13, seed=0):
    return torch.randint(0, 40, (2, t), generator=torch.Generator().manual_seed(seed))


def test_block_is_titans_then_cms(lm):
    hope = lm.blocks[0]
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    y, state = hope(x)
    o, s_t = hope.mixer(hope.norm(x))
    want, s_c = hope.cms(x + o)  # o_t (eq. 94), then the CMS chain (eq. 97)
    assert rel_err(y, want) < 1e-14 and hope.handles_residual
    assert set(state) == {"titans", "cms"} and set(lm.blocks[1](x)[1]) == {"attention", "cms"}


def test_token_by_token_equals_one_pass(lm):
    x = tokens()
    full, _ = lm(x)
    state, steps = None, []
    for t in range(x.shape[1]):
        logits, state = lm(x[:, t:t + 1], state)
        steps.append(logits)
    assert rel_err(torch.cat(steps, 1), full) < 1e-10


@settings(max_examples=10)
@given(cuts=st.lists(st.integers(0, 13), max_size=4).map(sorted))
def test_random_splits_equal_one_pass(lm, cuts):
    x = tokens(seed=1)
    full, _ = lm(x)
    assert rel_err(feed_in_pieces(lm, x, cuts)[0], full) < 1e-10


def test_surprise_and_backward():
    lm = nlframe.build(HOPE, seed=0)
    logits, _ = lm(tokens())
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens(seed=2).flatten()).backward()
    s = lm.surprise()
    assert {"blocks.0.hope.titans.memory", "blocks.0.hope.titans.proj_k", "blocks.0.hope.cms.level1",
            "blocks.1.hope-attention.cms.level0"} <= set(s)
    assert all(torch.isfinite(v) and v > 0 for v in s.values())


def test_errors_carry_the_nested_path():
    bad = HOPE.replace("heads = 2\nchunk_size", "heads = 3\nchunk_size")
    with pytest.raises(SpecError, match=r"model.blocks\[0\].titans.heads: 3 heads do not divide dim 16"):
        load_spec(bad)
    bad = HOPE.replace('variant = "nested"', 'variant = "nestd"')
    with pytest.raises(SpecError,
                       match=r"model.blocks\[0\].cms.variant: expected one of .* did you mean 'nested'"):
        load_spec(bad)
    bad = HOPE.replace("window = 5", "window = 5, foo = 1")
    with pytest.raises(SpecError, match=r"model.blocks\[1\].attention.foo: unknown key"):
        load_spec(bad)

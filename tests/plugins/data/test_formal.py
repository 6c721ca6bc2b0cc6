"""Formal languages: format, answers against independent reference recognisers, metric."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, strategies as st

import nlframe
from nlframe_plugins.data.formal import CycleNavigation, Dyck, ModularArithmetic, Parity

from .conftest import Scanner, Uniform


def reference(task, symbols: list[str]) -> str:
    """The answer for a string of symbol texts, computed the obvious way."""
    if isinstance(task, Parity):
        return ("even", "odd")[symbols.count("1") % 2]
    if isinstance(task, CycleNavigation):
        pos = sum({"+1": 1, "-1": -1, "stay": 0}[s] for s in symbols)
        return f"node{pos % task.cycle}"
    if isinstance(task, ModularArithmetic):
        value, m = int(symbols[0]), task.modulus
        for op, x in zip(symbols[1::2], symbols[2::2]):
            value = {"+": value + int(x), "-": value - int(x), "*": value * int(x)}[op] % m
        return str(value % m)
    if isinstance(task, Dyck):
        stack = []
        for s in symbols:
            if s in "([{<":
                stack.append(s)
            elif not stack or "([{<"[")]}>".index(s)] != stack.pop():
                return "invalid"
        return "open" if stack else "balanced"
    raise TypeError(task)


TASKS = [Parity, CycleNavigation, ModularArithmetic, Dyck,
         lambda **o: CycleNavigation(cycle=3, **o), lambda **o: ModularArithmetic(modulus=7, **o),
         lambda **o: Dyck(kinds=1, **o), lambda **o: Dyck(kinds=4, **o)]


def _decode(task, batch):
    """Per row: the symbol texts, the position of '=' and the answer text."""
    out = []
    for row, tgt in zip(batch["tokens"].tolist(), batch["targets"].tolist()):
        q = row.index(1)
        out.append(([task.vocab[i] for i in row[:q]], q, task.vocab[tgt[q]]))
    return out


@pytest.mark.parametrize("make", TASKS)
@pytest.mark.parametrize("dense", [False, True])
def test_format_and_answers(make, dense):
    task = make(dense=dense)
    T = 30
    b = task.batch("train", 2, batch_size=16, seq_len=T, seed=1)
    tok, tgt, mask = b["tokens"], b["targets"], b["mask"]
    assert tok.shape == tgt.shape == mask.shape == (16, T)
    assert tok.dtype == tgt.dtype == torch.int64 and mask.dtype == torch.bool
    assert int(tok.max()) < task.vocab_size
    for r, (symbols, q, answer) in enumerate(_decode(task, b)):
        assert 1 <= len(symbols) <= T - 2 and all(s in task.symbols for s in symbols)
        assert answer == reference(task, symbols)
        assert task.vocab[tok[r, q + 1]] == answer and (tok[r, q + 2:] == 0).all()
        if dense:
            assert mask[r].nonzero().flatten().tolist() == list(range(q + 1))
            for t in range(q):
                assert task.vocab[tgt[r, t]] == reference(task, symbols[:t + 1])
        else:
            assert mask[r].nonzero().flatten().tolist() == [q]


@pytest.mark.parametrize("make", TASKS[:4])
def test_determinism_and_seeds(make):
    task = make()
    a = task.batch("train", 0, batch_size=8, seq_len=24)
    assert torch.equal(a["tokens"], task.batch("train", 0, batch_size=8, seq_len=24)["tokens"])
    assert not torch.equal(a["tokens"], task.batch("train", 0, batch_size=8, seq_len=24, seed=1)["tokens"])
    assert not torch.equal(a["tokens"], task.batch("train", 1, batch_size=8, seq_len=24)["tokens"])


def _oracle(task) -> Scanner:
    """Predict ``reference(prefix)`` at every symbol and at '='."""

    def step(row, tok):
        text = task.vocab[tok]
        if tok == 1:
            return task.vocab.index(reference(task, row))
        if text in task.symbols and tok >= task.symbol_offset:
            row.append(text)
            return task.vocab.index(reference(task, row))
        return None

    return Scanner(task.vocab_size, list, step)


@pytest.mark.parametrize("make", TASKS[:4])
@pytest.mark.parametrize("dense,chunk", [(False, None), (True, 7)])
def test_oracle_scores_one(make, dense, chunk):
    task = make(dense=dense, max_len=20)
    m = task.evaluate(_oracle(task), batch_size=4, seq_len=24, batches=2, stream_chunk=chunk)
    assert m["accuracy"] == 1.0 and m["exact_match"] == 1.0
    u = task.evaluate(Uniform(task.vocab_size), batch_size=4, seq_len=24, batches=2)
    assert u["accuracy"] == 0.0 and u["loss"] == pytest.approx(torch.tensor(float(task.vocab_size)).log().item())


def test_validation_lengths_for_length_generalisation():
    task = Parity(min_len=2, max_len=8, val_min_len=30, val_max_len=40)
    for split, (lo, hi) in [("train", (2, 8)), ("validation", (30, 40))]:
        b = task.batch(split, 0, batch_size=32, seq_len=64)
        n = b["mask"].nonzero()[:, 1]
        assert lo <= int(n.min()) and int(n.max()) <= hi


@given(st.lists(st.integers(0, 1), min_size=1, max_size=40))
def test_parity_labels_every_prefix(bits):
    lab = Parity().labels(torch.tensor([bits]))[0].tolist()
    assert lab == [sum(bits[:t + 1]) % 2 for t in range(len(bits))]


@given(st.lists(st.integers(0, 7), min_size=1, max_size=30))
def test_dyck_labels_every_prefix(sym):
    task = Dyck(kinds=4)
    lab = task.labels(torch.tensor([sym]))[0].tolist()
    texts = [task.symbols[s] for s in sym]
    assert [task.answers[x] for x in lab] == [reference(task, texts[:t + 1]) for t in range(len(sym))]


def test_classes_are_roughly_balanced_for_dyck():
    task = Dyck()
    b = task.batch("train", 0, batch_size=600, seq_len=40)
    counts = torch.bincount(b["targets"][b["mask"]] - task.answer_offset, minlength=3)
    assert (counts > 120).all(), counts


def test_errors_and_registration():
    with pytest.raises(ValueError, match=r"seq_len=10 leaves room for strings of length <= 8"):
        Parity(max_len=9).batch("train", 0, batch_size=1, seq_len=10)
    with pytest.raises(ValueError, match="max_len=2 < min_len=3"):
        Parity(min_len=3, max_len=2)
    with pytest.raises(ValueError, match="dyck: kinds must be <= 4"):
        Dyck(kinds=5)
    with pytest.raises(ValueError, match="takes no ':' argument"):
        Parity("x")
    reg = nlframe.get_registry()
    for name, cls in [("parity", Parity), ("dyck", Dyck), ("cycle-navigation", CycleNavigation),
                      ("modular-arithmetic", ModularArithmetic)]:
        assert reg.get("data", name) is cls

"""Formal-language tasks: ``parity``, ``cycle-navigation``, ``modular-arithmetic``, ``dyck``.

State-tracking languages of the kind used for the NL paper's formal-language
recognition comparison (arXiv 2512.24695) and the Chomsky-hierarchy suite
(Delétang et al., arXiv 2207.02098): a recurrent memory that tracks state
solves them at any length; a fixed-depth attention model does not.

Sequence format (one string per row, ``T = seq_len``)::

    s_1 s_2 … s_n  =  a  <pad> …        n ∈ [min_len, max_len], max_len ≤ T − 2

Token ids: ``0`` pad, ``1`` the query ``=``, then the answer classes
``2 … 1 + A``, then the input symbols. ``targets`` are the tokens shifted by
one, so the target at ``=`` is the answer ``a = f(s_1 … s_n)``; the ``mask``
is true only there. With ``dense=True`` every symbol position ``t`` is also
supervised with the answer for its prefix ``f(s_1 … s_t)`` (more signal per
sequence). Metric: accuracy at masked positions. ``val_min_len`` /
``val_max_len`` give the validation split other lengths (length
generalisation).
"""

from __future__ import annotations

import abc

from typing import Any, ClassVar

import torch
from torch import Tensor

from nlframe.interfaces import Batch

from .common import check_int, check_no_arg, check_split, generator, make_batch
from .metrics import AccuracyTask

__all__ = ["FormalLanguage", "Parity", "CycleNavigation", "ModularArithmetic", "Dyck"]

PAD, QUERY = 0, 1


class FormalLanguage(AccuracyTask):
    """A formal language ``f: Σ* → answers`` as a sequence task (see the module docstring).

    Subclasses set ``name``, ``symbols``, ``answers`` and implement ``sample``
    and ``labels``.
    """

    name: ClassVar[str]
    symbols: tuple[str, ...]
    answers: tuple[str, ...]

    def __init__(self, arg: Any = None, *, min_len: int = 1, max_len: int | None = None,
                 val_min_len: int | None = None, val_max_len: int | None = None,
                 dense: bool = False) -> None:
        check_no_arg(self.name, arg)
        self.lengths = {"train": (min_len, max_len),
                        "validation": (min_len if val_min_len is None else val_min_len,
                                       max_len if val_max_len is None else val_max_len)}
        for split, (lo, hi) in self.lengths.items():
            check_int(self.name, f"min_len ({split})", lo)
            if hi is not None and check_int(self.name, f"max_len ({split})", hi) < lo:
                raise ValueError(f"{self.name}: max_len={hi} < min_len={lo} for the {split} split")
        self.dense = bool(dense)
        self.answer_offset = 2
        self.symbol_offset = 2 + len(self.answers)
        self.vocab_size = self.symbol_offset + len(self.symbols)

    @property
    def vocab(self) -> list[str]:
        """The text of each token id, e.g. ``["<pad>", "=", "even", "odd", "0", "1"]``."""
        return ["<pad>", "=", *self.answers, *self.symbols]

    def sample(self, g: torch.Generator, lengths: Tensor, width: int) -> tuple[Tensor, Tensor]:
        """Symbol ids ``(B, width)`` in ``[0, |Σ|)`` and the lengths ``(B,)`` actually used
        (at most the proposed ``lengths``); row ``b`` is read up to its length.

        Default: uniform i.i.d. symbols, lengths unchanged.
        """
        return torch.randint(0, len(self.symbols), (len(lengths), width), generator=g), lengths

    @abc.abstractmethod
    def labels(self, sym: Tensor) -> Tensor:
        """Answer class of every prefix: ``(B, L)`` → ``(B, L)``, ``[b, t] = f(sym[b, :t+1])``."""

    def batch(self, split: str, index: int, *, batch_size: int, seq_len: int,
              seed: int = 0) -> Batch:
        check_split(self.name, split)
        check_int(self.name, "batch_size", batch_size, 0)
        lo, hi = self.lengths[split]
        hi = seq_len - 2 if hi is None else hi
        if hi > seq_len - 2 or lo > hi:
            raise ValueError(f"{self.name}: seq_len={seq_len} leaves room for strings of length "
                             f"<= {seq_len - 2} (string, '=', answer), but the {split} split "
                             f"needs lengths in [{lo}, {hi}]")
        B, T = batch_size, seq_len
        g = generator(self.name, seed, split, index)
        proposed = torch.randint(lo, hi + 1, (B,), generator=g)  # (B,)
        sym, lengths = self.sample(g, proposed, hi)  # (B, hi), (B,)
        lab = self.labels(sym)  # (B, hi)
        inside = torch.arange(hi) < lengths[:, None]  # (B, hi)

        tokens = torch.full((B, T), PAD, dtype=torch.int64)
        tokens[:, :hi] = torch.where(inside, sym + self.symbol_offset, PAD)
        n = lengths[:, None]
        tokens.scatter_(1, n, QUERY)
        answer = lab.gather(1, n - 1) + self.answer_offset  # (B, 1)
        tokens.scatter_(1, n + 1, answer)
        targets = torch.cat([tokens[:, 1:], torch.full((B, 1), PAD, dtype=torch.int64)], 1)
        mask = torch.zeros(B, T, dtype=torch.bool).scatter_(1, n, True)
        if self.dense:
            targets[:, :hi] = torch.where(inside, lab + self.answer_offset, targets[:, :hi])
            mask[:, :hi] |= inside
        return make_batch(tokens, targets, mask)


class Parity(FormalLanguage):
    """Parity: ``f(s) = (Σ_t s_t) mod 2`` for bits ``s_t ∈ {0, 1}`` (answers even / odd)."""

    name, symbols, answers = "parity", ("0", "1"), ("even", "odd")

    def labels(self, sym: Tensor) -> Tensor:
        return sym.cumsum(-1) % 2


class CycleNavigation(FormalLanguage):
    """Cycle navigation: ``f(s) = (Σ_t δ(s_t)) mod c``, moves ``δ ∈ {+1, −1, 0}`` from node 0.

    The node reached on a cycle of ``c`` nodes (Delétang et al.; regular).
    """

    name, symbols = "cycle-navigation", ("+1", "-1", "stay")

    def __init__(self, arg: Any = None, *, cycle: int = 5, **options: Any) -> None:
        self.cycle = check_int("cycle-navigation", "cycle", cycle, 2)
        self.answers = tuple(f"node{i}" for i in range(self.cycle))
        super().__init__(arg, **options)

    def labels(self, sym: Tensor) -> Tensor:
        step = torch.tensor([1, -1, 0])[sym]  # (B, L)
        return step.cumsum(-1) % self.cycle


class ModularArithmetic(FormalLanguage):
    """Modular arithmetic evaluated left to right: ``x_0 ∘_1 x_1 ∘_2 … ∘_k x_k mod m``.

    Strings alternate numbers ``x ∈ [0, m)`` and operators ``∘ ∈ {+, −, ×}``
    (odd lengths; an even sampled length is shortened by one). The value is the
    left fold ``v_0 = x_0``, ``v_j = (v_{j−1} ∘_j x_j) mod m`` — no operator
    precedence, so the language is regular (Delétang et al.'s modular
    arithmetic with a fold instead of precedence). A prefix ending in an
    operator is labelled with the value so far.
    """

    name = "modular-arithmetic"

    def __init__(self, arg: Any = None, *, modulus: int = 5, **options: Any) -> None:
        self.modulus = check_int("modular-arithmetic", "modulus", modulus, 2)
        self.symbols = (*map(str, range(self.modulus)), "+", "-", "*")
        self.answers = tuple(map(str, range(self.modulus)))
        super().__init__(arg, **options)

    def sample(self, g: torch.Generator, lengths: Tensor, width: int) -> tuple[Tensor, Tensor]:
        numbers = torch.randint(0, self.modulus, (len(lengths), width), generator=g)
        ops = self.modulus + torch.randint(0, 3, (len(lengths), width), generator=g)
        odd = lengths - (lengths % 2 == 0).long()  # number (op number)*
        return torch.where(torch.arange(width) % 2 == 0, numbers, ops), odd

    def labels(self, sym: Tensor) -> Tensor:
        m = self.modulus
        out = torch.empty_like(sym)
        value, op = sym[:, 0] % m, torch.zeros_like(sym[:, 0])
        out[:, 0] = value
        for t in range(1, sym.shape[1]):
            if t % 2:  # an operator: remember it, the value is unchanged
                op = sym[:, t] - m
            else:
                x = sym[:, t]
                value = torch.stack([value + x, value - x, value * x], -1).gather(
                    1, op[:, None])[:, 0] % m
            out[:, t] = value
        return out


class Dyck(FormalLanguage):
    """Dyck-k recognition: is ``s`` a balanced string of ``k`` bracket types?

    Answers: ``balanced`` (a complete Dyck word), ``open`` (a valid prefix with
    unclosed brackets) or ``invalid`` (a closer that does not match). The
    generator draws the intended class uniformly — a random Dyck word (even
    length), a random open prefix, or a prefix broken by a closer that matches
    nothing open — but the label always comes from the checker (a stack), so
    it is exact whatever the generator does (with ``kinds=1`` a "broken"
    closer may match, leaving the string valid).
    """

    name, answers = "dyck", ("balanced", "open", "invalid")
    _PAIRS = "()[]{}<>"

    def __init__(self, arg: Any = None, *, kinds: int = 2, **options: Any) -> None:
        self.kinds = check_int("dyck", "kinds", kinds, 1)
        if self.kinds > 4:
            raise ValueError(f"dyck: kinds must be <= 4, got {kinds}")
        self.symbols = tuple(self._PAIRS[: 2 * self.kinds])  # opener 2i, closer 2i+1
        super().__init__(arg, **options)

    def sample(self, g: torch.Generator, lengths: Tensor, width: int) -> tuple[Tensor, Tensor]:
        B, k = len(lengths), self.kinds
        goal = torch.randint(0, 3, (B,), generator=g).tolist()
        coin = torch.rand(B, width, generator=g).tolist()
        kind = torch.randint(0, k, (B, width), generator=g).tolist()
        brk = torch.rand(B, generator=g).tolist()
        lengths = lengths.clone()
        out = torch.zeros(B, width, dtype=torch.int64)
        for b in range(B):
            n = int(lengths[b])
            if goal[b] == 0 and n % 2 and n > 1:
                n -= 1  # a Dyck word has even length
            balanced = goal[b] == 0 and n % 2 == 0
            broken_at = int(brk[b] * n) if goal[b] == 2 else -1
            row, stack = [], []
            for t in range(n):
                left = n - t
                if t == broken_at:  # a closer that matches nothing open (invalid from here)
                    top = stack[-1] if stack else 0
                    row.append(2 * ((top + 1 + kind[b][t] % max(k - 1, 1)) % k) + 1)
                    continue
                if balanced:
                    close = bool(stack) and (len(stack) == left or coin[b][t] < 0.5)
                else:  # an open prefix: end with at least one bracket unclosed
                    close = bool(stack) and coin[b][t] < 0.5 and not (left == 1 and len(stack) <= 1)
                if close:
                    row.append(2 * stack.pop() + 1)
                else:
                    stack.append(kind[b][t])
                    row.append(2 * kind[b][t])
            out[b, :n] = torch.tensor(row, dtype=torch.int64)
            lengths[b] = n
        return out, lengths

    def labels(self, sym: Tensor) -> Tensor:
        out = []
        for row in sym.tolist():
            stack, broken, labels = [], False, []
            for s in row:
                if not broken:
                    if s % 2 == 0:
                        stack.append(s)
                    elif stack and stack[-1] == s - 1:
                        stack.pop()
                    else:
                        broken = True
                labels.append(2 if broken else (1 if stack else 0))
            out.append(labels)
        return torch.tensor(out, dtype=torch.int64).reshape(sym.shape)

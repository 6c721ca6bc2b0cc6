"""``lm``: a language model over any stack of registered blocks.

Residual convention (for block authors): the LM wraps every block as
``x ← x + block(norm(x))`` (pre-norm residual, one norm per block). A block
whose class sets ``handles_residual = True`` is called as ``x ← block(x)`` and
does its own normalisation and residual connections (e.g. a block made of
several sub-layers).
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from nlframe import buffers
from nlframe.build import build_blocks
from nlframe.interfaces import Block
from nlframe.spec import BlockSpec, in_range, non_negative, one_of, positive_int

from .common import spec_field


def make_norm(kind: str, dim: int, eps: float) -> nn.Module:
    """``rmsnorm``: ``x / rms(x) · γ``; ``layernorm``: ``(x − μ) / σ · γ + β``."""
    return nn.RMSNorm(dim, eps=eps) if kind == "rmsnorm" else nn.LayerNorm(dim, eps=eps)


class LM(Block):
    """Causal LM: ``logits = W_head · norm(f_L ∘ … ∘ f_1(E[tokens]))``, ``f_i(x) = x + b_i(norm_i(x))``.

    Token embedding ``E (V, dim)``, the blocks of the spec (any mix, ``repeat``
    expanded), a final norm and a head tied to ``E`` or separate. In Nested
    Learning terms (arXiv 2512.24695, §3) the stack is a set of levels; the
    carried ``state`` (one entry per block) holds every level's fast state, so
    feeding a sequence token by token or in pieces gives the logits of one pass.

    Shapes: ``tokens (B, T) long → logits (B, T, V)``.
    """

    @attrs.frozen(kw_only=True)
    class Config:
        dim: int = attrs.field(validator=positive_int)
        vocab_size: int = attrs.field(default=256, validator=positive_int)
        blocks: tuple[BlockSpec, ...] = attrs.field(
            default=(), converter=spec_field(tuple[BlockSpec, ...]))
        norm: str = attrs.field(default="rmsnorm", validator=one_of("rmsnorm", "layernorm"))
        norm_eps: float = attrs.field(default=1e-6, validator=in_range(1e-12, 1.0))
        tie_embeddings: bool = True
        init_std: float = attrs.field(default=0.02, validator=non_negative)
        checkpoint_tokens: int = attrs.field(default=512, validator=attrs.validators.ge(0))
        """Training memory: when gradients are on and a call is longer than this, every
        block runs over groups of this many tokens, carrying its state, each group under
        activation checkpointing (recomputed in the backward pass), so memory grows with
        T only by one state and one residual stream per group. 0: off."""

    def __init__(self, config: Config, dim: int | None = None) -> None:
        super().__init__()
        if dim is not None and dim != config.dim:
            raise ValueError(f"lm: built with dim {dim} but its config says dim {config.dim}")
        self.config, self.dim, self.vocab_size = config, config.dim, config.vocab_size
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        built = build_blocks(config.blocks, config.dim)
        self.block_types = [name for name, _ in built]
        self.blocks = nn.ModuleList(m for _, m in built)
        self.norms = nn.ModuleList(
            nn.Identity() if getattr(m, "handles_residual", False)
            else make_norm(config.norm, config.dim, config.norm_eps) for m in self.blocks)
        self.final_norm = make_norm(config.norm, config.dim, config.norm_eps)
        self.head = None if config.tie_embeddings else nn.Linear(config.dim, config.vocab_size, bias=False)
        nn.init.normal_(self.embed.weight, std=config.init_std)
        if self.head is not None:
            nn.init.normal_(self.head.weight, std=config.init_std)

    def _check_tokens(self, tokens: Any) -> None:
        if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.dtype not in (
                torch.int64, torch.int32):
            got = (f"shape {tuple(tokens.shape)}, dtype {tokens.dtype}" if isinstance(tokens, Tensor)
                   else type(tokens).__name__)
            raise ValueError(f"lm: tokens must be an integer tensor of shape (B, T), got {got}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size):
            raise ValueError(f"lm: token ids must be in [0, {self.vocab_size}), got range "
                             f"[{int(tokens.min())}, {int(tokens.max())}]")

    def forward(self, tokens: Tensor, state: list | None = None) -> tuple[Tensor, list]:  # type: ignore[override]
        """``tokens (B, T)`` and the state of the previous call → ``logits (B, T, V)``, new state."""
        self._check_tokens(tokens)
        if state is None:
            state = [None] * len(self.blocks)
        elif not isinstance(state, (list, tuple)) or len(state) != len(self.blocks):
            raise ValueError(f"lm: state must be the list of {len(self.blocks)} block states "
                             "returned by a previous call")
        x = self.embed(tokens)  # (B, T, dim)
        new_state = []
        group = self.config.checkpoint_tokens
        grouped = torch.is_grad_enabled() and group and x.shape[1] > group
        for i, (norm, block, s) in enumerate(zip(self.norms, self.blocks, state)):
            try:
                if grouped:  # chunk-group checkpointing: one state per group is kept
                    outs = []
                    for xg in x.split(group, dim=1):
                        yg, s = checkpoint(self._block_step, norm, block, xg, s,
                                           use_reentrant=False)
                        outs.append(yg)
                    x = torch.cat(outs, 1)
                else:
                    x, s = self._block_step(norm, block, x, s)
            except FloatingPointError as exc:  # name the block; the level names itself
                raise FloatingPointError(f"lm: blocks[{i}] ({self.block_types[i]}): {exc}") from None
            new_state.append(s)
        x = self.final_norm(x)
        weight = self.embed.weight if self.head is None else self.head.weight  # (V, dim)
        return buffers.linear(x, weight), new_state  # F.linear; logits in a reused buffer

    @staticmethod
    def _block_step(norm: nn.Module, block: nn.Module, x: Tensor, s: Any) -> tuple[Tensor, Any]:
        """One block with its residual: ``x + block(norm(x))`` or ``block(x)``."""
        if getattr(block, "handles_residual", False):
            return block(x, s)
        y, s = block(norm(x), s)
        return x + y, s

    @torch.no_grad()
    def generate(self, prompt: Tensor, max_new_tokens: int, *, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None,
                 state: list | None = None) -> Tensor:
        """Sample ``max_new_tokens`` continuations of ``prompt (B, T0)`` (or ``(T0,)``).

        The prompt is encoded once; each new token is fed with the carried state
        (no re-encoding). ``temperature = 0`` is greedy; ``top_k`` keeps the k
        most likely tokens. Returns ``(B, T0 + max_new_tokens)`` (1-D in, 1-D out).
        """
        if max_new_tokens < 0:
            raise ValueError(f"generate: max_new_tokens must be >= 0, got {max_new_tokens}")
        if temperature < 0:
            raise ValueError(f"generate: temperature must be >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"generate: top_k must be >= 1, got {top_k}")
        squeeze = prompt.dim() == 1
        tokens = prompt[None] if squeeze else prompt
        if tokens.shape[-1] == 0:
            raise ValueError("generate: the prompt needs at least one token")
        out = [tokens]
        logits, state = self(tokens, state)
        for i in range(max_new_tokens):
            nxt = self._sample(logits[:, -1], temperature, top_k, generator)  # (B, 1)
            out.append(nxt)
            if i + 1 < max_new_tokens:
                logits, state = self(nxt, state)
        result = torch.cat(out, dim=1)
        return result[0] if squeeze else result

    @staticmethod
    def _sample(logits: Tensor, temperature: float, top_k: int | None,
                generator: torch.Generator | None) -> Tensor:
        if temperature == 0:
            return logits.argmax(dim=-1, keepdim=True)
        logits = logits.float() / temperature  # (B, V)
        if top_k is not None and top_k < logits.shape[-1]:
            kth = logits.topk(top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)

    def num_parameters(self, *, exclude_embeddings: bool = False) -> int:
        """Number of distinct parameters (a tied head counts once)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.embed.weight.numel() if exclude_embeddings else n

    def surprise(self) -> dict[str, Tensor]:
        """Last forward's mean surprise per inner level, ``blocks.<i>.<type>.<level>``."""
        out = {}
        for i, (name, block) in enumerate(zip(self.block_types, self.blocks)):
            fn = getattr(block, "surprise", None)
            if callable(fn):
                for level, value in fn().items():
                    out[f"blocks.{i}.{name}.{level}"] = value
        return out

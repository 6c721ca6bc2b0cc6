"""Shared pieces of the memory blocks: head reshapes, L2 normalisation, the short
causal convolution, per-head gates, learned initial memory states, the
write-time surprise of a scan level, and the *boundary level* (a memory whose
parameters change only at chunk boundaries, NL arXiv 2512.24695 eq. 71)."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nlframe.interfaces import Memory, Objective, OptState, Params, UpdateRule
from nlframe.layers import map_state, register_state_class
from nlframe.spec import structure
from nlframe.level import (Level, compilable, autocast_off, autocast_on, full_precision,
                           segments, split_at, tree_map, upcast)
from nlframe.utils import bcast

__all__ = ["make_level", "check_rule_options", "gate_linear", "l2norm", "split_heads", "merge_heads", "ShortConv", "HeadGate", "learned_init",
           "check_input", "BoundaryState", "BoundaryLevel", "segments", "split_at",
           "spec_field"]


def spec_field(kind: Any) -> Callable[[Any], Any]:
    """attrs converter for a Config field typed ``kind`` (a plugin reference such as
    ``MemoryRef``, a nested ``Config``, ``tuple[BlockSpec, ...]``): a value already of that
    type passes through; anything else (``"mlp"``, ``{"type": "mlp", "hidden": 64}``, a
    dict of options) is structured as a spec table would be, so a Config built directly
    in Python gets the same values and the same ``SpecError`` as a spec."""
    def convert(value: Any) -> Any:
        if isinstance(kind, type) and isinstance(value, kind):
            return value
        origin = getattr(kind, "__origin__", None)
        if origin is tuple and isinstance(value, (list, tuple)) and all(
                isinstance(v, kind.__args__[0]) for v in value):
            return tuple(value)
        return structure(value, kind)

    return convert


def make_level(memory: Any, objective: Any, rule: Any, dim_k: int, dim_v: int,
               **modes: Any) -> tuple[Level, float]:
    """A :class:`~nlframe.level.Level` from a block's spec references (memory, objective,
    rule) and its modes, plus the rule's ``lr`` option as a multiplier of the block's
    per-token θ (the rule's other options become its static hyperparameters)."""
    options = dict(rule.options)
    scale = float(options.pop("lr", 1.0))
    names = {"memory": memory.type, "objective": objective.type, "optimizer": rule.type}
    level = Level(memory.build(dim_k, dim_v), objective.build(), rule.cls(), names=names,
                  optimizer_kwargs=options, **modes)
    return level, scale


def check_rule_options(field: str, rule: Any) -> None:
    """A rule with a scan structure takes its θ, α, η from the block: only ``lr`` (a
    multiplier of θ) may be set."""
    structure = getattr(rule.cls, "structure", None)
    extra = sorted(set(rule.options) - {"lr"})
    if structure in ("momentum", "dgd") and extra:
        raise ValueError(f"{field}: a {structure!r} level takes θ, α and η from the block; "
                         f"only 'lr' (a multiplier of θ) may be set, got {extra}")
    lr = rule.options.get("lr", 1.0)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr >= 0 or lr == float("inf"):
        raise ValueError(f"{field}: lr must be a finite number >= 0, got {lr!r}")


def gate_linear(layer: nn.Linear, x: Tensor) -> Tensor:
    """``layer(x)`` for the logits of a gate; under autocast in float32 (a σ or softplus
    gate near 0 or 1, e.g. a retention of 0.999, is lost in bfloat16's 8-bit mantissa)."""
    if not autocast_on(x):
        return layer(x)
    return full_precision(F.linear, x, layer.weight, layer.bias)


def l2norm(x: Tensor, eps: float = 1e-6) -> Tensor:
    """``x / ‖x‖₂`` over the last dim (the q, k normalisation of DeltaNet / Titans / HOPE)."""
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


def split_heads(x: Tensor, heads: int) -> Tensor:
    """``(B, T, H·D) → (B, H, T, D)``."""
    b, t, d = x.shape
    return x.view(b, t, heads, d // heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """``(B, H, T, D) → (B, T, H·D)``."""
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


def check_input(name: str, x: Any, dim: int) -> None:
    """Raise ``ValueError`` unless ``x`` is a float tensor of shape ``(B, T, dim)``."""
    if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != dim:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name}: x must have shape (B, T, {dim}), got {got}")


class ShortConv(nn.Module):
    """Depthwise causal convolution ``y_t = SiLU(Σ_{j<w} c_j ⊙ x_{t−j})`` (the local
    convolution of window 4 used by HOPE, NL arXiv 2512.24695 §8.3, and DeltaNet).

    Streaming state: the last ``w − 1`` inputs ``(B, w−1, D)`` (zeros before the
    first token), so pieces fed one after another equal one pass.
    """

    def __init__(self, dim: int, width: int) -> None:
        super().__init__()
        self.width = width
        self.weight = nn.Parameter(torch.zeros(dim, 1, width))
        with torch.no_grad():  # start close to the identity: the newest tap dominates
            self.weight[:, 0, -1] = 1.0
            self.weight[:, 0, :-1].normal_(0.0, 0.1)

    def forward(self, x: Tensor, cache: Tensor | None) -> tuple[Tensor, Tensor]:
        b, t, d = x.shape
        if cache is None:
            cache = x.new_zeros(b, self.width - 1, d)
        xx = torch.cat([cache, x], 1)  # (B, w−1+T, D)
        if t == 0:
            return x, cache
        if b * t <= SHORT_CONV_TAPS_MAX:  # a few tokens (decoding): w multiply-adds
            taps = self.weight[:, 0].t()  # (w, D)
            y = xx[:, :t] * taps[0]
            for j in range(1, self.width):
                y = y.addcmul(xx[:, j:j + t], taps[j])
        else:
            y = F.conv1d(xx.transpose(1, 2), self.weight, groups=d).transpose(1, 2)  # (B, T, D)
        return F.silu(y), xx[:, xx.shape[1] - (self.width - 1):]


SHORT_CONV_TAPS_MAX = 64
"""Inputs of at most this many tokens (``B·T``) take :class:`ShortConv` as ``w``
multiply-adds instead of ``conv1d``: one token, dim 128, width 4 took 16 µs against 53 µs
on a 2-core CPU, 16 tokens 32 against 84 µs; at 8 × 128 tokens ``conv1d`` is faster
(195 against 209 µs)."""


class HeadGate(nn.Module):
    """A per-head gate ``g_t = scale · σ(w_h · x_t + b_h)`` → ``(B, H, T)``, with the
    bias initialised so that ``σ(b) = init`` (e.g. Titans' data-dependent θ, α, η,
    arXiv 2501.00663 §3.1)."""

    def __init__(self, dim: int, heads: int, init: float, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale
        self.proj = nn.Linear(dim, heads)
        nn.init.normal_(self.proj.weight, std=0.02)
        init = min(max(init, 1e-4), 1 - 1e-4)
        nn.init.constant_(self.proj.bias, float(torch.logit(torch.tensor(init))))

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * torch.sigmoid(gate_linear(self.proj, x)).transpose(1, 2)  # (B, H, T)


def learned_init(memory: Memory, heads: int) -> nn.ParameterDict:
    """Learnable initial parameters ``W_0`` per head, ``name → (H, *shape)``, drawn
    from the memory's own initialisation with the global RNG (so ``build(seed=…)``
    decides them)."""
    out = nn.ParameterDict()
    for name, shape in memory.param_shapes().items():
        gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (), device="cpu")))
        per_head = [memory.init_params(generator=gen)[name] for _ in range(heads)]
        out[name] = nn.Parameter(torch.stack(per_head) if per_head else torch.zeros(0, *shape))
    return out


# ------------------------------------------------------------------ boundary levels
@register_state_class
@compilable
@attrs.define(eq=False)
class BoundaryState:
    """Fast state of a boundary level, per (batch element, head).

    * ``params``: θ as of the last applied chunk boundary, name → ``(B, H, *shape)``;
      every read and every gradient of the current chunk uses it;
    * ``opt_state``: the update rule's state;
    * ``pending``: the current chunk's tokens so far, name → ``(B, H|1, m, ·)``
      (keys ``k``; targets ``v`` or ``self_target`` inputs; ``weight``, ``retention``);
    * ``position``: ``m``, tokens in the current chunk (``m = C``: the chunk is
      complete and its write is applied before the next read — see
      :meth:`BoundaryLevel.settle`);
    * ``step``: total tokens consumed;
    * ``extra``: block-specific tensors (e.g. a nested CMS level's meta state).

    Carrying the chunk's tokens rather than its gradient keeps the state small
    and computes each chunk's gradient once, in one batched call.
    """

    params: Params
    opt_state: OptState
    pending: dict = attrs.field(factory=dict)
    position: int = 0
    step: int = 0
    extra: dict = attrs.field(factory=dict)

    def map(self, fn: Callable[[Tensor], Tensor]) -> "BoundaryState":
        """A new state with ``fn`` applied to every tensor (nested states included)."""
        return attrs.evolve(self, params=tree_map(fn, self.params),
                            opt_state=tree_map(fn, self.opt_state),
                            pending=tree_map(fn, self.pending), extra=map_state(fn, self.extra))

    def detach(self) -> "BoundaryState":
        return self.map(lambda t: t.detach())

    def to(self, *args: Any, **kwargs: Any) -> "BoundaryState":
        return self.map(lambda t: t.to(*args, **kwargs))

    def state_dict(self) -> dict[str, Any]:
        return {"params": dict(self.params), "opt_state": self.opt_state,
                "pending": dict(self.pending), "position": self.position, "step": self.step,
                "extra": dict(self.extra)}

    @classmethod
    def from_state_dict(cls, d: Mapping[str, Any]) -> "BoundaryState":
        return cls(params=dict(d["params"]), opt_state=d["opt_state"],
                   pending=dict(d.get("pending", {})), position=int(d["position"]),
                   step=int(d["step"]), extra=dict(d.get("extra", {})))


class BoundaryLevel:
    """A level written only at chunk boundaries (NL arXiv 2512.24695 eq. 71)::

        θ_{(c+1)C} = rule(G_c, θ_{cC}),   G_c = Σ_{t ∈ chunk c} w_t ∇_θ ℓ(M_{θ_{cC}}(k_t), v_t)

    (``reduce="mean"`` divides ``G_c`` by ``C``). Every read and every gradient of
    chunk ``c`` uses ``θ_{cC}``, so a chunk's gradient is one batched vector-Jacobian
    product ``Σ_t (∂pred_t/∂θ)ᵀ w_t ∂ℓ/∂pred_t`` — per-token gradients are never
    materialised — and the parameters change exactly at multiples of ``C`` tokens.
    Memory, objective and rule are plugins; the rule is applied with its
    functional ``update`` over the leading ``(B, H)`` dims.

    Usage per piece of a stream that stays inside one chunk: ``settle`` (apply a
    completed chunk), ``read`` (outputs at θ), ``append`` (the piece's tokens).
    The write of the last chunk of a call is applied lazily by the next call's
    ``settle`` — the same function, computed only when a read needs it.

    A rule with an ``x`` hyperparameter (``dgd``: ``W ← W − lr(∇L + W XᵀX)``, NL
    eqs. 28–29) receives each weight matrix's inputs over the chunk scaled by
    ``√w_t`` (``√(w_t/C)`` for ``"mean"``), so ``XᵀX = Σ_t w_t x_t x_tᵀ`` matches
    the weighting of ``G_c``. Per-token retentions ``r_t`` decay the chunk-start
    parameters, ``θ ← rule(G_c, θ) − (1 − Π_t r_t)·θ`` (the ``α_t I`` factor of
    NL eq. 88 over the chunk, for any rule).
    """

    def __init__(self, memory: Memory, objective: Objective, rule: UpdateRule, chunk_size: int,
                 *, reduce: str = "sum", hyper: Mapping[str, Any] | None = None) -> None:
        self.memory, self.objective, self.rule = memory, objective, rule
        self.chunk_size, self.reduce = int(chunk_size), reduce
        self.hyper = dict(hyper or {})
        self.wants_inputs = "x" in rule.hyperparams

    def init_state(self, params: Params) -> BoundaryState:
        """A fresh state at ``params`` (``(B, H, *shape)``), nothing pending."""
        return BoundaryState(params=dict(params), opt_state=self.rule.init(params))

    @staticmethod
    def _dtype(state: BoundaryState) -> torch.dtype:
        """The precision of ``state`` under autocast: its own, at least float32."""
        return torch.promote_types(next(iter(state.params.values())).dtype, torch.float32)

    def read(self, state: BoundaryState, x: Tensor) -> Tensor:
        """``M_θ(x)`` at the parameters of the last applied boundary (under autocast in the
        state's precision, like a scan level's reads)."""
        return full_precision(self.memory.read, state.params, x, dtype=self._dtype(state))

    def append(self, state: BoundaryState, k: Tensor, v: Tensor | None = None, *,
               self_target: Tensor | None = None, weight: Tensor | None = None,
               retention: Tensor | None = None) -> BoundaryState:
        """Add ``n`` tokens inside the current chunk: keys ``k (B, H|1, n, Dk)``;
        targets ``v (B, H|1, n, Dv)``, or ``self_target`` inputs whose targets are the
        memory's own reads ``v̂ = M_θ(self_target)`` (self-generated values, NL eq. 87;
        not differentiated by the inner gradient); ``weight`` w_t and ``retention``
        r_t ``(B, H, n)`` (``None``: 1)."""
        n = k.shape[2]
        if state.position + n > self.chunk_size:
            raise ValueError(f"append: {n} tokens from position {state.position} cross a "
                             f"chunk boundary (chunk_size {self.chunk_size})")
        if (v is None) == (self_target is None):
            raise ValueError("append: give exactly one of v and self_target")
        new = {"k": k, "v": v, "self_target": self_target, "weight": weight,
               "retention": retention}
        if autocast_on(k):  # the carried tokens stay in the state's precision
            new = upcast(new, self._dtype(state))
        pending = dict(state.pending)
        for name, t in new.items():
            if t is not None:
                pending[name] = torch.cat([pending[name], t], 2) if name in pending else t
        return attrs.evolve(state, pending=pending, position=state.position + n,
                            step=state.step + n)

    def scan(self, q: Tensor, k: Tensor, v: Tensor, state: BoundaryState, *,
             settle: Callable[[BoundaryState], tuple[BoundaryState, Tensor | None]] | None = None,
             appended: Callable[[BoundaryState, int], BoundaryState] | None = None,
             ) -> tuple[Tensor, BoundaryState, list[Tensor]]:
        """Read and write ``q, k (B, H|1, T, Dk)``, ``v (B, H|1, T, Dv)`` from ``state``,
        in pieces cut at this level's chunk boundaries; per piece::

            state, s = settle(state)     (a completed chunk's write, before any read)
            y = M_θ(q_piece)             (θ of the last boundary)
            state = append(state, k_piece, v_piece);  state = appended(state, n)

        ``settle`` defaults to :meth:`settle`; a block passes its own to couple a step
        to the write (the nested CMS meta step of NL eq. 72), and ``appended`` to count
        the tokens it sees. Returns ``y (B, H|1, T, Dv)``, the state (the last chunk's
        write left pending for the next call) and the surprise ``(B, ·)`` of every chunk
        written in this call."""
        settle = settle or self.settle
        ys, norms = [], []
        cuts = segments(state.position, q.shape[2], (self.chunk_size,))
        for (lo, hi), qc, kc, vc in zip(cuts, *(split_at(t, cuts) for t in (q, k, v))):
            state, s = settle(state)
            if s is not None:
                norms.append(s.flatten(1))
            ys.append(self.read(state, qc))
            state = self.append(state, kc, vc)
            if appended is not None:
                state = appended(state, hi - lo)
        y = torch.cat(ys, 2) if ys else q.new_zeros(*q.shape[:3], v.shape[-1])
        return y, state, norms

    def chunk_delta(self, state: BoundaryState) -> Tensor | None:
        """``∂ℓ/∂pred_t (B, H, m, Dv)`` of the pending tokens at θ, without autograd."""
        if not state.pending:
            return None
        with torch.no_grad(), autocast_off(state.pending["k"]):
            pred, target = self._pred_target(state.params, state.pending)
            return self.objective.grad(pred, target)

    def _pred_target(self, params: Params, pending: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        k = pending["k"]
        if "self_target" not in pending:
            return self.memory.read(params, k), pending["v"]
        n, st = k.shape[2], pending["self_target"]
        lead = torch.broadcast_shapes(k.shape[:2], st.shape[:2])
        out = self.memory.read(params, torch.cat([st.expand(*lead, *st.shape[2:]),
                                                  k.expand(*lead, *k.shape[2:])], 2))
        target, pred = out.split([st.shape[2], n], 2)
        return pred, target

    def settle(self, state: BoundaryState, *, collect: dict | None = None,
               **hyper: Any) -> tuple[BoundaryState, Tensor | None]:
        """Apply the write of a completed chunk (``position == C``); otherwise return
        ``state`` unchanged. Returns the new state and the chunk's surprise
        ``‖∂ℓ/∂pred_t‖ (B, H, C)`` (``None`` if nothing was applied); ``collect["grads"]``
        receives the chunk's (reduced) gradient when a dict is given."""
        if state.position < self.chunk_size:
            return state, None
        with autocast_off(state.pending["k"]):  # the write in the state's precision
            return self._apply(state, collect, hyper)

    def _apply(self, state: BoundaryState, collect: dict | None,
               hyper: Mapping[str, Any]) -> tuple[BoundaryState, Tensor]:
        """:meth:`settle` of a completed chunk."""
        pending, scale = state.pending, (1.0 / self.chunk_size if self.reduce == "mean" else 1.0)
        weight = pending.get("weight")
        w = weight * scale if weight is not None else (scale if scale != 1.0 else None)
        outer = torch.is_grad_enabled()
        with torch.enable_grad():
            names = list(state.params)
            # fresh views: the inner gradient flows through this read only (targets are
            # constants for it), while the outer graph still reaches θ behind the views
            views = {m: (p.view_as(p) if (outer and p.requires_grad)
                         else p.detach().requires_grad_(True)) for m, p in state.params.items()}
            pred, target = self._pred_target(views, pending)  # (B, H, C, Dv)
            delta = self.objective.grad(pred, target)  # ∂ℓ/∂pred_t
            cot = delta * (w[..., None] if isinstance(w, Tensor) else w) if w is not None else delta
            grads = torch.autograd.grad(pred, [views[m] for m in names], grad_outputs=cot,
                                        create_graph=outer, allow_unused=True)
        grads = {m: (g if outer else g.detach()) if g is not None else torch.zeros_like(state.params[m])
                 for m, g in zip(names, grads)}
        if collect is not None:
            collect["grads"] = grads
        hyper = {**self.hyper, **hyper}
        if self.wants_inputs:
            xs = self.memory.layer_inputs(state.params, pending["k"])
            if xs is not None:
                # √w with w floored at 1e-30: a weight that underflowed to 0 would make the
                # backward of sqrt infinite (0·∞ = NaN in the outer gradient)
                root = w.clamp_min(1e-30).sqrt()[..., None] if isinstance(w, Tensor) else \
                    (w ** 0.5 if w else 1.0)
                hyper["x"] = {m: (x * root).expand(*state.params[m].shape[:-2], *x.shape[-2:])
                              for m, x in xs.items()}
        params, opt_state = self.rule.update(grads, state.opt_state, state.params, **hyper)
        if "retention" in pending:
            # 1 − Π_t r_t (B, H); r floored at 1e-30 so a saturated gate keeps a finite log-gradient
            forget = -torch.expm1(pending["retention"].clamp_min(1e-30).log().sum(-1))
            params = {m: p - bcast(forget, p) * state.params[m] for m, p in params.items()}
        if not outer:
            params, opt_state = tree_map(Tensor.detach, params), tree_map(Tensor.detach, opt_state)
        return (attrs.evolve(state, params=params, opt_state=opt_state, pending={}, position=0),
                delta.detach().norm(dim=-1))

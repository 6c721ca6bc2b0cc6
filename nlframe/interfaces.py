"""Abstract interfaces of the six plugin kinds.

Each class states what must exist, with the equation a method stands for.
Concrete plugins subclass these once (no deep hierarchies) and register the
class through the hook of their kind (see :mod:`nlframe.hookspecs`).

Shapes: ``B`` batch, ``H`` heads, ``T`` tokens, ``Dk``/``Dv`` key/value width.
"Leading dims" are any batch dimensions in front of a parameter's own shape,
e.g. a linear memory's ``W`` is ``(Dv, Dk)`` alone and ``(B, H, Dv, Dk)`` as the
fast state of a layer.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, Mapping

import torch
from torch import Tensor, nn

if TYPE_CHECKING:  # pragma: no cover
    from .level import MemoryState

Params = dict[str, Tensor]
"""Memory / model parameters: name → tensor, with optional leading batch dims."""

OptState = dict[str, Any]
"""Update-rule state: a (nested) dict of tensors; shapes follow the params."""

__all__ = [
    "Params", "OptState", "Memory", "Objective", "UpdateRule", "Invariant",
    "ScanRequest", "Backend", "Block", "DataSource", "Batch",
]


class Memory(abc.ABC):
    """Associative memory ``y = M_W(x)`` with explicit parameters ``W``.

    Constructed as ``cls(dim_k, dim_v, **kwargs)``. Parameters are plain tensors
    passed in, never stored on the instance, so the same memory serves one fast
    state per (sequence, head) and autograd flows through writes.

    ``structure`` lets fast backends recognise a memory's algebra: ``"linear"``
    (``M(x) = W x``, one param ``W: (Dv, Dk)``), ``"mlp"`` (``M(x) = W2 σ(W1 x)``
    with ``W1: (Dh, Dk)``, ``W2: (Dv, Dh)``, ``σ = self.activation``),
    ``"residual-mlp"`` (``x + W2 σ(W1 x)``) or ``None`` (generic; only the
    reference backend, which uses autograd, can scan it).
    """

    structure: ClassVar[str | None] = None

    def __init__(self, dim_k: int, dim_v: int, **kwargs: Any) -> None:
        self.dim_k, self.dim_v = int(dim_k), int(dim_v)

    @abc.abstractmethod
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of each parameter without leading dims."""

    @abc.abstractmethod
    def init_params(self, *, generator: torch.Generator | None = None,
                    dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> Params:
        """Initial parameters ``W_0`` (no leading dims), seeded by ``generator``."""

    @abc.abstractmethod
    def read(self, params: Params, x: Tensor) -> Tensor:
        """``y = M_W(x)``: params ``(*lead, *shape)``, ``x (*lead, N, Dk)`` → ``(*lead, N, Dv)``."""

    def layer_inputs(self, params: Params, x: Tensor) -> dict[str, Tensor] | None:
        """Input ``x⁽ˡ⁾`` of every weight matrix ``l`` when the memory reads ``x (*lead, N, Dk)``
        at ``params``, name → ``(*lead, N, Din_l)`` (what DGD's ``W⁽ˡ⁾(I − θ x⁽ˡ⁾x⁽ˡ⁾ᵀ)`` term
        needs, NL arXiv 2512.24695 eqs. 88, 93). ``None`` (the default): the memory does
        not expose them, so ``optimizer="dgd"`` cannot scan it."""
        return None


class Objective(abc.ABC):
    """Inner (surprise) objective ``ℓ(W; k, v) = loss(M_W(k), v)``.

    Constructed as ``cls(**kwargs)``. ``affine_grad = (a, b)`` declares that
    ``∂ℓ/∂pred = a·pred + b·target`` (``l2``: ``(1, -1)``; ``dot``: ``(0, -1)``),
    which lets fast backends solve in-chunk dependencies exactly in closed form.
    """

    affine_grad: ClassVar[tuple[float, float] | None] = None

    def __init__(self, **kwargs: Any) -> None:
        if kwargs:
            raise TypeError(f"{type(self).__name__} takes no options, got {sorted(kwargs)}")

    @abc.abstractmethod
    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        """Per-token loss ``(..., Dv), (..., Dv) → (...)`` (summed over features)."""

    def grad(self, pred: Tensor, target: Tensor) -> Tensor:
        """``∂ℓ/∂pred`` per token (same shape as ``pred``). Default: autograd of :meth:`loss`."""
        with torch.enable_grad():
            p = pred.detach().requires_grad_(True) if not pred.requires_grad else pred
            (g,) = torch.autograd.grad(self.loss(p, target).sum(), p, create_graph=torch.is_grad_enabled())
        return g


Invariant = Callable[..., None]
"""A declared property of an update rule, checked by the conformance suite:
``invariant(rule, grads, state, params, new_params, new_state, hyper)`` raises
``AssertionError`` when the property does not hold."""


class UpdateRule(abc.ABC):
    """A (deep) optimizer as a pure function pair, optax-style, torch-native.

    ``init(params) -> state`` and ``update(grads, state, params, **hyper) ->
    (new_params, new_state)`` over dicts of tensors with any leading dims; they
    never mutate their inputs, so autograd flows through an inner update to the
    params, the grads and tensor hyperparameters.

    Constructed as ``cls(**defaults)``: ``hyperparams`` names every accepted
    hyperparameter with its default; a call's ``**hyper`` overrides them. A
    hyperparameter is a Python number or a tensor broadcastable against the
    leading dims (e.g. ``(B, H)`` for an inner level: one value per sequence and
    head). ``batched = True`` declares that each leading-dim element is updated
    independently, which makes the rule usable inside ``memory_scan``.
    """

    hyperparams: ClassVar[Mapping[str, Any]] = {}
    batched: ClassVar[bool] = True
    invariants: ClassVar[tuple[Invariant, ...]] = ()
    zero_lr_hyper: ClassVar[Mapping[str, Any] | None] = {"lr": 0.0}
    """Hyperparameters under which ``update`` returns ``params`` unchanged from any state
    (e.g. ``{"lr": 0.0, "momentum": 0.0}`` for ``W ← W + m``); ``None``: no such setting."""
    tensor_hyperparams: ClassVar[tuple[str, ...] | None] = None
    """Float hyperparameters that may be tensors over the leading dims; ``None``: all."""
    structure: ClassVar[str | None] = None
    """The rule's algebra, for the scan and its fast backends (as :attr:`Memory.structure`):
    ``"momentum"`` (``S ← ηS − θg``, ``W ← (1−α)W + S``), ``"dgd"`` (``W⁽ˡ⁾ ← W⁽ˡ⁾((1−α)I − θ x⁽ˡ⁾x⁽ˡ⁾ᵀ) − θ g⁽ˡ⁾``; the
    scan supplies the layer inputs) or ``None`` (generic: the scan calls :meth:`update`)."""

    def scan_structure(self, static_hyper: Mapping[str, Any]) -> str | None:
        """:attr:`structure` under the static hyperparameters of one scan (a rule whose
        algebra depends on an option overrides this)."""
        return self.structure

    def __init__(self, **defaults: Any) -> None:
        unknown = set(defaults) - set(self.hyperparams)
        if unknown:
            raise TypeError(f"{type(self).__name__}: unknown hyperparameter(s) {sorted(unknown)}; "
                            f"accepted: {sorted(self.hyperparams)}")
        self.defaults = {**self.hyperparams, **defaults}
        self.check_hyper(self.defaults)

    def resolve(self, hyper: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults overridden by ``hyper``; unknown names raise ``TypeError``."""
        unknown = set(hyper) - set(self.hyperparams)
        if unknown:
            raise TypeError(f"{type(self).__name__}: unknown hyperparameter(s) {sorted(unknown)}; "
                            f"accepted: {sorted(self.hyperparams)}")
        return {**self.defaults, **hyper}

    def check_hyper(self, hyper: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` naming a hyperparameter outside its valid range."""

    @abc.abstractmethod
    def init(self, params: Params) -> OptState:
        """Initial optimizer state for ``params`` (same leading dims)."""

    @abc.abstractmethod
    def update(self, grads: Params, state: OptState, params: Params,
               **hyper: Any) -> tuple[Params, OptState]:
        """One step: ``(W, state) ← rule(∇ℓ(W), state, W)``. Pure."""


class ScanRequest:
    """Everything a backend needs to run one ``memory_scan`` call.

    ``hyper`` holds the per-token hyperparameters as ``(B, H, T)`` tensors
    (``lr`` θ, ``decay`` α, ``momentum`` η, plus any tensor option of the rule);
    ``static_hyper`` the others (numbers, flags). ``names`` are the registered
    plugin names, for messages.
    """

    __slots__ = ("q", "k", "v", "memory", "objective", "rule", "hyper", "static_hyper",
                 "chunk_size", "state", "names", "read", "write", "self_target", "grad_clip",
                 "rule_structure", "outputs", "truncate", "read_after")

    def __init__(self, *, q, k, v, memory, objective, rule, hyper, static_hyper, chunk_size,
                 state, names, read="after_write", write="token", self_target=False,
                 grad_clip=None, rule_structure=None, outputs=True, truncate=False,
                 read_after=None):
        self.q, self.k, self.v = q, k, v
        self.memory: Memory = memory
        self.objective: Objective = objective
        self.rule: UpdateRule = rule
        self.hyper: dict[str, Tensor] = hyper
        self.static_hyper: dict[str, Any] = static_hyper
        self.chunk_size: int = chunk_size
        self.state: MemoryState = state
        self.names: dict[str, str] = names
        self.read: str = read
        """``"after_write"`` (``y_t = M_{W_t}(q_t)``) or ``"chunk_start"`` (``y_t = M_{W_c}(q_t)``)."""
        self.write: str = write
        """``"token"`` (the rule steps every token) or ``"chunk"`` (once per chunk, on ``G_c``)."""
        self.self_target: bool = self_target
        """Targets ``M_{W_c}(v_t)`` (self-generated values, NL eq. 87) instead of ``v_t``."""
        self.grad_clip: float | None = grad_clip
        """Per-token clip of ``∂ℓ/∂pred_t`` to this norm (``None``: no clipping)."""
        if rule_structure is None and hasattr(rule, "scan_structure"):
            rule_structure = rule.scan_structure(static_hyper)
        self.rule_structure: str | None = rule_structure
        """``rule.scan_structure(static_hyper)`` (resolved at construction when not given)."""
        self.outputs: bool = outputs
        """Whether ``y`` is wanted (a write-only level op passes ``False``; ``y`` is then empty)."""
        self.truncate: bool = truncate
        """Stop the outer gradient at every chunk's write: the state every chunk but the
        stream's first starts from is detached (truncated backpropagation through the
        inner level, chunk by chunk; ``W_0`` learns through the first chunk only)."""
        self.read_after: Tensor | None = read_after
        """Inputs ``(B, H, n, Dk)`` to read at the final state's read point, or ``None``. A
        backend that computes this read with its last writes returns it as the new state's
        ``read_after``; one that does not leaves that ``None``, and
        :meth:`~nlframe.level.Level.write_only` reads it itself."""

    def hyper_at(self, t: int) -> dict[str, Any]:
        """Hyperparameters of token ``t``: tensors ``(B, H)`` and the static values."""
        return {**self.static_hyper, **{n: h[:, :, t] for n, h in self.hyper.items()}}


class Backend(abc.ABC):
    """Executes the scan contract (docs/concepts.md) for the requests it supports.

    ``priority``: ``backend="auto"`` picks the highest-priority available
    backend whose ``supports`` returns ``None``. A backend never falls back to
    another silently: what it cannot compute it declares unsupported.
    """

    priority: ClassVar[int] = 0

    def is_available(self) -> bool:
        """Whether this backend can run here (hardware, libraries)."""
        return self.unavailable_reason() is None

    def unavailable_reason(self) -> str | None:
        """Why this backend cannot run here (``None``: it can). Override this or
        :meth:`is_available`; ``nlframe backends list`` and the errors of
        ``backend=NAME`` print the reason."""
        if type(self).is_available is not Backend.is_available and not self.is_available():
            return f"{type(self).__name__}.is_available() returned False"
        return None

    @abc.abstractmethod
    def supports(self, request: ScanRequest) -> str | None:
        """``None`` if the request can be computed exactly; else the reason why not."""

    @abc.abstractmethod
    def scan(self, request: ScanRequest) -> tuple[Tensor, "MemoryState"]:
        """``y (B, H, T, Dv)`` and the state after the last token."""


class Block(nn.Module):
    """A model block built from a spec table: ``cls(config, dim)``.

    ``Config`` is a frozen attrs class (the table's schema; unknown keys are
    errors). ``forward(x, state=None) -> (y, state)`` maps ``x (B, T, dim)`` to
    ``y (B, T, dim)`` and carries the block's fast state, so that feeding a
    sequence in pieces equals one pass.

    What a block may provide besides (each optional, read by the LM and the trainer):

    * **levels** — the block's inner levels are :class:`~nlframe.level.Level` objects
      built once in ``__init__``; the block routes its input into one
      :class:`~nlframe.level.ContextFlow` per level (projections, gates, norms) and
      keeps no chunk loop of parameter updates of its own (a level routed from its
      own chunk-start reads runs :meth:`~nlframe.level.Level.scan_routed`);
    * **state** — whatever ``forward`` returns as ``state``: nested dicts / lists of
      tensors and :class:`~nlframe.level.MemoryState` objects, per sequence;
    * :attr:`handles_residual` — ``True`` when the block does its own norms and
      residuals (the LM then calls ``x ← block(x)`` instead of ``x + block(norm(x))``);
    * :meth:`surprise` — the last forward's mean write-time ``‖∂ℓ/∂pred‖`` per level,
      name → scalar tensor, taken from the scans' own ``MemoryState.surprise`` (no
      second pass); logged as ``memory/<block>.<level>/surprise``;
    * **update frequency** — a level's in-context frequency is its ``chunk_size``;
      :meth:`update_every` names the slow parameters the outer optimizer steps only
      every ``C`` steps (CMS regime (a)): they get a param group with
      ``update_every = C`` (:func:`nlframe.optim.build_optimizers`).
    """

    Config: ClassVar[type]
    handles_residual: ClassVar[bool] = False

    def surprise(self) -> dict[str, Tensor]:
        """Last forward's mean surprise per inner level (``{}``: none)."""
        return {}

    def update_every(self) -> dict[str, int]:
        """Training frequency of slow parameters: name (relative to the block, as in
        ``named_parameters()``) → ``C``, stepped every ``C`` optimizer steps from the
        sum of their gradients (``{}``: every parameter every step)."""
        return {}

    @abc.abstractmethod
    def forward(self, x: Tensor, state: Any = None) -> tuple[Tensor, Any]:  # type: ignore[override]
        ...


class Batch(dict):
    """A training/eval batch: ``tokens (B, T)``, ``targets (B, T)`` and an
    optional ``mask (B, T)`` (1 where the target counts)."""


class DataSource(abc.ABC):
    """A dataset or task: deterministic batches addressed by index.

    Batches are a pure function of ``(split, index, seed)`` so training can
    resume exactly from a saved ``index``.
    """

    vocab_size: int
    eval_defaults: ClassVar[dict[str, int]] = {}
    """What ``nlframe eval --task NAME`` uses where no flag is given, before the
    run's own ``[train]`` values: any of ``batch_size``, ``seq_len``, ``batches``,
    ``stream_chunk`` (e.g. a retrieval task longer than the training windows)."""

    @abc.abstractmethod
    def batch(self, split: str, index: int, *, batch_size: int, seq_len: int,
              seed: int = 0) -> Batch:
        """The ``index``-th batch of ``split`` (``"train"`` or ``"validation"``)."""

    def iter_batches(self, split: str, *, batch_size: int, seq_len: int, seed: int = 0,
                     start: int = 0) -> Iterator[Batch]:
        i = start
        while True:
            yield self.batch(split, i, batch_size=batch_size, seq_len=seq_len, seed=seed)
            i += 1

    def evaluate(self, model: Callable[..., Any], *, device: torch.device | str = "cpu",
                 batch_size: int, seq_len: int, batches: int, seed: int = 0,
                 stream_chunk: int | None = None) -> dict[str, float]:
        """The source's metric(s) on its validation split, e.g. ``{"loss", "bpb", "ppl"}``
        or ``{"accuracy"}``, under ``torch.no_grad()``.

        ``model(tokens (B, T) long, state=None) -> (logits (B, T, V), state)``;
        with ``stream_chunk`` each sequence is fed in pieces of that many
        tokens, carrying ``state``, so memory stays flat with length.
        """
        raise NotImplementedError(f"data source {type(self).__name__} defines no evaluate()")

    def describe(self) -> dict[str, Any]:
        """JSON-able facts a run records in its checkpoint's ``meta.json`` under
        ``"data_source"`` (e.g. the tokenizer behind the ids); ``{}`` by default."""
        return {}

"""Hook specifications: the plugin author's manual.

nlframe has six plugin kinds. Each kind has one hook, ``nlframe_register_<kind>``,
called once when the registry loads. The hook receives a ``register`` callback::

    register(name, obj, *, description=None)

``name`` is the public name users write in specs and API calls (lower case,
digits, ``-`` and ``_``; unique per kind). ``description`` defaults to the first
line of ``obj.__doc__``. A plugin module implements any subset of the hooks::

    import nlframe

    @nlframe.hookimpl
    def nlframe_register_optimizer(register):
        register("lion", Lion)

and is announced to nlframe by an entry point in group ``nlframe`` of its
distribution (``[project.entry-points.nlframe] lion = "nlframe_lion.plugin"``).
The built-in plugins are registered through the very same mechanism.
"""

from __future__ import annotations

import pluggy

PROJECT = "nlframe"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def nlframe_register_memory(register):
    """Register associative-memory classes ``M_W: R^Dk -> R^Dv``.

    ``obj`` is a class (a :class:`nlframe.interfaces.Memory` subclass) called as
    ``obj(dim_k, dim_v, **memory_kwargs)``. An instance initialises parameters
    (``init_params``) and reads ``y = M_W(x)`` (``read``), batched over leading
    dimensions of the parameters. Register e.g. ``register("linear", LinearMemory)``.
    """


@hookspec
def nlframe_register_objective(register):
    """Register surprise objectives ``ℓ(W; k, v) = loss(M_W(k), v)``.

    ``obj`` is a class (a :class:`nlframe.interfaces.Objective` subclass) called
    as ``obj(**objective_kwargs)``. ``loss(pred, target)`` returns the per-token
    loss (summed over features); its gradient w.r.t. the memory parameters is the
    surprise signal that writes the memory.

    Example: ``register("l2", L2Objective)``.
    """


@hookspec
def nlframe_register_optimizer(register):
    """Register update rules (optimizers), usable as inner and outer levels.

    ``obj`` is a class (a :class:`nlframe.interfaces.UpdateRule` subclass) called
    as ``obj(**defaults)``. Its pure functions ``init(params) -> state`` and
    ``update(grads, state, params, **hyper) -> (new_params, new_state)`` work on
    dicts of tensors batched over any leading dimensions. The same rule drives
    ``nlframe.optim.Optimizer`` (slow weights) and ``memory_scan`` (fast weights).

    Example: ``register("adam", Adam)``.
    """


@hookspec
def nlframe_register_backend(register):
    """Register scan backends that execute ``memory_scan``.

    ``obj`` is a class (a :class:`nlframe.interfaces.Backend` subclass) called
    with no arguments. It declares ``priority``, ``is_available()`` and
    ``supports(request)`` (``None`` when supported, else the reason), and
    computes exactly the scan contract of docs/concepts.md in ``scan(request)``.
    ``backend="auto"`` picks the highest-priority available backend that supports
    the request.

    Example: ``register("chunked", ChunkedBackend)``.
    """


@hookspec
def nlframe_register_block(register):
    """Register model blocks buildable from a spec table.

    ``obj`` is a :class:`nlframe.interfaces.Block` subclass (an ``nn.Module``)
    with a ``Config`` attrs class: the table ``[[model.blocks]]`` with
    ``type = "<name>"`` is structured into ``obj.Config`` (unknown keys are
    errors) and the block is built as ``obj(config, dim)``.

    A block builds its inner levels once, as :class:`nlframe.Level` objects, and
    routes its input into them (one :class:`nlframe.ContextFlow` per level and call);
    ``forward(x, state)`` returns ``(y, state)`` with the levels' ``MemoryState``.
    Optional: ``handles_residual`` (the block does its own norms and residuals),
    ``surprise()`` (per-level mean write-time surprise, from the scans' own
    ``MemoryState.surprise``) and ``update_every()`` (the training frequency of
    slow parameters) — see :class:`nlframe.interfaces.Block`.

    Example: ``register("titans", TitansBlock)``.
    """


@hookspec
def nlframe_register_data(register):
    """Register datasets and tasks by name.

    ``obj`` is a callable ``obj(arg=None, **options) -> nlframe.interfaces.DataSource``;
    ``arg`` is the text after ``:`` in names such as ``text:PATH``. A data source
    yields token batches for training and evaluation and may define a metric.

    Example: ``register("text", TextCorpus)``.
    """


KINDS: tuple[str, ...] = ("memory", "objective", "optimizer", "backend", "block", "data")
"""The plugin kinds, in the order their hooks are called."""

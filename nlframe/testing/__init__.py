"""Property-test kit for nlframe plugins: the tools the built-ins are tested with.

Public, versioned API (``API_VERSION``; additions bump the minor number,
changes the major):

Strategies (hypothesis; tensors are filled from drawn seeds)
    ``scan_inputs(memory, objective, *, optimizer, max_T, max_B, max_H, max_D,
    chunk_sizes, dtype)`` → :class:`ScanInputs` (``q, k, v``, gates, chunk size;
    ``Dk == Dv`` where the memory needs it); ``hyper_schedules(shape)`` → gates
    ``lr`` θ ∈ [0, .5], ``decay`` α ∈ [0, .3], ``momentum`` η ∈ [0, .9] as floats
    or ``(B, H, T)`` tensors; ``param_dicts(shapes, batch_dims=...)``;
    ``gradients(params)``; ``configs(Config)`` (valid attrs configs);
    ``specs()`` (valid model specs from the registered blocks); ``tensors``.

Assertions
    ``assert_close(actual, expected, *, rtol, atol=0, name=...)`` —
    ``rms(a − e) ≤ rtol·rms(e) + atol`` on tensors or nested dicts, reporting
    relative RMSE and the max abs error; ``assert_state_close``;
    ``assert_backend_matches_reference(backend, memory, objective, optimizer,
    *, q, k, v, chunk_size, gates, check_grads=True)``;
    ``assert_streaming_consistent(q, k, v, *, splits=None, **scan_kwargs)``.

Conformance suites
    ``check_optimizer(name_or_rule)``, ``check_memory(name)``,
    ``check_objective(name)``, ``check_backend(name)`` run every property and
    raise one ``AssertionError`` listing the failures (``max_examples=``,
    ``properties=[...]`` select); ``suite(kind, name)`` gives the
    :class:`Suite` to run properties one by one. The pytest plugin runs them
    as tests: ``pytest --nlframe-conformance=optimizer:NAME`` (repeatable; also
    ``memory:``, ``objective:``, ``backend:``).

Declarations a rule may make for its suite (class attributes):
``invariants = (fn, ...)`` with ``fn(rule, grads, state, params, new_params,
new_state, hyper)`` raising ``AssertionError`` (``hyper`` is the resolved dict
of float hyperparameters); ``zero_lr_hyper = {"lr": 0.0}`` (the default), the
hyperparameters under which an update is the identity, or ``None``.

The oracle ``contract_scan(build_request(q, k, v, ...))`` is the scan contract
(docs/concepts.md) as a literal loop; the ``reference`` backend is held to it.
"""

from __future__ import annotations

from .assertions import (assert_backend_matches_reference, assert_close, assert_state_close,
                         assert_streaming_consistent, rel_rmse)
from .contract import build_request, contract_scan
from .strategies import (ScanInputs, configs, gradients, hyper_schedules, param_dicts,
                         scan_inputs, specs, tensors)
from .suites import (DEFAULT_EXAMPLES, Property, PropertyNotApplicable, Suite, check,
                     check_backend, check_memory, check_objective, check_optimizer, suite)

API_VERSION = "1.0"
"""Version of this kit's public API (``MAJOR.MINOR``)."""

__all__ = [
    "API_VERSION",
    # strategies
    "ScanInputs", "scan_inputs", "hyper_schedules", "param_dicts", "gradients", "configs",
    "specs", "tensors",
    # assertions
    "assert_close", "rel_rmse", "assert_state_close", "assert_backend_matches_reference",
    "assert_streaming_consistent",
    # oracle
    "build_request", "contract_scan",
    # suites
    "Suite", "Property", "PropertyNotApplicable", "DEFAULT_EXAMPLES", "suite", "check",
    "check_optimizer", "check_memory", "check_objective", "check_backend",
]

"""Conformance suites: named hypothesis-driven properties a plugin of each kind must have.

A :class:`Suite` is a list of :class:`Property` objects bound to one plugin;
``check_optimizer``/``check_memory``/``check_objective``/``check_backend`` run
every property and raise one ``AssertionError`` naming the plugin, the
property and the falsifying example. The pytest plugin
(``--nlframe-conformance=KIND:NAME``) runs each property as its own test.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import attrs
import hypothesis
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

__all__ = ["Property", "Suite", "PropertyNotApplicable", "SUITE_KINDS", "DEFAULT_EXAMPLES",
           "suite", "check", "check_optimizer", "check_memory", "check_objective",
           "check_backend"]

SUITE_KINDS = ("optimizer", "memory", "objective", "backend")
"""Plugin kinds that have a conformance suite."""

DEFAULT_EXAMPLES = int(os.environ.get("NLFRAME_CONFORMANCE_EXAMPLES", "10"))
"""Hypothesis examples per property when a check is not given ``max_examples``."""


class PropertyNotApplicable(Exception):
    """A property does not apply to this plugin (e.g. a non-batched rule has no batched
    property); runners report it as skipped."""


@attrs.frozen
class Property:
    """One checked property: ``fn(subject, data)`` raises ``AssertionError`` when violated.

    ``applies(subject)`` returns ``None`` or the reason the property is not
    applicable; ``examples`` fixes the number of examples (1 for
    deterministic sweeps), else the suite's ``max_examples`` is used.
    """

    name: str
    fn: Callable[[Any, Any], None]
    applies: Callable[[Any], str | None] | None = None
    examples: int | None = None

    @property
    def doc(self) -> str:
        return (self.fn.__doc__ or "").strip().splitlines()[0] if self.fn.__doc__ else self.name


@attrs.define
class Suite:
    """The properties of one plugin (``kind``, ``name``), with the subject they test."""

    kind: str
    name: str
    subject: Any
    properties: list[Property]

    def property_names(self) -> list[str]:
        return [p.name for p in self.properties]

    def get(self, prop: str) -> Property:
        for p in self.properties:
            if p.name == prop:
                return p
        raise ValueError(f"{self.kind} suite has no property {prop!r}; properties: "
                         f"{', '.join(self.property_names())}")

    def run(self, prop: str | Property, *, max_examples: int | None = None) -> None:
        """Run one property; raises :class:`PropertyNotApplicable` or ``AssertionError``."""
        p = self.get(prop) if isinstance(prop, str) else prop
        try:
            reason = p.applies(self.subject) if p.applies is not None else None
        except AssertionError as exc:
            raise AssertionError(f"{self.kind} plugin {self.name!r} violates {p.name!r}: "
                                 f"{exc}") from None
        if reason is not None:
            raise PropertyNotApplicable(reason)
        n = p.examples or max_examples or DEFAULT_EXAMPLES
        settings = hypothesis.settings(
            max_examples=n, deadline=None, derandomize=True, database=None, print_blob=False,
            suppress_health_check=list(HealthCheck), phases=[hypothesis.Phase.explicit,
                                                               hypothesis.Phase.generate,
                                                               hypothesis.Phase.shrink])

        @settings
        @given(st.data())
        def run(data: st.DataObject) -> None:
            p.fn(self.subject, data)

        try:
            run()
        except PropertyNotApplicable:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure becomes one clear AssertionError
            raise AssertionError(f"{self.kind} plugin {self.name!r} violates {p.name!r} "
                                 f"({p.doc}): {_describe(exc)}") from exc

    def check(self, *, max_examples: int | None = None,
              properties: Sequence[str] | None = None) -> list[str]:
        """Run the properties (all, or those named); return the names skipped as not applicable.

        Every property runs even after a failure; the ``AssertionError`` raised
        at the end lists all failures.
        """
        failures, skipped = [], []
        for p in self.properties if properties is None else [self.get(n) for n in properties]:
            try:
                self.run(p, max_examples=max_examples)
            except PropertyNotApplicable:
                skipped.append(p.name)
            except AssertionError as exc:
                failures.append(str(exc))
        if failures:
            raise AssertionError(f"{len(failures)} conformance failure(s):\n\n" + "\n\n".join(failures))
        return skipped


def _describe(exc: BaseException) -> str:
    """The message of ``exc`` (each one of an exception group) with hypothesis' notes."""
    if isinstance(getattr(exc, "exceptions", None), (list, tuple)):  # an exception group (3.11+)
        return f"{len(exc.exceptions)} distinct failures:\n" + "\n".join(
            f"  ({i}) {_describe(e)}" for i, e in enumerate(exc.exceptions, 1))
    kind = "" if isinstance(exc, AssertionError) else f"{type(exc).__name__}: "
    notes = "\n".join(getattr(exc, "__notes__", []))
    return f"{kind}{exc}" + (f"\n{notes}" if notes else "")


def suite(kind: str, name: Any, **options: Any) -> Suite:
    """The conformance :class:`Suite` of plugin ``name`` (a registered name, or for
    optimizers also an ``UpdateRule`` class or instance) of ``kind``."""
    if kind == "optimizer":
        from .optimizer_suite import optimizer_suite
        return optimizer_suite(name, **options)
    if kind in ("memory", "objective", "backend"):
        from . import scan_suites
        return getattr(scan_suites, f"{kind}_suite")(name, **options)
    raise ValueError(f"no conformance suite for kind {kind!r}; kinds with suites: "
                     f"{', '.join(SUITE_KINDS)}")


def check(kind: str, name: Any, *, max_examples: int | None = None,
          properties: Sequence[str] | None = None, **options: Any) -> list[str]:
    """Run the whole suite of ``kind`` against ``name``; see :meth:`Suite.check`."""
    return suite(kind, name, **options).check(max_examples=max_examples, properties=properties)


def check_optimizer(name_or_rule: Any, *, max_examples: int | None = None,
                    properties: Sequence[str] | None = None) -> list[str]:
    """Check an update rule: zero lr is identity, batched = per element, pure, state
    round trip, gradient flow, determinism, finiteness and its declared invariants."""
    return check("optimizer", name_or_rule, max_examples=max_examples, properties=properties)


def check_memory(name: str, *, max_examples: int | None = None,
                 properties: Sequence[str] | None = None, **options: Any) -> list[str]:
    """Check a memory: parameter init, batched reads, finite-difference gradients and
    stream/batch consistency of ``memory_scan`` (options: ``objective``,
    ``optimizer``, ``backend``)."""
    return check("memory", name, max_examples=max_examples, properties=properties, **options)


def check_objective(name: str, *, max_examples: int | None = None,
                    properties: Sequence[str] | None = None, **options: Any) -> list[str]:
    """Check an objective: per-token loss, closed-form ``grad`` = autograd, finite
    differences and its behaviour inside ``memory_scan`` (options: ``memory``,
    ``optimizer``, ``backend``)."""
    return check("objective", name, max_examples=max_examples, properties=properties, **options)


def check_backend(name: str, *, max_examples: int | None = None,
                  properties: Sequence[str] | None = None, **options: Any) -> list[str]:
    """Check a backend against the reference for every combination it ``supports``,
    plus streaming, batch independence and gradients (option: ``reference``)."""
    return check("backend", name, max_examples=max_examples, properties=properties, **options)

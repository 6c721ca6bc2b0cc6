"""pytest plugin (entry point ``pytest11``): ``--nlframe-conformance=KIND:NAME``.

Each requested suite becomes a collector ``nlframe-conformance[KIND:NAME]``
whose items are its properties, so ``pytest --nlframe-conformance=optimizer:lion``
reports one test per property (``-k``, ``-x``, xdist and ``--junitxml`` work as
for any test). Without explicit paths on the command line only the suites run;
with paths, the suites run alongside those tests. No conftest is needed.

Options: ``--nlframe-conformance`` (repeatable; kinds: optimizer, memory,
objective, backend) and ``--nlframe-conformance-examples=N`` (hypothesis
examples per property; default ``NLFRAME_CONFORMANCE_EXAMPLES`` or 10).
"""

from __future__ import annotations

import pytest

_KEY = "nlframe_conformance"


def pytest_addoption(parser):
    group = parser.getgroup("nlframe")
    group.addoption("--nlframe-conformance", action="append", default=[], metavar="KIND:NAME",
                    help="run nlframe's conformance suite against a registered plugin "
                         "(kinds: optimizer, memory, objective, backend); repeatable")
    group.addoption("--nlframe-conformance-examples", type=int, default=None, metavar="N",
                    help="hypothesis examples per conformance property (default 10)")


def _targets(config) -> list[tuple[str, str]]:
    from .suites import SUITE_KINDS

    out = []
    for raw in config.getoption("nlframe_conformance") or []:
        kind, sep, name = raw.partition(":")
        if not sep or not name or kind not in SUITE_KINDS:
            raise pytest.UsageError(f"--nlframe-conformance={raw!r}: expected KIND:NAME with KIND "
                                    f"one of {', '.join(SUITE_KINDS)} (e.g. optimizer:momentum)")
        out.append((kind, name))
    return out


def pytest_configure(config):
    targets = _targets(config)
    config.stash[_stash_key] = targets
    if targets:
        config.addinivalue_line("markers", "nlframe_conformance: a conformance-suite property")


_stash_key = pytest.StashKey[list]()


def pytest_ignore_collect(collection_path, config):
    """With suites requested and no paths given, collect no test files at all."""
    if config.stash.get(_stash_key, None) and config.args_source != pytest.Config.ArgsSource.ARGS:
        return True
    return None


class ConformanceSuite(pytest.Collector):
    """The properties of one plugin's suite, as test items."""

    def __init__(self, *, kind: str, target: str, **kw):
        super().__init__(**kw)
        self.kind, self.target = kind, target

    def collect(self):
        from .suites import suite

        try:
            s = suite(self.kind, self.target)
        except Exception as exc:  # noqa: BLE001 - an unknown plugin is a collection error
            raise self.CollectError(f"nlframe conformance {self.kind}:{self.target}: "
                                    f"{type(exc).__name__}: {exc}") from exc
        for prop in s.properties:
            yield ConformanceProperty.from_parent(self, name=prop.name, suite=s, prop=prop.name)

    def repr_failure(self, excinfo):  # collection errors: the message alone
        if isinstance(excinfo.value, self.CollectError):
            return str(excinfo.value)
        return super().repr_failure(excinfo)


class ConformanceProperty(pytest.Item):
    """One property of a conformance suite."""

    def __init__(self, *, suite, prop: str, **kw):
        super().__init__(**kw)
        self.suite, self.prop = suite, prop
        self.add_marker("nlframe_conformance")

    def runtest(self):
        from .suites import PropertyNotApplicable

        examples = self.config.getoption("nlframe_conformance_examples")
        try:
            self.suite.run(self.prop, max_examples=examples)
        except PropertyNotApplicable as exc:
            pytest.skip(str(exc))

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, AssertionError):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, None, f"{self.suite.kind}:{self.suite.name}::{self.prop}"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session, config, items):
    """Append the requested suites' properties (before -k/-m deselection runs)."""
    for kind, name in config.stash.get(_stash_key, []):
        node = f"nlframe-conformance[{kind}:{name}]"
        col = ConformanceSuite.from_parent(session, name=node, nodeid=node, kind=kind, target=name)
        report = col.ihook.pytest_make_collect_report(collector=col)
        session.ihook.pytest_collectreport(report=report)
        if report.passed:
            items.extend(report.result)

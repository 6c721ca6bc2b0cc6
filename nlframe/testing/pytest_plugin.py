"""pytest plugin (entry point ``pytest11``): ``--nlframe-conformance=KIND:NAME``."""

from __future__ import annotations


def pytest_addoption(parser):
    group = parser.getgroup("nlframe")
    group.addoption("--nlframe-conformance", action="append", default=[], metavar="KIND:NAME",
                    help="run nlframe's conformance suite against a registered plugin "
                         "(kinds: optimizer, memory, objective, backend); repeatable")

"""``nlframe backends list [--json]`` and backend availability reasons."""

from __future__ import annotations

import json
import types

import pytest
import torch
from click.testing import CliRunner

import nlframe
from nlframe.cli import main
from nlframe.interfaces import Backend


def _list(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["backends", "list", *args])
    return result.exit_code, result.output


def test_json_lists_every_backend_with_every_probed_combination():
    code, out = _list("--json")
    assert code == 0, out
    table = json.loads(out)
    assert {b["name"] for b in table} == set(nlframe.get_registry().names("backend"))
    ref = next(b for b in table if b["name"] == "reference")
    assert ref["available"] and ref["unavailable_reason"] is None
    assert len(ref["combinations"]) == 3 * 2 * 3 * 2 * 8  # memories·objectives·rules·C·modes
    assert all(c["supported"] for c in ref["combinations"])  # the reference computes everything


def _call(combo: dict, backend: str):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 5, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    return nlframe.memory_scan(q, k / k.norm(dim=-1, keepdim=True), v, memory=combo["memory"],
                               objective=combo["objective"], optimizer=combo["optimizer"],
                               chunk_size=combo["chunk_size"], read=combo["read"],
                               write=combo["write"], self_target=combo["self_target"],
                               lr=0.1, backend=backend)


def test_chunked_rows_agree_with_what_memory_scan_does():
    """A supported row runs on the chunked backend and equals the reference; an
    unsupported one is refused by ``memory_scan(backend="chunked")`` with that reason."""
    code, out = _list("--json", "--chunk-size", "1", "--chunk-size", "2")
    chunked = next(b for b in json.loads(out) if b["name"] == "chunked")
    rows = chunked["combinations"]
    assert any(not r["supported"] for r in rows) and any(r["supported"] for r in rows)
    for row in rows[::7]:  # a spread over memories, rules and modes
        if row["supported"]:
            y, _ = _call(row, "chunked")
            y_ref, _ = _call(row, "reference")
            torch.testing.assert_close(y, y_ref, rtol=1e-8, atol=1e-10)
        else:
            with pytest.raises(ValueError, match="backend 'chunked' does not support") as info:
                _call(row, "chunked")
            assert row["reason"] in str(info.value)


def test_text_table_has_a_header_per_backend_and_footnotes():
    code, out = _list("--optimizer", "sgd", "--memory", "linear")
    assert code == 0, out
    assert "chunked (priority 10, nlframe): available" in out
    assert "reference (priority 0, nlframe): available" in out
    assert "(1) optimizer 'sgd': token writes in chunk form" in out


def test_unknown_names_list_the_registered_ones():
    code, out = _list("--objective", "nope")
    assert code == 2
    assert "unknown objective 'nope'" in out and "l2" in out


class _Unavailable(Backend):
    """A backend that cannot run here (test)."""

    priority = 99

    def unavailable_reason(self):
        return "needs a device this machine does not have"

    def supports(self, request):
        return None

    def scan(self, request):  # pragma: no cover - never selected
        raise AssertionError("an unavailable backend must not run")


@pytest.fixture
def unavailable_backend():
    plugin = types.SimpleNamespace(nlframe_register_backend=nlframe.hookimpl(
        lambda register: register("test-unavailable", _Unavailable)))
    reg = nlframe.get_registry()
    reg.register_plugin(plugin, name="test-unavailable-backend")
    yield
    reg.unregister_plugin(plugin)


def test_unavailable_backend_is_listed_with_its_reason_and_skipped(unavailable_backend):
    code, out = _list("--json", "--memory", "linear", "--objective", "l2",
                      "--optimizer", "momentum", "--chunk-size", "1")
    row = next(b for b in json.loads(out) if b["name"] == "test-unavailable")
    assert row["available"] is False
    assert row["unavailable_reason"] == "needs a device this machine does not have"
    q = torch.randn(1, 1, 3, 4)
    nlframe.memory_scan(q, q, q)  # auto skips it despite its priority
    with pytest.raises(RuntimeError, match="not available on this machine: needs a device"):
        nlframe.memory_scan(q, q, q, backend="test-unavailable")
    assert _Unavailable().is_available() is False

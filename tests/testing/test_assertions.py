"""assert_close reports relative RMSE; backend/streaming assertions catch wrong scans."""

import re

import pytest
import torch

from nlframe.interfaces import Backend
from nlframe.testing import (assert_backend_matches_reference, assert_close,
                             assert_streaming_consistent, rel_rmse)

from .local_plugins import KitLinearL2


def test_assert_close_accepts_within_relative_rmse():
    e = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    assert_close(e * (1 + 1e-9), e, rtol=1e-8)
    assert_close({"a": [e]}, {"a": [e.clone()]}, rtol=0.0)
    assert_close(torch.zeros(3), torch.full((3,), 1e-7), rtol=0.0, atol=1e-6)


def test_assert_close_reports_rmse_max_error_and_where():
    e = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    a = e.clone()
    a[1, 0] += 0.5
    with pytest.raises(AssertionError) as info:
        assert_close({"W": a}, {"W": e}, rtol=1e-3, name="params")
    msg = str(info.value)
    expected_rel = 0.5 / torch.linalg.vector_norm(e).item()
    assert "params['W']" in msg and "max abs error 5.000e-01 at (1, 0)" in msg
    assert f"relative RMSE {expected_rel:.3e}" in msg
    assert rel_rmse(a, e) == pytest.approx(expected_rel)


@pytest.mark.parametrize("actual, expected, pattern", [
    (torch.zeros(2, 3), torch.zeros(3, 2), r"shape \(2, 3\) != expected \(3, 2\)"),
    (torch.tensor([float("nan"), 1.0]), torch.tensor([0.0, 1.0]), "non-finite entries differ"),
    ({"a": torch.zeros(1)}, {"b": torch.zeros(1)}, "keys differ"),
])
def test_assert_close_rejects_structure_mismatch(actual, expected, pattern):
    with pytest.raises(AssertionError, match=pattern):
        assert_close(actual, expected, rtol=1.0)


def test_matching_nan_and_inf_positions_are_equal():
    x = torch.tensor([float("nan"), float("inf"), 2.0])
    assert_close(x, x.clone(), rtol=0.0)
    with pytest.raises(AssertionError, match="non-finite"):
        assert_close(x, torch.tensor([float("nan"), -float("inf"), 2.0]), rtol=1.0)


def _inputs(B=2, H=2, T=7, D=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.nn.functional.normalize(torch.randn(B, H, T, D, generator=g, dtype=torch.float64), dim=-1)
            for _ in range(2))
    v = torch.randn(B, H, T, 2, generator=g, dtype=torch.float64)
    gates = {"lr": 0.4 * torch.rand(B, H, T, generator=g, dtype=torch.float64),
             "decay": 0.1, "momentum": 0.5 * torch.rand(B, H, T, generator=g, dtype=torch.float64)}
    return q, k, v, gates


@pytest.mark.parametrize("chunk", [1, 3])
def test_closed_form_backend_matches_contract_reference(kit_plugins, chunk):
    q, k, v, gates = _inputs()
    assert_backend_matches_reference("kit-linear-l2", "kit-linear", "kit-l2", q=q, k=k, v=v,
                                     chunk_size=chunk, gates=gates, reference="kit-reference",
                                     rtol=1e-10)
    assert_backend_matches_reference("kit-reference", "kit-linear", "kit-l2", q=q, k=k, v=v,
                                     chunk_size=chunk, gates=gates, reference="contract",
                                     rtol=1e-12)


class StaleChunkBackend(KitLinearL2):
    """Wrong on purpose: takes every gradient at ``W_{t-1}`` instead of the chunk start."""

    def scan(self, request):
        request.chunk_size = 1
        y, st = super().scan(request)
        return y, st


def test_backend_mismatch_is_reported_with_context(register):
    register(backend=[("kit-stale", StaleChunkBackend)])
    q, k, v, gates = _inputs()
    with pytest.raises(AssertionError) as info:
        assert_backend_matches_reference("kit-stale", "kit-linear", "kit-l2", q=q, k=k, v=v,
                                         chunk_size=4, gates=gates, reference="kit-reference")
    msg = str(info.value)
    assert "backend 'kit-stale' vs 'kit-reference'" in msg and "chunk_size=4" in msg
    assert re.search(r"relative RMSE \d", msg)


class NoGradBackend(KitLinearL2):
    """Wrong on purpose: cuts the graph to the keys."""

    def scan(self, request):
        request.k = request.k.detach()
        return super().scan(request)


def test_gradient_mismatch_is_reported(register):
    register(backend=[("kit-nograd", NoGradBackend)])
    q, k, v, gates = _inputs()
    with pytest.raises(AssertionError, match="grad of k"):
        assert_backend_matches_reference("kit-nograd", "kit-linear", "kit-l2", q=q, k=k, v=v,
                                         chunk_size=2, gates=gates, reference="kit-reference")
    assert_backend_matches_reference("kit-nograd", "kit-linear", "kit-l2", q=q, k=k, v=v,
                                     chunk_size=2, gates=gates, reference="kit-reference",
                                     check_grads=False)


class ForgetfulBackend(Backend):
    """Wrong on purpose: restarts every call at a chunk boundary (drops ``position``)."""

    def supports(self, request):
        return None

    def scan(self, request):
        request.state.position = 0
        return KitLinearL2().scan(request)


@pytest.mark.parametrize("chunk", [1, 2, 3, 8])
def test_streaming_consistent_for_any_split(kit_plugins, chunk):
    q, k, v, gates = _inputs(T=8)
    for splits in ([1], [3, 4], [2, 5, 7], None):
        assert_streaming_consistent(q, k, v, splits=splits, memory="kit-linear", objective="kit-l2",
                                    backend="kit-linear-l2", chunk_size=chunk, **gates)


def test_streaming_split_inside_a_chunk_catches_lost_position(register):
    register(backend=[("kit-forgetful", ForgetfulBackend)])
    q, k, v, gates = _inputs(T=8)
    kw = dict(memory="kit-linear", objective="kit-l2", backend="kit-forgetful", chunk_size=4,
              **gates)
    assert_streaming_consistent(q, k, v, splits=[4], **kw)  # a split on a boundary is fine
    with pytest.raises(AssertionError, match=r"split at \[2\] of T=8"):
        assert_streaming_consistent(q, k, v, splits=[2], **kw)


def test_streaming_rejects_bad_split_points(kit_plugins):
    q, k, v, _ = _inputs(T=4)
    with pytest.raises(ValueError, match="splits must be increasing"):
        assert_streaming_consistent(q, k, v, splits=[3, 1], memory="kit-linear")

"""flash-linear-attention's yardstick rows of ``nlframe bench scan`` (``nlframe.bench.fla``).

The real kernels need a CUDA device, so these tests install a stand-in ``fla``
package whose two functions are float64 loops written from flash-linear-attention's
documented API: inputs ``[B, T, H, D]``, state ``[B, H, Dk, Dv]``, read scale, and the
steps ``S ← S + β k (v − Sᵀk)ᵀ`` (delta rule) and ``S ← e^g S`` before it (gated).
They check what the adapter hands over (layouts, the gate transform, the state),
against nlframe's float64 reference scan.
"""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch

from nlframe.bench import fla
from nlframe.bench.scan import Workload, main, parser
from nlframe.scan import memory_scan


def _loop(q, k, v, beta, g, scale, initial_state, output_final_state):
    B, T, H, K = q.shape
    V = v.shape[-1]
    assert k.shape == (B, T, H, K) and v.shape[:3] == (B, T, H) and beta.shape == (B, T, H)
    assert g is None or g.shape == (B, T, H)
    assert initial_state is None or initial_state.shape == (B, H, K, V)
    assert q.dtype != torch.float32, "the kernels reject float32"
    S = (torch.zeros(B, H, K, V, dtype=torch.float64) if initial_state is None
         else initial_state.double())
    o = torch.empty(B, T, H, V, dtype=torch.float64)
    for t in range(T):
        if g is not None:
            S = S * g[:, t].double().exp()[..., None, None]
        kt, vt, bt = k[:, t].double(), v[:, t].double(), beta[:, t].double()
        err = vt - torch.einsum("bhkv,bhk->bhv", S, kt)
        S = S + bt[..., None, None] * kt[..., :, None] * err[..., None, :]
        o[:, t] = scale * torch.einsum("bhkv,bhk->bhv", S, q[:, t].double())
    return o.to(q.dtype), (S.to(q.dtype) if output_final_state else None)


def fake_chunk_delta_rule(q, k, v, beta, scale=None, initial_state=None,
                          output_final_state=False, **kwargs):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return _loop(q, k, v, beta, None, scale, initial_state, output_final_state)


def fake_chunk_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None,
                                output_final_state=False, **kwargs):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return _loop(q, k, v, beta, g, scale, initial_state, output_final_state)


@pytest.fixture
def fake_fla(monkeypatch):
    """A stand-in ``fla`` package on every device (see the module docstring)."""
    modules = {name: types.ModuleType(name) for name in
               ("fla", "fla.ops", "fla.ops.delta_rule", "fla.ops.gated_delta_rule")}
    modules["fla.ops.delta_rule"].chunk_delta_rule = fake_chunk_delta_rule
    modules["fla.ops.gated_delta_rule"].chunk_gated_delta_rule = fake_chunk_gated_delta_rule
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(fla, "DEVICE_TYPES", ("cuda", "cpu"))


def _args(decay: float = 0.05):
    """``bench scan``'s own arguments: the gated delta rule over 3 heads."""
    return parser().parse_args(["--rule", "gd", "--heads", "3", "--decay", str(decay)])


@pytest.mark.parametrize("name, decay", [("fla-delta-rule", 0.0), ("fla-gated-delta-rule", 0.05),
                                         ("fla-gated-delta-rule", 0.0)])
def test_rows_compute_the_scan_they_are_timed_against(fake_fla, name, decay):
    """Given the adapter's inputs, the kernels compute nlframe's (gated) delta rule: reads
    and final state equal the float64 reference scan from a nonzero initial state."""
    work = Workload(_args(decay=decay), B=2, T=11, D=5, device=torch.device("cpu"))
    t = {n: x.double() for n, x in work.tensors.items()}
    W0 = torch.randn(5, 5, dtype=torch.float64)
    call = fla.FlaCall(name, t, W0, work.weight.double())
    y, W = call.forward(call.inputs, W0)
    y_ref, state = memory_scan(t["q"], t["k"], t["v"], **work.scan_kwargs(t), backend="reference",
                               state=work.state({"W": W0}))
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(W, state.params["W"], rtol=1e-10, atol=1e-12)


def test_train_call_reaches_every_input(fake_fla):
    work = Workload(_args(), B=1, T=4, D=3, device=torch.device("cpu"))
    t = {n: x.double() for n, x in work.tensors.items()}
    call = fla.FlaCall("fla-gated-delta-rule", t, torch.zeros(3, 3, dtype=torch.float64),
                       work.weight.double())
    grads = {}
    real = call.fn

    def spy(**kw):
        out = real(**kw)
        grads.update({n: x for n, x in kw.items() if isinstance(x, torch.Tensor)})
        return out

    call.fn = spy
    call.call("train", lambda: None)()
    assert set(grads) == {"q", "k", "v", "g", "beta", "initial_state"}
    assert all(grads[n].grad is not None for n in ("q", "k", "v", "g", "beta"))


def test_bench_scan_times_the_rows_beside_the_backends(fake_fla, capsys):
    assert main(["--quick", "--rule", "gd", "--decay", "0", "--dtype", "bfloat16",
                 "--backends", "reference", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    rows = {(r["backend"], r["mode"]): r for r in records}
    assert set(rows) == {(n, m) for n in ("reference", *fla.KERNELS) for m in ("forward", "train")}
    for (name, mode), r in rows.items():
        assert r["dtype"] == "bfloat16" and r["rule"] == "gd"
        assert r["rel_err"] < 2e-2  # bfloat16 reads against the float64 reference
        best = max(rows[n, mode]["tok_s"] for n in fla.KERNELS)
        assert r["vs_fla"] == pytest.approx(r["tok_s"] / best)
    assert main(["--quick", "--rule", "gd", "--dtype", "bfloat16", "--backends", "reference"]) == 0
    out = capsys.readouterr().out
    assert "# fla-delta-rule not timed: has no decay: needs --decay 0" in out
    assert "| fla-gated-delta-rule | forward |" in out and "× FLA" in out


@pytest.mark.parametrize("over, reason", [
    (dict(rule="momentum"), "computes the delta rule only"),
    (dict(chunk_size=4), "computes the delta rule only"),
    (dict(memory="mlp"), "computes the delta rule only"),
    (dict(decay=0.01), "has no decay"),
    (dict(device=torch.device("cpu")), "run on cuda devices, not cpu"),
    (dict(dtype=torch.float32), "reject float32"),
])
def test_unavailable_reasons(over, reason):
    kw = dict(memory="linear", objective="l2", rule="gd", chunk_size=1, decay=0.0,
              device=torch.device("cuda"), dtype=torch.bfloat16)
    assert reason in fla.unavailable_reason("fla-delta-rule", **{**kw, **over})


def test_not_installed_is_a_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "fla", None)  # import fails
    why = fla.unavailable_reason("fla-gated-delta-rule", memory="linear", objective="l2",
                                 rule="gd", chunk_size=1, decay=0.0,
                                 device=torch.device("cuda"), dtype=torch.bfloat16)
    assert "flash-linear-attention is not installed" in why


def test_bad_decay_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        main(["--quick", "--decay", "1.5"])
    assert "--decay 1.5: retention gates must lie in [0, 1)" in capsys.readouterr().err


def test_json_stays_parseable_beside_skipped_rows(capsys):
    """Skips and the yardstick's reasons go to stderr under ``--json``."""
    assert main(["--quick", "--backends", "chunked", "--seq", "64", "--reference-max-T", "8",
                 "--memory", "mlp", "--chunk-size", "1", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == []
    assert "chunked skipped" in captured.err and "fla-delta-rule not timed" in captured.err

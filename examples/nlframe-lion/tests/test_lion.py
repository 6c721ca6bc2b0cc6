"""nlframe-lion as a user sees it: installed, listed, conformant, training, scanning, in specs."""

import json
import os
import subprocess
import sys

import attrs
import pytest
import torch

pytest.importorskip("nlframe_lion", reason="not installed: pip install ./examples/nlframe-lion")

import nlframe
from nlframe.optim import Optimizer
from nlframe.scan import make_rule
from nlframe.testing import (assert_backend_matches_reference, assert_close, check_objective,
                             check_optimizer)


def _run(*args, cwd=None):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER")}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600)


def test_cli_lists_both_plugins_with_the_distribution():
    proc = _run("-m", "nlframe", "plugins", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    mine = {(e["kind"], e["name"]): e for e in json.loads(proc.stdout) if e["distribution"] == "nlframe-lion"}
    assert set(mine) == {("optimizer", "lion"), ("objective", "cosine")}
    assert all(e["version"] == "0.1.0" and ("=" in e["description"] or "←" in e["description"])
               for e in mine.values())


def test_conformance_through_the_pytest_plugin(tmp_path):
    proc = _run("-m", "pytest", "-p", "no:cacheprovider", "-q", "--nlframe-conformance-examples=5",
                "--nlframe-conformance=optimizer:lion", "--nlframe-conformance=objective:cosine",
                cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "14 passed" in out, out  # 8 optimizer + 6 objective properties, none skipped


def test_conformance_through_plain_functions():
    assert check_optimizer("lion", max_examples=8) == []  # its declared step bound included
    assert check_objective("cosine", max_examples=8) == []


def _lion_by_hand(w, g_seq, lr, b1, b2, wd):
    """Alg. 2 of arXiv 2302.06675, one tensor, float64."""
    m = torch.zeros_like(w)
    for g in g_seq:
        c = b1 * m + (1 - b1) * g
        w = w - lr * (torch.sign(c) + wd * w)
        m = b2 * m + (1 - b2) * g
    return w, m


def test_lion_matches_the_paper_algorithm():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64)       # (B, Dv, Dk)
    gs = [torch.randn(3, 4, 5, generator=gen, dtype=torch.float64) for _ in range(4)]
    lr = torch.tensor([0.1, 0.01, 0.001], dtype=torch.float64)           # one lr per element
    rule, params = make_rule("lion", beta1=0.8, beta2=0.95, weight_decay=0.1), {"W": w}
    state = rule.init(params)
    for g in gs:
        params, state = rule.update({"W": g}, state, params, lr=lr)
    for b in range(3):
        w_b, m_b = _lion_by_hand(w[b], [g[b] for g in gs], lr[b].item(), 0.8, 0.95, 0.1)
        assert_close(params["W"][b], w_b, rtol=1e-14, name=f"W[{b}]")
        assert_close(state["m"]["W"][b], m_b, rtol=1e-14, name=f"m[{b}]")


def test_bad_hyperparameter_is_named():
    with pytest.raises(ValueError, match="beta1 must be in"):
        make_rule("lion", beta1=1.5)


def test_lion_trains_a_small_model_through_the_torch_optimizer():
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = torch.sin(x @ torch.randn(8, 1))
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    opt = Optimizer(model.parameters(), rule="lion", lr=1e-2, weight_decay=0.01)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::10]


def test_cosine_inside_memory_scan_reference_and_chunked():
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.nn.functional.normalize(torch.randn(2, 2, 9, 4, generator=gen, dtype=torch.float64), dim=-1)
            for _ in range(2))
    v = torch.randn(2, 2, 9, 3, generator=gen, dtype=torch.float64)
    y, st = nlframe.memory_scan(q, k, v, memory="linear", objective="cosine", lr=0.2, chunk_size=1,
                                backend="reference")
    assert torch.isfinite(y).all() and st.step == 9
    # Writing lowers the surprise: the memory's read of k aligns with v.
    cos = torch.nn.functional.cosine_similarity(q.new_zeros(()) + k @ st.params["W"].transpose(-1, -2), v, dim=-1)
    assert cos.mean() > 0.3
    if "chunked" in nlframe.get_registry().names("backend"):
        for c in (2, 4):
            assert_backend_matches_reference("chunked", "mlp", "cosine", q=q, k=k, v=v, chunk_size=c,
                                             gates={"lr": 0.3, "momentum": 0.5}, rtol=1e-9,
                                             grad_rtol=1e-8)


def _blocks_with_objective():
    reg = nlframe.get_registry()
    return [n for n in reg.names("block")
            if any(f.name == "objective" for f in attrs.fields(reg.get("block", n).Config))]


def test_cosine_from_a_spec_file(tmp_path):
    blocks = _blocks_with_objective()
    if not blocks:
        pytest.skip("no registered block takes an objective yet")
    from nlframe.build import build
    from nlframe.spec import load_spec

    path = tmp_path / "cosine.toml"
    path.write_text(f'[model]\nvocab_size = 16\ndim = 16\n\n[[model.blocks]]\ntype = "{blocks[0]}"\n'
                    'objective = { type = "cosine", eps = 0.05 }\n')
    spec = load_spec(path)
    assert spec.model.config.blocks[0].config.objective.type == "cosine"
    model = build(spec, seed=0)
    out = model(torch.randint(0, 16, (2, 8)))
    logits = out[0] if isinstance(out, tuple) else out
    assert logits.shape[:2] == (2, 8) and torch.isfinite(logits).all()

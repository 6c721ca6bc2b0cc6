"""Update rules as inner levels: memory_scan(..., optimizer=NAME, backend="reference")."""

import pytest
import torch

import nlframe


def qkv(seed=0, B=2, H=2, T=7, D=4):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, T, D, generator=gen, dtype=torch.float64) for _ in range(3))
    k = k / k.norm(dim=-1, keepdim=True)
    return q, k, v


@pytest.mark.parametrize("name", ["momentum", "sgd", "muon", "delta-momentum",
                                  "preconditioned-momentum", "nonlinear-output", "m3", "adam"])
def test_runs_as_an_inner_rule(name):
    q, k, v = qkv()
    lr = torch.full(q.shape[:3], 0.1, dtype=q.dtype)
    y, state = nlframe.memory_scan(q, k, v, optimizer=name, lr=lr, backend="reference")
    assert y.shape == v.shape and torch.isfinite(y).all()
    assert state.step == q.shape[2]
    # streaming: two calls from the returned state equal one call
    y1, s1 = nlframe.memory_scan(q[:, :, :3], k[:, :, :3], v[:, :, :3], optimizer=name,
                                 lr=lr[:, :, :3], backend="reference")
    y2, _ = nlframe.memory_scan(q[:, :, 3:], k[:, :, 3:], v[:, :, 3:], optimizer=name,
                                lr=lr[:, :, 3:], backend="reference", state=s1)
    torch.testing.assert_close(torch.cat([y1, y2], 2), y, rtol=1e-12, atol=1e-12)


def test_sgd_without_momentum_is_momentum_with_zero_eta_and_alpha():
    q, k, v = qkv(1)
    lr = torch.rand(q.shape[:3], generator=torch.Generator().manual_seed(2), dtype=q.dtype)
    y_sgd, s_sgd = nlframe.memory_scan(q, k, v, optimizer="sgd", lr=lr, backend="reference",
                                       chunk_size=2)
    y_mom, s_mom = nlframe.memory_scan(q, k, v, optimizer="momentum", lr=lr, momentum=0.0,
                                       decay=0.0, backend="reference", chunk_size=2)
    torch.testing.assert_close(y_sgd, y_mom, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(s_sgd.params["W"], s_mom.params["W"], rtol=1e-12, atol=1e-13)


def test_sgd_momentum_is_the_scan_eta():
    """The scan's per-token η reaches sgd's momentum; the outer graph trains through it."""
    q, k, v = qkv(3)
    eta = torch.full(q.shape[:3], 0.5, dtype=q.dtype, requires_grad=True)
    y, _ = nlframe.memory_scan(q, k, v, optimizer="sgd", lr=0.2, momentum=eta,
                               backend="reference")
    y0, _ = nlframe.memory_scan(q, k, v, optimizer="sgd", lr=0.2, backend="reference")
    assert not torch.allclose(y, y0)
    (g,) = torch.autograd.grad(y.square().sum(), eta)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_rule_without_a_scan_hyperparameter_is_refused_by_name():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="'muon'.*decay"):
        nlframe.memory_scan(q, k, v, optimizer="muon", decay=0.1, backend="reference")

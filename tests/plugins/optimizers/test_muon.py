"""muon: the functional rule equals torch.optim.Muon; leading dims are batch; 1-D rejected."""

import pytest
import torch

from .helpers import randn, rel, rule


def test_pure_update_equals_torch_muon():
    gen = torch.Generator().manual_seed(0)
    W = {"a": randn(5, 3, gen=gen), "b": randn(3, 7, gen=gen)}
    ref = [torch.nn.Parameter(W[n].clone()) for n in W]
    opt = torch.optim.Muon(ref, lr=0.02, weight_decay=0.1, adjust_lr_fn="original")
    r = rule("muon")
    params, st = dict(W), r.init(W)
    for _ in range(20):
        g = {n: randn(*W[n].shape, gen=gen) for n in W}
        for p, n in zip(ref, W):
            p.grad = g[n].clone()
        opt.step()
        params, st = r.update(g, st, params, lr=0.02, weight_decay=0.1)
    for p, n in zip(ref, W):
        assert rel(params[n], p.detach()) < 1e-12


def test_leading_dims_are_independent_matrices():
    gen = torch.Generator().manual_seed(1)
    W, g = randn(2, 3, 4, 5, gen=gen), randn(2, 3, 4, 5, gen=gen)
    r = rule("muon")
    new, _ = r.update({"W": g}, r.init({"W": W}), {"W": W}, lr=0.1)
    for i in range(2):
        for j in range(3):
            one, _ = r.update({"W": g[i, j]}, r.init({"W": W[i, j]}), {"W": W[i, j]}, lr=0.1)
            assert torch.equal(new["W"][i, j], one["W"])


def test_vectors_are_rejected_with_their_name():
    with pytest.raises(ValueError, match="'bias'.*adamw"):
        rule("muon").init({"bias": torch.zeros(4)})


def test_match_rms_adamw_scales_by_shape():
    gen = torch.Generator().manual_seed(2)
    W, g = randn(4, 16, gen=gen), randn(4, 16, gen=gen)
    r = rule("muon", weight_decay=0.0)
    a, _ = r.update({"W": g}, r.init({"W": W}), {"W": W}, lr=0.1)
    b, _ = r.update({"W": g}, r.init({"W": W}), {"W": W}, lr=0.1, adjust_lr_fn="match_rms_adamw")
    torch.testing.assert_close(b["W"] - W, 0.2 * 4.0 * (a["W"] - W), rtol=1e-12, atol=1e-14)

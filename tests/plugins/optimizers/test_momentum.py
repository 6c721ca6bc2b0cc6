"""momentum (the scan's rule): S ← ηS − θg, W ← (1 − α)W + S, exactly."""

import torch

from .helpers import randn, rule


def test_two_steps_by_hand():
    gen = torch.Generator().manual_seed(0)
    W, g1, g2 = randn(2, 3, 4, gen=gen), randn(2, 3, 4, gen=gen), randn(2, 3, 4, gen=gen)
    lr, decay, mom = torch.tensor([0.1, 0.2], dtype=W.dtype), 0.05, 0.9
    r = rule("momentum")
    p, st = r.update({"W": g1}, r.init({"W": W}), {"W": W}, lr=lr, decay=decay, momentum=mom)
    p, st = r.update({"W": g2}, st, p, lr=lr, decay=decay, momentum=mom)
    th = lr.reshape(2, 1, 1)
    s1 = -th * g1
    w1 = (1 - decay) * W + s1
    s2 = mom * s1 - th * g2
    torch.testing.assert_close(st["momentum"]["W"], s2, rtol=0, atol=0)
    torch.testing.assert_close(p["W"], (1 - decay) * w1 + s2, rtol=0, atol=0)

"""dgd: W ← W(I − η′XᵀX) − η′∇L (NL eqs. 28–29), x supplied per call."""

import pytest
import torch

from .helpers import randn, rule


def test_single_input_matches_the_equation():
    gen = torch.Generator().manual_seed(0)
    W, x, dy = randn(3, 5, gen=gen), randn(5, gen=gen), randn(3, gen=gen)
    grad = torch.outer(dy, x)  # ∇_y L ⊗ x
    r = rule("dgd")
    new, _ = r.update({"W": grad}, r.init({"W": W}), {"W": W}, lr=0.1, x=x)
    ref = W @ (torch.eye(5, dtype=W.dtype) - 0.1 * torch.outer(x, x)) - 0.1 * grad
    torch.testing.assert_close(new["W"], ref, rtol=1e-13, atol=1e-14)


def test_batched_inputs_and_leading_dims():
    gen = torch.Generator().manual_seed(1)
    W, X, G = randn(2, 3, 4, gen=gen), randn(2, 6, 4, gen=gen), randn(2, 3, 4, gen=gen)
    r = rule("dgd")
    new, _ = r.update({"W": G, "b": G[:, :, 0]}, r.init({"W": W, "b": W[:, :, 0]}),
                      {"W": W, "b": W[:, :, 0]}, lr=0.05, x={"W": X})
    for i in range(2):
        ref = W[i] @ (torch.eye(4, dtype=W.dtype) - 0.05 * X[i].T @ X[i]) - 0.05 * G[i]
        torch.testing.assert_close(new["W"][i], ref, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(new["b"], W[:, :, 0] - 0.05 * G[:, :, 0])  # no input: plain GD


def test_mismatched_input_is_named():
    r = rule("dgd")
    W = torch.zeros(3, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="'W'.*width 4"):
        r.update({"W": W}, r.init({"W": W}), {"W": W}, x={"W": torch.zeros(5, dtype=W.dtype)})
    with pytest.raises(ValueError, match="x must be"):
        rule("dgd", x=3.0)

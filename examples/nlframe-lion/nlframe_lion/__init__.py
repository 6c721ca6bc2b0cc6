"""Lion update rule and cosine surprise objective, as a third-party nlframe plugin."""
import torch
import nlframe
from nlframe.interfaces import Objective, UpdateRule
from nlframe.utils import bcast


def step_bounded(rule, grads, state, params, new_params, new_state, hyper):
    """Per element ``|W' − W| ≤ lr·(1 + λ|W|)``: sign updates have unit size."""
    for n, w in params.items():
        bound = hyper["lr"] * (1 + hyper["weight_decay"] * w.abs()) * (1 + 1e-12) + 1e-15
        assert ((new_params[n] - w).abs() <= bound).all(), f"{n}: a step exceeds lr·(1 + λ|W|)"


class Lion(UpdateRule):
    """Lion: ``W ← W − lr·(sign(β1 m + (1−β1) g) + λW)``, ``m ← β2 m + (1−β2) g``.

    Chen et al., "Symbolic Discovery of Optimization Algorithms", arXiv 2302.06675, Alg. 2.
    """

    hyperparams = {"lr": 1e-4, "beta1": 0.9, "beta2": 0.99, "weight_decay": 0.0}
    invariants = (step_bounded,)

    def check_hyper(self, h):
        inf = float("inf")
        for k, hi in (("lr", inf), ("beta1", 1), ("beta2", 1), ("weight_decay", inf)):
            if isinstance(h[k], (int, float)) and not 0 <= h[k] <= hi:
                raise ValueError(f"lion: {k} must be in [0, {hi}], got {h[k]}")

    def init(self, params):
        return {"m": {n: torch.zeros_like(w) for n, w in params.items()}}

    def update(self, grads, state, params, **hyper):
        h, new_w, new_m = self.resolve(hyper), {}, {}
        for n, w in params.items():
            lr, b1, b2, wd = (bcast(h[k], w) for k in ("lr", "beta1", "beta2", "weight_decay"))
            m, g = state["m"][n], grads[n]
            new_w[n] = w - lr * (torch.sign(b1 * m + (1 - b1) * g) + wd * w)  # Alg. 2, line 6
            new_m[n] = b2 * m + (1 - b2) * g                                    # Alg. 2, line 7
        return new_w, {"m": new_m}


class Cosine(Objective):
    """Cosine surprise ``ℓ = 1 − ⟨p, v⟩ / (√(‖p‖² + ε²)·√(‖v‖² + ε²))``, ``p = M_W(k)``.

    ε also caps the surprise of a zero memory: ``‖∂ℓ/∂p‖ ≤ 1/ε``.
    """

    def __init__(self, eps: float = 0.1):
        self.eps = float(eps)

    def loss(self, pred, target):
        norms = ((pred.pow(2).sum(-1) + self.eps**2) * (target.pow(2).sum(-1) + self.eps**2)).sqrt()
        return 1 - (pred * target).sum(-1) / norms


@nlframe.hookimpl
def nlframe_register_optimizer(register):
    register("lion", Lion)


@nlframe.hookimpl
def nlframe_register_objective(register):
    register("cosine", Cosine)

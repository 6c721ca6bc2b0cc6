"""Memory/objective/backend suites pass correct plugins and catch broken ones."""

import pytest
import torch

from nlframe.testing import check_backend, check_memory, check_objective, suite

from .local_plugins import KitL2, KitLinear, KitLinearL2

LOCAL = dict(backend="kit-reference")


def test_correct_local_plugins_pass(kit_plugins):
    assert check_memory("kit-linear", objective="kit-l2", max_examples=4, **LOCAL) == []
    assert check_memory("kit-residual", objective="kit-l2", max_examples=3, **LOCAL) == []
    assert check_objective("kit-l2", memory="kit-linear", max_examples=4, **LOCAL) == []
    assert check_backend("kit-linear-l2", reference="kit-reference", max_examples=4) == []


class BatchMeanMemory(KitLinear):
    """Wrong on purpose: reads with the mean of W over leading dims."""

    def read(self, params, x):
        W = params["W"]
        if W.dim() > 2:
            W = W.mean(dim=tuple(range(W.dim() - 2)), keepdim=True).expand_as(W)
        return super().read({"W": W}, x)


class WrongShapeMemory(KitLinear):
    def init_params(self, *, generator=None, dtype=torch.float32, device=None):
        return {"W": torch.zeros(self.dim_k, self.dim_v + 1, dtype=dtype)}


class StraightThroughMemory(KitLinear):
    """Wrong on purpose: its gradient w.r.t. x ignores the tanh."""

    def read(self, params, x):
        y = super().read(params, x)
        return y + (torch.tanh(y) - y).detach()


@pytest.mark.parametrize("cls, prop", [
    (BatchMeanMemory, "read_is_batched_and_tokenwise"),
    (BatchMeanMemory, "scan_batch_independent"),
    (WrongShapeMemory, "init_params_follow_shapes"),
    (StraightThroughMemory, "read_gradients_match_finite_differences"),
    (StraightThroughMemory, "scan_gradients_match_finite_differences"),
])
def test_broken_memory_fails_the_named_property(register, cls, prop):
    register(memory=[("kit-broken", cls)])
    s = suite("memory", "kit-broken", objective="kit-l2", **LOCAL)
    with pytest.raises(AssertionError, match=f"memory plugin 'kit-broken' violates {prop!r}"):
        s.run(prop, max_examples=10)


class WrongGrad(KitL2):
    def grad(self, pred, target):
        return 2 * (pred - target)


class WrongAffine(KitL2):
    """Declares ``a·pred + b·target`` but computes ``½‖p − t‖²`` (no ``grad`` override)."""

    affine_grad = (1.0, 1.0)
    grad = KitL2.__mro__[1].grad


class MeanLoss(KitL2):
    """Wrong on purpose: one loss for all tokens."""

    def loss(self, pred, target):
        return super().loss(pred, target).mean().expand(pred.shape[:-1])


@pytest.mark.parametrize("cls, prop, words", [
    (WrongGrad, "grad_matches_autograd", "grad vs autograd"),
    (WrongAffine, "grad_matches_autograd", "declared affine_grad"),
    (MeanLoss, "loss_is_per_token", "loss of token"),
])
def test_broken_objective_fails_the_named_property(register, cls, prop, words):
    register(objective=[("kit-broken", cls)])
    with pytest.raises(AssertionError) as info:
        suite("objective", "kit-broken", memory="kit-linear", **LOCAL).run(prop, max_examples=10)
    assert f"violates {prop!r}" in str(info.value) and words in str(info.value)


class OffByOneBackend(KitLinearL2):
    """Wrong on purpose: decays with the previous token's gate."""

    def scan(self, request):
        if "decay" in request.hyper:
            request.hyper = {**request.hyper, "decay": request.hyper["decay"].roll(1, dims=-1)}
        return super().scan(request)


class StatelessBackend(KitLinearL2):
    """Wrong on purpose: forgets the carried momentum between calls."""

    def scan(self, request):
        st = request.state
        st.opt_state = {"momentum": {"W": torch.zeros_like(st.params["W"])}}
        return super().scan(request)


class Unsupported(KitLinearL2):
    def supports(self, request):
        return "nothing"


class Unavailable(KitLinearL2):
    def is_available(self):
        return False


@pytest.mark.parametrize("cls, prop", [
    (OffByOneBackend, "matches_reference"),
    (OffByOneBackend, "every_supported_combination_matches"),
    (StatelessBackend, "scan_streaming_consistent"),
])
def test_broken_backend_fails_the_named_property(register, cls, prop):
    register(backend=[("kit-broken", cls)])
    with pytest.raises(AssertionError, match=f"backend plugin 'kit-broken' violates {prop!r}"):
        suite("backend", "kit-broken", reference="kit-reference").run(prop, max_examples=15)


@pytest.mark.parametrize("cls, reason", [(Unsupported, "supports no registered combination"),
                                         (Unavailable, "not available")])
def test_backend_without_work_is_skipped_with_reason(register, cls, reason):
    register(backend=[("kit-idle", cls)])
    assert len(check_backend("kit-idle", max_examples=2)) == 5
    from nlframe.testing import PropertyNotApplicable
    with pytest.raises(PropertyNotApplicable, match=reason):
        suite("backend", "kit-idle").run("matches_reference")


def test_unknown_plugin_names_the_registered_ones(kit_plugins):
    with pytest.raises(ValueError, match="unknown memory 'kit-linaer'.*did you mean 'kit-linear'"):
        check_memory("kit-linaer")

"""The reused CPU buffers (``nlframe.buffers``): a storage is handed out again only once
nothing else refers to it, the pool stays within its limit, and a HOPE training step
gives the same numbers with and without it."""

from pathlib import Path

import torch

from nlframe import buffers
from nlframe.buffers import BufferPool
from nlframe.build import build
from nlframe.optim import build_optimizers
from nlframe.spec import load_spec
from nlframe.bench import lm_train_step

CPU = torch.device("cpu")
SHAPE = (64, 64)  # 16 KiB: every size counts with min_bytes=0


def pool(**kw) -> BufferPool:
    return BufferPool(**{"min_bytes": 0, **kw})


def test_a_storage_comes_back_once_its_tensors_and_views_are_gone():
    p = pool()
    a = p.empty(SHAPE, torch.float32, CPU)
    first = a.data_ptr()
    view = a[1:]
    del a
    b = p.empty(SHAPE, torch.float32, CPU)  # the view still holds the first storage
    assert b.data_ptr() != first
    del view
    c = p.empty(SHAPE, torch.float32, CPU)
    assert c.data_ptr() == first and c.shape == SHAPE and c.is_contiguous()
    assert p.kept == 2 * 64 * 64 * 4 and p.reused == 1


def test_a_storage_saved_by_autograd_is_not_handed_out_before_the_backward_pass():
    p = pool()
    w = torch.ones(SHAPE, requires_grad=True)
    x = p.empty(SHAPE, torch.float32, CPU).fill_(2.0)
    loss = (w * x).sum()  # saves x for ∂w
    first = x.data_ptr()
    del x
    other = p.empty(SHAPE, torch.float32, CPU).fill_(-7.0)
    assert other.data_ptr() != first
    loss.backward()
    assert torch.equal(w.grad, torch.full(SHAPE, 2.0))
    del loss
    assert p.empty(SHAPE, torch.float32, CPU).data_ptr() == first  # graph freed: reused


def test_the_pool_keeps_no_more_than_its_limit():
    size = 64 * 64 * 4
    p = pool(limit=2 * size)
    live = [p.empty(SHAPE, torch.float32, CPU) for _ in range(5)]
    assert p.kept == 2 * size and len({t.data_ptr() for t in live}) == 5
    p.clear()
    assert p.kept == 0


def test_small_buffers_other_devices_and_a_disabled_pool_are_plain_empty():
    for p, shape, device in [(BufferPool(), (4, 4), CPU),  # below min_bytes
                             (pool(enabled=False), SHAPE, CPU),
                             (pool(), SHAPE, torch.device("meta"))]:
        t = p.empty(shape, torch.float32, device)
        assert t.shape == shape and t.device == device and p.kept == 0


def test_a_resized_storage_is_dropped_rather_than_handed_out():
    p = pool()
    a = p.empty(SHAPE, torch.float32, CPU)
    a.resize_(128, 128)  # grows the pooled storage itself
    del a
    b = p.empty(SHAPE, torch.float32, CPU)
    assert b.shape == SHAPE and p.kept == 64 * 64 * 4  # only b's fresh storage is kept


def _two_steps(monkeypatch, active: BufferPool) -> dict[str, torch.Tensor]:
    monkeypatch.setattr(buffers, "POOL", active)
    spec = load_spec(Path(__file__).parents[1] / "specs" / "hope-tiny.toml")
    torch.manual_seed(0)
    model = build(spec)
    opts = build_optimizers(model, spec.train)
    tokens = torch.randint(0, 256, (2, 97), generator=torch.Generator().manual_seed(1))
    batch = {"tokens": tokens[:, :-1], "targets": tokens[:, 1:]}
    for _ in range(2):
        lm_train_step(model, batch, opts)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_hope_training_steps_are_the_same_with_and_without_reused_buffers(monkeypatch):
    """Two training steps of hope-tiny (DGD tiles, CMS tile ends, the loss), every buffer
    pooled (``min_bytes=0``), equal the same steps with fresh buffers (to rounding: the
    buffers' addresses differ)."""
    active = pool()
    with_pool = _two_steps(monkeypatch, active)
    assert active.reused > 0  # storages were handed out again within and across steps
    without = _two_steps(monkeypatch, pool(enabled=False))
    for k, v in without.items():
        torch.testing.assert_close(with_pool[k], v, rtol=1e-6, atol=1e-7, msg=k)


def test_linear_equals_f_linear_in_value_and_gradients(monkeypatch):
    monkeypatch.setattr(buffers, "POOL", pool())
    x = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(7, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(buffers.linear, (x, w))
    torch.testing.assert_close(buffers.linear(x, w), torch.nn.functional.linear(x, w),
                               rtol=0, atol=0)
    frozen = x.detach()  # only the weight's gradient is asked for
    (g,) = torch.autograd.grad(buffers.linear(frozen, w).sum(), w)
    torch.testing.assert_close(g, torch.ones(2 * 5, 7, dtype=g.dtype).t() @ frozen.reshape(10, 6))


def test_linear_never_hands_out_a_gradient_still_held(monkeypatch):
    """A tied head (the weight also embeds): the weight's gradient lives in a pooled
    storage; while ``.grad`` keeps it, the next step writes elsewhere, and every step's
    gradient equals ``F.linear``'s."""
    active = pool()
    monkeypatch.setattr(buffers, "POOL", active)
    emb = torch.nn.Embedding(11, 4)
    tokens = torch.tensor([[1, 3, 3, 7]])

    def grad_of(fn) -> torch.Tensor:
        emb.weight.grad = None
        x = emb(tokens)
        (fn(x, emb.weight) ** 2).sum().backward()
        return emb.weight.grad

    expect = grad_of(torch.nn.functional.linear).clone()
    first = grad_of(buffers.linear)
    held = first.clone()
    for _ in range(3):
        second = grad_of(buffers.linear)
        torch.testing.assert_close(second, expect)
    torch.testing.assert_close(first, held, rtol=0, atol=0)  # not written over
    assert active.reused > 0


def test_linear_is_f_linear_under_autocast_and_off_the_pool(monkeypatch):
    monkeypatch.setattr(buffers, "POOL", pool())
    x, w = torch.randn(3, 4), torch.randn(5, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert buffers.linear(x, w).dtype == torch.bfloat16
    monkeypatch.setattr(buffers, "POOL", pool(enabled=False))
    y = buffers.linear(x, w.requires_grad_())
    assert "_Linear" not in type(y.grad_fn).__name__ and buffers.POOL.kept == 0
    monkeypatch.setattr(buffers, "POOL", pool())
    assert "_Linear" in type(buffers.linear(x, w).grad_fn).__name__  # the pooled path

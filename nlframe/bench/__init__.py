"""Benchmarks, runnable as ``nlframe bench NAME`` or ``python benchmarks/NAME.py``.

Each module ``nlframe.bench.<name>`` defines ``main(argv: list[str] | None) -> int``
that measures side by side in one run and prints a table of ratios (never a
pass/fail on time).
"""

BENCHMARKS = ("scan", "optim", "train", "model")


def lm_train_step(model, batch: dict, optimizers) -> None:
    """One outer training step of a language model as the benchmarks time it:
    ``model(batch["tokens"])``, :func:`nlframe.train.lm_loss`, backward, and a step of
    every optimizer in ``optimizers`` (gradients zeroed first, set to ``None``)."""
    from ..train import lm_loss

    logits, _ = model(batch["tokens"])
    loss = lm_loss(logits, batch)
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    loss.backward()
    for opt in optimizers:
        opt.step()

"""TensorBoard logs of a run: scalars, the spec text, hyperparameters and a layout.

Tags: ``train/loss``, ``train/lr``, ``perf/tokens_per_s``, ``eval/<metric>`` and
one ``surprise/<block>.<level>`` per inner level. The "Custom scalars" tab
shows them in that order — training and throughput first, then evaluation,
then every level's surprise in one multi-line chart, so they do not bury the
loss. The "Text" tab holds the effective spec, the "HParams" tab the
``[train]`` table next to the final evaluation metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["RunWriter"]

LAYOUT = {
    "train": {"loss": ["Multiline", ["train/loss"]], "learning rate": ["Multiline", ["train/lr"]]},
    "perf": {"tokens/s": ["Multiline", ["perf/tokens_per_s"]]},
    "eval": {"metrics": ["Multiline", ["eval/.*"]]},
    "surprise": {"all levels": ["Multiline", ["surprise/.*"]]},
}


def _hparam_value(value: Any) -> Any:
    """TensorBoard's hparams take numbers, strings and bools only."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


class RunWriter:
    """A :class:`torch.utils.tensorboard.SummaryWriter` for one run directory."""

    def __init__(self, logdir: str | Path, *, purge_step: int | None, spec_toml: str, cfg: Any):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(logdir), purge_step=purge_step)
        self.cfg = cfg
        if not purge_step:  # a fresh run: describe it once
            self.writer.add_custom_scalars(LAYOUT)
            self.writer.add_text("spec", "```toml\n" + spec_toml + "\n```", 0)

    def scalars(self, record: dict[str, float], step: int) -> None:
        for tag, value in record.items():
            self.writer.add_scalar(tag, value, step)

    def close(self, final_metrics: dict[str, float]) -> None:
        """Record the hyperparameters with the final evaluation metrics, then close."""
        import attrs
        from torch.utils.tensorboard.summary import hparams

        if final_metrics:
            hp = {k: _hparam_value(v) for k, v in attrs.asdict(self.cfg).items()}
            for summary in hparams(hp, final_metrics):
                self.writer.file_writer.add_summary(summary)
        self.writer.close()

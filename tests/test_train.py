"""The training loop: learning, exact resume, atomic checkpoints, eval/generate CLI, bad input."""

import json
import math

import pytest
from click.testing import CliRunner

from nlframe.checkpoint import CheckpointError, find_checkpoint, load_checkpoint
from nlframe.cli import main
from nlframe.train import Trainer, lr_factor, train
from nlframe.train_config import TrainConfig

TINY = """
[model]
vocab_size = 256
dim = 32

[[model.blocks]]
type = "attention"
heads = 2

[[model.blocks]]
type = "mlp"

[train]
data = "{data}"
steps = {steps}
batch_size = 4
seq_len = 32
lr = 0.01
warmup_steps = 2
log_every = 1
eval_every = 3
eval_batches = 1
checkpoint_every = 3
"""


def tiny_spec(tmp_path, data="stdlib", steps=6, name="tiny.toml"):
    path = tmp_path / name
    path.write_text(TINY.format(data=data, steps=steps))
    return path


def losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]


def test_lr_schedule_shapes():
    cfg = TrainConfig(steps=100, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(100, cfg) == pytest.approx(0.1)
    assert lr_factor(55, cfg) == pytest.approx(0.1 + 0.9 * 0.5)
    lin = TrainConfig(steps=100, warmup_steps=0, schedule="linear", min_lr_ratio=0.0)
    assert lr_factor(50, lin) == pytest.approx(0.5)
    assert lr_factor(70, TrainConfig(schedule="constant", warmup_steps=0)) == 1.0


def test_loss_decreases_on_learnable_task(tmp_path):
    spec = tiny_spec(tmp_path, data="parity", steps=40)
    text = spec.read_text().replace("lr = 0.01", "lr = 0.003").replace("eval_every = 3", "eval_every = 40")
    spec.write_text(text)
    result = train(spec, tmp_path / "run", progress=False)
    curve = [loss for _, loss in losses(tmp_path / "run")]
    first, last = sum(curve[:5]) / 5, sum(curve[-5:]) / 5
    assert last < first - 0.1, curve
    assert result.step == 40 and math.isfinite(result.last_loss)


def test_resume_reproduces_the_uninterrupted_loss_curve(tmp_path):
    spec = tiny_spec(tmp_path, steps=6)
    train(spec, tmp_path / "straight", progress=False)
    with Trainer(spec, tmp_path / "split", progress=False) as trainer:
        trainer.run(until=4)  # stops off the checkpoint grid
    assert load_checkpoint(tmp_path / "split")["trainer"]["step"] == 4
    train(None, tmp_path / "split", resume=True, progress=False)
    assert losses(tmp_path / "straight") == losses(tmp_path / "split")


def test_run_writes_tensorboard_metrics_and_checkpoint(tmp_path):
    out = tmp_path / "run"
    train(tiny_spec(tmp_path, steps=3), out, progress=False)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert {"train/loss", "train/lr", "perf/tokens_per_s"} <= set(rows[0])
    assert {"eval/loss", "eval/bpb"} <= set(rows[-1])
    assert list((out / "tb").glob("events.out.tfevents.*"))
    ckpt = find_checkpoint(out)
    assert {p.name for p in ckpt.iterdir()} == {"model.safetensors", "trainer.safetensors",
                                                "trainer.json", "spec.toml", "meta.json"}


def test_crash_mid_checkpoint_keeps_previous(tmp_path, monkeypatch):
    import nlframe.checkpoint as ck

    out = tmp_path / "run"
    train(tiny_spec(tmp_path, steps=3), out, progress=False)
    real_save = ck.save_file

    def dying_save(tensors, path, *a, **k):
        real_save(tensors, path, *a, **k)
        if path.endswith(ck.TRAINER_TENSORS):
            raise OSError("disk died mid-checkpoint")

    monkeypatch.setattr(ck, "save_file", dying_save)
    with pytest.raises(OSError, match="disk died"):
        train(None, out, resume=True, steps=6, progress=False)
    monkeypatch.undo()
    assert load_checkpoint(out)["trainer"]["step"] == 3  # the previous checkpoint still loads
    # a crash between the two renames leaves checkpoint.old, which is found
    (out / "checkpoint").rename(out / "checkpoint.old")
    assert find_checkpoint(out).name == "checkpoint.old"


def test_eval_json_and_generate(tmp_path):
    out = tmp_path / "run"
    train(tiny_spec(tmp_path, steps=3), out, progress=False)
    r = CliRunner().invoke(main, ["eval", str(out), "--json", "--batches", "1"])
    assert r.exit_code == 0, r.output
    obj = json.loads(r.output)
    assert obj["task"] == "stdlib" and obj["step"] == 3
    assert obj["bpb"] > 0 and obj["ppl"] > 1 and "loss" in obj
    r = CliRunner().invoke(main, ["generate", str(out), "--prompt", "def ", "--tokens", "8",
                                  "--temperature", "0"])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("def ")


def test_bad_input_errors(tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["eval", str(tmp_path / "missing")])
    assert r.exit_code != 0 and "does not exist" in r.output
    r = runner.invoke(main, ["train", str(tiny_spec(tmp_path)), "--out", str(tmp_path / "o"),
                             "--data", "text:" + str(tmp_path / "nope")])
    assert r.exit_code != 0 and "nope" in r.output and "Traceback" not in r.output
    small_vocab = tiny_spec(tmp_path, name="v.toml")
    small_vocab.write_text(small_vocab.read_text().replace("vocab_size = 256", "vocab_size = 16"))
    r = runner.invoke(main, ["train", str(small_vocab), "--out", str(tmp_path / "v")])
    assert r.exit_code != 0 and "vocabulary mismatch" in r.output
    # spec/checkpoint mismatch: a checkpoint whose spec no longer matches its weights
    out = tmp_path / "run"
    train(tiny_spec(tmp_path, steps=3), out, progress=False)
    spec_file = out / "checkpoint" / "spec.toml"
    spec_file.write_text(spec_file.read_text().replace("dim = 32", "dim = 48"))
    r = runner.invoke(main, ["eval", str(out)])
    assert r.exit_code != 0 and "does not match" in r.output
    with pytest.raises(CheckpointError):
        find_checkpoint(tmp_path)


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    spec = tiny_spec(tmp_path, steps=100000)
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "nlframe", "train", str(spec), "--out", str(out),
                             "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted: checkpoint saved" in stdout and "Traceback" not in stderr
    step = load_checkpoint(out)["trainer"]["step"]
    assert step >= 2 and losses(out)[-1][0] == step


def test_muon_trains_matrices_and_falls_back_for_vectors(tmp_path):
    spec = tiny_spec(tmp_path, steps=2)
    spec.write_text(spec.read_text().replace("lr = 0.01", 'lr = 0.01\noptimizer = "muon"'))
    with Trainer(spec, tmp_path / "run", progress=False) as trainer:
        rules = [o.rule_name for o in trainer.optimizers]
        assert rules == ["muon", "adamw"]
        vectors = [p for p in trainer.model.parameters() if p.dim() < 2]
        assert all(any(p is q for g in trainer.optimizers[1].param_groups for q in g["params"])
                   for p in vectors)
        result = trainer.run()
    assert math.isfinite(result.last_loss)


def test_non_finite_gradients_raise_naming_the_parameters(tmp_path):
    with Trainer(tiny_spec(tmp_path, steps=2), tmp_path / "run", progress=False) as trainer:
        name, param = next(iter(trainer.model.named_parameters()))
        param.register_hook(lambda g: g * float("nan"))
        with pytest.raises(FloatingPointError, match="non-finite gradients at step 0") as info:
            trainer.run()
    assert name in str(info.value)

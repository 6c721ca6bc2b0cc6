"""Trainer modes: gradient accumulation, mixed precision, training frequency (update_every),
compile, TensorBoard records, the progress bar, and FSDP/DDP runs that resume on another
number of processes."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from nlframe.optim import Optimizer
from nlframe.train import Trainer, train

from .test_train import losses
from .torchrun import needs_gloo, torchrun

TRAIN = """
[train]
steps = {steps}
batch_size = 2
seq_len = 32
lr = 0.003
warmup_steps = 0
schedule = "constant"
log_every = 1
eval_every = 1000
eval_batches = 1
checkpoint_every = 3
{extra}
"""

HOPE = """
[model]
vocab_size = 256
dim = 32

[[model.blocks]]
type = "hope"

[model.blocks.titans]
heads = 2
chunk_size = 8
proj_chunk_size = 8
memory = {{ type = "residual-mlp", hidden = 16 }}
proj_memory = {{ type = "residual-mlp", hidden = 16 }}
rule = {{ type = "dgd", lr = 1.0 }}

[model.blocks.cms]
chunk_sizes = [4, 8]
memory = {{ type = "mlp", hidden = 32 }}
""" + TRAIN

TITANS = """
[model]
vocab_size = 256
dim = 32

[[model.blocks]]
type = "titans"
heads = 2
layout = "mal"
window = 16
chunk_size = 8
memory = {{ type = "mlp", hidden = 32 }}

[[model.blocks]]
type = "mlp"
""" + TRAIN


def write(tmp_path, template, name="spec.toml", steps=4, extra=""):
    path = tmp_path / name
    path.write_text(template.format(steps=steps, extra=extra))
    return path


def weights(run):
    return load_file(str(run / "checkpoint" / "model.safetensors"))


def test_grad_accum_4_equals_a_4x_batch(tmp_path):
    accum = write(tmp_path, TITANS, "a.toml", extra="grad_accum = 4")
    big = write(tmp_path, TITANS.replace("batch_size = 2", "batch_size = 8"), "b.toml")
    train(accum, tmp_path / "accum", progress=False)
    train(big, tmp_path / "big", progress=False)
    la, lb = losses(tmp_path / "accum"), losses(tmp_path / "big")
    assert [s for s, _ in la] == [s for s, _ in lb] == [1, 2, 3, 4]
    for (_, x), (_, y) in zip(la, lb):
        assert x == pytest.approx(y, rel=1e-5, abs=1e-6)
    wa, wb = weights(tmp_path / "accum"), weights(tmp_path / "big")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6, msg=k)


@pytest.mark.parametrize("template", [HOPE, TITANS], ids=["hope", "titans"])
def test_bf16_training_is_finite_and_close_to_fp32(tmp_path, template):
    fp32 = write(tmp_path, template, "fp32.toml", steps=5)
    bf16 = write(tmp_path, template, "bf16.toml", steps=5, extra='precision = "bf16"')
    train(fp32, tmp_path / "fp32", progress=False)
    train(bf16, tmp_path / "bf16", progress=False)
    a, b = losses(tmp_path / "fp32"), losses(tmp_path / "bf16")
    assert all(math.isfinite(x) for _, x in b)
    # bf16 rounds at 2^-8 ≈ 0.4%; five steps of a ~5.5 nats loss stay within 1% of fp32
    for (_, x), (_, y) in zip(a, b):
        assert y == pytest.approx(x, rel=1e-2)
    assert b[-1][1] < b[0][1]  # and it learns


def test_fp16_training_uses_a_grad_scaler_and_stays_finite(tmp_path):
    spec = write(tmp_path, TITANS, steps=3, extra='precision = "fp16"')
    with Trainer(spec, tmp_path / "run", progress=False) as trainer:
        assert trainer.precision.scaler is not None
        trainer.run()
        assert trainer.precision.scaler.get_scale() > 0
    assert all(math.isfinite(x) for _, x in losses(tmp_path / "run"))
    # the scaler's state is checkpointed and resumed
    with Trainer(None, tmp_path / "run", resume=True, steps=4, progress=False) as again:
        assert again.precision.scaler.get_scale() == trainer.precision.scaler.get_scale()


def test_update_every_steps_a_group_from_the_summed_gradients():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(3, 4))
    ref = torch.nn.Parameter(w.detach().clone())
    ours = Optimizer([{"params": [w], "update_every": 3}], rule="adamw", lr=0.1, weight_decay=0.0)
    theirs = torch.optim.AdamW([ref], lr=0.1, weight_decay=0.0)
    grads = [torch.randn(3, 4) for _ in range(6)]
    for i, g in enumerate(grads):
        w.grad = g.clone()
        before = w.detach().clone()
        ours.step()
        if (i + 1) % 3:
            assert torch.equal(w.detach(), before)  # not due: untouched
        else:
            ref.grad = sum(grads[i - 2:i + 1])
            theirs.step()
            torch.testing.assert_close(w.detach(), ref.detach(), rtol=1e-6, atol=1e-7)
    sd = ours.state_dict()
    assert sd["param_groups"][0]["update_every_calls"] == 6


def test_cms_train_every_becomes_optimizer_groups(tmp_path):
    spec = write(tmp_path, HOPE.replace("chunk_sizes = [4, 8]", "chunk_sizes = [4, 8]\ntrain_every = [1, 2]"),
                 steps=4)
    with Trainer(spec, tmp_path / "run", progress=False) as trainer:
        groups = [g for o in trainer.optimizers for g in o.param_groups]
        slow = [n for g in groups if g.get("update_every") == 2 for n in g["param_names"]]
        assert slow and all(".cms.init.1." in n or ".cms.norms.1." in n or ".cms.keys.1." in n
                            or ".cms.values.1." in n for n in slow)
        level1 = dict(trainer.model.named_parameters())[slow[0]]
        before = level1.detach().clone()
        trainer.run(until=1)
        assert torch.equal(level1.detach(), before)  # stepped every 2nd step only
        trainer.run(until=2)
        assert not torch.equal(level1.detach(), before)


def test_resume_with_update_every_reproduces_the_loss_curve(tmp_path):
    text = HOPE.replace("chunk_sizes = [4, 8]", "chunk_sizes = [4, 8]\ntrain_every = [1, 2]")
    spec = write(tmp_path, text, steps=6)
    train(spec, tmp_path / "straight", progress=False)
    with Trainer(spec, tmp_path / "split", progress=False) as trainer:
        trainer.run(until=3)  # odd: a half-accumulated slow group is checkpointed
    train(None, tmp_path / "split", resume=True, progress=False)
    assert losses(tmp_path / "split") == losses(tmp_path / "straight")


def test_tensorboard_records_layout_spec_hparams_and_grouped_surprise(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    spec = write(tmp_path, HOPE, steps=2).read_text().replace("eval_every = 1000", "eval_every = 2")
    run = tmp_path / "run"
    train(spec, run, progress=False)
    acc = EventAccumulator(str(run / "tb"), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"train/loss", "train/lr", "perf/tokens_per_s", "eval/bpb"} <= set(tags["scalars"])
    surprise = [t for t in tags["scalars"] if t.startswith("surprise/")]
    assert surprise and not any(t.startswith("memory/") for t in tags["scalars"])
    assert "spec/text_summary" in tags["tensors"]
    plugins = {p for p in os.listdir(run / "tb" / "plugins")} if (run / "tb" / "plugins").exists() \
        else set()
    content = b"".join(p.read_bytes() for p in (run / "tb").glob("events.out.tfevents.*"))
    assert b"custom_scalars" in content or "custom_scalars" in plugins
    assert b"hparams" in content and b"train/loss" in content


def test_progress_bar_shows_tokens_per_second_on_every_step(tmp_path, monkeypatch):
    import tqdm.auto

    postfixes = []

    class Recorder(tqdm.auto.tqdm):
        def set_postfix(self, *args, **kwargs):
            postfixes.append(kwargs)
            super().set_postfix(*args, **kwargs)

    monkeypatch.setattr(tqdm.auto, "tqdm", Recorder)
    spec = write(tmp_path, TITANS.replace("log_every = 1", "log_every = 10"), steps=5)
    with Trainer(spec, tmp_path / "run", progress=True) as trainer:
        trainer.run()
    assert len(postfixes) == 5 and all(float(p["tok_s"]) > 0 for p in postfixes)


def test_compile_option_trains_through_torch_compile(tmp_path):
    eager = write(tmp_path, TITANS, "eager.toml", steps=2)
    compiled = write(tmp_path, TITANS, "compiled.toml", steps=2, extra="compile = true")
    train(eager, tmp_path / "eager", progress=False)
    with Trainer(compiled, tmp_path / "run", progress=False) as trainer:
        assert hasattr(trainer.forward, "_orig_mod")  # an OptimizedModule
        trainer.run()
    for (_, x), (_, y) in zip(losses(tmp_path / "eager"), losses(tmp_path / "run")):
        assert y == pytest.approx(x, rel=1e-4)  # the memory scans run eagerly inside


@needs_gloo
@pytest.mark.parametrize("parallel", ["fsdp", "ddp"])
def test_two_process_run_checkpoints_and_resumes_in_one_process(tmp_path, parallel):
    spec = write(tmp_path, TITANS, steps=6)
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(spec, straight, progress=False)
    r = torchrun(["train", str(spec), "--out", str(split), "--steps", "3", "--parallel", parallel,
                  "--no-progress"])
    assert r.returncode == 0, r.stderr[-3000:]
    meta = json.loads((split / "checkpoint" / "trainer.json").read_text())
    assert meta["world_size"] == 2 and meta["step"] == 3
    r = subprocess.run([sys.executable, "-m", "nlframe", "train", str(spec), "--out", str(split),
                        "--resume", "--steps", "6", "--no-progress"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = losses(straight), losses(split)
    assert [s for s, _ in a] == [s for s, _ in b] == list(range(1, 7))
    for (_, x), (_, y) in zip(a, b):
        assert y == pytest.approx(x, rel=1e-4)


def test_train_overrides_are_validated_and_saved_in_the_run(tmp_path):
    from click.testing import CliRunner

    from nlframe.cli import main

    spec = write(tmp_path, TITANS, steps=2)
    run = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", str(spec), "model.dim=48", "train.lr=1e-3",
                                  "model.blocks[0].chunk_size=4", "--out", str(run), "--no-progress"])
    assert r.exit_code == 0, r.output
    saved = (run / "spec.toml").read_text()
    assert "dim = 48" in saved and "lr = 0.001" in saved and "chunk_size = 4" in saved
    assert saved == (run / "checkpoint" / "spec.toml").read_text()
    for bad, message in [("model.dimm=3", "model.dimm: unknown key 'dimm'; did you mean 'dim'?"),
                         ("model.blocks[7].heads=2", "index 7 out of range"),
                         ("train.lr=inf", "train.lr: expected a finite number"),
                         ("nonsense", "KEY.PATH=VALUE")]:
        r = CliRunner().invoke(main, ["train", str(spec), bad, "--out", str(tmp_path / "bad")])
        assert r.exit_code != 0 and message in r.output, (bad, r.output)
        assert "Traceback" not in r.output
    assert not (tmp_path / "bad" / "checkpoint").exists()


def test_a_spec_that_cannot_fit_is_refused_before_building(tmp_path):
    from click.testing import CliRunner

    from nlframe.cli import main

    spec = write(tmp_path, TITANS, steps=2)
    r = CliRunner().invoke(main, ["train", str(spec), "model.blocks[1].repeat=100000000",
                                  "--out", str(tmp_path / "run")])
    assert r.exit_code != 0 and "too large to train here" in r.output, r.output
    assert not (tmp_path / "run").exists()


def test_what_cannot_run_distributed_fails_before_joining(monkeypatch):
    from nlframe.distributed import Distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ValueError, match="cpu \\(gloo\\) or cuda"):
        Distributed.from_env("mps")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            Distributed.from_env("cuda")
    with pytest.raises(ValueError, match="parallel: expected one of ddp, fsdp"):
        Distributed(mode="zero3")

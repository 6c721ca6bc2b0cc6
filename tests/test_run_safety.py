"""Run directories and checkpoints a hostile or careless user cannot break: no code runs
from a checkpoint, runs are never overwritten or shared by accident, damaged files give
one error naming them, and every bad CLI option is a clean error."""

import json
import pickle
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from nlframe.checkpoint import (CheckpointError, decode_tree, encode_tree, find_checkpoint,
                                load_checkpoint)
from nlframe.cli import main
from nlframe.rundir import RunDir, RunDirError
from nlframe.train import train

from .test_train import losses, tiny_spec


class _Payload:
    """A pickle that, when loaded, creates the file ``marker`` (harmless stand-in for
    ``os.system``)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("safety")
    out = root / "run"
    train(tiny_spec(root, steps=3), out, progress=False)
    return out


def _copy(run, dst):
    import shutil

    shutil.copytree(run, dst)
    return dst


def _clean_error(result):
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception


def test_trainer_state_round_trips_exactly():
    state = {"step": 3, "optim": {"state": {0: {"m": torch.arange(3.0)}, "w": {"x": 1}},
                                  "param_groups": [{"betas": (0.9, 0.99), "lr": float("inf")}]},
             "rng": (3, tuple(range(5)), None), "$odd": "key"}
    tree, tensors = encode_tree(state)
    back = decode_tree(json.loads(json.dumps(tree)), tensors)
    assert back["optim"]["state"][0]["m"].equal(torch.arange(3.0))
    assert back["optim"]["param_groups"][0]["betas"] == (0.9, 0.99)
    assert back["rng"] == (3, (0, 1, 2, 3, 4), None) and back["$odd"] == "key"
    assert set(back["optim"]["state"]) == {0, "w"}
    with pytest.raises(TypeError, match="cannot store a object"):
        encode_tree({"x": object()})


def test_a_crafted_pickle_in_any_run_file_executes_nothing(trained, tmp_path):
    runner = CliRunner()
    ckpt_files = [p.name for p in (trained / "checkpoint").iterdir()]
    for name in [*ckpt_files, "trainer.pt"]:
        run = _copy(trained, tmp_path / f"run-{name}")
        marker = tmp_path / f"pwned-{name}"
        (run / "checkpoint" / name).write_bytes(pickle.dumps(_Payload(marker)))
        for args in (["eval", str(run), "--batches", "1"],
                     ["generate", str(run), "--prompt", "x", "--tokens", "2"],
                     ["train", str(run / "spec.toml"), "--out", str(run), "--resume",
                      "--steps", "4", "--no-progress"]):
            r = runner.invoke(main, args)
            assert not marker.exists(), (name, args)
            assert "Traceback" not in r.output, (name, args, r.output)
            if r.exit_code != 0:  # a file the command reads: one error naming it
                assert name in r.output or "checkpoint" in r.output, (name, args, r.output)


def test_eval_and_generate_read_only_weights_and_spec(trained, tmp_path):
    run = _copy(trained, tmp_path / "run")
    for name in ("trainer.json", "trainer.safetensors", "meta.json"):
        (run / "checkpoint" / name).unlink()
    r = CliRunner().invoke(main, ["eval", str(run), "--batches", "1", "--json"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["generate", str(run), "--prompt", "a", "--tokens", "2"])
    assert r.exit_code == 0, r.output
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        load_checkpoint(run)  # resume needs the trainer state


def test_a_legacy_pickled_trainer_state_is_refused_not_loaded(trained, tmp_path):
    run = _copy(trained, tmp_path / "run")
    for name in ("trainer.json", "trainer.safetensors"):
        (run / "checkpoint" / name).unlink()
    marker = tmp_path / "pwned"
    (run / "checkpoint" / "trainer.pt").write_bytes(pickle.dumps(_Payload(marker)))
    r = CliRunner().invoke(main, ["train", "x.toml", "--out", str(run), "--resume"])
    _clean_error(r)
    assert "trainer.pt" in r.output and "pickle" in r.output and not marker.exists()


@pytest.mark.parametrize("name, damage", [
    ("model.safetensors", "truncate"), ("trainer.safetensors", "truncate"),
    ("trainer.json", "truncate"), ("meta.json", "truncate"), ("meta.json", "binary"),
    ("spec.toml", "garbage")])
def test_a_damaged_file_gives_one_error_naming_it(trained, tmp_path, name, damage):
    run = _copy(trained, tmp_path / "run")
    path = run / "checkpoint" / name
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[:len(data) // 2])
    elif damage == "binary":
        path.write_bytes(b"\xff\xfe\x00garbage")
    else:
        path.write_text("[model\nnot toml")
    reads = ["train", "x.toml", "--out", str(run), "--resume", "--no-progress"]
    if name not in ("trainer.json", "trainer.safetensors"):
        reads = ["eval", str(run), "--batches", "1"]
    r = CliRunner().invoke(main, reads)
    _clean_error(r)
    assert name in r.output, r.output


def test_an_existing_run_is_never_overwritten_without_asking(trained, tmp_path):
    run = _copy(trained, tmp_path / "run")
    before = (run / "metrics.jsonl").read_text()
    other = tiny_spec(tmp_path, steps=1, name="other.toml")
    r = CliRunner().invoke(main, ["train", str(other), "--out", str(run), "--steps", "1"])
    _clean_error(r)
    assert "already holds a run" in r.output and "--overwrite" in r.output
    assert (run / "metrics.jsonl").read_text() == before
    assert load_checkpoint(run)["trainer"]["step"] == 3
    r = CliRunner().invoke(main, ["train", str(other), "--out", str(run), "--overwrite",
                                  "--no-progress"])
    assert r.exit_code == 0, r.output
    assert load_checkpoint(run)["trainer"]["step"] == 1 and [s for s, _ in losses(run)] == [1]
    r = CliRunner().invoke(main, ["train", str(other), "--out", str(run), "--overwrite", "--resume"])
    assert r.exit_code == 2 and "exclude each other" in r.output


def test_a_run_directory_in_use_is_refused(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from nlframe.rundir import RunDir; rd = RunDir(sys.argv[1]).open(); "
        "print('locked', flush=True); time.sleep(60)"), str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        r = CliRunner().invoke(main, ["train", str(tiny_spec(tmp_path)), "--out", str(out)])
        _clean_error(r)
        assert "in use by nlframe train (pid" in r.output
    finally:
        holder.kill()
        holder.wait()
    with RunDir(out).open() as rd:  # released when its holder dies
        assert rd.path == out


def test_a_second_trainer_in_one_process_is_told_to_close_the_first(tmp_path):
    spec = tiny_spec(tmp_path, steps=1)
    from nlframe.train import Trainer

    first = Trainer(spec, tmp_path / "run", progress=False)
    with pytest.raises(RunDirError, match="close"):
        Trainer(spec, tmp_path / "run", progress=False, overwrite=True)
    first.close()
    Trainer(spec, tmp_path / "run", progress=False, overwrite=True).close()


def test_an_unwritable_out_fails_before_the_model_is_built(tmp_path, monkeypatch):
    def no_build(*a, **k):
        raise AssertionError("the model was built")

    monkeypatch.setattr(sys.modules["nlframe.build"], "build", no_build)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = CliRunner().invoke(main, ["train", str(tiny_spec(tmp_path)), "--out", str(blocker / "run")])
    _clean_error(r)
    assert "cannot write the run directory" in r.output


def test_a_torn_metrics_line_is_dropped_on_resume(trained, tmp_path):
    run = _copy(trained, tmp_path / "run")
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 4, "train/lo')  # a crash mid-write
    r = CliRunner().invoke(main, ["train", "x.toml", "--out", str(run), "--resume", "--steps", "4",
                                  "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "dropped 1 damaged line" in r.output
    assert [s for s, _ in losses(run)] == [1, 2, 3, 4]


def test_eval_and_generate_options_are_checked(trained):
    runner = CliRunner()
    cases = [
        (["eval", str(trained), "--option", "length=1000000"], "has no option 'length'"),
        (["generate", str(trained), "--prompt", "a", "--temperature", "nan"], "finite number"),
        (["generate", str(trained), "--prompt", "a", "--temperature", "inf"], "finite number"),
        (["generate", str(trained), "--prompt", "a", "--top-k", "300"], "larger than the model"),
        (["generate", str(trained), "--prompt", ""], "must not be empty"),
        (["eval", str(trained), "--option", "oops"], "KEY=VALUE"),
    ]
    if not torch.cuda.is_available():
        cases += [(["eval", str(trained), "--device", "cuda"], "CUDA is not available"),
                  (["generate", str(trained), "--prompt", "a", "--device", "cuda"],
                   "CUDA is not available")]
    for args, message in cases:
        r = runner.invoke(main, args)
        _clean_error(r)
        assert message in r.output, (args, r.output)


def test_generate_without_a_prompt_continues_a_newline(trained):
    r = CliRunner().invoke(main, ["generate", str(trained), "--tokens", "5", "--temperature", "0"])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("\n")


def test_a_prompt_that_is_not_utf8_is_used_as_bytes(trained):
    r = subprocess.run([sys.executable, "-m", "nlframe", "generate", str(trained), "--prompt",
                        b"caf\xe9 \xff", "--tokens", "3", "--temperature", "0"],
                       capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert r.stdout.startswith("caf".encode())


def test_eval_task_niah_has_sensible_defaults_on_any_model(trained):
    r = CliRunner().invoke(main, ["eval", str(trained), "--task", "niah", "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.output)
    assert result["task"] == "niah" and 0 <= result["accuracy"] <= 1


def test_checkpoint_weights_load_on_the_requested_device(trained):
    ckpt = load_checkpoint(trained, device="cpu")
    assert all(t.device.type == "cpu" for t in ckpt["weights"].values())
    assert find_checkpoint(trained, trainer=False).name == "checkpoint"

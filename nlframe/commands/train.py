"""``nlframe train``, ``nlframe eval`` and ``nlframe generate``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click


def _parse_options(options: tuple[str, ...]) -> dict:
    """``key=value`` pairs; values parsed as TOML scalars when possible (``4``, ``0.5``, ``true``)."""
    out = {}
    for item in options:
        if "=" not in item:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--option")
        key, value = item.split("=", 1)
        out[key.strip()] = _scalar(value.strip())
    return out


def _scalar(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def _fail(exc: Exception) -> None:
    raise click.ClickException(str(exc)) from None


class FiniteFloat(click.ParamType):
    """A finite float ≥ ``min`` (``nan`` and ``inf`` are refused)."""

    name = "float"

    def __init__(self, min: float = 0.0):
        self.min = min

    def convert(self, value, param, ctx):
        try:
            x = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(x) or x < self.min:
            self.fail(f"expected a finite number >= {self.min}, got {value!r}", param, ctx)
        return x


def _split_overrides(args: tuple[str, ...]) -> tuple[str, ...]:
    bad = [a for a in args if "=" not in a]
    if bad:
        raise click.BadParameter(f"expected KEY.PATH=VALUE overrides after the spec, got {bad[0]!r}",
                                 param_hint="OVERRIDES")
    return args


@click.command("train")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1, metavar="[KEY.PATH=VALUE]...")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory.")
@click.option("--steps", type=click.IntRange(min=1), help="Override [train].steps.")
@click.option("--data", help="Data plugin, e.g. stdlib, mqar, text:PATH (overrides [train].data).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), help="Override [train].device.")
@click.option("--seed", type=int, help="Override [train].seed.")
@click.option("--parallel", type=click.Choice(["ddp", "fsdp"]),
              help="Data-parallel mode under torchrun (overrides [train].parallel).")
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint exactly.")
@click.option("--overwrite", is_flag=True, help="Replace a run already in OUT.")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Option for the data plugin (repeatable).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def train_cmd(spec, overrides, out, steps, data, device, seed, parallel, resume, overwrite, options,
              no_progress):
    """Train the model of SPEC; TensorBoard logs in OUT/tb, checkpoints in OUT/checkpoint.

    OVERRIDES change the spec, values parsed as TOML: ``model.dim=256
    train.lr=1e-3 'model.blocks[0].chunk_size=64'``; the effective spec is saved
    in OUT/spec.toml. With --resume, SPEC is not read (the run's own spec is).
    """
    from ..checkpoint import CheckpointError
    from ..distributed import exit_worker
    from ..rundir import RunDirError
    from ..spec import SpecError
    from ..train import Trainer

    from ..cli import _load_registry

    _load_registry()  # plugin warnings as one line each, a clash as one error
    overrides = _split_overrides(overrides)
    if resume and overwrite:
        raise click.UsageError("--resume and --overwrite exclude each other")
    if not resume and not Path(spec).exists():
        _fail(FileNotFoundError(f"spec file {spec!r} does not exist"))
    try:
        trainer = Trainer(spec, out, steps=steps, data=data, device=device, seed=seed,
                          parallel=parallel, resume=resume, overwrite=overwrite,
                          overrides=overrides, progress=not no_progress,
                          data_options=_parse_options(options) or None, echo=click.echo)
    except (SpecError, CheckpointError, RunDirError, ValueError, FileNotFoundError) as exc:
        _fail(exc)
    with trainer:
        if trainer.dist.is_main:
            n = sum(p.numel() for p in trainer.model.parameters())
            cfg = trainer.cfg
            accum = f" x {cfg.grad_accum} accumulated" if cfg.grad_accum > 1 else ""
            click.echo(f"training {cfg.steps} steps of a {n:,}-parameter model on {cfg.data!r} "
                       f"({cfg.batch_size}x{cfg.seq_len} tokens/step{accum}, {cfg.precision})"
                       + (f", resuming at step {trainer.step}" if resume else ""))
        try:
            result = trainer.run()
        except FloatingPointError as exc:
            _fail(RuntimeError(f"training stopped: {exc} (the last checkpoint in "
                               f"{Path(out) / 'checkpoint'} is intact)"))
    code = 130 if result.interrupted and trainer.dist.is_main else 0  # rank 0 reports it
    if trainer.dist.is_main:
        summary = ", ".join(f"{k} {v:.4g}" for k, v in result.metrics.items())
        click.echo(f"step {result.step}: train/loss {result.last_loss:.4f}"
                   + (f", {summary}" if summary else ""))
        click.echo(f"checkpoint: {Path(out) / 'checkpoint'}   "
                   f"TensorBoard: tensorboard --logdir {Path(out) / 'tb'}")
    if trainer.dist.world > 1:
        exit_worker(code)
    if code:
        raise SystemExit(code)


@click.command("eval")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--task", default=None, help="Data plugin / task (default: the training data).")
@click.option("--batches", type=click.IntRange(min=1), default=None, help="Evaluation batches.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None)
@click.option("--seq-len", type=click.IntRange(min=1), default=None)
@click.option("--stream-chunk", type=click.IntRange(min=1), default=None,
              help="Feed sequences in pieces of this many tokens, carrying the fast state.")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Option for the task (repeatable), e.g. --task niah --option digits=7.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def eval_cmd(run_dir, task, batches, batch_size, seq_len, stream_chunk, options, device, as_json):
    """Evaluate the checkpoint in RUN_DIR: bits/byte and perplexity on the validation split,
    or a task's metric."""
    from ..checkpoint import CheckpointError
    from ..cli import _load_registry
    from ..datasets import open_data
    from ..tokenizer import from_record
    from ..train import load_run

    _load_registry()
    try:
        model, spec, ckpt = load_run(run_dir, device=device)
        cfg = spec.train
        name = task or cfg.data
        opts = _parse_options(options)
        recorded = _run_tokenizer(ckpt)
        if recorded and not task and "tokenizer" not in opts:  # the run's own tokenizer
            from_record(recorded)  # refused if missing or changed
            opts["tokenizer"] = recorded["path"]
        data = open_data(name, **opts)
        _check_same_tokenizer(recorded, data, name)
        vocab = getattr(spec.model.config, "vocab_size", None)
        if vocab is not None and data.vocab_size > vocab:
            raise ValueError(f"vocabulary mismatch: task {name!r} has {data.vocab_size} tokens "
                             f"but the model's vocab_size is {vocab}")
        d = data.eval_defaults if task else {}
        metrics = data.evaluate(
            model, device=device, batch_size=batch_size or d.get("batch_size", cfg.batch_size),
            seq_len=seq_len or d.get("seq_len", cfg.seq_len),
            batches=batches or d.get("batches", cfg.eval_batches), seed=cfg.seed,
            stream_chunk=stream_chunk or d.get("stream_chunk"))
    except (CheckpointError, ValueError, FileNotFoundError) as exc:
        _fail(exc)
    result = {"run": str(run_dir), "task": name, "step": ckpt["meta"].get("step"),
              **{k: float(v) for k, v in metrics.items()}}
    if as_json:
        click.echo(json.dumps(result))
    else:
        at = f" @ step {result['step']}" if result["step"] is not None else ""
        click.echo(f"{name}{at}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))


def _run_tokenizer(ckpt) -> dict | None:
    """The tokenizer record of a run trained on token ids (``None`` for byte runs)."""
    source = ckpt["meta"].get("data_source")
    rec = source.get("tokenizer") if isinstance(source, dict) else None
    return rec if isinstance(rec, dict) else None


def _check_same_tokenizer(recorded: dict | None, data, name: str) -> None:
    """Refuse to score a run on ids of another tokenizer (or on bytes / on ids)."""
    described = getattr(data, "describe", dict)().get("tokenizer") or {}
    if (recorded or {}).get("sha256") == described.get("sha256"):
        return
    ran = f"ids of the tokenizer {recorded['path']}" if recorded else "ids of no tokenizer"
    got = f"ids of the tokenizer {described['path']}" if described else "ids of no tokenizer"
    raise ValueError(f"the run was trained on {ran}, but {name!r} gives {got}; evaluate "
                     "it on data of the same tokenizer")


@click.command("generate")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--prompt", default="\n", show_default="a newline",
              help="Text to continue (UTF-8 bytes, or the run's tokenizer's ids).")
@click.option("--tokens", type=click.IntRange(min=1), default=200, help="Tokens to generate.")
@click.option("--temperature", type=FiniteFloat(min=0.0), default=0.8,
              help="0 for greedy decoding.")
@click.option("--top-k", type=click.IntRange(min=0), default=0, help="0: no top-k filtering.")
@click.option("--seed", type=int, default=0)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu")
def generate_cmd(run_dir, prompt, tokens, temperature, top_k, seed, device):
    """Continue PROMPT (a newline unless given) with the model in RUN_DIR and print the
    text: bytes for byte-level models, decoded with the run's recorded tokenizer for
    models trained on ``tokens``."""
    from ..checkpoint import CheckpointError
    from ..cli import _load_registry
    from ..tokenizer import from_record
    from ..train import load_run

    _load_registry()
    try:
        model, spec, ckpt = load_run(run_dir, device=device)
        recorded = _run_tokenizer(ckpt)
        tokenizer = from_record(recorded) if recorded else None
    except (CheckpointError, ValueError) as exc:
        _fail(exc)
    vocab = getattr(spec.model.config, "vocab_size", None)
    if vocab is not None and top_k > vocab:
        raise click.BadParameter(f"{top_k} is larger than the model's vocabulary ({vocab})",
                                 param_hint="--top-k")
    click.echo(generate_text(model, prompt, tokens=tokens, temperature=temperature, top_k=top_k,
                             seed=seed, device=device, vocab_size=vocab, tokenizer=tokenizer))


def generate_text(model, prompt: str, *, tokens: int, temperature: float = 0.8, top_k: int = 0,
                  seed: int = 0, device: str = "cpu", vocab_size: int | None = None,
                  tokenizer=None) -> str:
    """``prompt`` + ``tokens`` sampled tokens as text.

    Without ``tokenizer`` tokens are bytes: the prompt's bytes are its UTF-8
    encoding (bytes that are not UTF-8, which reach Python as surrogate
    escapes, pass through as they are) and the output is decoded as UTF-8
    (invalid bytes replaced). With a ``tokenizers.Tokenizer`` the prompt is
    encoded and the whole output decoded by it.
    """
    import torch

    data = prompt.encode("utf-8", errors="surrogateescape")
    if tokenizer is not None:
        text = data.decode("utf-8", errors="replace")
        data = tokenizer.encode(text, add_special_tokens=False).ids if text else []
    if not data:
        raise click.BadParameter("prompt must not be empty", param_hint="--prompt")
    if vocab_size is not None and max(data) >= vocab_size:
        what = "token id" if tokenizer is not None else "byte"
        raise click.BadParameter(f"the prompt has {what} {max(data)}, outside the model's "
                                 f"vocabulary of {vocab_size} tokens", param_hint="--prompt")
    ids = torch.tensor([list(data)], dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=tokens, temperature=temperature,
                             top_k=top_k or None, generator=gen)
    if tokenizer is not None:
        return tokenizer.decode(out[0].tolist(), skip_special_tokens=False)
    return bytes(int(t) % 256 for t in out[0].tolist()).decode("utf-8", errors="replace")


def register(main: click.Group) -> None:
    main.add_command(train_cmd)
    main.add_command(eval_cmd)
    main.add_command(generate_cmd)

"""``nlframe tokenizer train`` and ``nlframe tokenizer show``: byte-level BPE for ``tokens:PATH``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .train import _fail, _parse_options


def _hint(vocab: int, directory: str, source: str | None) -> str:
    path = source.partition(":")[2] if source and source.startswith("text:") else "PATH"
    return (f"train on it with: nlframe train SPEC model.vocab_size={vocab} "
            f"--data tokens:{path} --option tokenizer={directory}")


@click.group("tokenizer")
def tokenizer_group() -> None:
    """Train and inspect byte-level BPE tokenizers (for ``tokens:PATH`` data)."""


@tokenizer_group.command("train")
@click.argument("source")
@click.option("--vocab", "vocab", type=int, default=4096, show_default=True,
              help="Vocabulary size (at least 257: the 256 bytes and <|endoftext|>).")
@click.option("--out", required=True, type=click.Path(), help="Directory to write.")
@click.option("--min-frequency", type=click.IntRange(min=1), default=2, show_default=True,
              help="Fewest occurrences of a pair to merge it.")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Option for the text source (repeatable), e.g. suffixes=.py.")
@click.option("--overwrite", is_flag=True, help="Replace the tokenizer in a non-empty OUT.")
def train_cmd(source, vocab, out, min_frequency, options, overwrite):
    """Train a byte-level BPE on the train split of SOURCE (``text:PATH`` or ``stdlib``);
    write OUT/tokenizer.json and OUT/nlframe-tokenizer.json (source, vocab size, hashes)."""
    from ..cli import _load_registry
    from ..datasets import open_data
    from ..tokenizer import MIN_VOCAB, TokenizerError, save_tokenizer, text_chunks, train_bpe

    if vocab < MIN_VOCAB:
        raise click.BadParameter(f"{vocab} is too small: a byte-level BPE needs at least "
                                 f"{MIN_VOCAB} tokens (256 bytes and 1 special token)",
                                 param_hint="--vocab")
    outp = Path(out)
    if outp.exists() and not (outp.is_dir() and not any(outp.iterdir())) and not overwrite:
        _fail(FileExistsError(f"{out!r} already exists; pass --overwrite to replace the "
                              "tokenizer in it (or choose another --out)"))
    _load_registry()
    opts = _parse_options(options)
    try:
        corpus = open_data(source, **opts)
        if not callable(getattr(corpus, "split", None)) or getattr(corpus, "vocab_size", 0) != 256:
            raise ValueError(f"{source!r} is not a text source; train a tokenizer on text:PATH "
                             "(a file or directory) or stdlib")
        data = bytes(corpus.split("train"))
        tok = train_bpe(text_chunks(data), vocab, min_frequency=min_frequency)
        info = {"source": source, "options": opts, "train_bytes": len(data),
                "corpus_sha256": corpus.manifest["sha256"], "min_frequency": min_frequency}
        path = save_tokenizer(tok, outp, info, overwrite=overwrite)
    except (TokenizerError, ValueError, FileNotFoundError, OSError) as exc:
        _fail(exc)
    n = tok.get_vocab_size(with_added_tokens=True)
    note = f" (the text supports no more merges than that; asked for {vocab})" if n < vocab else ""
    click.echo(f"wrote {path}: vocab_size {n}{note}, trained on {len(data):,} bytes of {source}")
    click.echo(_hint(n, out, source))


@tokenizer_group.command("show")
@click.argument("directory", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def show_cmd(directory, as_json):
    """Print the vocabulary size of the tokenizer in DIRECTORY, its hash and source, and the
    ``model.vocab_size`` override a spec needs to train on it."""
    from ..tokenizer import TokenizerError, load_tokenizer, read_info, record

    try:
        tok, path = load_tokenizer(directory)
        info = {**read_info(directory), **record(tok, path)}
    except TokenizerError as exc:
        _fail(exc)
    info["override"] = f"model.vocab_size={info['vocab_size']}"
    if as_json:
        click.echo(json.dumps(info, sort_keys=True))
        return
    click.echo(f"tokenizer: {info['path']}")
    click.echo(f"vocab_size: {info['vocab_size']}")
    click.echo(f"sha256: {info['sha256']}")
    if "source" in info:
        click.echo(f"trained on: {info['source']} ({info.get('train_bytes', 0):,} bytes, "
                   f"corpus sha256 {str(info.get('corpus_sha256'))[:16]}...)")
    click.echo(_hint(info["vocab_size"], directory, info.get("source")))


def register(main: click.Group) -> None:
    main.add_command(tokenizer_group)

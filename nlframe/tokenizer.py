"""Byte-level BPE tokenizers (the ``tokenizers`` library) for ``tokens:PATH`` and ``nlframe tokenizer``.

A tokenizer directory holds ``tokenizer.json`` (the library's own format, so
any Hugging Face tokenizer directory works) and, when ``nlframe tokenizer
train`` wrote it, ``nlframe-tokenizer.json``: the source it was trained on,
the vocabulary size and the sha256 of the corpus bytes and of
``tokenizer.json``. A run records the tokenizer as ``{"path", "sha256",
"vocab_size"}`` (:func:`record`); :func:`from_record` refuses a file that is
gone or changed. Text is UTF-8; bytes that are not UTF-8 are read as U+FFFD.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

__all__ = ["TokenizerError", "TOKENIZER_FILE", "INFO_FILE", "SPECIALS", "MIN_VOCAB",
           "train_bpe", "save_tokenizer", "load_tokenizer", "read_info", "record", "from_record",
           "byte_lengths", "text_chunks", "sha256_file"]

TOKENIZER_FILE = "tokenizer.json"
INFO_FILE = "nlframe-tokenizer.json"
SPECIALS = ("<|endoftext|>",)
"""Special tokens of a trained tokenizer (reserved; the data plugin inserts none)."""
MIN_VOCAB = 256 + len(SPECIALS)
"""Smallest vocabulary of a byte-level BPE: the 256 byte tokens and the specials."""


class TokenizerError(ValueError):
    """A tokenizer that cannot be trained, read, or is not the one a run recorded."""


def _lib():
    try:
        import tokenizers
    except ImportError:  # pragma: no cover - the [hf] extra is missing
        raise TokenizerError("tokenizers need the 'tokenizers' package: "
                             "pip install 'nlframe[hf]'") from None
    return tokenizers


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def text_chunks(data: bytes, size: int = 1 << 20) -> Iterator[str]:
    """``data`` as UTF-8 text in pieces of about ``size`` bytes, cut after a newline
    (never inside a character), so the pieces concatenate back to the whole."""
    start = 0
    while start < len(data):
        stop = len(data) if start + size >= len(data) else data.rfind(b"\n", start, start + size) + 1
        if stop <= start:  # no newline in the window: cut at a character boundary
            stop = start + size
            while stop < len(data) and data[stop] & 0xC0 == 0x80:
                stop += 1
        yield data[start:stop].decode("utf-8", errors="replace")
        start = stop


def train_bpe(texts: Iterable[str], vocab_size: int, *, min_frequency: int = 2):
    """A byte-level BPE ``tokenizers.Tokenizer`` with ``vocab_size`` tokens trained on ``texts``
    (GPT-2 pre-tokenization, no prefix space: ``decode(encode(s)) = s`` for every string)."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB:
        raise TokenizerError(f"vocab size must be an int >= {MIN_VOCAB} (the 256 bytes of a "
                             f"byte-level BPE and {len(SPECIALS)} special token), got {vocab_size!r}")
    tk = _lib()
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                     special_tokens=list(SPECIALS), show_progress=False,
                                     initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def save_tokenizer(tok: Any, out: Path, info: dict[str, Any], *, overwrite: bool = False) -> Path:
    """Write ``out/tokenizer.json`` and ``out/nlframe-tokenizer.json`` (``info`` plus the
    vocabulary size and the sha256 of tokenizer.json); refuses a non-empty ``out`` unless
    ``overwrite`` (which replaces only those two files)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TokenizerError(f"{str(out)!r} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise TokenizerError(f"{str(out)!r} already exists and is not empty; pass --overwrite "
                             "to replace the tokenizer in it")
    out.mkdir(parents=True, exist_ok=True)
    path = out / TOKENIZER_FILE
    tok.save(str(path))
    info = {**info, "vocab_size": tok.get_vocab_size(with_added_tokens=True),
            "tokenizer_sha256": sha256_file(path)}
    (out / INFO_FILE).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
    return path


def _file(where: str | Path) -> Path:
    path = Path(where).expanduser()
    if not path.exists():
        raise TokenizerError(f"tokenizer {str(path)!r} does not exist (make one with: "
                             f"nlframe tokenizer train text:PATH --vocab 4096 --out DIR)")
    if path.is_dir():
        path = path / TOKENIZER_FILE
        if not path.is_file():
            raise TokenizerError(f"tokenizer directory {str(path.parent)!r} has no "
                                 f"{TOKENIZER_FILE}")
    return path.resolve()


def load_tokenizer(where: str | Path):
    """``(tokenizer, path of its tokenizer.json)`` from a directory or the file itself."""
    path = _file(where)
    tk = _lib()
    try:
        return tk.Tokenizer.from_file(str(path)), path
    except Exception as exc:  # the library raises a bare Exception on bad JSON
        raise TokenizerError(f"{str(path)!r} is not a tokenizer file the tokenizers "
                             f"library can read ({exc})") from None


def read_info(where: str | Path) -> dict[str, Any]:
    """``nlframe-tokenizer.json`` beside the tokenizer (``{}`` where there is none)."""
    info = _file(where).parent / INFO_FILE
    try:
        return json.loads(info.read_text(encoding="utf-8")) if info.is_file() else {}
    except ValueError as exc:
        raise TokenizerError(f"{str(info)!r} is not valid JSON ({exc})") from None


def record(tok: Any, path: Path) -> dict[str, Any]:
    """What a run stores about its tokenizer: absolute path, sha256, vocabulary size."""
    return {"path": str(Path(path).resolve()), "sha256": sha256_file(path),
            "vocab_size": tok.get_vocab_size(with_added_tokens=True)}


def from_record(rec: dict[str, Any]):
    """The tokenizer a run recorded, refused when its file is missing or has changed."""
    path = Path(str(rec.get("path", "")))
    want = str(rec.get("sha256", ""))
    if not path.is_file():
        raise TokenizerError(f"the run was trained with the tokenizer {str(path)!r}, which no "
                             f"longer exists; restore that file (sha256 {want[:16]}...)")
    got = sha256_file(path)
    if got != want:
        raise TokenizerError(f"the tokenizer {str(path)!r} has changed since the run was trained "
                             f"(its sha256 is now {got[:16]}..., recorded {want[:16]}...); restore the "
                             "original file")
    return load_tokenizer(path)[0]


def byte_lengths(tok: Any) -> np.ndarray:
    """``(V,)`` int64: the bytes of text each token id decodes to (special tokens 0).

    Exact for a byte-level tokenizer (one alphabet character per byte); for
    others, the UTF-8 length of the id decoded alone.
    """
    tk = _lib()
    n = tok.get_vocab_size(with_added_tokens=True)
    out = np.zeros(n, dtype=np.int64)
    added = tok.get_added_tokens_decoder()
    byte_level = isinstance(tok.decoder, tk.decoders.ByteLevel)
    for i in range(n):
        if i in added:
            out[i] = 0 if added[i].special else len(added[i].content.encode("utf-8"))
        elif byte_level:
            out[i] = len(tok.id_to_token(i) or "")
        else:
            out[i] = len(tok.decode([i], skip_special_tokens=False).encode("utf-8"))
    return out

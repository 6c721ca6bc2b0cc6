"""``tokens:PATH``: text as ids of a local byte-level BPE — round trips, batches, bpb, errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from nlframe.datasets import open_data
from nlframe.tokenizer import (TokenizerError, byte_lengths, from_record, load_tokenizer,
                               save_tokenizer, text_chunks, train_bpe)
from nlframe_plugins.data.text import text
from nlframe_plugins.data.tokenized import tokens

from .conftest import Uniform, rel_err

WORDS = ("the quick brown fox jumps over the lazy dog; naïve café — 東京 ✓ "
         "def f(x):\n    return x * 2\n\n\tindented\r\n").split(" ")


def write_corpus(root, files=5, words=600):
    """``files`` files of ``words`` words each, drawn deterministically from :data:`WORDS`."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(files):
        body = " ".join(WORDS[j] for j in rng.integers(0, len(WORDS), words))
        (root / f"doc{i}.txt").write_text(body, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("tok") / "corpus")


@pytest.fixture(scope="module")
def tok_dir(corpus, tmp_path_factory):
    data = b"".join(p.read_bytes() for p in sorted(corpus.iterdir()))
    out = tmp_path_factory.mktemp("tokdir") / "tok"
    save_tokenizer(train_bpe(text_chunks(data), 320), out, {"source": "test"})
    return out


@pytest.mark.parametrize("s", ["", "hello world", "  two  spaces\n\n\ttab\r\n", "naïve 東京 ✓ 🙂",
                               "x" * 1000, "\x00\x01 control"])
def test_encode_decode_round_trip(tok_dir, s):
    tok, _ = load_tokenizer(tok_dir)
    assert tok.decode(tok.encode(s, add_special_tokens=False).ids) == s


def test_text_chunks_concatenate_back():
    data = ("line one\n" * 50 + "é" * 300 + "no newline " * 40).encode()
    chunks = list(text_chunks(data, size=64))
    assert len(chunks) > 5 and "".join(chunks).encode() == data


def test_splits_decode_to_the_text_splits(corpus, tok_dir):
    d, c = tokens(str(corpus), tokenizer=str(tok_dir)), text(str(corpus))
    tok, _ = load_tokenizer(tok_dir)
    assert d.vocab_size == tok.get_vocab_size() == 320
    for split in ("train", "validation"):
        ids = d.split(split)
        assert len(ids) > 100 and int(ids.max()) < d.vocab_size
        assert tok.decode(ids.tolist()).encode() == bytes(c.split(split))
        assert int(byte_lengths(tok)[np.asarray(ids)].sum()) == len(c.split(split))


def test_batches_are_int64_next_tokens_and_deterministic(corpus, tok_dir):
    d = open_data(f"tokens:{corpus}", tokenizer=str(tok_dir))
    b = d.batch("train", 3, batch_size=4, seq_len=16, seed=1)
    assert b["tokens"].dtype == b["targets"].dtype == torch.int64
    assert b["tokens"].shape == b["targets"].shape == (4, 16)
    assert torch.equal(b["tokens"][:, 1:], b["targets"][:, :-1])
    again = tokens(str(corpus), tokenizer=str(tok_dir))  # from the cache this time
    for split in ("train", "validation"):
        b1 = d.batch(split, 7, batch_size=4, seq_len=16, seed=1)
        b2 = again.batch(split, 7, batch_size=4, seq_len=16, seed=1)
        assert all(torch.equal(b1[k], b2[k]) for k in b1)
    other = d.batch("train", 4, batch_size=4, seq_len=16, seed=1)
    assert not torch.equal(other["tokens"], b["tokens"])


def test_evaluate_bpb_counts_decoded_bytes(corpus, tok_dir):
    d = tokens(str(corpus), tokenizer=str(tok_dir))
    m = d.evaluate(Uniform(d.vocab_size), batch_size=2, seq_len=16, batches=2)
    lengths = torch.from_numpy(byte_lengths(load_tokenizer(tok_dir)[0]))
    n_bytes = sum(int(lengths[w["targets"]].sum())
                  for w in d.eval_windows(batch_size=2, seq_len=16, batches=2))
    assert m["tokens"] == 64 and m["bytes"] == n_bytes > 64
    assert rel_err(m["loss"], math.log(d.vocab_size)) < 1e-6
    assert rel_err(m["ppl"], d.vocab_size) < 1e-5
    assert rel_err(m["bpb"], 64 * math.log(d.vocab_size) / (math.log(2) * n_bytes)) < 1e-6


def test_describe_records_the_tokenizer_file(corpus, tok_dir):
    rec = tokens(str(corpus), tokenizer=str(tok_dir)).describe()["tokenizer"]
    assert rec["path"] == str((tok_dir / "tokenizer.json").resolve()) and rec["vocab_size"] == 320
    info = json.loads((tok_dir / "nlframe-tokenizer.json").read_text())
    assert rec["sha256"] == info["tokenizer_sha256"]
    assert from_record(rec).get_vocab_size() == 320


def test_training_is_deterministic(corpus):
    data = b"".join(p.read_bytes() for p in sorted(corpus.iterdir()))
    a, b = (train_bpe(text_chunks(data), 300) for _ in range(2))
    assert a.to_str() == b.to_str()


def test_bad_inputs(corpus, tok_dir, tmp_path):
    with pytest.raises(ValueError, match="tokenizer=DIR"):
        tokens(str(corpus))
    with pytest.raises(ValueError, match="tokens:PATH"):
        tokens(tokenizer=str(tok_dir))
    with pytest.raises(FileNotFoundError, match="nope' does not exist"):
        tokens(str(tmp_path / "nope"), tokenizer=str(tok_dir))
    with pytest.raises(TokenizerError, match="does not exist"):
        tokens(str(corpus), tokenizer=str(tmp_path / "missing"))
    with pytest.raises(TokenizerError, match="has no tokenizer.json"):
        tokens(str(corpus), tokenizer=str(tmp_path))
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="not a tokenizer file"):
        tokens(str(corpus), tokenizer=str(tmp_path))
    with pytest.raises(TokenizerError, match="at least 257|>= 257"):
        train_bpe(["abc"], 256)
    with pytest.raises(ValueError, match="has no option 'vocab'"):
        open_data(f"tokens:{corpus}", tokenizer=str(tok_dir), vocab=3)
    d = tokens(str(corpus), tokenizer=str(tok_dir))
    with pytest.raises(ValueError, match="too few for seq_len"):
        d.batch("validation", 0, batch_size=1, seq_len=10**6)


def test_changed_or_missing_tokenizer_is_refused(corpus, tok_dir, tmp_path):
    rec = tokens(str(corpus), tokenizer=str(tok_dir)).describe()["tokenizer"]
    with pytest.raises(TokenizerError, match="has changed since the run was trained"):
        from_record({**rec, "sha256": "0" * 64})
    with pytest.raises(TokenizerError, match="no longer exists"):
        from_record({**rec, "path": str(tmp_path / "gone.json")})

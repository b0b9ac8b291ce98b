"""The WikiText-2 BPE tokenizer: training, lossless round trip, <eos> per line, storage and its errors."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("tokenizers", reason="the tokenizer tests need `tokenizers` (pip install 'curmoe[tokenizer]')")

import os  # noqa: E402

import curmoe  # noqa: E402
from curmoe import CheckpointError, InvalidInputError, WikiText2Split, load_wikitext2  # noqa: E402
from curmoe.models.tokenizer import (  # noqa: E402
    encode_split,
    load_tokenizer,
    main,
    save_tokenizer,
    train_bpe_tokenizer,
)

ROOT = Path(__file__).resolve().parents[1]
_CANDIDATES = (os.environ.get("CURMOE_DATA_DIR"), ROOT.parent / "shared" / "data")
REAL = next((Path(c) for c in _CANDIDATES if c and (Path(c) / "wikitext-2" / "train.txt").is_file()), None)
needs_data = pytest.mark.skipif(REAL is None, reason="WikiText-2 not found: set CURMOE_DATA_DIR to a folder with "
                                                     "wikitext-2/{train,valid,test}.txt to run this test")

CORPUS = [
    " ",
    " = The lobster = ",
    " ",
    " The lobster is a species of <unk> lobster from the eastern Atlantic Ocean . ",
    " Lobsters grow to a length of 60 cm ( 24 in ) and a mass of 6 kilograms , and bear claws . ",
    " The lobsters are blue , becoming \" lobster red \" on cooking . Mating occurs in the summer . ",
    "",
    " 1 @,@ 000 lobsters @-@ each year ; the <unk> claw is larger . ",
] * 20
ALPHABET = sorted(set("".join(CORPUS)) - {" "})


@pytest.fixture(scope="module")
def tok():
    return train_bpe_tokenizer(CORPUS, vocab_size=200)


def test_special_tokens_come_first(tok) -> None:
    assert [tok.token_to_id(t) for t in ("<pad>", "<eos>", "<unk>")] == [0, 1, 2]
    assert 150 <= tok.get_vocab_size() <= 200
    assert tok.encode(" a <unk> b ").tokens.count("<unk>") == 1  # <unk> in the text is one special token


def test_round_trip_is_lossless(tok) -> None:
    for line in set(CORPUS):
        ids = tok.encode(line).ids
        assert tok.decode(ids, skip_special_tokens=False) == " ".join(line.split())


@given(data=st.data())
def test_round_trip_of_unseen_words(tok, data: st.DataObject) -> None:
    # any word is encodable whose characters the training text showed both word-initially and word-internally
    v = tok.get_vocab()
    alphabet = [c for c in ALPHABET if c in v and "##" + c in v]
    assert len(alphabet) >= 20
    words = data.draw(st.lists(st.text(alphabet=st.sampled_from(alphabet), min_size=1, max_size=9), max_size=12))
    line = " " + " ".join(words) + " "
    assert tok.decode(tok.encode(line).ids, skip_special_tokens=False) == " ".join(words)


def test_unseen_character_becomes_unk(tok) -> None:
    assert tok.encode(" lobster \u4e2d ").tokens[-1] == "<unk>"
    assert "##1" not in tok.get_vocab()  # "1" only starts words in CORPUS: inside a word it is unknown
    assert tok.encode(" 01 ").tokens == ["0", "<unk>"]


def test_encode_split_ends_every_line_with_eos(tok) -> None:
    split = WikiText2Split("valid", False, tuple(CORPUS))
    ids = encode_split(tok, split)
    assert ids.dtype == np.int64
    eos = tok.token_to_id("<eos>")
    assert int((ids == eos).sum()) == len(CORPUS) and ids[-1] == eos
    # the stream is the per-line encodings, each followed by <eos> (blank lines give a lone <eos>)
    expected = [i for line in CORPUS for i in [*tok.encode(line).ids, eos]]
    assert ids.tolist() == expected


def test_word_sized_vocab_gives_one_token_per_word() -> None:
    big = train_bpe_tokenizer(CORPUS, vocab_size=2000, min_frequency=1)
    split = WikiText2Split("train", False, tuple(CORPUS))
    assert encode_split(big, split).size == split.n_words  # every word of the corpus became one token


def test_save_and_load(tok, tmp_path: Path) -> None:
    f = save_tokenizer(tok, tmp_path / "sub" / "tok.json")
    assert f == tmp_path / "sub" / "tok.json" and f.is_file()
    assert [p.name for p in f.parent.iterdir()] == ["tok.json"]  # no temp file left behind
    back = load_tokenizer(f)
    assert back.to_str() == tok.to_str()
    d = tmp_path / "model"
    d.mkdir()
    assert save_tokenizer(tok, d) == d / "tokenizer.json"  # a directory: tokenizer.json beside the model
    assert load_tokenizer(d).encode(CORPUS[3]).ids == tok.encode(CORPUS[3]).ids
    save_tokenizer(tok, d)  # overwrite in place
    assert sorted(p.name for p in d.iterdir()) == ["tokenizer.json"]


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist") as e:
        load_tokenizer(tmp_path / "missing.json")
    assert str(tmp_path / "missing.json") in str(e.value)
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": "1.0", "model": ', encoding="utf-8")
    with pytest.raises(CheckpointError, match="corrupt or not a `tokenizers` JSON"):
        load_tokenizer(bad)
    no_eos = train_bpe_tokenizer(CORPUS, 200, special_tokens=("<eos>", "<unk>"))
    text = no_eos.to_str().replace("<eos>", "<xyz>")
    (tmp_path / "no_eos.json").write_text(text, encoding="utf-8")
    with pytest.raises(CheckpointError, match="has no '<eos>' token"):
        load_tokenizer(tmp_path / "no_eos.json")


@pytest.mark.parametrize("kwargs, match", [
    (dict(vocab_size=3), "vocab_size=3 must be an integer >= 4; the 3 special tokens"),
    (dict(vocab_size=True), "vocab_size=True must be an integer"),
    (dict(min_frequency=0), "min_frequency=0 must be an integer >= 1"),
    (dict(special_tokens=("<pad>", "<unk>")), "lacks '<eos>'"),
    (dict(special_tokens=("<eos>", "<unk>", "<eos>")), "has duplicates"),
])
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        train_bpe_tokenizer(CORPUS, **kwargs)


def test_bad_inputs(tok) -> None:
    with pytest.raises(InvalidInputError, match="not one str"):
        train_bpe_tokenizer(" a b c ")
    with pytest.raises(InvalidInputError, match="must be a WikiText2Split"):
        encode_split(tok, CORPUS)  # type: ignore[arg-type]


def test_missing_library_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(curmoe.MissingExtraError, match=r"pip install 'curmoe\[tokenizer\]'"):
        train_bpe_tokenizer(CORPUS)
    (tmp_path / "t.json").write_text("{}", encoding="utf-8")
    with pytest.raises(curmoe.MissingExtraError):
        load_tokenizer(tmp_path / "t.json")


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "wikitext-2").mkdir()
    for split in ("train", "valid"):
        (tmp_path / "wikitext-2" / f"{split}.txt").write_text("\n".join(CORPUS) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    assert main(["--data-dir", str(tmp_path), "--vocab-size", "180", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "trained BPE tokenizer:" in printed and "tokens/word" in printed and "valid:" in printed
    assert load_tokenizer(out).get_vocab_size() <= 180


@needs_data
def test_real_train_8k() -> None:
    """The reference tokenizer: full train (about 2 s), lossless on valid and test."""
    t0 = time.perf_counter()
    train = load_wikitext2("train", data_dir=REAL)
    tok = train_bpe_tokenizer(train.lines, vocab_size=8192)
    assert tok.get_vocab_size() == 8192
    unk, eos = tok.token_to_id("<unk>"), tok.token_to_id("<eos>")
    for split in ("valid", "test"):
        s = load_wikitext2(split, data_dir=REAL)
        ids = encode_split(tok, s)
        assert int((ids == eos).sum()) == len(s.lines)
        # every type of valid/test is a train type, so no character is unknown: the only <unk> ids are <unk> words
        assert int((ids == unk).sum()) == s.words().count("<unk>")
        assert 1.0 < ids.size / s.n_words < 1.5
    for line in s.lines:
        assert tok.decode(tok.encode(line).ids, skip_special_tokens=False) == " ".join(line.split())
    assert time.perf_counter() - t0 < 60  # a guard against a pathological slowdown, not a speed benchmark

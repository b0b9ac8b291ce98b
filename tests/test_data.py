"""WikiText-2 loading: directory resolution, the word convention, the datasets fallback, and the published stats."""

from __future__ import annotations

import importlib.machinery
import os
import sys
import types
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import curmoe
from curmoe import DataNotFoundError, WikiText2Split, load_wikitext2

ROOT = Path(__file__).resolve().parents[1]


def real_data_dir() -> Path | None:
    """$CURMOE_DATA_DIR, else ../shared/data beside the project (where CI and developers keep it)."""
    for cand in (os.environ.get("CURMOE_DATA_DIR"), ROOT.parent / "shared" / "data"):
        if cand and (Path(cand) / "wikitext-2" / "train.txt").is_file():
            return Path(cand)
    return None


REAL = real_data_dir()
needs_data = pytest.mark.skipif(REAL is None, reason="WikiText-2 not found: set CURMOE_DATA_DIR to a folder with "
                                                     "wikitext-2/{train,valid,test}.txt to run this test")

LINES = [" ", " = Title = ", " ", " a b <unk> c . ", "", " d @-@ e "]


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Path:
    """A data folder laid out like the real one, with a tiny corpus (tokenised splits, raw valid only)."""
    (tmp_path / "wikitext-2").mkdir()
    (tmp_path / "wikitext-2-raw").mkdir()
    for split in ("train", "valid", "test"):
        (tmp_path / "wikitext-2" / f"{split}.txt").write_text("\n".join(LINES) + "\n", encoding="utf-8")
    (tmp_path / "wikitext-2-raw" / "valid.txt").write_text(" = Title = \n a b raw c . \n", encoding="utf-8")
    return tmp_path


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CURMOE_DATA_DIR", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", None)  # datasets not importable


def assert_both_ways(msg: str) -> None:
    for part in ("--data-dir", "CURMOE_DATA_DIR", "wikitext-2/{train,valid,test}.txt", "pip install 'curmoe[datasets]'",
                 "wikitext-2-v1", "wikitext-2-raw-v1"):
        assert part in msg, (part, msg)


# --- directory resolution -------------------------------------------------------------------------------------------

def test_nothing_given_says_both_ways(no_env: None) -> None:
    with pytest.raises(DataNotFoundError) as e:
        curmoe.data_dir()
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, curmoe.CurmoeError)
    assert_both_ways(str(e.value))
    with pytest.raises(DataNotFoundError) as e:
        load_wikitext2("valid")
    assert_both_ways(str(e.value))


def test_missing_directory_is_named(no_env: None, tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="does not exist") as e:
        curmoe.data_dir(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(e.value)
    assert_both_ways(str(e.value))


def test_folder_without_wikitext2(tiny_dir: Path) -> None:
    with pytest.raises(DataNotFoundError, match="has no wikitext-2/ folder"):
        curmoe.data_dir(tiny_dir / "wikitext-2-raw")
    with pytest.raises(DataNotFoundError, match="pass its parent"):  # pointed at wikitext-2/ itself
        curmoe.data_dir(tiny_dir / "wikitext-2")


def test_explicit_path_and_env(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert curmoe.data_dir(tiny_dir) == tiny_dir
    assert curmoe.data_dir(str(tiny_dir)) == tiny_dir
    monkeypatch.setenv("CURMOE_DATA_DIR", str(tiny_dir))
    assert curmoe.data_dir() == tiny_dir
    assert load_wikitext2("test").lines == tuple(LINES)
    monkeypatch.setenv("CURMOE_DATA_DIR", str(tiny_dir / "missing"))
    with pytest.raises(DataNotFoundError, match="CURMOE_DATA_DIR="):
        curmoe.data_dir()


# --- loading --------------------------------------------------------------------------------------------------------

def test_lines_text_and_words(tiny_dir: Path) -> None:
    s = load_wikitext2("valid", data_dir=tiny_dir)
    assert (s.split, s.raw) == ("valid", False)
    assert s.lines == tuple(LINES)  # empty and blank lines kept
    assert s.text == (tiny_dir / "wikitext-2" / "valid.txt").read_text(encoding="utf-8")
    assert s.words() == ["<eos>", "=", "Title", "=", "<eos>", "<eos>", "a", "b", "<unk>", "c", ".", "<eos>",
                         "<eos>", "d", "@-@", "e", "<eos>"]
    assert s.n_words == len(s.words()) == 17
    assert "valid.txt" in s.source and "n_words=17" in repr(s)


def test_raw_split(tiny_dir: Path) -> None:
    s = load_wikitext2("valid", raw=True, data_dir=tiny_dir)
    assert s.raw and s.lines == (" = Title = ", " a b raw c . ")


def test_missing_split_file_is_named(tiny_dir: Path) -> None:
    (tiny_dir / "wikitext-2" / "test.txt").unlink()
    with pytest.raises(DataNotFoundError) as e:
        load_wikitext2("test", data_dir=tiny_dir)
    assert str(tiny_dir / "wikitext-2" / "test.txt") in str(e.value)
    with pytest.raises(DataNotFoundError, match="raw test|wikitext-2-raw/test.txt"):
        load_wikitext2("test", raw=True, data_dir=tiny_dir)


def test_raw_train_not_in_shared_data(tiny_dir: Path) -> None:
    with pytest.raises(DataNotFoundError, match="raw train split is not part of the shared") as e:
        load_wikitext2("train", raw=True, data_dir=tiny_dir)
    assert "raw=False" in str(e.value) and "curmoe[datasets]" in str(e.value)


@pytest.mark.parametrize("bad, hint", [("validation", "did you mean 'valid'"), ("dev", "did you mean 'valid'"),
                                       ("TRAIN", "one of ('train', 'valid', 'test')")])
def test_bad_split(tiny_dir: Path, bad: str, hint: str) -> None:
    with pytest.raises(curmoe.InvalidInputError, match=f"split={bad!r}") as e:
        load_wikitext2(bad, data_dir=tiny_dir)
    assert hint in str(e.value)


def test_split_dataclass_is_validated() -> None:
    s = WikiText2Split("train", False, [" a b ", ""])  # type: ignore[arg-type]
    assert s.lines == (" a b ", "") and s.n_words == 4
    with pytest.raises(curmoe.InvalidInputError, match="must not contain"):
        WikiText2Split("train", False, (" a \n b ",))
    with pytest.raises(curmoe.InvalidInputError, match="sequence of str"):
        WikiText2Split("train", False, "a b")  # type: ignore[arg-type]
    with pytest.raises(curmoe.InvalidInputError, match="split='dev'"):
        WikiText2Split("dev", False, ())


@given(st.lists(st.text(alphabet=st.sampled_from(" \tab<>.=@-"), max_size=12), max_size=8))
def test_word_convention(lines: list[str]) -> None:
    s = WikiText2Split("valid", False, tuple(lines))
    words = s.words()
    assert len(words) == s.n_words == sum(len(x.split()) for x in lines) + len(lines)
    assert sum(w == "<eos>" for w in words) == len(lines) + sum(x.split().count("<eos>") for x in lines)


# --- Hugging Face datasets fallback ----------------------------------------------------------------------------------

def fake_datasets(calls: list[tuple[str, str, str]], fail: bool = False) -> types.ModuleType:
    mod = types.ModuleType("datasets")
    mod.__spec__ = importlib.machinery.ModuleSpec("datasets", None)

    def load_dataset(name: str, config: str, split: str) -> dict[str, list[str]]:
        calls.append((name, config, split))
        if fail:
            raise ConnectionError("offline")
        return {"text": ["", " = Title = \n", "", " a b c . \n"]}  # the HF layout: blank lines are ""

    mod.load_dataset = load_dataset  # type: ignore[attr-defined]
    return mod


def test_datasets_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CURMOE_DATA_DIR", raising=False)
    calls: list[tuple[str, str, str]] = []
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets(calls))
    s = load_wikitext2("valid")
    assert calls == [("wikitext", "wikitext-2-v1", "validation")]
    assert s.lines == ("", " = Title = ", "", " a b c . ") and s.n_words == 7 + 4
    assert s.source == "datasets:wikitext/wikitext-2-v1/validation"
    load_wikitext2("train", raw=True)
    assert calls[-1] == ("wikitext", "wikitext-2-raw-v1", "train")


def test_datasets_fallback_failure_says_both_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CURMOE_DATA_DIR", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets([], fail=True))
    with pytest.raises(DataNotFoundError, match="ConnectionError: offline") as e:
        load_wikitext2("test")
    assert_both_ways(str(e.value))


def test_explicit_missing_dir_never_downloads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[tuple[str, str, str]] = []
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets(calls))
    with pytest.raises(DataNotFoundError):
        load_wikitext2("valid", data_dir=tmp_path / "typo")
    assert calls == []


# --- the real data against the published statistics ----------------------------------------------------------------

@needs_data
def test_published_statistics() -> None:
    splits = {s: load_wikitext2(s, data_dir=REAL) for s in ("train", "valid", "test")}
    assert {s: len(x.lines) for s, x in splits.items()} == {"train": 36_718, "valid": 3_760, "test": 4_358}
    words = {s: x.words() for s, x in splits.items()}
    assert {s: len(w) for s, w in words.items()} == {"train": 2_088_628, "valid": 217_646, "test": 245_569}
    assert {s: x.n_words for s, x in splits.items()} == {s: len(w) for s, w in words.items()}
    vocab = curmoe.wikitext2_vocab(REAL)
    assert len(vocab) == 33_278 and vocab == sorted(vocab) and "<eos>" in vocab and "<unk>" in vocab
    types_ = set(vocab)
    assert set(words["valid"]) <= types_ and set(words["test"]) <= types_


@needs_data
def test_real_raw_splits() -> None:
    for split, n_lines in (("valid", 3_760), ("test", 4_358)):
        raw = load_wikitext2(split, raw=True, data_dir=REAL)
        tok = load_wikitext2(split, data_dir=REAL)
        assert raw.raw and len(raw.lines) == n_lines
        assert "<unk>" not in raw.text and "<unk>" in tok.text

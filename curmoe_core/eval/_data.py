"""WikiText-2 loading: the word-level tokenised splits (one ``<eos>`` per line) and the raw splits.

WikiText-2 (Merity, Xiong, Bradbury and Socher, "Pointer Sentinel Mixture Models", 2016) is read from a directory
laid out like the public release::

    DATA_DIR/wikitext-2/{train,valid,test}.txt        wiki.{train,valid,test}.tokens (word level, <unk> for rare words)
    DATA_DIR/wikitext-2-raw/{train,valid,test}.txt    wiki.{train,valid,test}.raw (optional)

The directory comes from an explicit argument (the ``--data-dir`` option of the scripts) or the ``CURMOE_DATA_DIR``
environment variable. When neither is set and the Hugging Face ``datasets`` library is importable, the splits are
fetched through it instead ("wikitext", "wikitext-2-v1" / "wikitext-2-raw-v1"; needs the network or its cache).

Word counting follows the word-level LM convention of Merity et al. and of the PyTorch ``word_language_model``
example: every line of the file, empty ones included, contributes ``line.split() + ["<eos>"]``. With that rule the
splits hold 2,088,628 / 217,646 / 245,569 words and the train vocabulary has 33,278 types.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from curmoe.common.errors import CurmoeError, InvalidInputError

__all__ = [
    "DataNotFoundError",
    "WikiText2Split",
    "EOS",
    "data_dir",
    "load_wikitext2",
    "wikitext2_vocab",
]

logger = logging.getLogger(__name__)

EOS = "<eos>"
ENV_VAR = "CURMOE_DATA_DIR"
SPLITS = ("train", "valid", "test")
_HF_SPLIT = {"train": "train", "valid": "validation", "test": "test"}
_HF_CONFIG = {False: "wikitext-2-v1", True: "wikitext-2-raw-v1"}


class DataNotFoundError(CurmoeError, FileNotFoundError):
    """The WikiText-2 files are not where curmoe was told to look (or nowhere was given)."""


def _how_to_provide() -> str:
    return (
        "provide WikiText-2 in one of two ways: (1) pass --data-dir DIR (or data_dir=DIR) or set the environment "
        f"variable {ENV_VAR}=DIR, where DIR is a folder laid out like DIR/wikitext-2/{{train,valid,test}}.txt "
        "(word level) and optionally DIR/wikitext-2-raw/{valid,test}.txt (raw); or (2) pip install 'curmoe[datasets]' "
        "and be online (or have the Hugging Face cache) so the `datasets` library can fetch "
        '"wikitext" with config "wikitext-2-v1" / "wikitext-2-raw-v1"'
    )


def data_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """Resolve the WikiText-2 data directory.

    Args:
        path: explicit directory; when ``None`` the ``CURMOE_DATA_DIR`` environment variable is used.

    Returns:
        The directory (it holds a ``wikitext-2/`` folder).

    Raises:
        DataNotFoundError: neither is set, the directory does not exist, or it has no ``wikitext-2/`` folder. The
            message says both ways to provide the data.
    """
    if path is None:
        env = os.environ.get(ENV_VAR, "").strip()
        if not env:
            raise DataNotFoundError(f"no WikiText-2 data directory given and {ENV_VAR} is not set; "
                                    + _how_to_provide())
        path, origin = env, f"{ENV_VAR}={env!r}"
    else:
        origin = f"data_dir={str(path)!r}"
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataNotFoundError(f"the WikiText-2 data directory {root} ({origin}) does not exist; " + _how_to_provide())
    if not (root / "wikitext-2").is_dir():
        hint = ""
        if (root / "train.txt").is_file() or (root / "valid.txt").is_file():
            hint = f" (it looks like the wikitext-2 folder itself: pass its parent {root.parent} instead)"
        raise DataNotFoundError(
            f"{root} ({origin}) has no wikitext-2/ folder{hint}; " + _how_to_provide()
        )
    return root


_resolve_dir = data_dir  # load_wikitext2's keyword argument shadows the function's name


@dataclass(frozen=True)
class WikiText2Split:
    """One WikiText-2 split, line by line.

    Attributes:
        split: "train", "valid" or "test".
        raw: False for the word-level tokenised text (``<unk>`` for rare words), True for the raw text.
        lines: the file's lines without their line terminators, in order, empty (or blank) lines included.
        source: where the text came from (a file path, or ``datasets:wikitext/<config>/<split>``).
    """

    split: str
    raw: bool
    lines: tuple[str, ...]
    source: str = ""

    def __post_init__(self) -> None:
        _check_split(self.split)
        lines = self.lines
        if isinstance(lines, str) or not all(isinstance(x, str) for x in lines):
            raise InvalidInputError("lines must be a sequence of str (one per line of the file, without its '\\n'); "
                                    f"got {type(lines).__name__}")
        if any("\n" in x for x in lines):
            raise InvalidInputError("lines must not contain '\\n'; split the text with str.split('\\n') first")
        object.__setattr__(self, "lines", tuple(lines))

    @property
    def text(self) -> str:
        """The whole split as one string: every line followed by ``"\\n"`` (the file's text)."""
        return "".join(line + "\n" for line in self.lines)

    def words(self) -> list[str]:
        """Word-level tokens: for every line (empty ones included) ``line.split() + ["<eos>"]``, concatenated."""
        out: list[str] = []
        for line in self.lines:
            out.extend(line.split())
            out.append(EOS)
        return out

    @property
    def n_words(self) -> int:
        """Number of words including one ``<eos>`` per line (the denominator of word-level perplexity)."""
        return sum(len(line.split()) for line in self.lines) + len(self.lines)

    def __repr__(self) -> str:
        return (f"WikiText2Split(split={self.split!r}, raw={self.raw}, lines={len(self.lines)}, "
                f"n_words={self.n_words}, source={self.source!r})")


def _check_split(split: object) -> str:
    if split not in SPLITS:
        alias = {"validation": "valid", "val": "valid", "dev": "valid"}.get(str(split))
        fix = f" (did you mean {alias!r}?)" if alias else ""
        raise InvalidInputError(f"split={split!r} is not a WikiText-2 split{fix}; pass one of {SPLITS}")
    return str(split)


def _read_lines(file: Path) -> tuple[str, ...]:
    # Iterating a text-mode file splits on line ends exactly as the PyTorch word_language_model example does.
    with open(file, encoding="utf-8") as f:
        return tuple(line.rstrip("\r\n") for line in f)


def _load_hf(split: str, raw: bool) -> WikiText2Split:
    from curmoe.common.errors import require

    datasets = require("datasets", "hf")
    config = _HF_CONFIG[raw]
    try:
        ds = datasets.load_dataset("wikitext", config, split=_HF_SPLIT[split])  # type: ignore[attr-defined]
    except Exception as e:  # offline, no cache, hub error: all mean "no data here"
        raise DataNotFoundError(
            f"could not load WikiText-2 through the `datasets` library (wikitext/{config}, split "
            f"{_HF_SPLIT[split]!r}): {type(e).__name__}: {e}; " + _how_to_provide()
        ) from e
    # Each row is one line of the file with its trailing "\n" ("" for the blank lines).
    lines = tuple(t[:-1] if t.endswith("\n") else t for t in ds["text"])
    logger.info("loaded WikiText-2 %s (raw=%s) through datasets: %d lines", split, raw, len(lines))
    return WikiText2Split(split=split, raw=raw, lines=lines, source=f"datasets:wikitext/{config}/{_HF_SPLIT[split]}")


def _datasets_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("datasets") is not None


def load_wikitext2(split: str, *, raw: bool = False,
                   data_dir: str | os.PathLike[str] | None = None) -> WikiText2Split:
    """Load one WikiText-2 split.

    Args:
        split: "train", "valid" or "test".
        raw: load the raw text (no ``<unk>``) instead of the word-level tokenised text. The raw train split is not
            part of the shared data directory; it is available through ``datasets`` only.
        data_dir: the data directory; ``None`` uses ``CURMOE_DATA_DIR``. When neither is set, the Hugging Face
            ``datasets`` library is used if it is installed. An explicit directory that does not exist is an error
            (never a silent download).

    Returns:
        The split's lines (see :class:`WikiText2Split`).

    Raises:
        InvalidInputError: unknown split.
        DataNotFoundError: no data directory and no ``datasets``, or a split file is missing (the path is named).
    """
    split = _check_split(split)
    raw = bool(raw)
    nothing_given = data_dir is None and not os.environ.get(ENV_VAR, "").strip()
    if nothing_given and _datasets_importable():
        return _load_hf(split, raw)
    root = _resolve_dir(data_dir)
    folder = root / ("wikitext-2-raw" if raw else "wikitext-2")
    file = folder / f"{split}.txt"
    if not file.is_file():
        if raw and split == "train":
            raise DataNotFoundError(
                f"{file} does not exist: the raw train split is not part of the shared WikiText-2 data (only the "
                "raw valid and test splits are); use raw=False for train, or unset the data directory and "
                "pip install 'curmoe[datasets]' to fetch wikitext-2-raw-v1 through `datasets`"
            )
        raise DataNotFoundError(f"WikiText-2 split file {file} is missing from {root}; " + _how_to_provide())
    lines = _read_lines(file)
    logger.info("loaded WikiText-2 %s (raw=%s) from %s: %d lines", split, raw, file, len(lines))
    return WikiText2Split(split=split, raw=raw, lines=lines, source=str(file))


def wikitext2_vocab(data_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """Sorted word types of the word-level train split, ``<eos>`` and ``<unk>`` included (33,278 types)."""
    return sorted(set(load_wikitext2("train", data_dir=data_dir).words()))

"""What ``curmoe serve MODEL`` opens: a curmoe checkpoint (exported to ONNX on the fly, cached), an exported file
(``.onnx``, OpenVINO ``.xml``) or a folder holding one exported file, plus the tokenizer beside it.

The export cache lives in ``$CURMOE_CACHE_DIR`` (default ``~/.cache/curmoe``) under ``exports/<key>/model.onnx``,
``key`` hashing the checkpoint's config.json and weights and the curmoe version, so a changed model is exported
again and an unchanged one is opened at once. The NumPy reference runtimes read the checkpoint directly.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

import curmoe
from curmoe.common.errors import CheckpointError, InvalidInputError
from curmoe.common.io import atomic_dir

__all__ = ["resolve_model", "cache_dir"]

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    return Path(os.environ.get("CURMOE_CACHE_DIR") or Path.home() / ".cache" / "curmoe")


def _is_checkpoint(p: Path) -> bool:
    return p.is_dir() and (p / "config.json").is_file() and any(p.glob("*.safetensors"))


def _key(model_dir: Path) -> str:
    h = hashlib.sha256(curmoe.__version__.encode())
    for f in sorted([model_dir / "config.json", *model_dir.glob("*.safetensors")]):
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def _export_cached(model_dir: Path) -> Path:
    """model.onnx (KV cache, sparse dispatch, float32) for a checkpoint, exported once per content."""
    out = cache_dir() / "exports" / _key(model_dir)
    onnx = out / "model.onnx"
    if onnx.is_file():
        log.info("using the cached export %s", onnx)
        return onnx
    from curmoe.exporters import OnnxExportConfig, export

    model = curmoe.load(model_dir)
    log.info("exporting %s to %s (cached for the next start)", model_dir, onnx)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as tmp:
        export(model, OnnxExportConfig(), tmp / "model.onnx")
        if model.tokenizer_path is not None:
            shutil.copyfile(model.tokenizer_path, tmp / "tokenizer.json")
    return onnx


def resolve_model(model: str | os.PathLike[str], runtime: str) -> tuple[Path, Path]:
    """(path to open on ``runtime``, the folder holding its tokenizer and chat template files).

    Raises:
        CheckpointError: MODEL is none of a checkpoint, an exported file, or a folder with one exported file.
    """
    p = Path(model)
    if runtime.startswith("reference"):
        if not _is_checkpoint(p):
            raise CheckpointError(f"runtime {runtime!r} reads a curmoe checkpoint folder (config.json + "
                                  f"*.safetensors); {str(p)!r} is not one")
        return p, p
    if _is_checkpoint(p):
        return _export_cached(p), p
    if p.is_file():
        if p.suffix not in (".onnx", ".xml"):
            raise CheckpointError(f"{str(p)!r} is not an exported model (.onnx or OpenVINO .xml)")
        return p, p.parent
    if p.is_dir():
        found = sorted(p.glob("*.onnx")) + sorted(p.glob("*.xml"))
        if len(found) == 1:
            return found[0], p
        raise CheckpointError(f"{str(p)!r} holds {len(found)} exported models ({', '.join(f.name for f in found)}); "
                              "pass the file itself, or a curmoe checkpoint folder")
    raise InvalidInputError(f"MODEL {str(p)!r} does not exist; pass a curmoe checkpoint folder or an exported "
                            ".onnx/.xml file")

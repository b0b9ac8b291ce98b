"""Packaging contracts: the lean core import, the one namespace, and clear errors for missing extras."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "onnx", "onnxruntime", "openvino", "coremltools", "transformers", "tokenizers", "matplotlib")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("stmt", ["import curmoe", "import curmoe.exporters, curmoe.runtimes, curmoe.models",
                                  "import curmoe.app.cli"])
def test_lean_import(stmt):
    loaded = _modules_after(stmt)
    heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY)
    assert not heavy, f"{stmt!r} imported heavy optional packages: {heavy[:5]}"


def test_namespace_maps_folders():
    import curmoe
    import curmoe.exporters
    import curmoe.models
    import curmoe.runtimes

    assert curmoe.__file__.replace("\\", "/").endswith("curmoe_core/__init__.py")
    for mod, folder in ((curmoe.exporters, "exporters"), (curmoe.runtimes, "runtimes"), (curmoe.models, "models")):
        assert mod.__file__.replace("\\", "/").endswith(f"{folder}/__init__.py")


def test_missing_extra_names_the_install_line():
    from curmoe.common.errors import MissingExtraError, require

    with pytest.raises(MissingExtraError, match=r"pip install 'curmoe\[openvino\]'"):
        require("curmoe_surely_not_installed_pkg", "openvino")


def test_public_api_is_declared():
    import curmoe

    for name in curmoe.__all__:
        assert hasattr(curmoe, name), name
    for name in ("svd", "cur", "compress", "load", "Model", "CURConfig", "SVDConfig", "CalibStats"):
        assert name in curmoe.__all__, name

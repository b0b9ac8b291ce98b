"""curmoe.exporters.coreml: a Core ML ML Program (.mlpackage) built op by op with coremltools' MIL builder.

Importing this package never imports coremltools: :func:`export_coreml` loads the builder on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from curmoe.exporters.coreml._config import CoreMLExportConfig

__all__ = ["CoreMLExportConfig", "export_coreml"]


def __getattr__(name: str) -> Any:
    if name == "export_coreml":
        return importlib.import_module("curmoe.exporters.coreml._export").export_coreml
    raise AttributeError(f"module 'curmoe.exporters.coreml' has no attribute {name!r}")

"""curmoe.app: the application layer: the CLI, the demo, the runtime benchmark, calibration text, result pages.

The only part of the core that may import :mod:`curmoe.exporters`, :mod:`curmoe.runtimes` and
:mod:`curmoe.models` (tests/test_architecture.py enforces it). Nothing in the library imports it.
"""

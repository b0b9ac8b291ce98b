"""Subcommands and export formats beyond the core ones, one module each (``serve.py``, ``inspect.py``, ...).

:func:`curmoe.app.cli.build_parser` imports every module here; a module registers itself with
``@command(name, help)`` (a subcommand, plus ``fn.configure(parser)``) or ``@folder_format(name, help)`` (a
``curmoe export --format NAME -o FOLDER`` writer), both from :mod:`curmoe.app.cli`. Heavy imports (torch, onnx,
runtimes, web servers) go inside the handlers so ``curmoe --help`` stays fast.
"""

"""curmoe.common: what every layer shares and nothing else owns.

Owns: the exception classes (:mod:`curmoe.common.errors`), argument checks (:mod:`curmoe.common.checks`) and
atomic file I/O with JSON reading (:mod:`curmoe.common.io`). Imports only the standard library and NumPy; every
other package may import it.
"""

"""curmoe.runtimes.adapters: one module per vendor runtime, each importing its own SDK.

Nothing imports an adapter eagerly: the registry (:mod:`curmoe.runtimes._registry`) imports it by name on first
use. An adapter implements the :class:`curmoe.runtimes.base.Session` interface.
"""

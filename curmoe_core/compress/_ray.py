"""Streamed compression distributed on Ray: each (layer, expert) unit is one Ray task.

The driver (``_stream._Job.run``) keeps everything that is sequential: it writes the global and per-layer
shards, calibrates layer by layer and advances the calibration hidden states, and appends every finished unit to
the manifest. Each expert unit becomes one task ``run_unit(spec, expert, stats, shared)``:

- ``spec`` (paths and configs, no arrays) is put in Ray's object store once per run;
- with calibration, ``stats`` (the expert's own input / hidden statistics) is put once per expert and ``shared``
  (the layer-wide fallback: block Gram and token sample) once per layer, with ``ray.put``; a task receives them as
  arguments, so on one node the NumPy arrays are read from shared memory without a copy;
- the task reads its expert's weights from the source itself, compresses them with the same code as the serial
  path, and writes its shard into the work folder atomically (temporary name, fsync, rename); it returns only
  the records, which the driver appends to the manifest.

The result is bit-identical to the serial path: a task runs the same computation on the same inputs (the seed is
per matrix, not per run order) and the manifest lists units by name, so completion order does not matter. A task
whose worker process dies is retried (``max_retries``): its retry rewrites the same temporary file and renames
it, so a half-written shard never survives, and a unit is recorded only after its shard is in place. If the
driver itself is killed, rerunning the same command resumes from the manifest, serially or with workers.

``ray.init`` is called only when no Ray connection exists: a local cluster of ``workers`` CPUs, or the cluster at
``address`` (``"auto"``, ``"ray://host:10001"``); the source and output folders must then be visible to every
node at the same path. A local cluster starts its workers at the driver's priority (``worker_niceness`` 0, not
Ray's default 15, so that a shared machine's other jobs do not starve them). An existing connection (``ray.init`` called by the caller) is used as it is and left
running.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from curmoe.common.errors import require

__all__ = ["RayPool"]

log = logging.getLogger(__name__)


class RayPool:
    """Expert units as Ray tasks: at most ``2 * workers`` queued at a time, results in completion order."""

    def __init__(self, run_unit: Callable[..., Any], spec: Any, workers: int, address: str | None = None,
                 max_retries: int = 3) -> None:
        ray = require("ray", "ray")
        self._ray = ray
        self._own = not ray.is_initialized()
        if self._own and address is not None:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        elif self._own:
            # worker_niceness 0: Ray starts workers at nice 15 by default, which on a machine shared with other
            # jobs starves them (measured: 6% of a core each at load 10, while the serial path, at nice 0, got 21%).
            ray.init(num_cpus=workers, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
                     _system_config={"worker_niceness": 0})
        # One CPU per task: Ray then sets OMP_NUM_THREADS=1 in the worker, so `workers` tasks fill `workers` cores.
        self._task = ray.remote(num_cpus=1, max_retries=max_retries)(run_unit)
        self._spec = ray.put(spec)
        self._limit = 2 * workers  # queued tasks (each pins its statistics in the object store)
        self._pending: dict[Any, str] = {}  # ObjectRef -> unit
        log.info("Ray: %s, %d worker(s), %s", "local cluster" if self._own and address is None else
                 f"cluster {address or 'already connected'}", workers, ray.cluster_resources().get("CPU"))

    def put(self, obj: Any) -> Any:
        return self._ray.put(obj)

    def submit(self, unit: str, stats: Any, shared: Any) -> list[Any]:
        finished = []
        while len(self._pending) >= self._limit:
            finished += self._wait(1)
        self._pending[self._task.remote(self._spec, unit, stats, shared)] = unit
        return finished

    def drain(self) -> list[Any]:
        return self._wait(len(self._pending))

    def _wait(self, n: int) -> list[Any]:
        """Results of ``n`` finished tasks (blocking until they finish)."""
        out = []
        while len(out) < n and self._pending:
            done, _ = self._ray.wait(list(self._pending), num_returns=1)
            for ref in done:
                unit = self._pending.pop(ref)
                try:
                    out.append(self._ray.get(ref))
                except Exception as e:  # a task that failed after its retries: the run stops, resumable
                    self.close()
                    e.add_note(f"expert unit {unit!r} failed on Ray after its retries; finished units are kept, "
                               "so rerunning the same command resumes the run")
                    raise
        return out

    def close(self) -> None:
        """Cancel what is still queued; shut the cluster down if this pool started it."""
        for ref in list(self._pending):
            self._ray.cancel(ref)  # not force: a forced cancel kills the worker, and a new one must start
        self._pending.clear()
        if self._own and self._ray.is_initialized():
            self._ray.shutdown()

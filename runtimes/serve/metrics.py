"""Server metrics in the Prometheus text exposition format (version 0.0.4), without a client library.

Counters end in ``_total``; histograms expose cumulative ``_bucket{le="..."}`` lines, ``_sum`` and ``_count``
(https://prometheus.io/docs/instrumenting/exposition_formats/). Every metric is updated from the engine thread and
the server's event loop, so each one holds a lock.
"""

from __future__ import annotations

import bisect
import threading

__all__ = ["Counter", "Gauge", "Histogram", "Metrics", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    esc = {k: str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"') for k, v in labels.items()}
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(esc.items())) + "}"


def _num(x: float) -> str:
    return repr(float(x)) if x != int(x) else str(int(x))


class Counter:
    """A monotone count, optionally split by one set of labels."""

    kind = "counter"

    def __init__(self, name: str, help: str) -> None:
        self.name, self.help = name, help
        self._v: dict[tuple[tuple[str, str], ...], float] = {}
        self._lock = threading.Lock()

    def inc(self, n: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._v[key] = self._v.get(key, 0.0) + n

    def value(self, **labels: str) -> float:
        return self._v.get(tuple(sorted(labels.items())), 0.0)

    def lines(self) -> list[str]:
        with self._lock:
            items = sorted(self._v.items()) or [((), 0.0)]
        return [f"{self.name}{_labels(dict(k))} {_num(v)}" for k, v in items]


class Gauge(Counter):
    """A value that goes up and down."""

    kind = "gauge"

    def set(self, v: float) -> None:
        with self._lock:
            self._v[()] = float(v)


class Histogram:
    """Observations counted in cumulative buckets (upper bounds ``buckets``, then +Inf)."""

    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: tuple[float, ...] = _LATENCY) -> None:
        self.name, self.help, self.buckets = name, help, tuple(sorted(buckets))
        self._counts = [0] * (len(self.buckets) + 1)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, v: float) -> None:
        i = bisect.bisect_left(self.buckets, v)
        with self._lock:
            self._counts[i] += 1
            self._sum += v

    @property
    def count(self) -> int:
        return sum(self._counts)

    def lines(self) -> list[str]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        out, acc = [], 0
        for le, c in zip([*map(_num, self.buckets), "+Inf"], counts):
            acc += c
            out.append(f'{self.name}_bucket{{le="{le}"}} {acc}')
        return out + [f"{self.name}_sum {_num(total)}", f"{self.name}_count {acc}"]


class Metrics:
    """Everything ``GET /metrics`` reports."""

    def __init__(self) -> None:
        p = "curmoe_"
        self.requests = Counter(p + "requests_total", "HTTP requests answered, by endpoint and status code")
        self.tokens_in = Counter(p + "prompt_tokens_total", "prompt tokens of admitted requests")
        self.tokens_out = Counter(p + "generation_tokens_total", "tokens generated")
        self.steps = Counter(p + "decode_steps_total", "batched decode steps run")
        self.ttft = Histogram(p + "time_to_first_token_seconds", "submission to first token (queue + prefill)")
        self.itl = Histogram(p + "time_per_output_token_seconds", "time between two tokens of a sequence")
        self.latency = Histogram(p + "request_duration_seconds", "submission to last token of finished requests")
        self.step_seconds = Histogram(p + "decode_step_seconds", "one batched decode step on the runtime")
        self.batch_size = Histogram(p + "decode_batch_size", "sequences per decode step", _BATCH)
        self.queue_depth = Gauge(p + "queue_depth", "requests waiting for a slot")
        self.active = Gauge(p + "active_sequences", "sequences holding a slot")

    def render(self) -> str:
        out = []
        for m in vars(self).values():
            out += [f"# HELP {m.name} {m.help}", f"# TYPE {m.name} {m.kind}", *m.lines()]
        return "\n".join(out) + "\n"

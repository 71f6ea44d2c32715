"""Prometheus text exposition for the server: counters, gauges and histograms, no dependency.

The server runs one process with one event loop; every update happens on that loop (the model
thread reports through the batcher's callbacks, which run on the loop), so no locks are needed.
Output follows the Prometheus text format 0.0.4: `# HELP`, `# TYPE`, then one line per label set;
histograms as cumulative `_bucket{le=...}`, `_sum` and `_count`.

Left out: the prometheus_client library (a dependency for ~100 lines), multi-process aggregation,
summaries with quantiles (compute them from the histograms with `histogram_quantile`).
Reference: https://prometheus.io/docs/instrumenting/exposition_formats/
"""

from __future__ import annotations

import bisect
import math


def _labels(names: tuple, values: tuple, extra: str = "") -> str:
    parts = [f'{n}="{_escape(str(v))}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(float(x)) if not float(x).is_integer() else str(int(x))


class Metric:
    kind = ""

    def __init__(self, name: str, help: str, labels: tuple = ()):
        self.name, self.help, self.label_names = name, help, tuple(labels)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(Metric):
    kind = "counter"

    def __init__(self, name, help, labels=()):
        super().__init__(name, help, labels)
        self.values: dict[tuple, float] = {} if labels else {(): 0.0}  # unlabelled: exported from 0

    def inc(self, *labels, amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def get(self, *labels) -> float:
        return self.values.get(labels, 0.0)

    def render(self) -> list[str]:
        lines = self.header()
        for key, value in sorted(self.values.items()):
            lines.append(f"{self.name}{_labels(self.label_names, key)} {_num(value)}")
        return lines


class Gauge(Metric):
    """A value read when rendered, from a callable (queue depth, in-flight count)."""

    kind = "gauge"

    def __init__(self, name, help, read):
        super().__init__(name, help)
        self.read = read

    def render(self) -> list[str]:
        return self.header() + [f"{self.name} {_num(self.read())}"]


class Histogram(Metric):
    kind = "histogram"

    def __init__(self, name, help, buckets, labels=()):
        super().__init__(name, help, labels)
        self.buckets = tuple(sorted(float(b) for b in buckets))
        self.series: dict[tuple, list] = {}  # labels -> [counts per bucket + overflow, sum, count]

    def observe(self, value: float, *labels) -> None:
        s = self.series.get(labels)
        if s is None:
            s = self.series[labels] = [[0] * (len(self.buckets) + 1), 0.0, 0]
        s[0][bisect.bisect_left(self.buckets, value)] += 1
        s[1] += value
        s[2] += 1

    def counts(self, *labels) -> dict[float, int]:
        """Observations per bucket upper bound (non-cumulative), +inf last; for reports and tests."""
        s = self.series.get(labels)
        if s is None:
            return {}
        return dict(zip(self.buckets + (math.inf,), s[0]))

    def render(self) -> list[str]:
        lines = self.header()
        for key, (counts, total, count) in sorted(self.series.items()):
            acc = 0
            for bound, c in zip(self.buckets + (math.inf,), counts):
                acc += c
                le = 'le="' + _num(bound) + '"'
                lines.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} {acc}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, key)} {_num(total)}")
            lines.append(f"{self.name}_count{_labels(self.label_names, key)} {count}")
        return lines


LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
TOKEN_BUCKETS = (16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


class ServerMetrics:
    """Every metric the server exports, under the `sparsebert_` prefix."""

    def __init__(self, queue_depth, in_flight):
        self.requests = Counter("sparsebert_requests_total", "HTTP requests by endpoint and status",
                                ("endpoint", "status"))
        self.latency = Histogram("sparsebert_request_latency_seconds",
                                 "Request latency from body received to response ready",
                                 LATENCY_BUCKETS, ("endpoint",))
        self.inputs = Counter("sparsebert_inputs_total", "Texts accepted, by endpoint", ("endpoint",))
        self.tokens = Counter("sparsebert_tokens_total", "Tokens of accepted texts (no padding)")
        self.padded_tokens = Counter("sparsebert_padded_tokens_total",
                                     "Tokens run through the encoder, padding included")
        self.batch_size = Histogram("sparsebert_batch_size", "Texts per encoder batch", SIZE_BUCKETS)
        self.batch_tokens = Histogram("sparsebert_batch_tokens",
                                      "Padded tokens per encoder batch (rows x longest)", TOKEN_BUCKETS)
        self.batch_seconds = Histogram("sparsebert_batch_seconds", "Encoder time per batch",
                                       LATENCY_BUCKETS)
        self.queue_wait = Histogram("sparsebert_queue_wait_seconds",
                                    "Time a text waits from acceptance to the start of its batch",
                                    LATENCY_BUCKETS)
        self.rejected = Counter("sparsebert_rejected_total", "Requests refused before queueing",
                                ("reason",))
        self.dropped = Counter("sparsebert_dropped_inputs_total",
                               "Queued texts dropped because their client disconnected")
        self.queue_depth = Gauge("sparsebert_queue_depth", "Texts waiting for a batch", queue_depth)
        self.in_flight = Gauge("sparsebert_requests_in_flight", "Requests accepted and not yet answered",
                               in_flight)
        self._all = (self.requests, self.latency, self.inputs, self.tokens, self.padded_tokens,
                     self.batch_size, self.batch_tokens, self.batch_seconds, self.queue_wait,
                     self.rejected, self.dropped, self.queue_depth, self.in_flight)

    def render(self) -> str:
        return "\n".join(line for m in self._all for line in m.render()) + "\n"

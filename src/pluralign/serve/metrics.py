"""Prometheus text exposition (format 0.0.4) of the server's counters, written by hand: a dozen series
do not need a client library."""

from __future__ import annotations

import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.counters: dict[str, float] = defaultdict(float)
        self.buckets = [0] * len(LATENCY_BUCKETS)
        self.latency_sum = 0.0
        self.latency_count = 0

    def request(self, endpoint: str, status: int, seconds: float | None = None) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1
            if seconds is not None:
                self.latency_sum += seconds
                self.latency_count += 1
                for i, b in enumerate(LATENCY_BUCKETS):
                    if seconds <= b:
                        self.buckets[i] += 1

    def add(self, name: str, value: float = 1.0) -> None:
        with self._lock:
            self.counters[name] += value

    def render(self, gauges: dict[str, float]) -> str:
        with self._lock:
            out = ["# HELP pluralign_requests_total HTTP requests by endpoint and status.",
                   "# TYPE pluralign_requests_total counter"]
            for (ep, status), v in sorted(self.requests.items()):
                out.append(f'pluralign_requests_total{{endpoint="{ep}",status="{status}"}} {v}')
            out += ["# HELP pluralign_request_seconds Latency of generation and reward requests.",
                    "# TYPE pluralign_request_seconds histogram"]
            for b, v in zip(LATENCY_BUCKETS, self.buckets, strict=True):
                out.append(f'pluralign_request_seconds_bucket{{le="{b}"}} {v}')
            out.append(f'pluralign_request_seconds_bucket{{le="+Inf"}} {self.latency_count}')
            out.append(f"pluralign_request_seconds_sum {self.latency_sum}")
            out.append(f"pluralign_request_seconds_count {self.latency_count}")
            for name, v in sorted(self.counters.items()):
                out += [f"# TYPE pluralign_{name} counter", f"pluralign_{name} {v:g}"]
        for name, v in sorted(gauges.items()):
            out += [f"# TYPE pluralign_{name} gauge", f"pluralign_{name} {v:g}"]
        return "\n".join(out) + "\n"

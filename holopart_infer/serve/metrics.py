"""Prometheus metrics of the service (prometheus-client, one registry per app).

Histograms give quantiles to Prometheus (``histogram_quantile``); for a scrape
without a Prometheus server the latency p50/p90/p99 over the last
:data:`WINDOW` completed requests and the parts per second over the last
minute are also exported as gauges.
"""
from __future__ import annotations

import collections
import threading
import time

import numpy as np

WINDOW = 512  # completed jobs kept for the windowed latency quantiles
RATE_WINDOW_S = 60.0
_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300, 600)


class Metrics:
    def __init__(self, queue_depth, inflight):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.requests = Counter("holopart_http_requests", "HTTP requests by route and status code",
                                ["route", "code"], registry=r)
        self.errors = Counter("holopart_errors", "Failed or refused requests by kind", ["kind"], registry=r)
        self.latency = Histogram("holopart_job_latency_seconds", "Arrival to result of a completion",
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("holopart_queue_wait_seconds", "Arrival to start of its batch",
                                    buckets=_LATENCY_BUCKETS, registry=r)
        self.parts = Counter("holopart_parts_completed", "Parts completed", registry=r)
        self.jobs = Counter("holopart_jobs_completed", "Objects completed", registry=r)
        self.batches = Counter("holopart_batches", "complete_many calls (dynamic batches) run", registry=r)
        self.batch_objects = Histogram("holopart_batch_objects", "Objects per dynamic batch",
                                       buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32), registry=r)
        self.batch_parts = Histogram("holopart_batch_parts", "Parts per dynamic batch",
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.shared = Counter("holopart_shared_dit_batches",
                              "Objects whose parts shared a DiT/decoder batch with another object's", registry=r)
        g = Gauge("holopart_queue_depth", "Jobs waiting for a batch", registry=r)
        g.set_function(queue_depth)
        g = Gauge("holopart_inflight_jobs", "Jobs in the running batch", registry=r)
        g.set_function(inflight)
        self.quantiles = Gauge("holopart_job_latency_window_seconds",
                               f"Latency quantiles over the last {WINDOW} completed jobs", ["quantile"], registry=r)
        self.parts_rate = Gauge("holopart_parts_per_second", f"Parts completed per second over the last "
                                f"{RATE_WINDOW_S:.0f} s", registry=r)
        self._lock = threading.Lock()
        self._latencies: collections.deque = collections.deque(maxlen=WINDOW)
        self._parts_log: collections.deque = collections.deque()  # (time, parts)

    def job_done(self, latency_s: float, parts: int) -> None:
        self.latency.observe(latency_s)
        self.parts.inc(parts)
        self.jobs.inc()
        with self._lock:
            self._latencies.append(latency_s)
            self._parts_log.append((time.monotonic(), parts))

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        with self._lock:
            lat = np.array(self._latencies)
            now = time.monotonic()
            while self._parts_log and self._parts_log[0][0] < now - RATE_WINDOW_S:
                self._parts_log.popleft()
            recent = sum(p for _, p in self._parts_log)
        for q in (0.5, 0.9, 0.99):
            self.quantiles.labels(str(q)).set(float(np.quantile(lat, q)) if len(lat) else float("nan"))
        self.parts_rate.set(recent / RATE_WINDOW_S)
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

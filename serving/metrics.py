"""Prometheus metrics of one app instance (its own registry, so apps in one process never clash)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
                   0.15, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.request_seconds = Histogram(
            "recsys_request_seconds", "Request latency by route", ["route", "method", "status"],
            buckets=LATENCY_BUCKETS, registry=r)
        self.responses = Counter(
            "recsys_recommendation_responses", "Recommendation responses by source "
            "(model, popularity fallback, degraded)", ["route", "source"], registry=r)
        self.fallbacks = Counter(
            "recsys_fallbacks", "Responses not ranked by the model", ["reason"], registry=r)
        self.model_info = Gauge(
            "recsys_model_info", "The model version being served (value 1)", ["version"],
            registry=r)
        self.model_reloads = Counter(
            "recsys_model_reloads", "Model load attempts by result", ["result"], registry=r)
        self.events_ingested = Counter(
            "recsys_events_ingested", "Events stored durably", ["type"], registry=r)
        self.events_duplicate = Counter(
            "recsys_events_duplicate", "Events ignored because their id was already stored",
            registry=r)
        self.events_rejected = Counter(
            "recsys_events_rejected", "Event batches refused", ["reason"], registry=r)
        self.items_changed = Counter(
            "recsys_items_changed", "Cold-start items added, changed or deleted", ["action"],
            registry=r)
        self.rate_limited = Counter(
            "recsys_rate_limited", "Requests refused with 429", registry=r)
        self.recommend_batch = Histogram(
            "recsys_recommend_batch_size", "Recommendation requests answered together by one "
            "engine call (requests that waited for the model are coalesced)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.overloaded = Counter(
            "recsys_overloaded", "Requests refused with 503 because the model pool was full",
            registry=r)

        # the labelled children of the per-request metrics, found once per label set:
        # `labels()` takes a lock and checks the values on every call (a visible share of the
        # event loop's own work per request); neither metric is ever
        # cleared, so a child stays valid
        self._children: dict[tuple, object] = {}

    def _child(self, metric, *values: str):
        key = (id(metric), *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self._child(self.request_seconds, route, method, str(status)).observe(seconds)

    def count_response(self, route: str, source: str) -> None:
        self._child(self.responses, route, source).inc()

    def model_loaded(self, version: str) -> None:
        self.model_reloads.labels(result="ok").inc()
        self.model_info.clear()
        self.model_info.labels(version=version).set(1)

    def model_refused(self, version: str) -> None:
        self.model_reloads.labels(result="refused").inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


__all__ = ["Metrics"]

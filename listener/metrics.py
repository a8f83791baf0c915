"""Prometheus counters of one listener instance, in its own registry (several per process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

OUTCOMES = ("stored", "duplicate", "malformed", "oversized", "spoofed", "failed")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.alerts = Counter(
            "safeguard_listener_alerts",
            "Alert messages received, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.device_messages = Counter(
            "safeguard_listener_device_messages",
            "Status and health messages received, by kind and outcome",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.acks = Counter(
            "safeguard_listener_acks_published", "Acks published", registry=self.registry
        )
        self.store_seconds = Histogram(
            "safeguard_listener_store_seconds",
            "Time to store one batch of alerts",
            registry=self.registry,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.store_errors = Counter(
            "safeguard_listener_store_errors", "Failed store attempts", registry=self.registry
        )
        self.queue_depth = Gauge(
            "safeguard_listener_queue_depth", "Alerts waiting to be stored", registry=self.registry
        )
        self.mqtt_connected = Gauge(
            "safeguard_listener_mqtt_connected",
            "1 while connected to the broker",
            registry=self.registry,
        )
        self.live_clients = Gauge(
            "safeguard_listener_live_clients", "Open live (SSE) streams", registry=self.registry
        )
        for outcome in OUTCOMES:
            self.alerts.labels(outcome=outcome)

    def count(self, outcome: str, amount: int = 1) -> None:
        self.alerts.labels(outcome=outcome).inc(amount)

    def value(self, outcome: str) -> float:
        """The current count of one alert outcome (for tests and benchmarks)."""
        sample = self.registry.get_sample_value(
            "safeguard_listener_alerts_total", {"outcome": outcome}
        )
        return float(sample or 0.0)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

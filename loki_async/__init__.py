"""loki-async: a log store that speaks Grafana Loki's HTTP API, with asynchronous queries
on NATS JetStream."""

__version__ = "0.1.0"

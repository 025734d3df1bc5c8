"""Observability: Prometheus metrics, logging setup and optional OpenTelemetry tracing."""

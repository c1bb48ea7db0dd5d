"""Observability: Prometheus metrics, health and readiness (DESIGN.md layout)."""

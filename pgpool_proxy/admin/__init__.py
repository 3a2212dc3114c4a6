"""Operating the proxy: the admin console, Prometheus metrics and health endpoints."""

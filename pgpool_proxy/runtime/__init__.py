"""The proxy process: server (listener, cancel keys), lifecycle, services, workers, tracking."""

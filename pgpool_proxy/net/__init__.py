"""I/O adapters below the pool: the client/server byte pipe (Endpoint), TLS contexts, TCP."""

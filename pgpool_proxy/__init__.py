"""pgpool-proxy: a PostgreSQL connection pooling proxy."""

__version__ = "0.1.0"

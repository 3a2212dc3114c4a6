"""Benchmark harness: PostgreSQL direct vs PgBouncer vs pgpool-proxy, driven by real pgbench.

Run it from the repository root with `python -m bench` (see bench/README.md). Not part of the
installed package.
"""

"""pgpool-proxy: a PostgreSQL connection pooling proxy."""

from . import speedups

__version__ = "0.1.0"

# Before any hot-path module is imported: PGPOOL_PURE_PYTHON=1 runs the pure-Python reference
# even where the compiled twin is installed, and a stale twin is never loaded (speedups).
speedups.install(pure=speedups.pure_requested())

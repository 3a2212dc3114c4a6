# syntax=docker/dockerfile:1
# pgpool-proxy container image: the proxy as PID 1, configured by a mounted file + environment.
#
#   docker build -t pgpool-proxy .
#   docker run -p 6432:6432 -p 9432:9432 \
#     -e PGPOOL_DB_HOST=db.internal -e PGPOOL_DB_PORT=5432 \
#     -e PGPOOL_DB_SECRET_ARN=arn:aws:secretsmanager:... -e PGPOOL_APP_PASSWORD=... pgpool-proxy
#
# Mount another configuration over /etc/pgpool-proxy/pgpool-proxy.toml to change more than the
# environment can (see deploy/pgpool-proxy.toml and docs/deploying.md).

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# --- build: the project and every dependency as wheels --------------------------------------
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pgpool_proxy ./pgpool_proxy
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# --- runtime: wheels installed into a clean slim image, no compiler, no pip cache ----------
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/pgpool_proxy-*.whl \
    && groupadd --system --gid 10001 pgpool \
    && useradd --system --uid 10001 --gid pgpool --no-create-home --shell /usr/sbin/nologin pgpool
COPY deploy/pgpool-proxy.toml /etc/pgpool-proxy/pgpool-proxy.toml

USER 10001:10001
# 6432: PostgreSQL clients; 9432: /metrics, /healthz, /readyz ([metrics] listen).
EXPOSE 6432 9432
# Docker HEALTHCHECK and the ECS container health check run this same command; slim images
# have no curl. Liveness only: readiness (/readyz) is for load balancers and Kubernetes.
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["pgpool-proxy", "healthcheck", "--config", "/etc/pgpool-proxy/pgpool-proxy.toml"]
# Exec form: the proxy is PID 1 and receives SIGTERM itself (graceful drain bounded by
# [proxy] shutdown_timeout_s); SIGINT stops at once. Give the orchestrator a stop timeout
# longer than shutdown_timeout_s (docker stop -t, ECS stopTimeout, terminationGracePeriod).
STOPSIGNAL SIGTERM
ENTRYPOINT ["pgpool-proxy"]
CMD ["run", "--config", "/etc/pgpool-proxy/pgpool-proxy.toml"]

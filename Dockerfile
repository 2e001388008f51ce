# syntax=docker/dockerfile:1
# The gateway image: the `idemgate` distribution and its locked dependencies, nothing else.
#   docker build -t idemgate:local .
#   docker run -p 127.0.0.1:8080:8080 -e IDEMGATE_STORAGE=dynamodb://idemgate?region=us-east-1 idemgate:local
# Every setting comes from IDEMGATE_* environment variables (docs/operations.md).

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /usr/local/bin/uv
# Bytecode compiled once at build time, real files rather than links into uv's cache (the cache
# is a build-only mount), and the image's own Python rather than a downloaded one.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/idemgate
WORKDIR /src
# Dependencies first, so this layer is rebuilt only when the lock or a pyproject.toml changes.
# uv reads every workspace member's pyproject.toml to check the lock, but installs only the
# service's dependencies.
COPY pyproject.toml uv.lock ./
COPY service/pyproject.toml service/
COPY lambda_adapter/pyproject.toml lambda_adapter/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --package idemgate --no-install-project
COPY service/ service/
# Not editable: the runtime stage copies the environment without the sources under /src.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --package idemgate --no-editable

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 idemgate \
    && useradd --system --uid 10001 --gid idemgate --home-dir /app --no-create-home idemgate \
    && mkdir -p /app/data \
    && chown idemgate:idemgate /app/data
COPY --from=build /opt/idemgate /opt/idemgate
ENV PATH=/opt/idemgate/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    IDEMGATE_HOST=0.0.0.0 \
    IDEMGATE_PORT=8080
# The default storage, sqlite:///data/idemgate.db, lands in /app/data: mount a volume there.
WORKDIR /app
USER idemgate
EXPOSE 8080
# The slim image has no curl; Python's urllib fails on anything but a 2xx answer.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:${IDEMGATE_PORT}/healthz', timeout=2)"
CMD ["idemgate", "serve"]

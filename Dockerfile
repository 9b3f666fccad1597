# syntax=docker/dockerfile:1
# One image, both entry points: `letterbox` (the operator, run by the Helm chart) and `mailpod`
# (the mail server, run by the StatefulSet the operator renders). Build from the repository root:
#   docker build -t letterbox:dev .
# The Python minor version matches requirements.lock (resolved on 3.11).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Dependencies first, pinned, so a source change does not reinstall them. Prebuilt wheels only,
# so no compiler is ever needed; the one exception, dkimpy, publishes no wheel and is pure Python.
COPY requirements.lock ./
RUN python -m venv /opt/letterbox \
 && /opt/letterbox/bin/pip install --only-binary=:all: --no-binary=dkimpy --no-deps \
      -r requirements.lock
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY mailpod ./mailpod
# The project itself, without touching the pinned dependencies (pip check proves they fit).
RUN /opt/letterbox/bin/pip install --no-deps . \
 && /opt/letterbox/bin/pip check \
 && /opt/letterbox/bin/python -m compileall -q /opt/letterbox/lib

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="letterbox" \
      org.opencontainers.image.description="Declarative mail for Kubernetes: operator and mail pod" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/letterbox/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The uid/gid the chart and the mail pod's securityContext use (10001), never root.
RUN groupadd --system --gid 10001 letterbox \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin letterbox
COPY --from=build /opt/letterbox /opt/letterbox
USER 10001:10001
WORKDIR /tmp
# No ENTRYPOINT: the chart runs `letterbox operator`, the StatefulSet runs `mailpod run`.
CMD ["letterbox", "--help"]

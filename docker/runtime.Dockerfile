# The Slipway inference runtime with one model baked in.
#
# GPU (default):  docker build -f docker/runtime.Dockerfile <context>
# CPU variant:    --build-arg BASE_IMAGE=python:3.11-slim --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
#
# Slipway's builder assembles the context: inference_runtime/, wheelhouse/ (may be
# empty), certs/ (an extra CA bundle, may be empty) and model/<artifact>. Layers go
# from least to most often changed: system, Python packages, runtime code, model;
# a new model version therefore adds one small layer on top of cached ones.

ARG BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
FROM ${BASE_IMAGE}
ARG BASE_IMAGE

# Networks without direct internet access: a pip index, a wheelhouse, a CA bundle.
ARG PIP_INDEX_URL=""
ARG PIP_EXTRA_INDEX_URL=""
ARG TORCH_INDEX_URL=""
ARG PIP_OFFLINE=""
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/runtime PATH=/opt/runtime/bin:$PATH

COPY certs/ /usr/local/share/slipway-certs/
RUN set -eu; \
    if [ -s /usr/local/share/slipway-certs/extra-ca.crt ]; then \
      cat /usr/local/share/slipway-certs/extra-ca.crt >> /etc/ssl/certs/ca-certificates.crt; fi; \
    if ! command -v python3 >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
      && rm -rf /var/lib/apt/lists/*; fi; \
    python3 -m venv /opt/runtime; \
    (getent group slipway || groupadd --system --gid 10001 slipway) >/dev/null; \
    (getent passwd slipway || useradd --system --uid 10001 --gid slipway --home-dir /srv --shell /usr/sbin/nologin slipway) >/dev/null

COPY wheelhouse/ /tmp/wheelhouse/
COPY inference_runtime/requirements.txt /tmp/runtime-requirements.txt
RUN set -eu; \
    export PIP_CERT=/etc/ssl/certs/ca-certificates.crt; \
    set -- --find-links /tmp/wheelhouse; \
    [ -n "$PIP_OFFLINE" ] && set -- "$@" --no-index; \
    [ -n "$PIP_INDEX_URL" ] && set -- "$@" --index-url "$PIP_INDEX_URL"; \
    [ -n "$PIP_EXTRA_INDEX_URL" ] && set -- "$@" --extra-index-url "$PIP_EXTRA_INDEX_URL"; \
    [ -n "$TORCH_INDEX_URL" ] && set -- "$@" --extra-index-url "$TORCH_INDEX_URL"; \
    pip install "$@" -r /tmp/runtime-requirements.txt; \
    rm -rf /tmp/wheelhouse /tmp/runtime-requirements.txt

COPY inference_runtime/ /opt/slipway/inference_runtime/
ARG RUNTIME_VERSION=dev
ENV PYTHONPATH=/opt/slipway

ARG MODEL_NAME
ARG MODEL_VERSION
ARG MODEL_SHA256
ARG MODEL_FILE
ARG MODEL_SIGNATURE=""
# Root-owned and read-only for the runtime user.
COPY model/ /srv/model/
LABEL org.opencontainers.image.title="slipway-runtime-${MODEL_NAME}" \
      org.opencontainers.image.version="${MODEL_VERSION}" \
      io.slipway.model.name="${MODEL_NAME}" \
      io.slipway.model.version="${MODEL_VERSION}" \
      io.slipway.model.sha256="${MODEL_SHA256}" \
      io.slipway.runtime.version="${RUNTIME_VERSION}" \
      io.slipway.base-image="${BASE_IMAGE}"
ENV RUNTIME_MODEL_PATH=/srv/model/${MODEL_FILE} \
    RUNTIME_MODEL_NAME=${MODEL_NAME} \
    RUNTIME_MODEL_VERSION=${MODEL_VERSION} \
    RUNTIME_SHA256=${MODEL_SHA256} \
    RUNTIME_SIGNATURE=${MODEL_SIGNATURE} \
    RUNTIME_HOST=0.0.0.0 \
    RUNTIME_PORT=8080

USER 10001:10001
WORKDIR /srv
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/v2/health/ready' % os.environ.get('RUNTIME_PORT', '8080'), timeout=2)"]
ENTRYPOINT ["python3", "-m", "inference_runtime"]

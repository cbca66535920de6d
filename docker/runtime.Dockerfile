# Slipway inference runtime image: one model, served over the Open Inference Protocol v2.
#
# Layers go from the least to the most often changed: Python and dependencies, then the
# runtime's code, then the model. A new model version rebuilds one layer.
#
# Build context (the repository root, or a directory laid out the same way):
#   inference_runtime/            the runtime package and its requirements.txt
#   docker/wheelhouse/            optional wheels (WHEELHOUSE)
#   docker/certs/                 optional extra CA certificates, *.crt or *.pem (EXTRA_CA_DIR)
#   MODEL_FILE                    the TorchScript or torch.export archive
#
# GPU (the default base):
#   docker build -f docker/runtime.Dockerfile --build-arg MODEL_FILE=var/models/resnet.pt2 \
#     --build-arg MODEL_NAME=resnet --build-arg MODEL_VERSION=3 --build-arg MODEL_SHA256=... .
# CPU variant (a slim Python base and the CPU torch build, ~1 GB instead of ~6 GB):
#   docker build -f docker/runtime.Dockerfile --build-arg BASE_IMAGE=python:3.11-slim-bookworm \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu ... .
# Without direct internet access: --build-arg PIP_INDEX_URL=https://pypi.internal/simple,
#   --build-arg WHEELHOUSE=path/to/wheels (with PIP_NO_INDEX=1 for no index at all),
#   extra CA certificates in docker/certs/ (or --build-arg EXTRA_CA_DIR=path), and
#   `--network host` where the builder must reach a proxy on the host.

ARG BASE_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04
FROM ${BASE_IMAGE} AS python

SHELL ["/bin/sh", "-eu", "-c"]
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/slipway/venv \
    PATH=/opt/slipway/venv/bin:$PATH

# --- Python (the CUDA base has none; a Python base has it) and a non-root user ------------
RUN if ! command -v python3 >/dev/null 2>&1 || ! python3 -c "import ensurepip" >/dev/null 2>&1; then \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv ca-certificates; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    grep -q '^slipway:' /etc/group || echo 'slipway:x:10001:' >> /etc/group; \
    grep -q '^slipway:' /etc/passwd || echo 'slipway:x:10001:10001:Slipway runtime:/nonexistent:/usr/sbin/nologin' >> /etc/passwd

# --- Dependencies, in a stage of their own ------------------------------------------------
# The wheelhouse and CA files pip needs are copied in here, and only the finished
# virtualenv leaves this stage: copied into the image, they would stay in it as a
# layer (~230 MB with the CPU torch wheel) even after `rm`, and the classic builder
# the Docker SDK drives has no bind mounts.
FROM python AS dependencies
ARG PIP_INDEX_URL=
ARG PIP_EXTRA_INDEX_URL=
ARG PIP_TRUSTED_HOST=
ARG PIP_NO_INDEX=
ARG TORCH_INDEX_URL=
ARG WHEELHOUSE=docker/wheelhouse
ARG EXTRA_CA_DIR=docker/certs
COPY ${WHEELHOUSE} /tmp/wheelhouse/
COPY ${EXTRA_CA_DIR} /tmp/extra-ca/
COPY inference_runtime/requirements.txt /tmp/requirements.txt
RUN for name in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST PIP_NO_INDEX; do \
        eval "value=\${$name:-}"; [ -n "$value" ] || unset "$name"; \
    done; \
    extra_ca=$(find /tmp/extra-ca -type f \( -name '*.crt' -o -name '*.pem' \) | sort); \
    if [ -n "$extra_ca" ]; then \
        system_ca=/etc/ssl/certs/ca-certificates.crt; \
        { if [ -f "$system_ca" ]; then cat "$system_ca"; fi; for f in $extra_ca; do cat "$f"; echo; done; } > /tmp/ca-bundle.pem; \
        export PIP_CERT=/tmp/ca-bundle.pem; \
    fi; \
    python3 -m venv "$VIRTUAL_ENV"; \
    torch=$(grep -E '^torch==' /tmp/requirements.txt); \
    if [ -n "${TORCH_INDEX_URL:-}" ]; then \
        pip install --find-links /tmp/wheelhouse --index-url "$TORCH_INDEX_URL" "$torch"; \
    fi; \
    pip install --find-links /tmp/wheelhouse -r /tmp/requirements.txt; \
    # What serving never runs, ~190 MB of the CPU image: torch's C++ tests and tools, and the headers
    # and CMake files for building extensions against it.
    torch_dir=$(python -c 'import importlib.util; print(importlib.util.find_spec("torch").submodule_search_locations[0])'); \
    rm -rf "$torch_dir/test" "$torch_dir/include" "$torch_dir/share/cmake"; \
    find "$torch_dir/bin" -mindepth 1 -maxdepth 1 ! -name torch_shm_manager -exec rm -rf {} +

FROM python
COPY --from=dependencies /opt/slipway/venv /opt/slipway/venv

# --- The runtime's code ---------------------------------------------------------------------
WORKDIR /opt/slipway
COPY inference_runtime /opt/slipway/inference_runtime
RUN python -m compileall -q /opt/slipway/inference_runtime
ENV PYTHONPATH=/opt/slipway \
    RUNTIME_HOST=0.0.0.0 \
    RUNTIME_PORT=8080

# --- The model (the only layer a new model version changes) ---------------------------------
ARG MODEL_FILE=model.pt
ARG MODEL_NAME=model
ARG MODEL_VERSION=1
ARG MODEL_SHA256=
ARG MODEL_SIGNATURE=
ARG RUNTIME_VERSION=0.1.0
ARG BASE_IMAGE
LABEL org.opencontainers.image.title="slipway-runtime-${MODEL_NAME}" \
      org.opencontainers.image.description="Slipway inference runtime serving ${MODEL_NAME} version ${MODEL_VERSION}" \
      org.opencontainers.image.version="${MODEL_VERSION}" \
      io.slipway.model.name="${MODEL_NAME}" \
      io.slipway.model.version="${MODEL_VERSION}" \
      io.slipway.model.sha256="${MODEL_SHA256}" \
      io.slipway.runtime.version="${RUNTIME_VERSION}" \
      io.slipway.base-image="${BASE_IMAGE}"
COPY ${MODEL_FILE} /models/model
ENV RUNTIME_MODEL_PATH=/models/model \
    RUNTIME_MODEL_NAME=${MODEL_NAME} \
    RUNTIME_MODEL_VERSION=${MODEL_VERSION} \
    RUNTIME_MODEL_SHA256=${MODEL_SHA256} \
    RUNTIME_SIGNATURE=${MODEL_SIGNATURE}

USER 10001:10001
EXPOSE 8080
# Readiness: 503 while the model loads and while draining after SIGTERM.
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python", "-m", "inference_runtime.healthcheck"]
STOPSIGNAL SIGTERM
# Every option comes from RUNTIME_* variables (docker run -e RUNTIME_MAX_BATCH_SIZE=32 ...);
# arguments after the image name are passed to the runtime too.
# dumb-init is PID 1 and forwards every signal to the runtime: as PID 1, Python would miss a
# SIGTERM sent before it installs its handlers (its first ~15 ms), since the kernel delivers
# PID 1 only the signals it handles. It comes with the runtime's requirements (pip, from the
# build's index or wheelhouse), not from apt: an offline build reaches no Debian mirror.
ENTRYPOINT ["dumb-init", "--", "python", "-m", "inference_runtime"]

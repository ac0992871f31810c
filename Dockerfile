# cht-rapidpro-worker image: dependencies from requirements.lock (exact versions, sha256-checked),
# runs as a non-root user, works with a read-only root file system, handles SIGTERM as PID 1
# (the daemon installs its own handlers and starts no child processes), healthchecks /readyz.
#   docker build -t cht-rapidpro-worker .
#   docker run --read-only --env-file worker.env -v "$PWD/secrets:/run/secrets:ro" cht-rapidpro-worker
# Secrets: files named couch-url, couch-secret, rapidpro-token, rapidpro-incoming-key in
# /run/secrets (Docker/compose secrets); see deploy/docker-compose.yml.

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY requirements.lock pyproject.toml README.md ./
COPY scripts/install-venv.sh scripts/
COPY config ./config
COPY transitions ./transitions
COPY worker ./worker
# The root file system is read-only at run time: compile the bytecode now.
RUN scripts/install-venv.sh /opt/venv && /opt/venv/bin/python -m compileall -q /opt/venv

FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    LISTEN_HOST=0.0.0.0 LISTEN_PORT=5989 \
    WEBHOOK_LISTEN_HOST=0.0.0.0 WEBHOOK_LISTEN_PORT=5990 \
    CREDENTIALS_DIRECTORY=/run/secrets
COPY --from=build /opt/venv /opt/venv
# A numeric user, so orchestrators can verify "non-root" without reading /etc/passwd.
USER 10001:10001
WORKDIR /tmp
# 5990: the public door (the webhook only); 5989: the operator's (health, metrics, the webhook).
EXPOSE 5989 5990
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('LISTEN_PORT', '5989'), timeout=4)"]
ENTRYPOINT ["cht-rapidpro-worker"]
CMD ["run"]

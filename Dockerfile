FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY config ./config
COPY transitions ./transitions
COPY worker ./worker
RUN pip install . && useradd --system --uid 10001 --no-create-home worker

USER worker
ENV LISTEN_HOST=0.0.0.0
EXPOSE 5989
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,os; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"LISTEN_PORT\",\"5989\")}/healthz', timeout=4)"
ENTRYPOINT ["cht-rapidpro-worker"]
CMD ["run"]

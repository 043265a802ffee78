# syntax=docker/dockerfile:1
# charging-api: the wheel (and every dependency's wheel) is built in a throwaway stage; the
# runtime stage installs them from that directory alone (no index, no compiler) and runs as an
# unprivileged user. Configuration is the same environment keys as everywhere (README.md,
# Configuration); what is set below are only the container's defaults.
# Build: docker build -t charging-api .   Run: docker run -p 8082:8082 -p 8081:8081 charging-api

FROM python:3.11-slim AS builder
WORKDIR /build
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[postgres]'

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    WS_API_HOST=0.0.0.0 \
    WS_API_PORT=8082 \
    OCPP_HOST=0.0.0.0 \
    OCPP_PORT=8081 \
    DATABASE_URL=sqlite:////data/charging-api.db
RUN groupadd --system --gid 10001 charging \
    && useradd --system --uid 10001 --gid charging --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin charging \
    && mkdir /data && chown charging:charging /data
COPY --from=builder /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels 'charging-api[postgres]' \
    && rm -rf /wheels
USER charging
WORKDIR /data
VOLUME ["/data"]
# 8082: app WebSocket /ws, /health, /api/stats, /metrics, REST; 8081: OCPP 1.6-J /ocpp/{id}
EXPOSE 8082 8081
# /health answers 200 while the node serves and its storage takes writes, 503 otherwise.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; gw = os.environ.get('ROLE') == 'gateway'; port = os.environ.get('OCPP_PORT', '8081') if gw else os.environ.get('WS_API_PORT', '8082'); urllib.request.urlopen('http://127.0.0.1:' + port + '/health', timeout=4)"]
ENTRYPOINT ["charging-api"]
CMD ["serve"]

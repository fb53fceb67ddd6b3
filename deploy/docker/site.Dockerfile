# A data site: mmfl's agent supervising flower-supernode (CPU build of torch).
# Build from the repository root:  docker build -f deploy/docker/site.Dockerfile -t mmfl-site .
FROM python:3.11-slim-bookworm
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
RUN pip install --no-cache-dir .
ENV FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
    MMFL_HOME=/var/lib/mmfl
VOLUME ["/data", "/public", "/state", "/keys"]
ENTRYPOINT ["mmfl", "client", "start", "--foreground", "--data", "/data/manifest.jsonl", "--public", "/public/public.jsonl", \
            "--state", "/state", "--ca", "/keys/ca.crt", "--key", "/keys/site"]

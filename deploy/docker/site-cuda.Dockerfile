# A data site that trains on its GPU (CUDA build of torch).
# Build from the repository root:  docker build -f deploy/docker/site-cuda.Dockerfile -t mmfl-site:cuda .
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /opt/mmfl
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128
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
ENTRYPOINT ["mmfl", "client", "start", "--foreground", "--device", "cuda", "--data", "/data/manifest.jsonl", \
            "--public", "/public/public.jsonl", "--state", "/state", "--ca", "/keys/ca.crt", "--key", "/keys/site"]

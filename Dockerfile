# syntax=docker/dockerfile:1
# tailcast application image; the command is the first argument: `docker run tailcast:cpu worker`.
#
#   CPU (default):  docker build -t tailcast:cpu .
#   GPU:            docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t tailcast:gpu .
#
# Torch: pyproject pins torch==2.13.0. On Linux x86_64 the torch wheel on PyPI is the CUDA build (several GB
# with its nvidia-* dependencies), so the image installs torch first from TORCH_INDEX_URL, PyTorch's CPU
# index by default. For the GPU image pass a CUDA index that carries 2.13.0 (cu126, cu128, ...; or
# https://pypi.org/simple for PyPI's default CUDA build). The CUDA runtime ships inside the wheel: the host
# needs only the NVIDIA driver and the NVIDIA Container Toolkit. `pip install .` then keeps the installed
# torch, because 2.13.0+cpu / 2.13.0+cu128 satisfy the ==2.13.0 pin.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm
FROM ${PYTHON_IMAGE}

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TAILCAST_METRICS_PORT=9100 \
    TAILCAST_CHECKPOINT_DIR=/checkpoints \
    TAILCAST_STATE_DIR=/state

# Non-root user; the volume mount points are created and owned here, so named volumes start out writable.
RUN groupadd --system --gid 10001 tailcast \
 && useradd --system --uid 10001 --gid tailcast --create-home --home-dir /home/tailcast \
      --shell /usr/sbin/nologin tailcast \
 && mkdir -p /checkpoints/snapshots /state \
 && chown -R tailcast:tailcast /checkpoints /state

WORKDIR /opt/tailcast

# Heaviest layer first: a source change does not reinstall torch.
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

COPY pyproject.toml README* ./
COPY streams ./streams
COPY online ./online
COPY models ./models
RUN pip install . \
 && tailcast --help > /dev/null

USER tailcast:tailcast
WORKDIR /home/tailcast
# Prometheus metrics (TAILCAST_METRICS_PORT).
EXPOSE 9100

ENTRYPOINT ["tailcast"]
CMD ["--help"]

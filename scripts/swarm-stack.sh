#!/usr/bin/env bash
# Prints the stack that `docker stack deploy -c - STACK` reads: docker-compose.yml plus deploy/swarm/docker-stack.yml
# (and any further `-f FILE` given), rendered by Compose, which resolves the anchors, `extends`, `!reset`,
# `!override` and the variables of .env; then jq takes out what `docker stack`'s schema refuses of Compose's
# output (the project's `name`, `profiles`, published ports written as strings) and the `x-` fields, whose
# copies of the environment would hold the keys.
#   scripts/swarm-stack.sh | docker stack deploy -c - llm-ops
#   scripts/swarm-stack.sh --profile smoke | docker stack deploy -c - llm-ops
# STACK must be the project name, LLM_OPS_STACK (llm-ops): Traefik's constraint and the network are named after it.
# COMPOSE: the Compose v2 command (default `docker compose`).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
read -r -a compose <<<"${COMPOSE:-docker compose}"

"${compose[@]}" --project-name "${LLM_OPS_STACK:-llm-ops}" --project-directory "$root" \
    --file "$root/docker-compose.yml" --file "$root/deploy/swarm/docker-stack.yml" "$@" config --format json |
    jq 'del(.name) | with_entries(select(.key | startswith("x-") | not)) | .services |= map_values(del(.profiles)
        | if .ports then .ports |= map(.published |= tonumber) else . end)'

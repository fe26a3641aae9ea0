"""`llm-ops up` runs a model service of docker-compose.yml: its start script, its command, its routes."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_ops.cli import parse_worker_args
from llm_ops.frontdoor.compose import ComposeError, ModelService, load_compose
from llm_ops.settings import DEFAULT_MODEL_NAME, DEFAULT_SERVICE, StackSettings
from llm_ops.stack import worker_command

ROOT = Path(__file__).parents[2]
COMPOSE = load_compose(ROOT / "docker-compose.yml")


def test_by_default_it_runs_the_packaged_model_service_with_its_start_script_on_loopback() -> None:
    command, names = worker_command(StackSettings(port=1234), COMPOSE.model(DEFAULT_SERVICE))
    assert command == [
        "bash",
        str(ROOT / "start_chat.sh"),
        f"--served-model-names={DEFAULT_MODEL_NAME}",
        "--host",
        "127.0.0.1",
        "--port",
        "1234",
    ]
    assert names == [DEFAULT_MODEL_NAME]


def test_engine_and_server_flags_given_to_up_win_over_the_services_own() -> None:
    settings = StackSettings(max_model_len=2048, enforce_eager=True, keep_alive_timeout=90)
    command, _ = worker_command(settings, COMPOSE.model("llama-2-7b-chat"))
    worker = parse_worker_args(command[2:])  # as the start script's `llm-ops worker` reads them
    assert (worker.max_model_len, worker.enforce_eager, worker.keep_alive_timeout) == (2048, True, 90)
    assert (worker.conv_template, worker.served_model_names) == ("llama-2", ["Llama-2-7b-chat"])
    assert (worker.host, worker.port) == ("127.0.0.1", 21002)


def test_which_model_to_serve_is_the_compose_files_decision_not_a_flag_of_up() -> None:
    assert not {"model_path", "served_model_names", "conv_template", "kind"} & set(StackSettings.model_fields)


def test_a_service_whose_labels_do_not_route_its_names_is_refused_before_anything_starts() -> None:
    service = COMPOSE.model(DEFAULT_SERVICE)
    renamed = ModelService(service.name, service.start_script, ["--served-model-names=Other"], service.labels)
    with pytest.raises(ComposeError, match="served name Other has no router"):
        worker_command(StackSettings(), renamed)


def test_an_unknown_service_is_refused_with_the_ones_there_are() -> None:
    with pytest.raises(ComposeError, match="no model service 'gpt-4'; it has: llama-2-7b-chat"):
        COMPOSE.model("gpt-4")


def test_a_service_with_bad_worker_flags_is_refused_with_its_name() -> None:
    service = COMPOSE.model(DEFAULT_SERVICE)
    broken = ModelService(service.name, service.start_script, ["--max-model-len=3"], service.labels)
    with pytest.raises(ComposeError, match=f"service {DEFAULT_SERVICE}: bad worker flags in its command"):
        worker_command(StackSettings(), broken)

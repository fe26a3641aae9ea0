"""Reading docker-compose.yml (llm_ops/frontdoor/compose.py): variables substituted as Compose does, and each
model service's worker flags as its container would get them."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_ops.frontdoor.compose import START_SCRIPTS, ComposeError, interpolate, load_compose
from llm_ops.settings import DEFAULT_SERVICE

COMPOSE_FILE = Path(__file__).parents[2] / "docker-compose.yml"


@pytest.mark.parametrize(
    ("value", "environ", "expected"),
    [
        ("${A:-x}", {}, "x"),
        ("${A:-x}", {"A": ""}, "x"),
        ("${A-x}", {"A": ""}, ""),
        ("${A:-x}", {"A": "y"}, "y"),
        ("$A/${B}", {"A": "1", "B": "2"}, "1/2"),
        ("${A}", {}, ""),
        ("$$A", {"A": "1"}, "$A"),
    ],
)
def test_compose_variables_are_substituted_as_compose_does(value: str, environ: dict[str, str], expected: str) -> None:
    assert interpolate(value, environ) == expected


def test_a_required_compose_variable_that_is_missing_is_an_error_with_its_message() -> None:
    with pytest.raises(ComposeError, match="set ACME_EMAIL"):
        interpolate("${ACME_EMAIL:?set ACME_EMAIL}", {})


def test_a_model_services_worker_flags_are_its_command_after_its_start_scripts_own() -> None:
    service = load_compose(COMPOSE_FILE).model(DEFAULT_SERVICE)
    args = service.worker_args(start_script_args=["--port", "21002"])
    assert args.port == 21002
    assert args.served_model_name == ["SmolLM2-135M-Instruct"] and args.enable_auto_tool_choice
    assert service.start_script.name in START_SCRIPTS and service.start_script.is_file()


def test_a_service_the_file_does_not_have_is_an_error_naming_the_ones_it_has() -> None:
    with pytest.raises(ComposeError, match=DEFAULT_SERVICE):
        load_compose(COMPOSE_FILE).model("no-such-service")

"""Typed settings (llm_ops/settings.py): their defaults, and how they travel on as flags."""

from __future__ import annotations

from llm_ops.settings import StackSettings, to_cli_args


def test_only_the_asked_fields_that_were_set_become_flags() -> None:
    settings = StackSettings(port=9999, replicas=2)
    assert to_cli_args(settings, {"port", "service"}) == ["--port", "9999"]


def test_stack_defaults_are_the_documented_ports_on_loopback() -> None:
    settings = StackSettings()
    assert (settings.public_host, settings.https_port, settings.http_port) == ("127.0.0.1", 8443, 8080)
    assert settings.host == "127.0.0.1"

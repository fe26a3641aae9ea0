"""The native stack's certificate and how settings travel from `llm-ops up` to the worker process."""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
from pathlib import Path

import pytest
from pydantic_settings import CliApp

from llm_ops.cli import LLMOps, main
from llm_ops.frontdoor.certs import TLSFiles, ensure_certificates
from llm_ops.settings import StackSettings, to_cli_args


def handshake(files: TLSFiles, server_hostname: str) -> None:
    """A real TLS handshake on loopback: server with our certificate, client trusting only our CA."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(files.cert_file, files.key_file)
    client_context = ssl.create_default_context(cafile=str(files.ca_file))
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def serve() -> None:
            connection, _ = listener.accept()
            with contextlib.suppress(ssl.SSLError), server_context.wrap_socket(connection, server_side=True):
                pass

        server = threading.Thread(target=serve)
        server.start()
        try:
            with socket.create_connection(listener.getsockname()) as raw:
                client_context.wrap_socket(raw, server_hostname=server_hostname).close()
        finally:
            server.join()


def test_the_server_certificate_verifies_against_the_ca_for_the_requested_names(tmp_path: Path) -> None:
    files = ensure_certificates(tmp_path, ["localhost", "127.0.0.1"])
    handshake(files, "localhost")
    handshake(files, "127.0.0.1")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(files, "example.com")
    assert oct(files.key_file.stat().st_mode & 0o777) == "0o600"


def test_certificates_are_kept_across_restarts_and_remade_for_new_names(tmp_path: Path) -> None:
    first = ensure_certificates(tmp_path, ["localhost"]).ca_file.read_bytes()
    assert ensure_certificates(tmp_path, ["localhost"]).ca_file.read_bytes() == first
    assert ensure_certificates(tmp_path, ["localhost", "llm.example"]).ca_file.read_bytes() != first


def test_only_the_asked_fields_that_were_set_become_flags() -> None:
    settings = StackSettings(port=9999, replicas=2)
    assert to_cli_args(settings, {"port", "service"}) == ["--port", "9999"]


def test_stack_defaults_are_the_documented_ports_on_loopback() -> None:
    settings = StackSettings()
    assert (settings.public_host, settings.https_port, settings.http_port) == ("127.0.0.1", 8443, 8080)
    assert settings.host == "127.0.0.1"


def test_the_cli_has_the_up_and_prepare_model_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        CliApp.run(LLMOps, cli_args=["--help"])
    out = capsys.readouterr().out
    assert "up" in out and "prepare-model" in out  # `worker` is vLLM's parser's: see test_launch


def test_llm_ops_worker_help_is_vllms_parser_with_llm_ops_flags(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        with pytest.raises(SystemExit) as exit_:
            main(["worker", "--help"])
    finally:
        root.handlers[:], root.level = handlers, level  # main() set up the worker's logging
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    assert "--max-model-len" in out and "--limit-worker-concurrency" in out and "--conv-template" in out

"""The native stack's CA and server certificate (llm_ops/frontdoor/certs.py), checked by real TLS handshakes."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from pathlib import Path

import pytest

from llm_ops.frontdoor.certs import TLSFiles, ensure_certificates


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

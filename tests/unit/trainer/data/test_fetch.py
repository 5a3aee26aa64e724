"""HTTPS downloads against a real TLS server on loopback (a self-signed certificate made by
openssl). The default policy refuses loopback, so these tests pass one that allows it."""

from __future__ import annotations

import hashlib
import ipaddress
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kubetune_trainer.data.fetch import FetchPolicy, fetch, refusal
from kubetune_trainer.errors import InvalidData

BODY = b'{"text": "hello"}\n' * 100


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/data.jsonl")
            self.end_headers()
        elif self.path == "/to-http":
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.1/data.jsonl")
            self.end_headers()
        elif self.path == "/data.jsonl":
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)
        else:
            self.send_error(404)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ssl.SSLContext]]:
    folder = tmp_path_factory.mktemp("tls")
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    serving = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    serving.load_cert_chain(cert, key)
    httpd.socket = serving.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    trusting = ssl.create_default_context(cafile=str(cert))
    yield f"https://localhost:{httpd.server_address[1]}", trusting
    httpd.shutdown()


def _loopback_allowed(tls: ssl.SSLContext, **limits: int) -> FetchPolicy:
    return FetchPolicy(refuse=lambda address: None, tls=tls, **limits)


def test_downloads_and_checks_the_sha256(server: tuple[str, ssl.SSLContext], tmp_path: Path) -> None:
    base, tls = server

    path = fetch(f"{base}/data.jsonl", tmp_path / "d.jsonl", hashlib.sha256(BODY).hexdigest(), _loopback_allowed(tls))

    assert path.read_bytes() == BODY


def test_follows_an_https_redirect(server: tuple[str, ssl.SSLContext], tmp_path: Path) -> None:
    base, tls = server

    assert fetch(f"{base}/moved", tmp_path / "d.jsonl", policy=_loopback_allowed(tls)).read_bytes() == BODY


def test_wrong_checksum_is_refused_and_nothing_is_left(server: tuple[str, ssl.SSLContext], tmp_path: Path) -> None:
    base, tls = server

    with pytest.raises(InvalidData, match=r"SHA-256 is .*, the spec expects 0000"):
        fetch(f"{base}/data.jsonl", tmp_path / "d.jsonl", "0" * 64, _loopback_allowed(tls))
    assert list(tmp_path.iterdir()) == []


def test_size_limit(server: tuple[str, ssl.SSLContext], tmp_path: Path) -> None:
    base, tls = server

    with pytest.raises(InvalidData, match="larger than the limit of 100 bytes"):
        fetch(f"{base}/data.jsonl", tmp_path / "d.jsonl", policy=_loopback_allowed(tls, max_bytes=100))


def test_redirect_to_plain_http_is_refused(server: tuple[str, ssl.SSLContext], tmp_path: Path) -> None:
    base, tls = server

    with pytest.raises(InvalidData, match="only https URLs are fetched"):
        fetch(f"{base}/to-http", tmp_path / "d.jsonl", policy=_loopback_allowed(tls))


def test_missing_file_reports_the_status(server: tuple[str, ssl.SSLContext], tmp_path: Path) -> None:
    base, tls = server

    with pytest.raises(InvalidData, match="the server answered 404"):
        fetch(f"{base}/nothing.jsonl", tmp_path / "d.jsonl", policy=_loopback_allowed(tls))


def test_default_policy_refuses_loopback(server: tuple[str, ssl.SSLContext], tmp_path: Path) -> None:
    base, _ = server

    with pytest.raises(InvalidData, match=r"refused, localhost resolves to (127\.0\.0\.1|::1), a loopback address"):
        fetch(f"{base}/data.jsonl", tmp_path / "d.jsonl")


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("169.254.169.254", "a cloud metadata address"),
        ("fd00:ec2::254", "a cloud metadata address"),
        ("169.254.10.1", "a link-local address"),
        ("::1", "a loopback address"),
        ("0.0.0.0", "a special-purpose address"),
        ("10.1.2.3", None),
        ("93.184.216.34", None),
    ],
)
def test_refused_addresses(address: str, reason: str | None) -> None:
    assert refusal(ipaddress.ip_address(address)) == reason

"""HTTPS downloads against a real TLS server on loopback (a self-signed certificate made by
openssl). The default policy refuses loopback, so these tests pass one that allows it, as a
cluster administrator allows a network. Host names other than localhost resolve through a
substitute resolver, so no test depends on real DNS."""

from __future__ import annotations

import hashlib
import ipaddress
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kubetune.contract import Network
from kubetune.contract import address_refusal as refusal
from kubetune_trainer.data.fetch import FetchPolicy, fetch, resolve
from kubetune_trainer.errors import InvalidData

BODY = b'{"text": "hello"}\n' * 100


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/data.jsonl")
            self.end_headers()
        elif self.path == "/to-private":
            self.send_response(302)
            self.send_header("Location", "https://mirror.internal.test/data.jsonl")
            self.end_headers()
        elif self.path == "/to-metadata":
            self.send_response(307)
            self.send_header("Location", "https://[::ffff:169.254.169.254]/latest/meta-data/")
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
            "subjectAltName=DNS:localhost,DNS:dataset.test",
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


LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


def _resolver(answers: dict[str, list[str]]) -> Callable[[str, int], Sequence[str]]:
    """DNS as the test says for the hosts it names; the system's for localhost."""

    def lookup(host: str, port: int) -> Sequence[str]:
        return answers[host] if host in answers else resolve(host, port)

    return lookup


def _loopback_allowed(
    tls: ssl.SSLContext,
    answers: dict[str, list[str]] | None = None,
    allowed: tuple[Network, ...] = LOOPBACK,
    **limits: int,
) -> FetchPolicy:
    return FetchPolicy(allowed_networks=allowed, tls=tls, resolver=_resolver(answers or {}), **limits)


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


def test_a_redirect_from_an_allowed_host_to_a_private_one_is_refused(
    server: tuple[str, ssl.SSLContext], tmp_path: Path
) -> None:
    base, tls = server
    policy = _loopback_allowed(tls, {"mirror.internal.test": ["10.1.2.3"]})

    with pytest.raises(InvalidData) as refused:
        fetch(f"{base}/to-private", tmp_path / "d.jsonl", policy=policy)

    assert str(refused.value).startswith(
        "https://mirror.internal.test/data.jsonl: refused, mirror.internal.test resolves to 10.1.2.3, "
        "a private address (in 10.0.0.0/8); a cluster administrator can allow a network"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_redirect_to_a_mapped_metadata_address_is_refused(server: tuple[str, ssl.SSLContext], tmp_path: Path) -> None:
    base, tls = server
    everything = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))

    with pytest.raises(InvalidData) as refused:
        fetch(f"{base}/to-metadata", tmp_path / "d.jsonl", policy=_loopback_allowed(tls, allowed=everything))

    message = str(refused.value)
    assert "(169.254.169.254), a cloud metadata address, refused even inside an allowed network" in message
    assert "allow" not in message.split("allowed network")[1]


@pytest.mark.parametrize(
    "answers",
    [["10.0.0.7"], ["93.184.216.34", "192.168.1.10"], ["2606:2800:220:1::1", "fd12:3456::1"], ["::ffff:172.20.0.1"]],
    ids=["private", "one-of-two", "ipv6-unique-local", "ipv4-mapped"],
)
def test_a_dns_answer_pointing_to_a_private_address_refuses_the_host(answers: list[str], tmp_path: Path) -> None:
    policy = FetchPolicy(resolver=_resolver({"data.example.com": answers}))

    with pytest.raises(InvalidData) as refused:
        fetch("https://data.example.com/train.jsonl", tmp_path / "d.jsonl", policy=policy)

    message = str(refused.value)
    assert message.startswith("https://data.example.com/train.jsonl: refused, data.example.com resolves to ")
    assert "a private address" in message
    assert "KUBETUNE_DATASET_ALLOWED_NETWORKS" in message and "--allow-network CIDR" in message


def test_the_connection_goes_to_the_address_that_was_checked(
    server: tuple[str, ssl.SSLContext], tmp_path: Path
) -> None:
    """dataset.test exists only in the substitute resolver: the download reaching the server
    shows that the socket was opened to the checked address, not to a second DNS answer."""
    base, tls = server
    port = base.rsplit(":", 1)[1]
    policy = _loopback_allowed(tls, {"dataset.test": ["127.0.0.1"]})

    assert fetch(f"https://dataset.test:{port}/data.jsonl", tmp_path / "d.jsonl", policy=policy).read_bytes() == BODY


def test_an_allowed_network_lets_the_trainer_reach_the_mirror(
    server: tuple[str, ssl.SSLContext], tmp_path: Path
) -> None:
    base, tls = server
    port = base.rsplit(":", 1)[1]
    url = f"https://dataset.test:{port}/data.jsonl"

    with pytest.raises(InvalidData, match="a loopback address"):
        fetch(url, tmp_path / "d.jsonl", policy=_loopback_allowed(tls, {"dataset.test": ["127.0.0.1"]}, allowed=()))
    allowed = _loopback_allowed(tls, {"dataset.test": ["127.0.0.1"]}, allowed=(ipaddress.ip_network("127.0.0.1/32"),))
    assert fetch(url, tmp_path / "d.jsonl", policy=allowed).read_bytes() == BODY


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("169.254.169.254", "a cloud metadata address, refused even inside an allowed network"),
        ("fd00:ec2::254", "a cloud metadata address, refused even inside an allowed network"),
        ("100.100.100.200", "a cloud metadata address, refused even inside an allowed network"),
        ("::ffff:169.254.169.254", "a cloud metadata address, refused even inside an allowed network"),
        ("64:ff9b::a9fe:a9fe", "a cloud metadata address, refused even inside an allowed network"),
        ("2002:a9fe:a9fe::1", "a cloud metadata address, refused even inside an allowed network"),
        ("169.254.10.1", "a link-local address"),
        ("fe80::1", "a link-local address"),
        ("127.0.0.1", "a loopback address"),
        ("127.8.9.10", "a loopback address"),
        ("::1", "a loopback address"),
        ("::ffff:127.0.0.1", "a loopback address"),
        ("10.1.2.3", "a private address (in 10.0.0.0/8)"),
        ("172.16.0.1", "a private address (in 172.16.0.0/12)"),
        ("172.31.255.254", "a private address (in 172.16.0.0/12)"),
        ("192.168.1.1", "a private address (in 192.168.0.0/16)"),
        ("100.64.0.1", "a private address (in 100.64.0.0/10)"),
        ("100.127.255.254", "a private address (in 100.64.0.0/10)"),
        ("fd12:3456:789a::1", "a private address (in fc00::/7)"),
        ("fc00::1", "a private address (in fc00::/7)"),
        ("::ffff:10.0.0.1", "a private address (in 10.0.0.0/8)"),
        ("::ffff:192.168.0.1", "a private address (in 192.168.0.0/16)"),
        ("0.0.0.0", "a special-purpose address"),
        ("::", "a special-purpose address"),
        ("224.0.0.1", "a special-purpose address"),
        ("ff02::1", "a special-purpose address"),
        ("240.0.0.1", "a special-purpose address"),
        ("192.0.2.1", "a special-purpose address"),
        ("198.18.0.1", "a special-purpose address"),
        ("2001:db8::1", "a special-purpose address"),
        ("172.32.0.1", None),
        ("100.128.0.1", None),
        ("93.184.216.34", None),
        ("::ffff:93.184.216.34", None),
        ("2606:2800:220:1:248:1893:25c8:1946", None),
    ],
)
def test_refused_addresses(address: str, reason: str | None) -> None:
    assert refusal(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize(
    ("address", "allowed", "reason"),
    [
        ("10.1.2.3", ["10.0.0.0/8"], None),
        ("::ffff:10.1.2.3", ["10.1.0.0/16"], None),
        ("fd12:3456::1", ["fd12:3456::/32"], None),
        ("10.1.2.3", ["10.2.0.0/16", "192.168.0.0/16"], "a private address (in 10.0.0.0/8)"),
        ("10.1.2.3", ["fd00::/8"], "a private address (in 10.0.0.0/8)"),
        ("127.0.0.1", ["127.0.0.0/8"], None),
        ("169.254.169.254", ["169.254.0.0/16"], "a cloud metadata address, refused even inside an allowed network"),
        ("100.100.100.200", ["100.64.0.0/10"], "a cloud metadata address, refused even inside an allowed network"),
        ("fd00:ec2::254", ["fc00::/7"], "a cloud metadata address, refused even inside an allowed network"),
    ],
)
def test_allowed_networks(address: str, allowed: list[str], reason: str | None) -> None:
    networks = [ipaddress.ip_network(cidr) for cidr in allowed]

    assert refusal(ipaddress.ip_address(address), networks) == reason

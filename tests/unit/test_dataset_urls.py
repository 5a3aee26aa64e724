"""Dataset URLs whose host is an address a pod must not reach are refused at every gate:
`kubetune validate`, the operator's admission, `kubetune run`, and the trainer's fetch.
All four judge the host with the same functions of `kubetune.contract`."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from kubetune.api import parse_finetunejob
from kubetune.cli import cli
from kubetune.contract import host_address, literal_host_refusal, parse_networks
from kubetune.controller.admission import admission_problems
from kubetune.controller.settings import Settings
from kubetune.manifests import Document
from kubetune.validate import validate_document
from kubetune_trainer.data.fetch import FetchPolicy, fetch
from kubetune_trainer.errors import InvalidData

Manifest = dict[str, Any]
METADATA = "a cloud metadata address"

# Hosts that spell an IPv4 address in the forms C's inet_aton reads (and so getaddrinfo,
# which the trainer's resolver calls), with the address each reaches; None: not an address.
SPELLINGS = [
    ("169.254.169.254", "169.254.169.254"),
    ("2852039166", "169.254.169.254"),
    ("0xa9fea9fe", "169.254.169.254"),
    ("0XA9FEA9FE", "169.254.169.254"),
    ("0251.0376.0251.0376", "169.254.169.254"),
    ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"),
    ("169.254.43518", "169.254.169.254"),
    ("169.16689662", "169.254.169.254"),
    ("012.0.0.1", "10.0.0.1"),
    ("0177.1", "127.0.0.1"),
    ("0", "0.0.0.0"),
    ("4294967295", "255.255.255.255"),
    ("4294967296", None),
    ("256.1.1.1", None),
    ("1.2.3.256", None),
    ("08.1.1.1", None),
    ("0x", None),
    ("1..2", None),
    ("1.2.3.4.5", None),
    ("example.com", None),
    ("deadbeef", None),
]


@pytest.mark.parametrize(("host", "address"), SPELLINGS)
def test_a_host_is_read_as_the_address_the_resolver_would_reach(host: str, address: str | None) -> None:
    found = host_address(host)
    assert (str(found) if found is not None else None) == address


@pytest.mark.parametrize(("host", "address"), SPELLINGS)
def test_the_reading_agrees_with_inet_aton(host: str, address: str | None) -> None:
    try:
        system = str(ipaddress.IPv4Address(socket.inet_aton(host)))
    except OSError:
        system = None
    assert system == address


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("https://169.254.169.254/latest/meta-data", "its host 169.254.169.254 is " + METADATA),
        ("https://10.0.0.8/train.jsonl", "its host 10.0.0.8 is a private address (in 10.0.0.0/8)"),
        ("https://[::ffff:a9fe:a9fe]/", "its host ::ffff:a9fe:a9fe (169.254.169.254) is " + METADATA),
        ("https://[::ffff:10.0.0.8]:8443/x", "(10.0.0.8) is a private address"),
        ("https://[::a9fe:a9fe]/", "(169.254.169.254) is " + METADATA),
        ("https://[64:ff9b::a9fe:a9fe]/", "(169.254.169.254) is " + METADATA),
        ("https://2852039166/", "its host 2852039166 (169.254.169.254) is " + METADATA),
        ("https://0x7f000001/x", "its host 0x7f000001 (127.0.0.1) is a loopback address"),
        ("https://0177.1/x", "(127.0.0.1) is a loopback address"),
        ("https://[fe80::1%25eth0]/x", "is a link-local address"),
        ("https://user@192.168.1.4:443/x", "its host 192.168.1.4 is a private address"),
    ],
)
def test_urls_whose_host_is_a_refused_address(url: str, fragment: str) -> None:
    reason = literal_host_refusal(url)

    assert reason is not None and fragment in reason, reason
    assert reason.startswith(f"the trainer refuses to fetch {url}: ")


@pytest.mark.parametrize(
    "url", ["https://example.com/train.jsonl", "https://93.184.216.34/x", "https://[2606:2800:220:1::1]/x"]
)
def test_public_addresses_and_names_pass(url: str) -> None:
    # A name is judged when the trainer resolves it: it may resolve anywhere.
    assert literal_host_refusal(url) is None


def test_allowed_networks_let_a_private_address_pass_but_never_metadata() -> None:
    allowed = parse_networks("10.0.0.0/8,169.254.0.0/16")

    assert literal_host_refusal("https://10.0.0.8/x", allowed) is None
    assert METADATA in (literal_host_refusal("https://169.254.169.254/x", allowed) or "")


def _url_job(job: Manifest, train: str, evaluation: str | None = None) -> Manifest:
    job["spec"]["dataset"] = {"urls": [{"url": "https://example.com/a.jsonl"}, {"url": train}]}
    if evaluation is not None:
        job["spec"]["dataset"]["evaluation"] = {"source": {"urls": [{"url": evaluation}]}}
    return job


def test_validation_names_each_refused_url_by_its_field_path(job: Manifest) -> None:
    body = _url_job(job, "https://169.254.169.254/latest", "https://[::ffff:a9fe:a9fe]/eval.jsonl")

    verdict = validate_document(Document(body, "job.yaml", 0))

    assert [p.path for p in verdict.problems] == [
        "spec.dataset.urls[1].url",
        "spec.dataset.evaluation.source.urls[0].url",
    ]
    assert all(METADATA in p.message for p in verdict.problems)


def test_validation_honours_the_allowed_networks(job: Manifest) -> None:
    body = _url_job(job, "https://10.0.0.8/train.jsonl")

    assert not validate_document(Document(body, "job.yaml", 0)).ok
    assert validate_document(Document(body, "job.yaml", 0), parse_networks("10.0.0.0/24")).ok
    assert validate_document(Document(body, "job.yaml", 0), None).ok, "None: the setting is not known, URLs unjudged"


def test_the_operator_refuses_them_at_admission_with_its_own_setting(job: Manifest) -> None:
    spec = parse_finetunejob(_url_job(job, "https://10.0.0.8/train.jsonl")).spec

    refused = admission_problems(spec, Settings())
    allowed = admission_problems(spec, Settings.from_env({"KUBETUNE_DATASET_ALLOWED_NETWORKS": "10.0.0.0/8"}))

    assert [p.path for p in refused] == ["spec.dataset.urls[1].url"]
    assert "KUBETUNE_DATASET_ALLOWED_NETWORKS" in refused[0].message
    assert allowed == []


def _write(tmp_path: Path, body: Manifest) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def test_kubetune_validate_refuses_them_and_takes_the_allowance_as_option_or_variable(
    tmp_path: Path, job: Manifest
) -> None:
    manifest = str(_write(tmp_path, _url_job(job, "https://10.0.0.8/train.jsonl")))

    refused = CliRunner().invoke(cli, ["validate", manifest], env={"KUBETUNE_DATASET_ALLOWED_NETWORKS": None})
    by_option = CliRunner().invoke(cli, ["validate", manifest, "--allow-network", "10.0.0.0/8"])
    by_variable = CliRunner().invoke(
        cli, ["validate", manifest], env={"KUBETUNE_DATASET_ALLOWED_NETWORKS": "192.168.0.0/16,10.0.0.0/8"}
    )

    assert refused.exit_code == 1
    assert "spec.dataset.urls[1].url: the trainer refuses to fetch https://10.0.0.8/train.jsonl" in refused.output
    assert by_option.exit_code == 0, by_option.output
    assert by_variable.exit_code == 0, by_variable.output


def test_the_fetch_reads_the_host_the_same_way_and_resolves_nothing(tmp_path: Path) -> None:
    def resolver(host: str, port: int) -> list[str]:
        raise AssertionError(f"{host} is an address, not a name to resolve")

    policy = FetchPolicy(resolver=resolver)
    with pytest.raises(InvalidData, match=r"resolves to 169\.254\.169\.254, " + METADATA):
        fetch("https://2852039166/latest", tmp_path / "data.jsonl", policy=policy)

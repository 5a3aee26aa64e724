"""Operator settings read from the environment the chart sets: each bad value is refused
with the variable and the entry named."""

from __future__ import annotations

import ipaddress

import pytest

from kubetune.controller.settings import Settings, SettingsError


def test_allowed_dataset_networks_are_read_as_networks() -> None:
    settings = Settings.from_env({"KUBETUNE_DATASET_ALLOWED_NETWORKS": " 10.20.0.0/16, fd00:1234::/48 ,192.168.5.7"})

    assert settings.dataset_allowed_networks == (
        ipaddress.ip_network("10.20.0.0/16"),
        ipaddress.ip_network("fd00:1234::/48"),
        ipaddress.ip_network("192.168.5.7/32"),
    )


@pytest.mark.parametrize("value", ["", " , "])
def test_no_allowed_dataset_network_by_default(value: str) -> None:
    assert Settings.from_env({"KUBETUNE_DATASET_ALLOWED_NETWORKS": value}).dataset_allowed_networks == ()
    assert Settings.from_env({}).dataset_allowed_networks == ()


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ("minio.storage.svc", "does not appear to be an IPv4 or IPv6 network"),
        ("10.20.0.1/16", "has host bits set"),
        ("10.0.0.0/33", "does not appear to be an IPv4 or IPv6 network"),
    ],
)
def test_a_bad_allowed_dataset_network_names_the_variable_and_the_entry(entry: str, why: str) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({"KUBETUNE_DATASET_ALLOWED_NETWORKS": f"10.0.0.0/8,{entry}"})

    message = str(raised.value)
    assert message.startswith("KUBETUNE_DATASET_ALLOWED_NETWORKS: ")
    assert repr(entry) in message and why in message


def test_kept_failed_attempts_is_read_and_must_not_be_negative() -> None:
    assert Settings.from_env({"KUBETUNE_KEPT_FAILED_ATTEMPTS": "0"}).kept_failed_attempts == 0
    assert Settings.from_env({}).kept_failed_attempts == 3
    with pytest.raises(SettingsError, match="KUBETUNE_KEPT_FAILED_ATTEMPTS=-1 must be 0 or more"):
        Settings.from_env({"KUBETUNE_KEPT_FAILED_ATTEMPTS": "-1"})


def test_the_resync_period_is_read_and_must_be_positive() -> None:
    assert Settings.from_env({"KUBETUNE_RESYNC_SECONDS": "30"}).resync_seconds == 30.0
    assert Settings.from_env({}).resync_seconds == 300.0
    with pytest.raises(SettingsError, match=r"KUBETUNE_RESYNC_SECONDS=0\.0 must be more than 0"):
        Settings.from_env({"KUBETUNE_RESYNC_SECONDS": "0"})
    with pytest.raises(SettingsError, match="KUBETUNE_RESYNC_SECONDS='soon' is not a float"):
        Settings.from_env({"KUBETUNE_RESYNC_SECONDS": "soon"})

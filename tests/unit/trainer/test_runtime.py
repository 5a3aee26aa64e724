"""The trainer's runtime facts, read from the environment the operator (or kubetune run) sets."""

from __future__ import annotations

import ipaddress

import pytest

from kubetune_trainer.errors import InvalidSpec
from kubetune_trainer.runtime import Runtime


def test_allowed_dataset_networks_come_from_the_environment() -> None:
    runtime = Runtime.from_env({"KUBETUNE_DATASET_ALLOWED_NETWORKS": "10.20.0.0/16,fd00:1234::/48"})

    assert runtime.allowed_networks == (ipaddress.ip_network("10.20.0.0/16"), ipaddress.ip_network("fd00:1234::/48"))
    assert Runtime.from_env({}).allowed_networks == ()


def test_a_bad_allowed_network_is_an_invalid_spec_naming_the_variable() -> None:
    with pytest.raises(InvalidSpec, match=r"^KUBETUNE_DATASET_ALLOWED_NETWORKS: 'mirror' is not a network"):
        Runtime.from_env({"KUBETUNE_DATASET_ALLOWED_NETWORKS": "mirror"})

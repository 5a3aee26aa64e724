"""The precision in force on each kind of machine, and the warning for an emulated bf16."""

from __future__ import annotations

import logging

import pytest

from kubetune.api import Precision
from kubetune_trainer.hardware import Hardware


@pytest.mark.parametrize(
    ("hardware", "expected"),
    [
        (Hardware("cpu", bf16=True), Precision.BF16),
        (Hardware("cpu", bf16=False), Precision.FP32),
        (Hardware("cuda", bf16=True), Precision.BF16),
        (Hardware("cuda", bf16=False), Precision.FP16),
    ],
)
def test_auto_takes_the_fastest_native_format(hardware: Hardware, expected: Precision) -> None:
    assert hardware.precision(Precision.AUTO) is expected


def test_bf16_asked_on_a_cpu_without_it_is_kept_and_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="kubetune_trainer.hardware"):
        kept = Hardware("cpu", bf16=False).precision(Precision.BF16)
        native = Hardware("cpu", bf16=True).precision(Precision.BF16)
        fp32 = Hardware("cpu", bf16=False).precision(Precision.FP32)

    assert (kept, native, fp32) == (Precision.BF16, Precision.BF16, Precision.FP32)
    assert [r.getMessage() for r in caplog.records] == [Hardware("cpu", bf16=False).caution(Precision.BF16)]
    assert "emulated" in caplog.records[0].getMessage()

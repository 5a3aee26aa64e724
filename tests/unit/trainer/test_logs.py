"""The trainer's logging: the library noise it drops, and only that."""

from __future__ import annotations

import logging
import warnings

import pytest

from kubetune_trainer.logs import quiet_libraries

BNB_LOGGER = "bitsandbytes.backends.cpu.ops"
KERNELS_WARNING = (
    "Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you already "
    "`pip install kernels` and the kernels >= 0.11.1"
)


def test_the_hub_kernel_warning_of_bitsandbytes_is_dropped_and_its_other_warnings_are_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    quiet_libraries()
    quiet_libraries()  # a second call (a second run in one interpreter) changes nothing
    logger = logging.getLogger(BNB_LOGGER)

    with caplog.at_level(logging.WARNING, logger=BNB_LOGGER):
        logger.warning(KERNELS_WARNING, "No module named 'kernels'")
        logger.warning("some other bitsandbytes warning")
        logging.getLogger("elsewhere").warning(KERNELS_WARNING, "same words, another logger")

    assert [r.getMessage() for r in caplog.records] == [
        "some other bitsandbytes warning",
        KERNELS_WARNING % "same words, another logger",
    ]
    assert len(logger.filters) == 1


def test_torch_s_deprecation_of_deepspeed_s_collectives_is_dropped_and_other_future_warnings_are_kept() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_libraries()
        for name in ("all_gather_into_tensor", "reduce_scatter_tensor"):
            warnings.warn(f"`torch.distributed.{name}` is deprecated. Please use ...", FutureWarning, stacklevel=1)
        warnings.warn("`torch.distributed.broadcast` is deprecated", FutureWarning, stacklevel=1)

    assert [str(w.message) for w in caught] == ["`torch.distributed.broadcast` is deprecated"]

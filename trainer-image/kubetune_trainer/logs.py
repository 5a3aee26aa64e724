"""The one place the trainer sets up its logging: the pod's log format, and the libraries'
messages that would only mislead a person reading it.

A pod's entry points (`launch`, `main`, `preflight`) log every record with a timestamp;
`kubetune run` in this interpreter keeps its own terminal output and only drops the noise.
"""

from __future__ import annotations

import logging
import warnings

POD_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class DropMessages(logging.Filter):
    """Drops the records of one logger whose message starts with one of `prefixes`."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


NOISE = {
    # bitsandbytes tries, on every import on a CPU with bf16 AVX-512, to fetch a 4-bit kernel
    # from a hub through the optional `kernels` package; the trainer never installs it (a
    # kernel fetched at run time cannot work offline, nor be pinned), and the built-in kernel
    # it falls back to is the one the trainer's tests ran on.
    "bitsandbytes.backends.cpu.ops": ("Failed to load CPU gemm_4bit_forward from kernels-community",),
}


DEPRECATED_COLLECTIVES = r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated"
"""DeepSpeed (0.19) gathers and scatters ZeRO-3's shards with collectives torch 2.13 deprecates,
and torch warns at each call: hundreds of lines per run about code the user does not own."""


def quiet_libraries() -> None:
    """Drop the known-misleading library messages (see NOISE, DEPRECATED_COLLECTIVES). Call
    before the libraries load: some speak at import time. Calling again adds nothing."""
    warnings.filterwarnings("ignore", message=DEPRECATED_COLLECTIVES, category=FutureWarning)
    for name, prefixes in NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessages) for f in logger.filters):
            logger.addFilter(DropMessages(prefixes))


def configure_pod_logging() -> None:
    """A pod's logging: every record at INFO and above, timestamped, without the noise."""
    logging.basicConfig(level=logging.INFO, format=POD_FORMAT)
    quiet_libraries()

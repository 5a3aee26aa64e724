"""What this machine can do, asked once: the device to train on and its number formats."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from kubetune.api import Precision

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hardware:
    device: str
    """cuda or cpu."""
    bf16: bool
    """Whether bf16 matrix products are native (Ampere and later; CPUs with AVX512-BF16 or AMX)."""

    @classmethod
    def detect(cls) -> Hardware:
        if torch.cuda.is_available():
            return cls("cuda", torch.cuda.is_bf16_supported())
        return cls("cpu", bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()))

    def precision(self, asked: Precision) -> Precision:
        """The precision in force: auto becomes bf16 where native, else fp16 on GPUs, else fp32."""
        if asked is not Precision.AUTO:
            caution = self.caution(asked)
            if caution:
                log.warning(caution)
            return asked
        if self.bf16:
            return Precision.BF16
        return Precision.FP16 if self.device == "cuda" else Precision.FP32

    def caution(self, precision: Precision) -> str | None:
        """What a person should know before training in `precision` here: bf16 asked on a CPU
        without native bf16 products runs emulated (measured on an AVX2-only CPU: 7 to over 100
        times slower than fp32, by shape)."""
        if precision is Precision.BF16 and self.device == "cpu" and not self.bf16:
            return (
                "training.precision bf16 on a CPU without native bf16 matrix products (AVX512-BF16 or AMX): "
                "they run emulated, many times slower than fp32; precision auto picks fp32 here"
            )
        return None


DTYPES = {Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16, Precision.FP32: torch.float32}

"""What this machine can do, asked once: the device to train on and its number formats."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kubetune.api import Precision


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
            return asked
        if self.bf16:
            return Precision.BF16
        return Precision.FP16 if self.device == "cuda" else Precision.FP32


DTYPES = {Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16, Precision.FP32: torch.float32}

"""A warm start that trains: a run continues from an adapter in a bucket (moto's S3 server on
loopback), and the adapter it saves is the one it started from."""

from __future__ import annotations

from tests.unit.trainer.test_warm_start import bucket

__all__ = ["bucket"]

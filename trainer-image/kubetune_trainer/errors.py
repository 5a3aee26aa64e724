"""Failures the trainer classifies, each with the exit code the operator acts on."""

from __future__ import annotations

from kubetune.contract import ExitCode


class TrainerError(Exception):
    """A failure with a reason a person can act on."""

    exit_code: ExitCode = ExitCode.FAILED
    reason: str = "TrainingFailed"


class InvalidData(TrainerError):
    """The dataset cannot be used as it is: says which file, which line or row, and what."""

    exit_code = ExitCode.INVALID_DATA
    reason = "DatasetInvalid"


class InvalidSpec(TrainerError):
    """The spec cannot run here (a file is missing, a setting does not fit the model)."""

    exit_code = ExitCode.INVALID_SPEC
    reason = "InvalidSpec"


class OutOfMemory(TrainerError):
    """The accelerator ran out of memory (an exception inside the trainer, not a kernel kill)."""

    exit_code = ExitCode.OUT_OF_MEMORY
    reason = "OutOfMemory"


class Interrupted(TrainerError):
    """SIGTERM arrived; a checkpoint was written and the next attempt resumes from it."""

    exit_code = ExitCode.INTERRUPTED
    reason = "Interrupted"


class DiskFull(TrainerError):
    """A write found the disk full or the quota spent: says where, and how much space is left."""

    exit_code = ExitCode.DISK_FULL
    reason = "DiskFull"


class UnsafeCheckpoint(TrainerError):
    """A checkpoint holds pickled objects that a weights-only load refuses: it is not loaded,
    since unpickling it could run code."""

    exit_code = ExitCode.INVALID_SPEC
    reason = "UnsafeCheckpoint"

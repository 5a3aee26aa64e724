"""torchrun as the pods and `kubetune run --nproc N` start it: the same launcher, but it exits
with the code of the rank that failed first instead of 1, and without its own account of the
failure (a traceback and a table). The trainer's exit codes say whether a failure is worth a
retry (`ExitCode`): the pod's podFailurePolicy and the operator's status read them from the
container, so torchrun's blanket 1 would retry an invalid spec, an OOM or a full disk. The
ranks write the trainer's summary; the pod's log or kubetune run says what failed."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(sys.argv[1:] if argv is None else argv))
    except ChildFailedError as error:
        _, first = error.get_first_failure()
        sys.exit(first.exitcode if first.exitcode > 0 else 1)


if __name__ == "__main__":
    main()

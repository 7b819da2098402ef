"""Ctrl-C and SIGTERM as a request to stop cleanly; a second one exits at once."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class StopFlag:
    """Set by the first SIGINT/SIGTERM; the training loop polls it once per step."""

    def __init__(self):
        self.signum: int | None = None

    def __call__(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signum, 130)


FIRST = (b"\nstopping cleanly: the arm in training is checkpointed after its step"
         b" (Ctrl-C again to quit at once)\n")
SECOND = b"\nquitting now: the last checkpoint written is kept\n"


def _say(message: bytes) -> None:
    """Write to stderr from a signal handler; a reader that is gone (``| tee`` killed by the same
    Ctrl-C) must not turn the request to stop into an error."""
    try:
        os.write(2, message)
    except OSError:
        pass


def catch(flag: StopFlag, announce: bool | None = None) -> dict:
    """From now on the first SIGINT/SIGTERM sets ``flag``; a second one ends the process at once
    with 130 / 143. ``announce``: say so on stderr; by default only the lead process (RANK 0 or
    no torchrun), and never a worker of ``--jobs``, whose parent speaks. Returns the handlers it
    replaced."""
    if announce is None:  # torchrun's RANK, read here as distributed.launched_world does (torch-free)
        announce = os.environ.get("RANK", "0") == "0"

    def handler(signum, frame):
        if flag.signum is not None:
            if announce:
                _say(SECOND)
            os._exit(EXIT_CODES.get(signum, 130))
        flag.signum = signum
        if announce:
            _say(FIRST)

    return {s: signal.signal(s, handler) for s in EXIT_CODES}


@contextmanager
def graceful_stop() -> Iterator[StopFlag]:
    """Within the block, SIGINT/SIGTERM are caught as ``catch`` says; handlers restored afterwards."""
    flag = StopFlag()
    previous = catch(flag)
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)

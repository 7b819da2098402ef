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


@contextmanager
def graceful_stop() -> Iterator[StopFlag]:
    """Within the block, the first SIGINT/SIGTERM sets the flag; a second one ends the process
    at once with 130 / 143. Handlers are restored afterwards."""
    flag = StopFlag()

    def handler(signum, frame):
        if flag.signum is not None:
            os._exit(EXIT_CODES.get(signum, 130))
        flag.signum = signum

    previous = {s: signal.signal(s, handler) for s in EXIT_CODES}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)

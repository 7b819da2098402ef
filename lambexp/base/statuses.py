"""The words of lambexp's statuses, each written once: how an arm ended (summary.json's ``Status``),
what `lambexp ls` says of an arm without one, and a claim's verdict over seeds (the report's).
Torch-free."""

from __future__ import annotations

from enum import Enum


class Status(str, Enum):
    """How an arm ended, as its summary.json records it."""

    FINISHED = "finished"
    INTERRUPTED = "interrupted"  # stopped by Ctrl-C, SIGTERM or a divergence it stops at; resumable
    FAILED = "failed"  # stopped by a full disk or an allocation failure: see the summary's ``error``


# What `lambexp ls` says of an arm that has no summary.json.
RUNNING = "running"  # unfinished while a process holds its folder's lock
NOT_STARTED = "not started"  # no folder yet

# A claim's verdict over seeds starts with one of these words (docs/claims.md).
REPRODUCED = "REPRODUCED"  # the claim held for every seed (or on the mean, where it is judged so)
NOT_REPRODUCED = "NOT REPRODUCED"  # for none
MIXED = "MIXED"  # for some: "MIXED (k of n seeds)"
NO_DATA = "NO DATA"  # no arm it names has a number
VERDICTS = (REPRODUCED, MIXED, NOT_REPRODUCED, NO_DATA)


def mixed(k: int, n: int) -> str:
    return f"{MIXED} ({k} of {n} seeds)"

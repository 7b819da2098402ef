"""The project's error types: what a user did wrong (exit 2) versus what went wrong inside (exit 1)."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (config, command line, data folder): exit code 2.

    ``str(err)`` is one line a person can act on; ``lines`` holds one line per
    problem when several were found at once (e.g. every bad key of a config).
    """

    exit_code = 2

    def __init__(self, message: str, lines: list[str] | None = None):
        super().__init__(message)
        self.lines = lines if lines else [message]


class ConfigError(UserError):
    """An experiment config (file or command-line override) that is not valid."""


class DataError(UserError):
    """The data set could not be obtained or failed verification."""


class NoRunFolders(UserError):
    """A folder that holds no run folders (none with a config.yaml): `ls` lists nothing there."""


class ResumableError(UserError):
    """A training stopped by its surroundings (a full disk, too little memory): its last
    checkpoint is whole, and ``lambexp resume`` continues once the cause is fixed."""


class Interrupted(Exception):
    """A stop was requested (Ctrl-C, SIGTERM) and honoured at a consistent point: what was
    running is checkpointed, and ``lambexp resume`` continues it. Not a user error: exit 130/143."""

"""Where the loop's numbers go: a small sink interface, the TensorBoard sink, a JSON-lines sink that
the report reads, an in-memory sink for tests, and a tee.

Only this module imports tensorboard. Tags written (the x-axis step is training samples seen):
``train/loss``, ``train/step``, ``lr``, ``test/loss``, ``test/accuracy``, ``throughput/samples_per_s``;
histograms ``trust/r``, ``trust/r1``, ``trust/r2`` across the parameter tensors; per-tensor scalars
``trust_layer/<param name>/{r,r1,r2}``; and the arm's hparams with its final metrics. The lens
(lambexp.lens) writes the same tags, with x the optimizer steps taken, plus ``relative_step`` beside
r, r1, r2, and, for an optimizer that applies a trust ratio, what it applied under ``applied/``.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import torch

from lambexp.folders.layout import own_file

HISTOGRAM_BINS = 64  # upper bound on a histogram's buckets
TRUST_KEYS = ("r", "r1", "r2")
LENS_KEYS = ("relative_step",)  # per-tensor rows the lens adds, written where a record has them


class Sink(Protocol):
    def scalars(self, step: int, values: dict[str, float]) -> None: ...
    def trust(self, step: int, stats: dict, prefix: str = "trust") -> None: ...
    def hparams(self, hparams: dict, metrics: dict[str, float]) -> None: ...
    def flush(self) -> None: ...


def trust_keys(stats: dict) -> tuple[str, ...]:
    """The per-tensor rows a trust record has: r, r1, r2, and the lens's where given."""
    return TRUST_KEYS + tuple(k for k in LENS_KEYS if k in stats)


def trust_table(stats: dict) -> tuple[list[str], torch.Tensor]:
    """(names, a (k, n_tensors) CPU tensor with rows ``trust_keys(stats)``), in one copy from the
    device."""
    table = torch.stack([torch.as_tensor(stats[k]).float() for k in trust_keys(stats)]).cpu()
    return list(stats["name"]), table


def hparam_value(value):
    """TensorBoard's hparams take bool, int, float or str only."""
    if isinstance(value, bool | int | float | str):
        return value
    return "none" if value is None else str(value)


def _quiet_writer_thread(args: threading.ExceptHookArgs) -> None:
    """threading.excepthook without the traceback of TensorBoard's writer thread when a write
    failed (a full disk): that thread keeps the error, and the sink raises it in the training thread
    at its next write or flush, as one line; any other thread's exception is printed as before."""
    from_writer = type(args.thread).__module__ == "tensorboard.summary.writer.event_file_writer"
    if not (from_writer and isinstance(args.exc_value, OSError)):
        _quiet_writer_thread.previous(args)


@contextmanager
def naming(path: str | Path) -> Iterator[None]:
    """A buffered write's OSError, or one TensorBoard's writer thread raised (a full disk), names no
    file: name ``path``."""
    try:
        yield
    except OSError as err:
        err.filename = err.filename or str(path)
        raise


def _names_event_file(method):
    """``naming`` the sink's event file, around each of TensorBoardSink's writes."""

    @functools.wraps(method)
    def named(self, *args, **kwargs):
        with naming(self.event_file):
            return method(self, *args, **kwargs)

    return named


class TensorBoardSink:
    """Writes one TensorBoard run into ``logdir``; use as a context manager. An error writing it
    (a full disk) is raised as an OSError naming the event file, once, from the call that meets it."""

    def __init__(self, logdir: Path, purge_step: int | None = None):
        """``purge_step``: on resume, TensorBoard hides this run's events at steps >= it that an
        earlier session wrote after its last checkpoint."""
        from torch.utils.tensorboard import SummaryWriter

        if threading.excepthook is not _quiet_writer_thread:
            _quiet_writer_thread.previous = threading.excepthook
            threading.excepthook = _quiet_writer_thread
        self.writer = SummaryWriter(log_dir=str(logdir), purge_step=purge_step)
        event_writer = self.writer.file_writer.event_writer
        self.event_file = str(getattr(event_writer, "_file_name", logdir))  # where a write failed

    @_names_event_file
    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    @_names_event_file
    def trust(self, step: int, stats: dict, prefix: str = "trust") -> None:
        """Histograms ``<prefix>/<key>`` over the tensors, scalars ``<prefix>_layer/<name>/<key>``."""
        names, table = trust_table(stats)
        keys = trust_keys(stats)
        for row, key in zip(table, keys):
            finite = row[torch.isfinite(row)]
            if len(finite):
                self.writer.add_histogram(f"{prefix}/{key}", finite, step, max_bins=HISTOGRAM_BINS)
        for name, values in zip(names, table.T.tolist()):
            for key, value in zip(keys, values):
                self.writer.add_scalar(f"{prefix}_layer/{name}/{key}", value, step)

    @_names_event_file
    def hparams(self, hparams: dict, metrics: dict[str, float]) -> None:
        """hparams written into this run itself (not a new sub-run), so TensorBoard's HParams tab
        shows one row per arm beside its scalars."""
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        clean = {k: hparam_value(v) for k, v in hparams.items()}
        for summary in hparams_summary(clean, metrics):  # metrics: tags already logged
            self.writer.file_writer.add_summary(summary)

    @_names_event_file
    def flush(self) -> None:
        self.writer.flush()

    def __enter__(self):
        return self

    @_names_event_file
    def __exit__(self, exc_type, *exc) -> None:
        try:
            if exc_type is None:
                self.writer.flush()  # raises what the writer thread met; close() alone would not
        finally:
            self.writer.close()


class JsonlSink:
    """Appends one JSON object per line to ``path``: ``{"kind": "scalars", "step", "values"}`` and
    ``{"kind": "trust", "step", "name", "r", "r1", "r2"}`` (lists in parameter order). Exact
    values, cheap to read back: the report's source."""

    def __init__(self, path: Path):
        self.path = path
        # closed in __exit__; never appended through a link planted at the name, nor into a FIFO
        self.file = open(path, "a", encoding="utf-8", opener=own_file)

    def _write(self, record: dict) -> None:
        with naming(self.path):
            self.file.write(json.dumps(record) + "\n")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self._write({"kind": "scalars", "step": step, "values": values})

    def trust(self, step: int, stats: dict, prefix: str = "trust") -> None:
        """One record of kind ``prefix``; ``kept_out`` and the lens's ``skipped`` where not empty."""
        names, table = trust_table(stats)
        self._write({"kind": prefix, "step": step, "name": names,
                     **{k: row.tolist() for k, row in zip(trust_keys(stats), table)},
                     **{k: list(stats[k]) for k in ("kept_out", "skipped") if stats.get(k)}})

    def hparams(self, hparams: dict, metrics: dict[str, float]) -> None:
        self._write({"kind": "hparams", "hparams": {k: hparam_value(v) for k, v in hparams.items()},
                     "metrics": metrics})

    def flush(self) -> None:
        with naming(self.path):
            self.file.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        with naming(self.path):
            self.file.close()


class Tee:
    """Sends everything to several sinks."""

    def __init__(self, *sinks: Sink):
        self.sinks = sinks

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for sink in self.sinks:
            sink.scalars(step, values)

    def trust(self, step: int, stats: dict, prefix: str = "trust") -> None:
        names, table = trust_table(stats)  # one copy from the device for all sinks
        on_host = {**stats, "name": names, **dict(zip(trust_keys(stats), table))}
        for sink in self.sinks:
            sink.trust(step, on_host, prefix)

    def hparams(self, hparams: dict, metrics: dict[str, float]) -> None:
        for sink in self.sinks:
            sink.hparams(hparams, metrics)

    def flush(self) -> None:
        for sink in self.sinks:
            sink.flush()


class MemorySink:
    """Keeps everything in lists, for tests and for code that wants the numbers directly."""

    def __init__(self):
        self.scalar_log: list[tuple[int, str, float]] = []
        self.trust_log: list[tuple[int, list[str], torch.Tensor]] = []  # prefix "trust" only
        self.hparam_log: list[tuple[dict, dict]] = []
        self.flushes = 0

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.scalar_log += [(step, tag, value) for tag, value in values.items()]

    def trust(self, step: int, stats: dict, prefix: str = "trust") -> None:
        if prefix == "trust":
            self.trust_log.append((step, *trust_table(stats)))

    def hparams(self, hparams: dict, metrics: dict[str, float]) -> None:
        self.hparam_log.append((hparams, metrics))

    def flush(self) -> None:
        self.flushes += 1

    def series(self, tag: str) -> list[tuple[int, float]]:
        return [(step, value) for step, t, value in self.scalar_log if t == tag]

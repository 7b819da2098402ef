"""Where the loop's numbers go: a small sink interface, the TensorBoard sink, a JSON-lines sink that
the report reads, an in-memory sink for tests, and a tee.

Only this module imports tensorboard. Tags written (the x-axis step is training samples seen):
``train/loss``, ``train/step``, ``lr``, ``test/loss``, ``test/accuracy``, ``throughput/samples_per_s``;
histograms ``trust/r``, ``trust/r1``, ``trust/r2`` across the parameter tensors; per-tensor scalars
``trust_layer/<param name>/{r,r1,r2}``; and the arm's hparams with its final metrics.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import torch

HISTOGRAM_BINS = 64  # upper bound on a histogram's buckets
TRUST_KEYS = ("r", "r1", "r2")


class Sink(Protocol):
    def scalars(self, step: int, values: dict[str, float]) -> None: ...
    def trust(self, step: int, stats: dict) -> None: ...
    def hparams(self, hparams: dict, metrics: dict[str, float]) -> None: ...
    def flush(self) -> None: ...


def trust_table(stats: dict) -> tuple[list[str], torch.Tensor]:
    """(names, a (3, n_tensors) CPU tensor with rows r, r1, r2), in one copy from the device."""
    table = torch.stack([stats[k].float() for k in TRUST_KEYS]).cpu()
    return list(stats["name"]), table


def hparam_value(value):
    """TensorBoard's hparams take bool, int, float or str only."""
    if isinstance(value, bool | int | float | str):
        return value
    return "none" if value is None else str(value)


class TensorBoardSink:
    """Writes one TensorBoard run into ``logdir``; use as a context manager."""

    def __init__(self, logdir: Path, purge_step: int | None = None):
        """``purge_step``: on resume, TensorBoard hides this run's events at steps >= it that an
        earlier session wrote after its last checkpoint."""
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(logdir), purge_step=purge_step)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def trust(self, step: int, stats: dict) -> None:
        names, table = trust_table(stats)
        for row, key in zip(table, TRUST_KEYS):
            finite = row[torch.isfinite(row)]
            if len(finite):
                self.writer.add_histogram(f"trust/{key}", finite, step, max_bins=HISTOGRAM_BINS)
        for name, (r, r1, r2) in zip(names, table.T.tolist()):
            for key, value in zip(TRUST_KEYS, (r, r1, r2)):
                self.writer.add_scalar(f"trust_layer/{name}/{key}", value, step)

    def hparams(self, hparams: dict, metrics: dict[str, float]) -> None:
        """hparams written into this run itself (not a new sub-run), so TensorBoard's HParams tab
        shows one row per arm beside its scalars."""
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        clean = {k: hparam_value(v) for k, v in hparams.items()}
        for summary in hparams_summary(clean, metrics):  # metrics: tags already logged
            self.writer.file_writer.add_summary(summary)

    def flush(self) -> None:
        self.writer.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.writer.close()


class JsonlSink:
    """Appends one JSON object per line to ``path``: ``{"kind": "scalars", "step", "values"}`` and
    ``{"kind": "trust", "step", "name", "r", "r1", "r2"}`` (lists in parameter order). Exact
    values, cheap to read back: the report's source."""

    def __init__(self, path: Path):
        self.path = path
        self.file = open(path, "a", encoding="utf-8")  # closed in __exit__

    @contextmanager
    def _named(self) -> Iterator[None]:
        """A buffered write's OSError (a full disk) names no file: name this one."""
        try:
            yield
        except OSError as err:
            err.filename = err.filename or str(self.path)
            raise

    def _write(self, record: dict) -> None:
        with self._named():
            self.file.write(json.dumps(record) + "\n")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self._write({"kind": "scalars", "step": step, "values": values})

    def trust(self, step: int, stats: dict) -> None:
        names, table = trust_table(stats)
        self._write({"kind": "trust", "step": step, "name": names,
                     **{k: row.tolist() for k, row in zip(TRUST_KEYS, table)},
                     **({"kept_out": stats["kept_out"]} if stats.get("kept_out") else {})})

    def hparams(self, hparams: dict, metrics: dict[str, float]) -> None:
        self._write({"kind": "hparams", "hparams": {k: hparam_value(v) for k, v in hparams.items()},
                     "metrics": metrics})

    def flush(self) -> None:
        with self._named():
            self.file.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        with self._named():
            self.file.close()


class Tee:
    """Sends everything to several sinks."""

    def __init__(self, *sinks: Sink):
        self.sinks = sinks

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for sink in self.sinks:
            sink.scalars(step, values)

    def trust(self, step: int, stats: dict) -> None:
        names, table = trust_table(stats)  # one copy from the device for all sinks
        on_host = {"name": names, **dict(zip(TRUST_KEYS, table)), "kept_out": stats.get("kept_out", [])}
        for sink in self.sinks:
            sink.trust(step, on_host)

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
        self.trust_log: list[tuple[int, list[str], torch.Tensor]] = []
        self.hparam_log: list[tuple[dict, dict]] = []
        self.flushes = 0

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.scalar_log += [(step, tag, value) for tag, value in values.items()]

    def trust(self, step: int, stats: dict) -> None:
        self.trust_log.append((step, *trust_table(stats)))

    def hparams(self, hparams: dict, metrics: dict[str, float]) -> None:
        self.hparam_log.append((hparams, metrics))

    def flush(self) -> None:
        self.flushes += 1

    def series(self, tag: str) -> list[tuple[int, float]]:
        return [(step, value) for step, t, value in self.scalar_log if t == tag]

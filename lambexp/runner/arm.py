"""One arm trained into its folder: the only place where an arm's settings become plain arguments
for the model, optimizer, loop and sinks. ``ArmRun`` is its parts (build, restore, start, and one
ending: finish, interrupt or fail); ``run_arm`` steps them for an arm alone, lambexp.runner.stacked
for the members of a stack. The folder it writes (``lambexp.folders.layout``): TensorBoard events,
metrics.jsonl, summary.json, checkpoint.pt while unfinished, model.pt once finished."""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

import torch
from torch import nn

from lambexp.base.files import CHECKPOINT_FILE, METRICS_FILE, MODEL_FILE
from lambexp.base.statuses import Status
from lambexp.config import Arm
from lambexp.data import MnistTensors, batches_per_epoch, ensure_mnist, held_out, load_mnist
from lambexp.errors import Interrupted, ResumableError, UserError
from lambexp.folders.layout import Summary, prepare_arm_dir, truncate_jsonl, write_summary
from lambexp.model import build_model
from lambexp.optim import build_optimizer
from lambexp.runner.changes import apply_to_optimizer, arm_settings, check_checkpoint
from lambexp.training.checkpoint import Restored, load_checkpoint, save_checkpoint, save_weights
from lambexp.training.distributed import SINGLE, World
from lambexp.training.loop import LoopOptions, LoopState, Trainer
from lambexp.training.progress import Progress
from lambexp.training.sinks import JsonlSink, Sink, Tee, TensorBoardSink


def pick_device(name: str) -> torch.device:
    """``auto`` → cuda when available, else cpu; ``cuda`` without a GPU is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device: cuda was asked for but no CUDA GPU is available"
                        " (use device=auto or device=cpu)")
    return torch.device(name)


def optimizer_args(arm: Arm, fused: bool = False) -> dict:
    """The arm's optimizer hyper-parameters as plain keyword arguments for ``build_optimizer``
    (``fused``: the arm's ``fused`` setting as resolved by ``use_fused``)."""
    return dict(lr=arm.lr, betas=tuple(arm.betas), eps=arm.eps, weight_decay=arm.weight_decay,
                rule=arm.rule, bias_correction=arm.bias_correction, clamp=arm.clamp,
                clamp_min=arm.clamp_min, trust_clip=arm.trust_clip, always_adapt=arm.always_adapt,
                grad_clip_norm=arm.grad_clip_norm, exclude_from_decay=arm.exclude_from_decay,
                exclude_from_trust=arm.exclude_from_trust, momentum=arm.momentum,
                trust_coefficient=arm.trust_coefficient, fused=fused)


# `fused: auto` on the CPU: compiling costs up to about 15 s (an empty inductor cache, 2 cores) and
# then saves about 0.16 ms per million parameters a step against the default step (4.0 ms on the
# 25M stack: docs/optimizer.md), so it pays from about 10^11 parameter-steps.
FUSED_MIN_PARAMETER_STEPS = 10**11


def use_fused(setting: bool | str, device: torch.device, parameters: int, steps: int) -> bool:
    """``fused: auto`` → on CUDA, or on the CPU where parameters × steps reach
    FUSED_MIN_PARAMETER_STEPS (LeNet's 431k parameters for 708 steps: far from it); true and false
    as they are."""
    if setting != "auto":
        return bool(setting)
    return device.type == "cuda" or parameters * steps >= FUSED_MIN_PARAMETER_STEPS


def loop_options(arm: Arm, n_train: int, stop_requested: Callable[[], bool],
                 world: World = SINGLE) -> LoopOptions:
    """The arm's loop settings as plain values; warm-up epochs become steps of this data set."""
    steps_per_epoch = batches_per_epoch(n_train, arm.batch_size)
    return LoopOptions(batch_size=arm.batch_size, log_interval=arm.log_interval,
                       eval_interval=arm.eval_interval, on_divergence=arm.on_divergence,
                       stop_requested=stop_requested, world=world,
                       warmup_steps=round(arm.warmup_epochs * steps_per_epoch))


@contextmanager
def arm_sink(arm_dir: Path, state: LoopState, resumed: bool, write: bool) -> Iterator[Sink]:
    """TensorBoard + metrics.jsonl in ``arm_dir``; a sink that writes nothing when not ``write``
    (ranks > 0 under torchrun).

    A resumed arm continues from a checkpoint at x = S samples. Training records are logged at the
    samples seen *before* their batch, so every record at x >= S was written after the checkpoint
    (by a process that then crashed) and is dropped from both files; the evaluation at S, which came
    before the checkpoint, is written again from the checkpoint's history."""
    if not write:
        yield Tee()
        return
    samples = state.samples
    truncate_jsonl(arm_dir / METRICS_FILE, samples)
    with TensorBoardSink(arm_dir, purge_step=samples if resumed else None) as board, \
            JsonlSink(arm_dir / METRICS_FILE) as jsonl:
        sink = Tee(board, jsonl)
        last = state.history[-1] if state.history else None
        if resumed and last and last["samples"] == samples:
            sink.scalars(samples, {k: v for k, v in last.items() if k.startswith(("test/", "val/"))})
        yield sink


class ArmRun:
    """One arm trained into its folder, in four parts: ``build`` (model and optimizer from its seed),
    ``restore`` (its checkpoint, vetted), ``start`` (a ``Trainer`` logging into its sink, for the
    caller to step) and one ending: ``finish`` (weights and summary), ``interrupt`` (a checkpoint)
    or ``fail``. ``run_arm`` runs them for an arm alone; lambexp.runner.stacked steps the Trainers
    of a stack's members in turn (``stacked``), and every file is what the arm writes alone."""

    def __init__(self, arm: Arm, data: MnistTensors, device: torch.device, arm_dir: Path,
                 progress: Progress, stop_requested: Callable[[], bool] = lambda: False,
                 world: World = SINGLE, apply_changes: bool = False, stacked: bool = False):
        self.arm, self.device, self.arm_dir = arm, device, arm_dir
        self.data = held_out(data, arm.validation)  # the training images less the validation split
        self.progress, self.stop_requested, self.world = progress, stop_requested, world
        self.apply_changes, self.stacked = apply_changes, stacked
        self.checkpoint = arm_dir / CHECKPOINT_FILE
        self.state, self.changes, self.resumed = LoopState(), [], False
        self.trainer: Trainer | None = None
        self._held = ExitStack()  # the sink, open from ``start`` to the ending

    def build(self) -> nn.Module:
        """The model from the arm's seed, and its optimizer (the compiled step where ``fused``
        resolves to it: it runs every rule and option)."""
        arm = self.arm
        torch.manual_seed(arm.seed)
        self.model = build_model(arm.model, self.device)
        steps = arm.epochs * batches_per_epoch(len(self.data.train_x), arm.batch_size)
        parameters = sum(p.numel() for p in self.model.parameters())
        self.fused = use_fused(arm.fused, self.device, parameters, steps)
        self.opt = build_optimizer(arm.optimizer, self.model.named_parameters(),
                                   **optimizer_args(arm, self.fused))
        return self.model

    def restore(self) -> None:
        """Continue from the folder's checkpoint when there is one (``check_checkpoint``: refused,
        or the changed settings applied), else start afresh, clearing what an unfinished attempt
        without a checkpoint left. Under torchrun rank 0 decides and every rank loads the file."""
        arm, changed = self.arm, {}

        def vet(recorded: Restored) -> None:
            changed.update(check_checkpoint(self.arm_dir, arm, recorded, self.apply_changes))

        self.resumed = self.world.from_lead(lambda: prepare_arm_dir(self.arm_dir))
        restored = load_checkpoint(self.checkpoint, self.model, self.opt, vet) if self.resumed \
            else Restored(LoopState())
        for group in self.opt.param_groups:  # the checkpoint's groups say how that run stepped, not this one
            if "fused" in group:
                group["fused"] = self.fused
        self.state, self.changes = restored.state, restored.changes
        if changed:
            apply_to_optimizer(self.opt, optimizer_args(arm, self.fused), changed)
            self.changes = [*self.changes, {"step": self.state.step, "changed": changed}]
        if self.resumed:
            self.progress.note(f"resuming from step {self.state.step} (epoch {self.state.epoch})")

    def start(self) -> Trainer:
        """The arm's Trainer, begun, logging into the arm's sink (open until the ending)."""
        sink = self._held.enter_context(arm_sink(self.arm_dir, self.state, self.resumed,
                                                 write=self.world.lead))
        data, arm = self.data, self.arm
        self.trainer = Trainer(self.model, self.opt, (data.train_x, data.train_y),
                               (data.test_x, data.test_y), epochs=arm.epochs, seed=arm.seed,
                               options=loop_options(arm, len(data.train_x), self.stop_requested, self.world),
                               sink=sink, progress=self.progress, state=self.state,
                               on_epoch_end=self._at_epoch_end, validation=data.validation)
        self._held.enter_context(self.trainer)
        return self.trainer

    def finish(self) -> Summary:
        """The trained arm: its throughput and hparams logged, then model.pt and summary.json; the
        checkpoint goes (nothing left to resume)."""
        self.trainer.end()
        summary = self._record(Status.FINISHED)
        final = last_with(self.state.history, "test/accuracy")
        self.trainer.sink.scalars(self.state.samples,
                                  {"throughput/samples_per_s": summary.samples_per_second})
        self.trainer.sink.hparams(arm_hparams(self.arm, self.device),
                                  {"test/accuracy": final.get("test/accuracy", float("nan")),
                                   "test/loss": final.get("test/loss", float("nan")),
                                   "train/loss": self.state.last_loss})
        self._held.close()
        if self.world.lead:
            save_weights(self.arm_dir / MODEL_FILE, self.model)
            write_summary(self.arm_dir, summary)
            self.checkpoint.unlink(missing_ok=True)
        return summary

    def interrupt(self) -> None:
        """Stopped before its end: a checkpoint to continue from, and a summary that says so."""
        if self.trainer is not None:
            self.trainer.end()
        if self.world.lead:
            save_checkpoint(self.checkpoint, self.model, self.opt, self.state, arm_settings(self.arm),
                            self.changes, self.arm.name)
            write_summary(self.arm_dir, self._record(Status.INTERRUPTED))
        self._held.close()

    def fail(self, err: Exception) -> Exception:
        """What to raise for ``err``: a full disk, an unwritable file or an allocation failure
        marks the arm failed in its summary and becomes a ResumableError (the last checkpoint
        stays whole); anything else is raised as it is."""
        with suppress(Exception):  # the sink's own close may fail alike: ``err`` says what happened
            self._held.close()
        problem = resource_problem(err, self.arm, self.device, self.arm_dir, stacked=self.stacked)
        if problem is None:
            return err
        if self.world.lead:
            with suppress(OSError):  # the disk may still be full: the error line says it all
                write_summary(self.arm_dir, self._record(Status.FAILED, problem))
        return ResumableError(problem)

    def _at_epoch_end(self, state: LoopState) -> None:
        if self.world.lead and (state.epoch - 1) % self.arm.checkpoint_every == 0:
            save_checkpoint(self.checkpoint, self.model, self.opt, state, arm_settings(self.arm),
                            self.changes, self.arm.name)

    def _record(self, status: Status, error: str | None = None) -> Summary:
        return summarize(self.arm, self.state, self.device, status, len(self.data.train_x),
                         self.changes, error)


RESOURCE_ERRORS = (OSError, RuntimeError, MemoryError)  # what ``ArmRun.fail`` may translate


def run_arm(arm: Arm, data: MnistTensors, device: torch.device, arm_dir: Path,
            progress: Progress, stop_requested: Callable[[], bool] = lambda: False,
            world: World = SINGLE, apply_changes: bool = False) -> Summary:
    """Train one arm into ``arm_dir`` (TensorBoard events, metrics.jsonl, summary.json, model.pt)
    and return its summary (``ArmRun``'s parts, its Trainer stepped to the end). Continues from
    ``arm_dir``'s checkpoint when there is one; otherwise starts afresh. On a stop request the
    state is checkpointed, the summary says interrupted, and Interrupted is raised.
    A checkpoint of other settings than ``arm``'s is refused (UserError), unless ``apply_changes``
    and only CHANGEABLE settings differ: then training goes on with the new ones, and the summary
    records the change and its step; so is another arm's checkpoint, and one that has trained past
    ``arm``'s epochs (``check_checkpoint``). A full disk or an allocation failure marks the arm failed in
    its summary and raises ResumableError (the last checkpoint stays whole).
    Under torchrun every rank calls this alike: rank 0 decides whether to resume and writes every
    file; every rank loads the same checkpoint (so ``arm_dir`` must be on a shared file system
    to resume on several machines)."""
    run = ArmRun(arm, data, device, arm_dir, progress, stop_requested, world, apply_changes)
    run.build()
    run.restore()
    try:
        try:
            trainer = run.start()
            while trainer.step():
                pass
        except Interrupted:
            run.interrupt()
            raise
        return run.finish()
    except RESOURCE_ERRORS as err:
        failure = run.fail(err)
        if failure is err:
            raise
        raise failure from None


def resource_problem(err: BaseException, arm: Arm, device: torch.device, arm_dir: Path,
                     stacked: bool = False) -> str | None:
    """One line for a full disk, an unwritable file or an allocation failure; None for anything else.
    ``stacked``: the arm trained in a stack, whose members' activations share the memory."""
    if isinstance(err, OSError):
        where = err.filename or arm_dir
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"no space left on device writing {where}"
        return f"cannot write {where} ({err.strerror or err})"
    text = str(err)
    if isinstance(err, MemoryError) or isinstance(err, torch.OutOfMemoryError) or \
            "DefaultCPUAllocator" in text or "out of memory" in text:
        first = text.strip().splitlines()[0][:160] if text.strip() else type(err).__name__
        return (f"{arm.name}: out of memory with batch_size {arm.batch_size} on {device}"
                f"{' in a stack' if stacked else ''} ({first}); lower "
                + ("--stack (fewer trainings at once) or batch_size" if stacked else "batch_size"))
    return None


def arm_hparams(arm: Arm, device: torch.device) -> dict:
    """The arm's settings as TensorBoard hparams: the device it ran on (not ``auto``), and the
    betas as two numbers (hparams take scalars only)."""
    settings = arm.model_dump(exclude={"name", "data_dir", "betas"})
    return {"arm": arm.name, **settings, "device": str(device), "beta1": arm.betas[0],
            "beta2": arm.betas[1]}


def last_with(history: list[dict], key: str) -> dict:
    """The last evaluation that measured ``key`` (between epochs, an arm with a validation split
    evaluates that alone), or {}."""
    return next((h for h in reversed(history) if key in h), {})


def summarize(arm: Arm, state: LoopState, device: torch.device, status: Status,
              samples_per_epoch: int, changes: Sequence[dict] = (), error: str | None = None) -> Summary:
    """The arm's Summary from the loop's state (see lambexp.folders.layout.Summary)."""
    accuracies = [h["test/accuracy"] for h in state.history if "test/accuracy" in h]
    validated = [h["val/accuracy"] for h in state.history if "val/accuracy" in h]
    final, final_val = last_with(state.history, "test/accuracy"), last_with(state.history, "val/accuracy")
    return Summary(
        status=status, arm=arm.name,
        final_test_accuracy=final.get("test/accuracy"),
        best_test_accuracy=max(accuracies) if accuracies else None,
        final_val_accuracy=final_val.get("val/accuracy"),
        best_val_accuracy=max(validated) if validated else None,
        final_test_loss=final.get("test/loss"),
        final_train_loss=state.last_loss,
        diverged=state.diverged_step is not None,
        diverged_step=state.diverged_step,
        diverged_reason=state.diverged_reason,
        epochs_done=state.epoch - 1,
        samples_per_epoch=samples_per_epoch,
        steps=state.step,
        samples=state.samples,
        wall_seconds=state.wall_seconds,
        train_seconds=state.train_seconds,
        samples_per_second=state.samples / max(state.train_seconds, 1e-9),
        device=str(device),
        torch=torch.__version__,
        seed=arm.seed,
        history=list(state.history),
        settings=arm_settings(arm),
        setting_changes=list(changes),
        error=error,
    )


class ArmInputs:
    """Each arm's device and verified MNIST, checked up front and loaded once per (folder, device)."""

    def __init__(self, arms: Sequence[Arm], data_dir: Path | None, say: Callable[[str], None]):
        self.data_dir = data_dir
        for arm in arms:
            pick_device(arm.device)  # cuda without a GPU fails here, before anything is written
        for folder in {self.folder(arm) for arm in arms}:
            ensure_mnist(folder, log=say)
        self._loaded: dict[tuple, MnistTensors] = {}

    def folder(self, arm: Arm) -> Path | None:
        """--data-dir, else the arm's data_dir, else None (the default folder)."""
        chosen = self.data_dir or arm.data_dir
        return Path(chosen) if chosen else None

    def data(self, arm: Arm) -> tuple[MnistTensors, torch.device]:
        key = (self.folder(arm), pick_device(arm.device))
        if key not in self._loaded:
            self._loaded[key] = load_mnist(*key)
        return self._loaded[key], key[1]

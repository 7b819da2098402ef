"""Composition root: a validated Experiment → a run folder holding one trained, logged arm per arm.

The only place where config objects become plain arguments for the model, optimizer, loop and sink.
Layout: ``<runs>/<experiment>/<timestamp>/{config.yaml, environment.json, <arm>/...}``; each arm
folder is one TensorBoard run plus ``summary.json``. Under torchrun every rank runs the same arms
and rank 0 alone writes the folder (``lambexp.training.distributed``).
"""

from __future__ import annotations

import errno
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext, suppress
from datetime import datetime, timezone
from pathlib import Path

import torch

from lambexp.config import Arm, Experiment, experiment_to_yaml
from lambexp.config.load import fused_supports
from lambexp.config.schema import unused_settings
from lambexp.data import MnistTensors, batches_per_epoch, ensure_mnist, load_mnist
from lambexp.errors import Interrupted, ResumableError, UserError
from lambexp.folders.layout import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    ENVIRONMENT_FILE,
    METRICS_FILE,
    MODEL_FILE,
    Status,
    Summary,
    make_run_dir,
    prepare_arm_dir,
    truncate_jsonl,
    write_json,
    write_summary,
    write_text_atomically,
)
from lambexp.folders.lock import folder_lock
from lambexp.model import build_model
from lambexp.optim import build_optimizer
from lambexp.training.checkpoint import Restored, load_checkpoint, save_checkpoint, save_weights
from lambexp.training.distributed import SINGLE, World, process_group
from lambexp.training.group import Member
from lambexp.training.loop import LoopOptions, LoopState, fit
from lambexp.training.progress import NoProgress, Progress
from lambexp.training.sinks import JsonlSink, Sink, Tee, TensorBoardSink


def pick_device(name: str) -> torch.device:
    """``auto`` → cuda when available, else cpu; ``cuda`` without a GPU is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device: cuda was asked for but no CUDA GPU is available"
                        " (use device=auto or device=cpu)")
    return torch.device(name)


def environment(argv: Sequence[str]) -> dict:
    """What produced a run: command line, versions, machine, git commit."""
    import torchvision

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "command": list(argv),
        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "world_size": int(os.environ.get("WORLD_SIZE", 1)),  # processes (torchrun), 1 without
        "git_commit": commit or None,
    }


def optimizer_args(arm: Arm, fused: bool = False) -> dict:
    """The arm's optimizer hyper-parameters as plain keyword arguments for ``build_optimizer``
    (``fused``: the arm's ``fused`` setting as resolved by ``use_fused``)."""
    return dict(lr=arm.lr, betas=tuple(arm.betas), eps=arm.eps, weight_decay=arm.weight_decay,
                rule=arm.rule, bias_correction=arm.bias_correction, clamp=arm.clamp,
                trust_clip=arm.trust_clip, always_adapt=arm.always_adapt,
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
                 world: World = SINGLE, member: Member | None = None) -> LoopOptions:
    """The arm's loop settings as plain values; warm-up epochs become steps of this data set.
    ``member``: the arm's place in a stacked group, which then runs its loss steps."""
    steps_per_epoch = batches_per_epoch(n_train, arm.batch_size)
    stacked = {} if member is None else {"loss_step": member, "loop_done": member.close}
    return LoopOptions(batch_size=arm.batch_size, log_interval=arm.log_interval,
                       eval_interval=arm.eval_interval, on_divergence=arm.on_divergence,
                       stop_requested=stop_requested, world=world,
                       warmup_steps=round(arm.warmup_epochs * steps_per_epoch), **stacked)


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
            sink.scalars(samples, {k: v for k, v in last.items() if k.startswith("test/")})
        yield sink


def run_arm(arm: Arm, data: MnistTensors, device: torch.device, arm_dir: Path,
            progress: Progress, stop_requested: Callable[[], bool] = lambda: False,
            world: World = SINGLE, apply_changes: bool = False, member: Member | None = None) -> Summary:
    """Train one arm into ``arm_dir`` (TensorBoard events, metrics.jsonl, summary.json, model.pt)
    and return its summary. Continues from ``arm_dir``'s checkpoint when there is one; otherwise
    starts afresh (clearing what an unfinished attempt without a checkpoint left). On a stop request
    the state is checkpointed, the summary says interrupted, and Interrupted is raised.
    A checkpoint of other settings than ``arm``'s is refused (UserError), unless ``apply_changes``
    and only CHANGEABLE settings differ: then training goes on with the new ones, and the summary
    records the change and its step; so is another arm's checkpoint, and one that has trained past
    ``arm``'s epochs (``check_checkpoint``). A full disk or an allocation failure marks the arm failed in
    its summary and raises ResumableError (the last checkpoint stays whole).
    Under torchrun every rank calls this alike: rank 0 decides whether to resume and writes every
    file; every rank loads the same checkpoint (so ``arm_dir`` must be on a shared file system
    to resume on several machines).
    ``member``: the arm trains in a stacked group (lambexp.training.group), in a thread of its own;
    everything it writes is what it writes alone."""
    # torch's RNG is global: seeding, building from it and restoring it from a checkpoint are one
    # step, one member of a stacked group at a time
    with member.group.building() if member else nullcontext():
        torch.manual_seed(arm.seed)
        model = build_model(arm.model, device)
        steps = arm.epochs * batches_per_epoch(len(data.train_x), arm.batch_size)
        fused = use_fused(arm.fused, device, sum(p.numel() for p in model.parameters()), steps) \
            and fused_supports(arm)  # auto: only where the compiled step runs this arm (config checks true)
        if fused and member is not None:  # torch.compile is not thread-safe: members compile at once
            fused = False
            if arm.fused is True:
                progress.note("fused: true does not apply in a stack (torch.compile is not thread-safe);"
                              " the multi-tensor step runs instead, equal to rounding")
        opt = build_optimizer(arm.optimizer, model.named_parameters(), **optimizer_args(arm, fused))
        checkpoint = arm_dir / CHECKPOINT_FILE
        resumed = world.from_lead(lambda: prepare_arm_dir(arm_dir))
        changed: dict[str, list] = {}

        def vet(recorded: Restored) -> None:
            changed.update(check_checkpoint(arm_dir, arm, recorded, apply_changes))

        restored = load_checkpoint(checkpoint, model, opt, vet) if resumed else Restored(LoopState())
        for group in opt.param_groups:  # the checkpoint's groups say how that run stepped, not this one
            if "fused" in group:
                group["fused"] = fused
    state, changes = restored.state, restored.changes
    if changed:
        apply_to_optimizer(opt, optimizer_args(arm, fused), changed)
        changes = [*changes, {"step": state.step, "changed": changed}]
    if resumed:
        progress.note(f"resuming from step {state.step} (epoch {state.epoch})")

    def record(status: Status, error: str | None = None) -> Summary:
        return summarize(arm, state, device, status, len(data.train_x), changes, error)

    try:
        with arm_sink(arm_dir, state, resumed, write=world.lead) as sink:

            def at_epoch_end(st: LoopState) -> None:
                if world.lead and (st.epoch - 1) % arm.checkpoint_every == 0:
                    save_checkpoint(checkpoint, model, opt, st, arm_settings(arm), changes, arm.name)

            try:
                options = loop_options(arm, len(data.train_x), stop_requested, world, member)
                fit(model, opt, (data.train_x, data.train_y), (data.test_x, data.test_y),
                    epochs=arm.epochs, seed=arm.seed, options=options, sink=sink, progress=progress,
                    state=state, on_epoch_end=at_epoch_end)
            except Interrupted:
                if world.lead:
                    save_checkpoint(checkpoint, model, opt, state, arm_settings(arm), changes, arm.name)
                    write_summary(arm_dir, record(Status.INTERRUPTED))
                raise
            summary = record(Status.FINISHED)
            sink.scalars(state.samples, {"throughput/samples_per_s": summary.samples_per_second})
            final = state.history[-1] if state.history else {}
            sink.hparams(arm_hparams(arm, device),
                         {"test/accuracy": final.get("test/accuracy", float("nan")),
                          "test/loss": final.get("test/loss", float("nan")),
                          "train/loss": state.last_loss})
        if world.lead:
            save_weights(arm_dir / MODEL_FILE, model)
            write_summary(arm_dir, summary)
            checkpoint.unlink(missing_ok=True)  # finished: nothing left to resume
    except (OSError, RuntimeError, MemoryError) as err:
        problem = resource_problem(err, arm, device, arm_dir, stacked=member is not None)
        if problem is None:
            raise
        if world.lead:
            with suppress(OSError):  # the disk may still be full: the error line says it all
                write_summary(arm_dir, record(Status.FAILED, problem))
        raise ResumableError(problem) from None
    return summary


# Settings that may change while an arm trains (`lambexp resume --apply-config-changes`): the
# optimizer's hyper-parameters and the loop's schedule. The others make it another training.
CHANGEABLE = frozenset({"lr", "weight_decay", "betas", "eps", "clamp", "momentum", "trust_coefficient",
                        "trust_clip", "always_adapt", "grad_clip_norm",
                        "epochs", "warmup_epochs", "log_interval", "eval_interval", "on_divergence",
                        "checkpoint_every", "fused", "device", "data_dir"})


def arm_settings(arm: Arm) -> dict:
    """What an arm trains with, as recorded in its checkpoint and summary (JSON values): the
    settings it uses, as its config.yaml (a setting it does not use took no part)."""
    return arm.model_dump(mode="json", exclude={"name", *unused_settings(arm.optimizer, arm.rule)})


def setting_changes(recorded: dict, arm: Arm) -> dict[str, list]:
    """{setting: [as recorded, as ``arm`` says]} for each setting that differs; a setting the
    recording version of lambexp did not have yet is not a change."""
    now = arm_settings(arm)
    return {key: [recorded[key], value] for key, value in now.items()
            if key in recorded and recorded[key] != value}


def describe_changes(changed: dict[str, list]) -> str:
    return ", ".join(f"{key} {old!r} → {new!r}" for key, (old, new) in changed.items())


def check_changes(arm_dir: Path, changed: dict[str, list], apply: bool) -> None:
    """A UserError unless ``apply`` and every changed setting may change mid-training."""
    fixed = sorted(set(changed) - CHANGEABLE)
    if not apply:
        raise UserError(f"{arm_dir}: its config changed since it began training"
                        f" ({describe_changes(changed)}); start a new run with the new config, or"
                        " resume with --apply-config-changes to train on with the new values")
    if fixed:
        raise UserError(f"{arm_dir}: {', '.join(fixed)} cannot change in the middle of a training"
                        f" ({describe_changes({k: changed[k] for k in fixed})}); start a new run")


def check_checkpoint(arm_dir: Path, arm: Arm, recorded: Restored, apply: bool) -> dict[str, list]:
    """Whether ``arm`` may continue from the checkpoint in ``arm_dir`` that says ``recorded``: a
    UserError when it is another arm's training, when its settings changed in a way that may not
    apply (``check_changes``), or when ``arm``'s epochs end before the weights it holds
    (``check_epochs_left``); else the settings to apply, {setting: [recorded, now]}."""
    changed = setting_changes(recorded.settings, arm) if recorded.settings is not None else {}
    check_same_training(arm_dir, arm, recorded, changed)
    if changed:
        check_changes(arm_dir, changed, apply)
    check_epochs_left(arm_dir, arm, recorded.state)
    return changed


def check_same_training(arm_dir: Path, arm: Arm, recorded: Restored, changed: dict) -> None:
    """A checkpoint another arm wrote (copied into this folder) is refused as what it is, not as a
    config change. Another name alone is no refusal: `reproduce` shares one training between
    identically set arms of different names (lambexp.runner.plan)."""
    if recorded.arm is not None and recorded.arm != arm.name and changed:
        raise UserError(f"{CHECKPOINT_FILE} in {arm_dir} is arm {recorded.arm}'s, of another training"
                        f" than arm {arm.name}'s; put it back in {recorded.arm}'s folder, or delete it"
                        f" to train {arm.name} from the start")


def check_epochs_left(arm_dir: Path, arm: Arm, state: LoopState) -> None:
    """A UserError when ``arm.epochs`` ends before the weights the checkpoint holds: its last
    evaluation is then of earlier weights than model.pt would get, and summary.json would report
    an accuracy that its model does not have. Ending at exactly the epochs done is consistent."""
    done, into = state.epoch - 1, state.batch  # epochs done, and steps into the next one
    if arm.epochs > done or (arm.epochs == done and not into):
        return
    trained = f"{done} epoch{'s' * (done != 1)}"
    if into:
        trained += f" and {into} step{'s' * (into != 1)} of epoch {state.epoch}"
    raise UserError(f"{arm_dir}: epochs cannot be lowered to {arm.epochs}: arm {arm.name} has trained"
                    f" {trained} already, and its checkpoint holds those weights; set epochs to at"
                    f" least {done + bool(into)} in config.yaml, or start a new run")


def apply_to_optimizer(opt: torch.optim.Optimizer, args: dict, changed: dict) -> None:
    """The ``changed`` hyper-parameters from ``args`` (``optimizer_args``), over the checkpoint's;
    a group kept out of weight decay (``exclude_from_decay``) keeps none."""
    for group in opt.param_groups:
        for key in changed.keys() & args.keys() & group.keys():
            if not (key == "weight_decay" and group.get("decay_excluded")):
                group[key] = args[key]
        if "initial_lr" in group and "lr" in changed:  # the warm-up's target
            group["initial_lr"] = args["lr"]
    if "grad_clip_norm" in changed:  # one global clip, read from the optimizer's defaults
        opt.defaults["grad_clip_norm"] = args["grad_clip_norm"]


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


def summarize(arm: Arm, state: LoopState, device: torch.device, status: Status,
              samples_per_epoch: int, changes: Sequence[dict] = (), error: str | None = None) -> Summary:
    """The arm's Summary from the loop's state (see lambexp.folders.layout.Summary)."""
    accuracies = [h["test/accuracy"] for h in state.history]
    final = state.history[-1] if state.history else {}
    return Summary(
        status=status, arm=arm.name,
        final_test_accuracy=final.get("test/accuracy"),
        best_test_accuracy=max(accuracies) if accuracies else None,
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


def write_run_header(run_dir: Path, exp: Experiment, argv: Sequence[str]) -> None:
    """config.yaml (fully resolved) and environment.json, before any training."""
    write_text_atomically(run_dir / CONFIG_FILE, experiment_to_yaml(exp))
    write_json(run_dir / ENVIRONMENT_FILE, environment(argv or sys.argv))


def start_run(runs_root: Path, exp: Experiment, argv: Sequence[str],
              on_start: Callable[[Path], None], held: ExitStack) -> Path:
    """A new run folder, locked for as long as ``held`` lasts, with its config.yaml and
    environment.json."""
    run_dir = make_run_dir(runs_root / exp.name)
    held.enter_context(folder_lock(run_dir, "--runs-dir"))
    on_start(run_dir)
    write_run_header(run_dir, exp, argv)
    return run_dir


def run_experiment(exp: Experiment, *, runs_root: Path, data_dir: Path | None = None,
                   argv: Sequence[str] = (), say: Callable[[str], None] = print,
                   on_start: Callable[[Path], None] = lambda run_dir: None,
                   progress_for: Callable[[Arm], Progress] = lambda arm: NoProgress(),
                   stop_requested: Callable[[], bool] = lambda: False) -> Path:
    """Run every arm of ``exp``; return the new run folder.

    Devices are checked and MNIST is fetched and verified before the run folder is created, so
    a failure there leaves nothing behind. Under torchrun every rank trains every arm with DDP;
    rank 0 creates and locks the run folder (its path sent to the others) and alone calls
    ``on_start``.
    """
    with process_group() as world, ExitStack() as held:
        inputs = world.local_first(lambda: ArmInputs(exp.arms, data_dir, say))
        if stop_requested():  # e.g. Ctrl-C while MNIST was fetched: leave nothing behind
            raise Interrupted("before training began; nothing was written")
        run_dir = world.from_lead(lambda: start_run(runs_root, exp, argv, on_start, held))
        for arm in exp.arms:
            if not world.active and stop_requested():  # under DDP the ranks agree at log steps
                raise Interrupted("between arms; the finished arms are kept")
            data, device = inputs.data(arm)
            run_arm(arm, data, device, run_dir / arm.name, progress_for(arm), stop_requested, world)
    return run_dir

"""A resumed arm: its checkpoint vetted against its config before training goes on. Another arm's
checkpoint, a changed setting (unless ``--apply-config-changes`` and it is CHANGEABLE) and epochs
lowered below those done are refused, each in one line; the settings that may change are applied to
the restored optimizer."""

from __future__ import annotations

from pathlib import Path

import torch

from lambexp.base.files import CHECKPOINT_FILE
from lambexp.config import Arm
from lambexp.config.schema import unused_settings
from lambexp.errors import UserError
from lambexp.training.checkpoint import Restored
from lambexp.training.loop import LoopState

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

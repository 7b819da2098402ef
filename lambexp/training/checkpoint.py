"""Checkpoints: model, optimizer, RNG, loop position and the settings that trained them, in one file,
written atomically and loaded with ``torch.load(weights_only=True)`` (tensors and plain containers
only, no pickled code). A file that is not a checkpoint this version can continue from is a
UserError naming it, and is left as it is."""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from lambexp.errors import UserError
from lambexp.folders.layout import fresh_file
from lambexp.training.loop import LoopState

# 2: with the arm's settings and their changes. 1: lambexp before the format was recorded (no
# "format" key, no settings): still continued, without the check that the config is unchanged.
FORMAT = 2
READABLE = (1, 2)
PARTS = ("model", "optimizer", "loop", "torch_rng")


@dataclass
class Restored:
    """What a checkpoint brings back besides the model's and the optimizer's state."""

    state: LoopState
    settings: dict | None = None  # the arm's settings it trained with (None: a format-1 file)
    changes: list[dict] = field(default_factory=list)  # settings changed on resume, with the step
    arm: str | None = None  # the name of the arm that wrote it (None: written before names were kept)


def save_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer, state: LoopState,
                    settings: dict | None = None, changes: list[dict] | None = None,
                    arm: str | None = None) -> None:
    """Write to a temporary name, then rename: a crash, or a full disk, leaves the previous
    checkpoint whole (``save_atomically``). ``arm``: the name of the arm it continues, so that a
    checkpoint copied into another arm's folder is known as such."""
    payload = {
        "format": FORMAT,
        "model": own_weights(model),
        "optimizer": opt.state_dict(),
        "loop": {f.name: getattr(state, f.name) for f in dataclasses.fields(LoopState)},
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "settings": settings,
        "changes": list(changes or []),
        "arm": arm,  # an extra key: lambexp that does not know it reads the file as before
    }
    save_atomically(path, payload)


def save_weights(path: Path, model: nn.Module) -> None:
    """The model's final weights (its state_dict), for anyone to load with
    ``torch.load(weights_only=True)`` and evaluate again."""
    save_atomically(path, own_weights(model))


def own_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state_dict, each tensor that is a view into a larger storage (a member of a
    stack: lambexp.training.members) copied out: torch.save writes a view's whole storage,
    which would put every member's weights in each member's file."""
    return {name: t.clone() if t.untyped_storage().nbytes() > t.nbytes else t
            for name, t in model.state_dict().items()}


def save_atomically(path: Path, payload: object) -> None:
    """``torch.save`` into memory, then the bytes to a temporary name, flushed to disk, renamed over
    ``path``. Writing the bytes ourselves turns a full disk into an OSError (ENOSPC) naming the file,
    where torch's writer raises an opaque RuntimeError; the temporary file is removed either way."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb", opener=fresh_file) as f:  # never through a link planted at the name
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename, so a crash cannot leave it empty
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.filename is None:
            err.filename = str(tmp)
        raise


def load_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer,
                    vet: Callable[[Restored], None] = lambda recorded: None) -> Restored:
    """Restore model, optimizer and RNG from ``path``; return the loop state to continue from.
    ``vet`` sees what the checkpoint records first (``recorded``), and may refuse it by raising,
    before anything is restored."""
    payload = _read(path)
    restored = _recorded(path, payload)
    vet(restored)
    device = next(model.parameters()).device
    try:
        model.load_state_dict(payload["model"])
        opt.load_state_dict(payload["optimizer"])
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError) as err:
        raise _unusable(path, f"its model or optimizer does not fit this arm ({_first_line(err)})") from None
    try:
        torch.set_rng_state(payload["torch_rng"])
    except (RuntimeError, TypeError) as err:
        raise _unusable(path, f"damaged: its random-number state is not one ({_first_line(err)})") from None
    if payload.get("cuda_rng") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["cuda_rng"])
    if restored.state.first_bad is not None:
        restored.state.first_bad = restored.state.first_bad.to(device)
    return restored


def recorded(path: Path) -> Restored | None:
    """What a checkpoint says about its training (the arm, its settings, its loop position),
    without restoring it; None when it cannot be read (continuing from it says why)."""
    try:
        return _recorded(path, _read(path))
    except UserError:
        return None


def _recorded(path: Path, payload: dict) -> Restored:
    arm = payload.get("arm")
    return Restored(LoopState(**_loop(path, payload["loop"])), payload.get("settings"),
                    list(payload.get("changes") or []), arm if isinstance(arm, str) else None)


def _read(path: Path) -> dict:
    """The file's payload: a dict of a readable format with every part, else a UserError."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # torch's message suggests weights_only=False: never
        why = ("it holds objects other than tensors and plain containers" if "Unsupported global" in
               str(err) else "unreadable: not a file that torch.save wrote, or a damaged one")
        raise _unusable(path, why) from None
    except (OSError, RuntimeError, EOFError, ValueError, KeyError, AttributeError) as err:
        raise _unusable(path, f"unreadable: {_first_line(err)}") from None
    if not isinstance(payload, dict) or not all(part in payload for part in PARTS):
        raise _unusable(path, f"not a lambexp checkpoint (it holds {_kind(payload)})")
    version = payload.get("format", 1)
    if version not in READABLE:
        raise _unusable(path, f"written by an incompatible version of lambexp (checkpoint format"
                              f" {version!r}; this version reads formats {', '.join(map(str, READABLE))})")
    return payload


# The loop position's fields and the types each may hold (None where the field may be None).
LOOP_TYPES = {"step": int, "samples": int, "epoch": int, "batch": int, "epoch_rng": (Tensor, None),
              "train_seconds": float, "wall_seconds": float, "last_loss": float,
              "diverged_step": (int, None), "diverged_reason": (str, None), "first_loss": (float, None),
              "loss_fell": bool, "history": list, "first_bad": (Tensor, None)}


def _loop(path: Path, loop: object) -> dict:
    """The loop position, checked field by field against this version's LoopState."""
    names = {f.name for f in dataclasses.fields(LoopState)}
    assert names == set(LOOP_TYPES), "LOOP_TYPES must list LoopState's fields"
    if not isinstance(loop, dict) or set(loop) != names:
        if isinstance(loop, dict):
            missing, extra = sorted(names - set(loop)), sorted(set(loop) - names)
            have = "; ".join(([f"lacks {', '.join(missing)}"] if missing else [])
                             + ([f"has unknown {', '.join(map(str, extra))}"] if extra else []))
        else:
            have = f"is {_kind(loop)}"
        raise _unusable(path, f"written by an incompatible version of lambexp (its loop position {have})")
    for name, kinds in LOOP_TYPES.items():
        kinds = kinds if isinstance(kinds, tuple) else (kinds,)
        value = loop[name]
        ok = any(value is None if k is None else isinstance(value, k) or (k is float and
                 isinstance(value, int) and not isinstance(value, bool)) for k in kinds)
        if not ok or (kinds[0] is int and isinstance(value, bool)):
            raise _unusable(path, f"damaged: its loop position's {name} is {_kind(value)}")
    if loop["epoch_rng"] is not None:
        try:
            torch.Generator().set_state(loop["epoch_rng"])
        except (RuntimeError, TypeError) as err:
            raise _unusable(path, f"damaged: its shuffling state is not one ({_first_line(err)})") from None
    return dict(loop)


def _unusable(path: Path, why: str) -> UserError:
    return UserError(f"{path}: cannot continue from this checkpoint: {why}; it is left as it is"
                     " (delete it to train this arm again from the start)")


def _first_line(err: BaseException) -> str:
    lines = [line for line in str(err).strip().splitlines() if "weights_only" not in line]
    return lines[0].split(". ")[0][:160].rstrip(".") if lines else type(err).__name__


def _kind(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, dict):
        return f"a mapping of {sorted(map(str, value))[:6]}"
    return f"a {type(value).__name__}"

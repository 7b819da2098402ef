"""Checkpoints: model, optimizer, RNG and loop position in one file, written atomically and loaded
with ``torch.load(weights_only=True)`` (tensors and plain containers only, no pickled code)."""

from __future__ import annotations

import dataclasses
import os
import pickle
from pathlib import Path

import torch
from torch import nn

from lambexp.errors import UserError
from lambexp.layout import CHECKPOINT_FILE  # noqa: F401  (the file's name lives with the run folder)
from lambexp.train import LoopState


def save_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer,
                    state: LoopState) -> None:
    """Write to a temporary name, then rename: a crash leaves the previous checkpoint whole."""
    loop = {f.name: getattr(state, f.name) for f in dataclasses.fields(LoopState)}
    payload = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "loop": loop,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    save_atomically(path, payload)


def save_weights(path: Path, model: nn.Module) -> None:
    """The model's final weights (its state_dict), for anyone to load with
    ``torch.load(weights_only=True)`` and evaluate again."""
    save_atomically(path, model.state_dict())


def save_atomically(path: Path, payload: object) -> None:
    """``torch.save`` to a temporary name, flushed to disk, then renamed over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())  # on disk before the rename, so a crash cannot leave it empty
    os.replace(tmp, path)


def load_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer) -> LoopState:
    """Restore model, optimizer and RNG from ``path``; return the loop state to continue from."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(payload["model"])
        opt.load_state_dict(payload["optimizer"])
    except (OSError, RuntimeError, KeyError, ValueError, pickle.UnpicklingError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path}: unreadable checkpoint ({first}); delete it to start this arm"
                        " again") from None
    torch.set_rng_state(payload["torch_rng"])
    if payload["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["cuda_rng"])
    loop = payload["loop"]
    device = next(model.parameters()).device
    if loop["first_bad"] is not None:
        loop["first_bad"] = loop["first_bad"].to(device)
    return LoopState(**loop)

"""The experiment configs that ship inside the package (``lambexp/configs``, a link to the repository's
``configs/``: one source), found by name: ``adam_vs_lamb``, ``beyond/large_batch`` or ``large_batch``.
A path on disk always wins over a bundled name. Torch-free: the light verbs use it."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from lambexp.errors import UserError


def bundled_dir() -> Path:
    return Path(str(resources.files("lambexp") / "configs"))


def bundled_configs() -> dict[str, Path]:
    """name → file, for every bundled config: the post's at the top, the others in sub-folders
    (``beyond/large_batch``); sorted, the post's first."""
    root = bundled_dir()
    files = sorted(root.glob("*.yaml")) + sorted(root.glob("*/*.yaml"))
    return {f.relative_to(root).with_suffix("").as_posix(): f for f in files}


def the_posts_configs() -> list[Path]:
    """The configs `lambexp reproduce` runs by default: E1-E6, not the ones beyond the post."""
    return [f for name, f in bundled_configs().items() if "/" not in name]


def find_config(given: str | Path) -> Path:
    """``given`` as a path when it exists, else the bundled config of that name (with or without
    its folder and ``.yaml``). A UserError names the bundled ones when neither exists."""
    path = Path(given)
    if path.exists():
        return path
    try:
        return find_bundled(str(given))
    except UserError:
        raise UserError(f"{given}: no such file, and no bundled config of that name (bundled: "
                        f"{', '.join(bundled_configs())}; `lambexp configs` lists them)") from None


MAX_ARMS_LISTED = 12  # `lambexp configs` names each arm up to this many; a larger sweep is summed up


@dataclass
class BundledConfig:
    name: str
    path: Path
    description: str
    arms: list[str]
    claims: int
    sweep: dict[str, int]  # swept setting → its number of values (empty without a sweep)
    swept_arms: list[str]  # the arms as the file writes them, before the sweep crosses them

    def arms_text(self) -> str:
        """The arms by name, or for a sweep of many, how they multiply: '3 (adam, lambblog,
        lambpaper) × 7 lr × 2 weight_decay = 42'."""
        if len(self.arms) <= MAX_ARMS_LISTED or not self.sweep:
            return ", ".join(self.arms)
        parts = [f"{len(self.swept_arms)} ({', '.join(self.swept_arms)})",
                 *(f"{count} {key}" for key, count in self.sweep.items())]
        return f"{' × '.join(parts)} = {len(self.arms)}"


def describe_bundled() -> list[BundledConfig]:
    """Each bundled config with its description, arms and sweep (read through the validating
    loader; the sweep from the file itself, since the loaded arms are already expanded)."""
    from lambexp.config import load_experiment
    from lambexp.config.yaml_io import parse_document

    out = []
    for name, path in bundled_configs().items():
        exp = load_experiment(path)
        raw = parse_document(path.read_text(encoding="utf-8"))
        sweep = {str(k): len(v) for k, v in (raw.get("sweep") or {}).items()}
        swept = [str(a.get("name")) for a in raw.get("arms", []) if isinstance(a, dict)]
        out.append(BundledConfig(name, path, exp.description, [a.name for a in exp.arms],
                                 len(exp.expect), sweep, swept))
    return out


def copy_config(name: str, dest: Path | None) -> Path:
    """Write an editable copy of bundled config ``name`` to ``dest`` (a file, or a folder to put
    ``<name>.yaml`` in; default: the current folder). Never overwrites a file."""
    source = find_bundled(name)
    target = Path(dest) if dest is not None else Path(source.name)
    if target.is_dir():
        target = target / source.name
    if target.exists():
        raise UserError(f"{target}: already exists; pass another destination")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    except OSError as err:
        raise UserError(f"{target}: cannot write it ({err.strerror or err})") from None
    return target


def find_bundled(name: str) -> Path:
    """The bundled config ``name`` (never a path on disk)."""
    configs = bundled_configs()
    by_stem = {Path(n).name: f for n, f in configs.items()}
    key = name.removesuffix(".yaml")
    if key in configs or key in by_stem:
        return configs.get(key) or by_stem[key]
    raise UserError(f"{name}: no bundled config of that name (bundled: {', '.join(configs)})")

"""The shipped YAML presets, inside the package so that any install (wheel, git, cluster image) finds them.

One folder per kind: `backbone/`, `tokenizer/`, `model/`, `freeze/`, `stages/` and `sweeps/`. A preset is named
by its file's stem (`clip-tiny`, `unfreeze-lm`, `design_space`); wherever a name is accepted, a path to a
YAML file of the user's own is accepted too and wins (`resolve` checks the path first).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from vlmlab.errors import ConfigError, unknown_choice

KINDS = ("backbone", "tokenizer", "model", "freeze", "stages", "sweeps")
# what each kind is called in an error message
_DESCRIPTIONS = {
    "backbone": "language backbone",
    "tokenizer": "image tokenizer",
    "model": "model preset",
    "freeze": "freezing recipe",
    "stages": "stage preset",
    "sweeps": "sweep",
}


def preset_root() -> Path:
    """The folder holding the preset kinds (a real folder: setuptools installs package data unzipped)."""
    return Path(str(resources.files(__name__)))


def preset_dir(kind: str) -> Path:
    if kind not in KINDS:
        raise unknown_choice("preset kind", kind, KINDS)
    return preset_root() / kind


def preset_names(kind: str) -> list[str]:
    """The names of the shipped presets of one kind, sorted."""
    return sorted(path.stem for path in preset_dir(kind).glob("*.yaml"))


def is_yaml_path(name_or_path: str | Path) -> bool:
    return Path(name_or_path).suffix in (".yaml", ".yml")


def resolve(kind: str, name_or_path: str | Path) -> Path:
    """A YAML path as given (it must exist), or the shipped preset of that name; one line naming the valid
    names otherwise."""
    if is_yaml_path(name_or_path):
        path = Path(name_or_path)
        if not path.exists():
            raise ConfigError(
                f"{_DESCRIPTIONS[kind].capitalize()} file {str(name_or_path)!r} does not exist."
            )
        return path
    path = preset_dir(kind) / f"{name_or_path}.yaml"
    if not path.exists():
        raise unknown_choice(_DESCRIPTIONS[kind], name_or_path, preset_names(kind))
    return path


def resolve_config_file(name_or_path: str | Path) -> Path:
    """A config file given on the command line: a path, or a shipped preset as `<kind>/<name>`
    (`model/tiny`, `stages/stage1`), so an installed vlmlab needs no checkout for its own presets."""
    path = Path(name_or_path)
    if path.exists() or len(path.parts) != 2 or path.parts[0] not in KINDS:
        return path
    name = path.name.removesuffix(".yaml").removesuffix(".yml")
    preset = preset_dir(path.parts[0]) / f"{name}.yaml"
    return preset if preset.exists() else path


def is_preset(path: Path) -> bool:
    """Whether a file is one of the shipped presets (its relative output paths then mean the working
    directory, not the installed package's folder)."""
    try:
        path.resolve().relative_to(preset_root().resolve())
    except ValueError:
        return False
    return True


__all__ = [
    "KINDS",
    "is_preset",
    "is_yaml_path",
    "preset_dir",
    "preset_names",
    "preset_root",
    "resolve",
    "resolve_config_file",
]

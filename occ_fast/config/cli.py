"""From the command line to a checked :class:`Config`: the preset, the flags (tyro), then validation."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path

import tyro

from occ_fast.config.loading import ConfigError
from occ_fast.config.tree import PRESET_SUFFIX, Config

DEFAULT_PRESET = "tiny"


def presets_dir() -> Path:
    """The packaged preset directory (works from an installed wheel as well as a checkout)."""
    return Path(str(files("occ_fast") / "configs"))


def list_presets() -> list[str]:
    """Names of the packaged presets."""
    return sorted(p.name.removesuffix(PRESET_SUFFIX) for p in presets_dir().glob(f"*{PRESET_SUFFIX}"))


def load_preset(name_or_path: str) -> Config:
    """A packaged preset by name, or any YAML file by path; ``preset`` records which."""
    packaged = presets_dir() / f"{name_or_path}{PRESET_SUFFIX}"
    if packaged.is_file():
        path = packaged
    elif Path(name_or_path).is_file():
        path = Path(name_or_path)
    else:
        raise ConfigError(
            f"--preset {name_or_path!r}: no such preset (available: {', '.join(list_presets())}) "
            "and no such YAML file"
        )
    return dataclasses.replace(Config.from_yaml(path), preset=name_or_path)


def parse_config(argv: Sequence[str] | None = None, prog: str = "python -m occ_fast.train") -> Config:
    """Preset, then command-line overrides, then :meth:`Config.resolve` and :meth:`Config.validate`.

    ``argv`` excludes the program name (None reads ``sys.argv``). ``--help`` prints every field with
    its doc and its value under the chosen preset; a malformed flag exits through tyro (status 2);
    a config that cannot work raises :class:`ConfigError`. The preset's values are checked when it
    is read, so a field out of range here came from a flag.
    """
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--preset", default=DEFAULT_PRESET)
    known, _ = pre.parse_known_args(argv)
    base = load_preset(known.preset)
    cfg = tyro.cli(Config, args=argv, default=base, prog=prog, description=Config.__doc__)
    return cfg.resolve().validate(source="command line")


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m occ_fast.config [flags]``: print the resolved configuration (a dry run of the flags)."""
    print(parse_config(argv, prog="python -m occ_fast.config").to_yaml(), end="")

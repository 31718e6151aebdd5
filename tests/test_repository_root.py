"""From the repository root, where a user stands after cloning: Python puts the working directory first
on ``sys.path`` (``python -m``, ``python -c``, ``python -m pytest``), so any importable name at the root
(and in ``tests/`` and ``benchmarks/``, which pytest puts on the path) wins over an installed
distribution of the same name. ``kernels/`` is a folder, not a package, for that reason: the Hugging Face
kernel hub's distribution is called ``kernels`` and transformers imports it at start."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OWN_DISTRIBUTION = "occ-fast"
# The folders whose contents are importable as top-level names when the suite or a command runs.
ON_SYS_PATH = {
    "the repository root": ROOT,
    "tests/": ROOT / "tests",
    "benchmarks/": ROOT / "benchmarks",
}


def importable_names(folder: Path) -> dict[str, Path]:
    """What ``import NAME`` would find in ``folder``: modules and regular packages (a folder without
    ``__init__.py`` is at most a namespace portion, which any installed package of that name beats)."""
    names = {}
    for entry in folder.iterdir():
        if entry.is_dir() and (entry / "__init__.py").is_file():
            names[entry.name] = entry
        elif entry.is_file() and entry.suffix == ".py":
            names[entry.stem] = entry
    return names


def installed_top_level_names() -> dict[str, list[str]]:
    """Top-level module name -> the installed distributions that provide it, the project itself left out."""
    return {
        name: owners
        for name, dists in importlib.metadata.packages_distributions().items()
        if (owners := [d for d in dists if d.lower().replace("_", "-") != OWN_DISTRIBUTION])
    }


def shadowing_pairs(
    folders: dict[str, Path], installed: dict[str, list[str]], root: Path = ROOT
) -> list[str]:
    return [
        f"{path.relative_to(root)} (in {where}) shadows `{name}` of {', '.join(installed[name])}"
        for where, folder in folders.items()
        for name, path in sorted(importable_names(folder).items())
        if name in installed
    ]


def run_from_root(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_no_repository_name_shadows_an_installed_distribution():
    assert shadowing_pairs(ON_SYS_PATH, installed_top_level_names()) == []


def test_the_shadowing_check_names_the_pair(tmp_path):
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "__init__.py").write_text("")
    (tmp_path / "rich.py").write_text("")
    (tmp_path / "plain_folder").mkdir()  # no __init__.py: not importable over an installed package
    (tmp_path / "notes.py").write_text("")  # importable, but nothing installed is called `notes`
    pairs = shadowing_pairs(
        {"a checkout": tmp_path},
        {"kernels": ["kernels"], "rich": ["rich"], "plain_folder": ["other"]},
        root=tmp_path,
    )
    assert pairs == [
        "kernels (in a checkout) shadows `kernels` of kernels",
        "rich.py (in a checkout) shadows `rich` of rich",
    ]


def test_the_kernel_hub_distribution_resolves_to_itself_from_the_root():
    """The name that broke a fresh checkout: ``kernels`` is installed with transformers (a dev dependency
    too, so that this test always has it) and must import from site-packages, not from ``./kernels``."""
    hub_init = importlib.metadata.distribution("kernels").locate_file("kernels/__init__.py")
    out = run_from_root(
        "-c",
        "import kernels, occ_fast.kernels, transformers.integrations.hub_kernels; "
        "print(kernels.__file__); print(occ_fast.kernels.__file__)",
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    hub, ours = out.stdout.split()
    assert Path(hub).resolve() == Path(hub_init).resolve(), hub
    assert Path(ours).resolve() == ROOT / "kernels" / "src" / "__init__.py"


def test_readme_training_command_runs_from_the_repository_root(tmp_path):
    """``python -m occ_fast.train`` from the root, a few steps: builds the transformers model (its
    modelling code imports the kernel hub), warm-starts, trains and writes its run directory."""
    out = run_from_root(
        "-m",
        "occ_fast.train",
        "--train.steps",
        "2",
        "--train.warmup-sft-steps",
        "2",
        "--eval.every",
        "0",
        "--run.output-dir",
        str(tmp_path),
        "--run.name",
        "from-root",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    run_dir = tmp_path / "from-root"
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2
    assert (run_dir / "model" / "model.safetensors").is_file()

